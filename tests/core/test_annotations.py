"""Annotations other than masks: the batch object, its dense targets, the pure losses
(hand-computed), the terms inside a guided step, and bad input."""

from __future__ import annotations

import pytest
import timm
import torch

from attnguide.core.annotations import (
    Annotations,
    avoid_loss,
    energy_loss,
    outside_l1_loss,
    point_loss,
)
from attnguide.core.guidance import (
    check_annotation_kinds,
    guidance_kinds,
    guidance_parts,
    guide_kwargs,
    needs_masks,
    parse_annotation_kinds,
    resolve_guidance,
)
from attnguide.core.guide import GuidedAttention
from attnguide.core.terms import TERMS
from attnguide.errors import AttnGuideError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet.r160_in1k", num_classes=3)


def batch(n=4, size=32):
    torch.manual_seed(1)
    images = torch.randn(n, 3, size, size)
    labels = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1.0]])[:n]
    return images, labels


# --------------------------------------------------------------------- dense targets

def test_box_raster_covers_pixel_centres_and_scales():
    ann = Annotations([{"boxes": [(1, 2, 1, 5, 3)]}, None])
    inside, has = ann.box_targets(3, (4, 8))
    assert inside.shape == (2, 3, 4, 8) and has.tolist() == [[False, True, False], [False] * 3]
    want = torch.zeros(4, 8, dtype=torch.bool)
    want[1:3, 2:5] = True  # columns 2, 3, 4 and rows 1, 2: centres in [2, 5) x [1, 3)
    assert torch.equal(inside[0, 1], want)
    # at half the resolution the box is (1, 0.5, 2.5, 1.5): column 1 (centre 1.5), row 0 (0.5)
    half, _ = ann.box_targets(3, (2, 4), image_size=(4, 8))
    assert half[0, 1].nonzero().tolist() == [[0, 1]]


def test_thin_box_keeps_its_centre_pixel():
    inside, _ = Annotations([{"boxes": [(0, 3.2, 3.2, 3.4, 3.4)]}]).box_targets(1, (8, 8))
    assert inside[0, 0].nonzero().tolist() == [[3, 3]]


def test_point_targets_peak_at_the_click():
    heat, has = Annotations([{"points": [(0, 5, 2)]}]).point_targets(2, (6, 8), sigma=1.0)
    assert has.tolist() == [[True, False]]
    assert heat[0, 0].argmax().item() == 2 * 8 + 5 and heat[0, 0].max() == pytest.approx(1.0)
    assert heat[0, 1].abs().sum() == 0


def test_avoid_boxes_and_masks():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    region, has = Annotations([{"avoid": [(2, 2, 4, 4)]}, {"avoid": mask}, None]).avoid_masks((4, 4))
    assert has.tolist() == [True, True, False]
    assert region[0].sum() == 4 and region[0, 3, 3] and region[1].sum() == 1


def test_label_maps_merge_masks_and_scribbles():
    scribble = torch.full((4, 4), 255)
    scribble[0, :2] = 1
    mask = torch.zeros(4, 4, dtype=torch.long)
    maps = Annotations([{"scribble": scribble}, {"mask": mask}, {"boxes": [(0, 0, 0, 1, 1)]}]).label_maps((4, 4))
    assert maps[0].tolist()[0] == [1, 1, 255, 255] and (maps[0] == 255).sum() == 14
    assert (maps[1] == 0).all() and (maps[2] == 255).all()


# --------------------------------------------------------------------- pure losses, by hand

def test_energy_loss_by_hand():
    a = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])  # total 2.0
    inside = torch.tensor([[[False, True], [True, False]]])  # 1.0 + 0.5 inside
    assert energy_loss(a, inside).item() == pytest.approx(1 - 1.5 / 2.0)
    assert energy_loss(torch.zeros(1, 2, 2), inside).item() == pytest.approx(1.0)
    assert energy_loss(a[:0], inside[:0]).item() == 0


def test_outside_l1_point_and_avoid_losses_by_hand():
    a = torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])
    inside = torch.tensor([[[False, True], [True, False]]])
    assert outside_l1_loss(a, inside).item() == pytest.approx((0.0 + 0.5) / 4)
    heat = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert point_loss(a, heat).item() == pytest.approx(-(0 + torch.log(torch.tensor(0.5)).item()) / 2)
    assert avoid_loss(a, ~inside).item() == pytest.approx(0.5 / 2.0)


# --------------------------------------------------------------------- terms in a step

def test_energy_term_equals_the_loss_on_the_pairs_with_boxes(model):
    images, labels = batch()
    guide = GuidedAttention(model, layer="auto", alpha=0.0, omega=0.0, terms={"energy": 1.0, "box_l1": 1.0})
    ann = Annotations([{"boxes": [(0, 2, 2, 20, 18)]}, None, {"boxes": [(2, 10, 10, 30, 30)]}, None])
    out = guide(images, labels, ann)
    pairs = out.pairs.tolist()
    inside, _ = ann.box_targets(3, (32, 32))
    rows = [pairs.index([0, 0]), pairs.index([2, 2])]  # image 2's class 0 has no box: left out
    sel = out.attention[rows]
    boxes = torch.stack([inside[0, 0], inside[2, 2]])
    assert out.losses["energy"].item() == pytest.approx(energy_loss(sel, boxes).item(), rel=1e-5)
    assert out.losses["box_l1"].item() == pytest.approx(outside_l1_loss(sel, boxes).item(), rel=1e-5)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_batch_without_the_kind_skips_the_term_and_builds_no_cam(model):
    images, labels = batch()
    guide = GuidedAttention(model, layer="auto", alpha=0.0, omega=0.0, terms={"energy": 1.0, "avoid_rrr": 1.0})
    out = guide(images, labels, Annotations([{"avoid": [(0, 0, 8, 8)]}, None, None, None]))
    assert "energy" not in out.losses and out.attention is None  # no box: no CAM at all
    assert out.losses["avoid_rrr"].item() > 0


def test_point_and_avoid_terms(model):
    images, labels = batch()
    guide = GuidedAttention(model, layer="auto", terms={"point": 1.0, "avoid": 1.0})
    ann = Annotations([{"points": [(0, 5, 5)]}, {"avoid": [(0, 0, 16, 16)]}, None, None])
    out = guide(images, labels, ann)
    assert out.losses["point"].item() > 0 and 0 < out.losses["avoid"].item() < 1
    every = GuidedAttention(model, layer="auto", alpha=0.0, omega=0.0,
                            terms={TERMS.get("avoid").configured(classes="all"): 1.0})
    assert 0 < every(images, labels, ann.only({"avoid"})).losses["avoid"].item() < 1


def test_scribble_is_a_sparse_mask_for_ext(model):
    images, labels = batch()
    scribble = torch.full((32, 32), 255)
    scribble[4:8, 4:20] = 1
    scribble[28:, :] = 0
    guide = GuidedAttention(model, layer="auto", terms={"am": 0.0})
    masks = torch.full((4, 32, 32), 255)
    masks[0] = scribble
    torch.manual_seed(3)
    a = guide(images, labels, masks).losses["ext"]
    torch.manual_seed(3)
    b = guide(images, labels, Annotations([{"scribble": scribble}, None, None, None])).losses["ext"]
    assert a.item() == pytest.approx(b.item()) and a.item() > 0


# --------------------------------------------------------------------- guidance words

def test_guidance_words_join_the_new_terms():
    assert guidance_parts("am+energy") == {"self", "energy"}
    assert guidance_kinds("self+energy+point") == {"boxes", "points"}
    assert not needs_masks("self+energy") and needs_masks("ext+energy")
    kw = guide_kwargs({"guidance": "self+energy+avoid", "energy_weight": 3.0,
                       "avoid_source": "input_grad"})
    assert kw["terms"] == {"energy": 3.0, "avoid_rrr": 1.0} and kw["alpha"] == 1.0
    assert resolve_guidance("auto", True, {"mask", "boxes"}) == "ext+energy+box_swap"
    assert resolve_guidance("auto", False, {"boxes", "points"}) == "self+energy+box_swap+point"
    assert resolve_guidance("auto", True, {"mask", "points"}) == "ext+swap+point"
    assert parse_annotation_kinds("masks,boxes") == {"mask", "boxes"}
    assert parse_annotation_kinds("auto") is None


def test_annotation_kind_the_guidance_cannot_use_names_the_guidance():
    with pytest.raises(AttnGuideError, match=r"boxes feed --guidance energy or box_l1"):
        check_annotation_kinds("ext", {"boxes"})
    with pytest.raises(AttnGuideError, match="--annotations must be auto"):
        parse_annotation_kinds("polygons")


# --------------------------------------------------------------------- bad input

@pytest.mark.parametrize("item, message", [
    ({"boxes": [(0, 10, 2, 5, 8)]}, "x1 <= x0"),
    ({"boxes": [(0, 0, 0, 40, 8)]}, "outside the 32x32 image"),
    ({"points": [(1, 32, 3)]}, "point .* outside the 32x32 image"),
    ({"boxes": [(7, 0, 0, 4, 4)]}, "class 7, but the model has 3 classes"),
    ({"polygons": []}, "unknown kind 'polygons'"),
    ({"boxes": [(0, 1, 2)]}, r"rows of \(class, x0, y0, x1, y1\)"),
])
def test_bad_annotations_are_one_clear_error(model, item, message):
    images, labels = batch()
    guide = GuidedAttention(model, layer="auto", terms={"energy": 1.0, "point": 1.0})
    with pytest.raises(AttnGuideError, match=message):
        guide(images, labels, Annotations([item, None, None, None]))


def test_a_kind_no_term_uses_is_an_error_naming_the_terms(model):
    images, labels = batch()
    guide = GuidedAttention(model, layer="auto")  # am and ext only
    with pytest.raises(AttnGuideError, match=r"points feed the term\(s\) point"):
        guide(images, labels, Annotations([{"points": [(0, 3, 3)]}, None, None, None]))
    with pytest.raises(AttnGuideError, match="annotations hold 2 images but the batch has 4"):
        GuidedAttention(model, layer="auto", terms={"point": 1.0})(images, labels, Annotations([None, None]))
    # a warm-up step takes them without complaint
    assert guide(images, labels, Annotations([{"points": [(0, 3, 3)]}] + [None] * 3),
                 guidance=False).losses["am"] == 0
