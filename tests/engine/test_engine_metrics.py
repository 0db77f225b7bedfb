"""Metrics, the resumable/shardable data order, and LR schedules."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from attnguide.engine import TrainConfig
from attnguide.engine.loader import EpochBatchSampler, SeededItems
from attnguide.engine.metrics import (
    accuracy,
    attention_inside,
    average_precision,
    cam_segmentation,
    confusion_matrix,
    iou_from_confusion,
    mean_average_precision,
    mean_iou,
)
from attnguide.engine.optim import lr_factor


def test_average_precision_matches_torchmetrics():
    from torchmetrics.functional.classification import multilabel_average_precision

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 4, generator=g)
    targets = (torch.rand(50, 4, generator=g) > 0.6).long()
    ours = average_precision(scores, targets)
    theirs = multilabel_average_precision(scores, targets, num_labels=4, average=None)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert mean_average_precision(scores, targets) == pytest.approx(float(theirs.mean()), abs=1e-6)


def test_average_precision_by_hand_and_absent_class():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 0]])
    ap = average_precision(scores, targets)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)  # positives at ranks 1 and 3
    assert math.isnan(ap[1])  # no positive: left out of the mean
    assert mean_average_precision(scores, targets) == pytest.approx(ap[0].item())


def test_accuracy_single_and_multilabel():
    logits = torch.tensor([[2.0, -1.0], [-1.0, 2.0], [3.0, -0.5]])
    assert accuracy(logits, torch.tensor([0, 1, 1]), multilabel=False) == pytest.approx(2 / 3)
    multi = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # exact match at 0.5
    assert accuracy(logits, multi, multilabel=True) == pytest.approx(2 / 3)
    # a lower decision threshold takes the third image's second class (probability 0.38)
    assert accuracy(logits, multi, multilabel=True, threshold=0.35) == pytest.approx(1.0)


def test_confusion_and_miou_ignore_255():
    target = torch.tensor([[0, 1, 1, 255]])
    pred = torch.tensor([[0, 1, 0, 2]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(0.5) and math.isnan(iou[2])
    assert mean_iou(conf) == pytest.approx(0.5)


def test_cam_segmentation_uses_fixed_background_threshold():
    maps = torch.tensor([[[[0.9, 0.1], [0.05, 0.3]], [[0.2, 0.6], [0.1, 0.0]]]])  # (1, 2, 2, 2)
    classes = torch.tensor([[3, 1]])
    present = torch.tensor([[True, True]])
    seg = cam_segmentation(maps, classes, present, threshold=0.15)
    assert seg.tolist() == [[[4, 2], [0, 4]]]  # class c -> c + 1; below 0.15 -> background
    seg = cam_segmentation(maps, classes, torch.tensor([[True, False]]), threshold=0.15)
    assert seg.tolist() == [[[4, 0], [0, 4]]]  # padding entries never win


def test_attention_inside_share():
    maps = torch.tensor([[[[1.0, 1.0], [2.0, 0.0]]]])  # (1, 1, 2, 2), mass 4 over valid pixels
    masks = torch.tensor([[[3, 0], [3, 255]]])  # class 2 -> value 3
    total, n = attention_inside(maps, torch.tensor([[2]]), torch.tensor([[True]]), masks)
    assert n == 1 and total == pytest.approx(3 / 4)


def test_shards_of_a_global_batch_are_that_batch():
    single = EpochBatchSampler(32, 8, seed=5)
    ranks = [EpochBatchSampler(32, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(3)
    for whole, a, b in zip(single, *ranks):
        assert sorted(whole) == sorted(a + b)
    assert len(single) == 4


def test_order_is_seeded_per_epoch_and_resumable():
    s = EpochBatchSampler(20, 4, seed=1)
    s.set_epoch(0)
    epoch0 = list(s)
    s.set_epoch(1)
    assert list(s) != epoch0
    s.set_epoch(0, start_batch=3)
    assert list(s) == epoch0[3:] and len(s) == 2
    s.set_epoch(0)
    assert list(s) == epoch0  # the same order again
    short = EpochBatchSampler(5, 4)
    assert short.batches_per_epoch() == 1  # the partial batch is dropped when a full one exists
    tiny = EpochBatchSampler(3, 4)
    assert tiny.batches_per_epoch() == 1  # but kept when it is all there is


def test_labelled_share_mixes_every_batch_shows_every_image_and_resumes():
    labelled = {2, 11, 17, 30}  # 4 of 40 pixel-labelled: about 0.4 per batch of 4 by chance
    s = EpochBatchSampler(40, 4, seed=3, labelled=labelled, labelled_per_batch=2)
    s.set_epoch(1)
    epoch1 = list(s)
    assert len(epoch1) == s.batches_per_epoch() == 18  # 36 unlabelled items, 2 a batch
    for batch in epoch1:
        indices = [key[1] for key in batch]
        assert len(indices) == 4 and [i in labelled for i in indices] == [False, False, True, True]
        assert len(set(indices)) == len(indices)  # never the same image twice in a batch
    shown = [key[1] for batch in epoch1 for key in batch]
    assert set(shown) == set(range(40))  # one epoch is still a pass over every image
    assert sorted(i for i in shown if i not in labelled) == sorted(set(range(40)) - labelled)  # once each
    firsts = [key for batch in epoch1 for key in batch if len(key) == 2]
    assert sorted(key[1] for key in firsts) == list(range(40))  # a first appearance is (epoch, index)
    repeats = [key for batch in epoch1 for key in batch if len(key) == 3]
    assert len({key[2] for key in repeats}) == len(repeats)  # each repeat has its own augmentation
    s.set_epoch(1, start_batch=6)
    assert list(s) == epoch1[6:]  # a resumed epoch draws the same
    s.set_epoch(2)
    assert list(s) != epoch1
    greedy = EpochBatchSampler(40, 4, labelled={5}, labelled_per_batch=3)  # k capped at the pool size
    greedy.set_epoch(0)
    assert all([key[1] == 5 for key in batch] == [False] * 3 + [True] for batch in greedy)
    everything = EpochBatchSampler(8, 4, labelled=range(8), labelled_per_batch=2)  # all labelled: plain order
    everything.set_epoch(0)
    assert len(list(everything)) == 2


def test_labelled_share_shards_give_every_process_the_same_steps():
    labelled = {0, 1, 2, 3, 4}
    ranks = [EpochBatchSampler(41, 4, seed=2, rank=r, world_size=2, labelled=labelled, labelled_per_batch=1)
             for r in range(2)]
    epochs = []
    for s in ranks:
        s.set_epoch(0)
        epochs.append(list(s))
    assert len(epochs[0]) == len(epochs[1]) == 6  # 36 unlabelled: 18 a process, 3 a batch
    shown = {key[1] for batches in epochs for batch in batches for key in batch}
    assert shown == set(range(41))


class _Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.rand(1).item() + random.random() + float(np.random.rand())


def test_seeded_items_depend_only_on_seed_epoch_index():
    items = SeededItems(_Noisy(), seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = items[(0, 3)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is untouched
    torch.rand(5)
    random.random()
    assert items[(0, 3)] == a
    assert items[(1, 3)] != a and items[(0, 4)] != a
    assert items[(0, 3, 1)] != a and items[(0, 3, 1)] == items[(0, 3, 1)]  # an extra draw of item 3


def test_lr_schedules():
    cfg = TrainConfig(data="d", epochs=2, lr=1.0, schedule="cosine")
    f = lr_factor(cfg, steps_per_epoch=5)
    assert f(0) == pytest.approx(1.0) and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(0.0)
    poly = lr_factor(TrainConfig(data="d", epochs=1, schedule="poly", poly_power=1.0), 4)
    assert poly(2) == pytest.approx(0.5)
    step = lr_factor(TrainConfig(data="d", epochs=4, schedule="step", step_epochs=2, step_gamma=0.1), 3)
    assert step(5) == 1.0 and step(6) == pytest.approx(0.1)
    warm = lr_factor(TrainConfig(data="d", epochs=1, schedule="constant", lr_warmup_steps=4), 10)
    assert warm(0) == pytest.approx(0.25) and warm(3) == 1.0 and warm(9) == 1.0
