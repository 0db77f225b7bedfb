"""Hook hygiene: nothing stays on the user's model, flags are restored, memory is flat."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from core_models import TinyNet

from attnguide import AttnGuideError, GuidedAttention


def hooks_left(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def data(n=4):
    return torch.randn(n, 3, 16, 16), (torch.rand(n, 3) > 0.5).float()


def test_no_hook_after_normal_use():
    model = TinyNet()
    with GuidedAttention(model, layer="features") as guide:
        images, labels = data()
        guide(images, labels).loss.backward()
        guide.attention(images)
        assert hooks_left(model) == 0
    guide.close()
    guide.close()  # twice is fine
    assert hooks_left(model) == 0


def test_no_hook_after_exception_inside_step():
    model = TinyNet()
    guide = GuidedAttention(model, layer="features")
    images, _ = data()
    with pytest.raises(AttnGuideError):  # 5 label columns for 3 logits: raised after the forward
        guide(images, torch.ones(4, 5))
    assert hooks_left(model) == 0

    class Boom(RuntimeError):
        pass

    def explode(module, inputs, output):
        raise Boom

    handle = model.fc.register_forward_hook(explode)
    with pytest.raises(Boom):
        guide(images, torch.ones(4, 3))
    handle.remove()
    assert hooks_left(model) == 0


def test_no_hook_and_no_reference_after_gc():
    model = TinyNet()
    guide = GuidedAttention(model, layer="features")
    guide(*data())
    ref = weakref.ref(guide)
    del guide
    gc.collect()
    assert ref() is None
    assert hooks_left(model) == 0


def test_two_wrappers_on_one_model_do_not_interfere():
    model = TinyNet().eval()
    images, _ = data()
    a = GuidedAttention(model, layer="features")
    b = GuidedAttention(model, layer="stem", cam="layercam")
    alone_a = a.attention(images)
    alone_b = b.attention(images)
    assert torch.equal(a.attention(images), alone_a)
    assert torch.equal(b.attention(images), alone_b)
    assert alone_a.shape[-1] == 8 and alone_b.shape[-1] == 16


@pytest.mark.parametrize("train", [True, False])
def test_train_eval_flags_restored(train):
    model = TinyNet().train(train)
    model.stem[1].train(not train)  # a mixed state must survive too
    before = [m.training for m in model.modules()]
    guide = GuidedAttention(model, layer="features", freeze_bn=True)
    guide(*data())
    guide.attention(data()[0])
    assert [m.training for m in model.modules()] == before


def test_frozen_bn_keeps_running_stats_of_erased_pass_out():
    images, labels = data()
    model = TinyNet().train()
    ref = TinyNet().train()
    ref.load_state_dict(model.state_dict())
    GuidedAttention(model, layer="features", freeze_bn=True)(images, labels)
    ref(images)  # one clean forward: the only statistics update expected
    bn, bn_ref = model.stem[1], ref.stem[1]
    assert torch.allclose(bn.running_mean, bn_ref.running_mean)
    assert bn.num_batches_tracked == bn_ref.num_batches_tracked == 1


@pytest.mark.parametrize("freeze_bn, updates", [("all", 1), (True, 1), ("erased", 2), ("none", 3),
                                                (False, 3), ("auto", 3)])
def test_freeze_bn_chooses_which_extra_forwards_update_batchnorm(freeze_bn, updates):
    """Forwards: clean, GAIN's erased images, the swapped pictures. ``erased`` freezes only
    the erased images; the swapped pictures update the statistics as clean ones do."""
    images, labels = data()
    masks = torch.zeros(4, 16, 16, dtype=torch.long)
    masks[:, 4:12, 4:12] = 1
    model = TinyNet().train()
    guide = GuidedAttention(model, layer="features", freeze_bn=freeze_bn, terms={"swap": 1.0})
    guide(images, labels, masks)
    assert int(model.stem[1].num_batches_tracked) == updates
    assert guide.freeze_bn == {True: "all", False: "none", "auto": "none"}.get(freeze_bn, freeze_bn)
    with pytest.raises(AttnGuideError, match="freeze_bn must be True, False or one of auto, all, erased, none"):
        GuidedAttention(model, layer="features", freeze_bn="swap")


def test_freeze_bn_auto_is_none_with_a_background_swap_and_all_without():
    """The default: BatchNorm in training mode in every forward when a swap term is on (the
    composed pictures are in distribution; measured to move reliance), GAIN's frozen BatchNorm
    otherwise; a swap term at weight 0 does not count."""
    model = TinyNet()
    assert GuidedAttention(model, layer="features").freeze_bn == "all"
    assert GuidedAttention(model, layer="features", omega=10.0).freeze_bn == "all"
    for term in ("swap", "swap_attention", "box_swap", "box_swap_attention"):
        assert GuidedAttention(model, layer="features", terms={term: 1.0}).freeze_bn == "none", term
    assert GuidedAttention(model, layer="features", terms={"swap": 0.0}).freeze_bn == "all"
    assert GuidedAttention(model, layer="features", freeze_bn="all", terms={"swap": 1.0}).freeze_bn == "all"


def live_tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


def test_memory_flat_over_many_steps():
    model = TinyNet()
    guide = GuidedAttention(model, layer="features")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = data()

    def step():
        opt.zero_grad()
        out = guide(images, labels)
        out.loss.backward()
        opt.step()
        guide.attention(images)

    for _ in range(5):
        step()
    start = live_tensors()
    for _ in range(200):
        step()
    assert live_tensors() <= start
