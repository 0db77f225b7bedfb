"""The supervision-term registry: built-in names, L_e over every class, user callables,
and what each step computes (nothing a term does not read)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from core_models import TinyNet

from attnguide import ActivationCapture, AttnGuideError, GuidedAttention
from attnguide.core.guidance import guide_kwargs
from attnguide.core.losses import all_class_ext_loss
from attnguide.core.terms import TERMS, Term
from attnguide.engine.config import TrainConfig, guidance_parts


def _batch(n=4, classes=3, size=16):
    torch.manual_seed(0)
    images = torch.randn(n, 3, size, size)
    labels = torch.eye(classes)[torch.arange(n) % classes]
    masks = torch.zeros(n, size, size, dtype=torch.long)
    masks[:, 4:12, 4:12] = (labels.argmax(1) + 1)[:, None, None]
    return images, labels, masks


def test_builtin_names_and_unknown_name():
    assert {"am", "ext", "ext_all", "rrr", "area"} <= set(TERMS.names())
    with pytest.raises(AttnGuideError, match="ext_all"):
        GuidedAttention(TinyNet(), layer="features", terms={"ext_al": 1.0})
    with pytest.raises(AttnGuideError, match=">= 0"):
        GuidedAttention(TinyNet(), layer="features", terms={"ext_all": -1.0})


def test_all_class_ext_loss_by_hand():
    # one image, 2 classes, 2x2 pixels: class 0 covers pixel (0, 0); (1, 1) is ignored
    masks = torch.tensor([[[1, 0], [0, 255]]])
    attention = torch.zeros(1, 2, 2, 2)
    attention[0, 0] = torch.tensor([[1.0, 0.5], [0.0, 9.0]])  # 0.5 outside its mask
    attention[0, 1] = torch.tensor([[0.0, 0.0], [1.0, 9.0]])  # absent class attends at (1, 0)
    # per pixel summed over classes: (0,0) 0, (0,1) 0.25, (1,0) 1; 3 valid pixels
    assert all_class_ext_loss(attention, masks).item() == pytest.approx(1.25 / 3)
    assert all_class_ext_loss(attention, torch.full_like(masks, 255)).item() == 0


def test_ext_all_penalises_absent_classes_and_trains():
    images, labels, masks = _batch()
    model = TinyNet()
    out = GuidedAttention(model, layer="features", alpha=0, omega=0,
                          terms={"ext_all": 1.0})(images, labels, masks)
    assert out.losses["ext_all"] > 0 and out.losses["ext"] == 0
    assert torch.allclose(out.loss, out.losses["cls"] + out.losses["ext_all"])
    out.loss.backward()
    assert model.fc.weight.grad.abs().sum() > 0
    # without masks the term is skipped, not an error
    out = GuidedAttention(model, layer="features", terms={"ext_all": 1.0})(images, labels)
    assert out.losses["ext_all"] == 0 if "ext_all" in out.losses else True


def test_user_callable_term_sees_the_step():
    images, labels, masks = _batch()
    seen = {}

    def left_half(step):
        seen["attention"] = step.attention.shape
        seen["erased"] = step.erased_logits().shape
        return step.attention[..., step.attention.shape[-1] // 2:].mean()

    guide = GuidedAttention(TinyNet(), layer="features", alpha=0, omega=0, terms={left_half: 0.5})
    out = guide(images, labels, masks)
    assert seen == {"attention": (4, 16, 16), "erased": (4, 3)}
    assert torch.allclose(out.loss, out.losses["cls"] + 0.5 * out.losses["left_half"])


def test_term_that_reads_no_attention_captures_nothing(monkeypatch):
    images, labels, masks = _batch()
    calls = []
    monkeypatch.setattr(ActivationCapture, "__enter__", lambda self: calls.append(1) or self)
    logit_norm = Term(lambda step: step.logits.pow(2).mean(), attention=False)
    out = GuidedAttention(TinyNet(), layer="features", alpha=0, omega=0,
                          terms={logit_norm: 0.1})(images, labels)
    assert calls == [] and out.attention is None
    assert out.loss > out.losses["cls"]


def test_guidance_parts_and_guide_kwargs():
    assert guidance_parts("none") == frozenset()
    assert guidance_parts("ext+rrr") == {"ext", "rrr"}
    with pytest.raises(AttnGuideError, match="'\\+'-joined"):
        guidance_parts("ext+xyz")
    rrr = guide_kwargs(TrainConfig(data="x", guidance="rrr").to_dict())
    assert rrr["alpha"] == 0 and rrr["omega"] == 0 and rrr["rrr_weight"] == 1.0
    both = guide_kwargs(TrainConfig(data="x", guidance="ext+rrr", ext_classes="all",
                                    omega=5.0).to_dict())
    assert both["alpha"] == 1.0 and both["omega"] == 0 and both["terms"] == {"ext_all": 5.0}
    assert "rrr_weight" not in guide_kwargs(TrainConfig(data="x", guidance="ext").to_dict())
    with pytest.raises(AttnGuideError, match="rrr-weight 0"):
        TrainConfig(data="x", guidance="rrr", rrr_weight=0).validate()


class _Recording(TinyNet):
    """TinyNet that keeps a copy of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return super().forward(x)


def _two_labelled():
    images, labels, masks = _batch(n=3)
    masks[2] = 255  # the third image has no mask
    masks[1, :, :] = 0
    masks[1, 0:4, 0:4] = 2  # image 1's object sits in the top-left corner
    return images, labels, masks


def test_bg_shows_only_the_objects():
    images, labels, masks = _two_labelled()
    model = _Recording()
    out = GuidedAttention(model, layer="features", alpha=0, omega=0, fill=0.5, terms={"bg": 1.0})(
        images, labels, masks)
    objects = model.seen[1]  # the clean batch, then the labelled images with the background erased
    assert objects.shape[0] == 2
    keep = (masks[:2] != 0).unsqueeze(1)
    assert torch.equal(objects, torch.where(keep, images[:2], torch.full_like(images[:2], 0.5)))
    assert out.losses["bg"] > 0 and torch.allclose(out.loss, out.losses["cls"] + out.losses["bg"])


def test_background_fill_paints_objects_with_the_pictures_own_background():
    from attnguide.core.step import background_fill

    images = torch.randn(2, 3, 8, 8)
    objects = torch.zeros(2, 1, 8, 8)
    objects[0, :, 0:2, 0:3] = 1  # a corner object: the picture shifted by (4, 4) shows background there
    objects[1] = 1
    objects[1, :, 0, 0:2] = 0  # everything is object but two pixels
    filled = background_fill(images, objects)
    shifted = images[0].roll((4, 4), (-2, -1))
    assert torch.equal(filled[0], torch.where(objects[0].bool(), shifted, images[0]))
    assert torch.equal(filled[1, :, 0, 0:2], images[1, :, 0, 0:2])  # background kept
    assert torch.equal(filled[1, :, 4, 4], images[1, :, 0, 0])  # the (4, 4) shift reaches a background pixel
    assert torch.equal(filled[1, :, 4, 1], images[1, :, 0, 1])  # then the (4, 0) shift
    assert torch.allclose(filled[1, :, 2, 6], images[1, :, 0, 0:2].mean(1))  # no shift does: the mean


def test_bg_null_shows_the_backgrounds_alone_and_wants_no_class():
    import math

    from attnguide.core.step import background_fill

    images, labels, masks = _two_labelled()  # single-label: softmax
    model = _Recording()
    guide = GuidedAttention(model, layer="features", alpha=0, omega=0, terms={"bg_null": 1.0})
    out = guide(images, labels.argmax(1), masks)
    background = model.seen[1]  # the clean batch, then the two labelled images' backgrounds
    objects = (masks[:2] != 0).unsqueeze(1).float()
    assert torch.equal(background, background_fill(images[:2], objects))
    logits = guide.extra_logits(background)  # BatchNorm frozen, as the step runs it
    want = -torch.log_softmax(logits, 1).mean() - math.log(3)  # cross-entropy to uniform, less log C
    assert torch.allclose(out.losses["bg_null"], want, atol=1e-5) and out.losses["bg_null"] > 0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    multi = guide(images, labels, masks)  # multi-hot labels: every sigmoid score to 0
    logits = guide.extra_logits(model.seen[-1])  # (the clean forward moved BatchNorm's statistics)
    assert torch.allclose(multi.losses["bg_null"],
                          F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits)), atol=1e-5)
    kwargs = guide_kwargs(TrainConfig(data="x", guidance="ext+swap+bg_null", bg_null_weight=2).to_dict())
    assert kwargs["terms"] == {"swap": 1.0, "bg_null": 2.0}
    with pytest.raises(AttnGuideError, match="--bg-null-weight 0 adds nothing"):
        TrainConfig(data="x", guidance="ext+bg_null", bg_null_weight=0).validate()


def test_swap_pastes_objects_on_another_background_and_paints_over_its_objects():
    images, labels, masks = _two_labelled()  # images 0 and 1 have masks, image 2 none
    model = _Recording()
    guide = GuidedAttention(model, layer="features", alpha=0, omega=0, terms={"swap": 1.0})
    out = guide(images, labels, masks)
    swapped = model.seen[1]  # the clean batch, then the two labelled images swapped
    obj0, obj1 = masks[0] != 0, masks[1] != 0
    # image 0 on image 1's background; where image 1's object was, image 1's own background
    # from half the picture away (no silhouette of image 1's object, no pixel of image 0)
    half = (8, 8)
    assert torch.equal(swapped[0], torch.where(obj0, images[0], torch.where(obj1, images[1].roll(half, (-2, -1)),
                                                                              images[1])))
    assert torch.equal(swapped[1], torch.where(obj1, images[1], torch.where(obj0, images[0].roll(half, (-2, -1)),
                                                                              images[0])))
    assert out.losses["swap"] > 0 and torch.allclose(out.loss, out.losses["cls"] + out.losses["swap"])
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_box_swap_pastes_everything_inside_the_boxes():
    """box_swap: an image's boxes (object and the background they hold) on another boxed
    image's background; an image without boxes takes no part."""
    from attnguide.core.annotations import Annotations

    images, labels, _ = _batch(n=3)
    ann = Annotations([{"boxes": [(0, 2, 3, 8, 9)]}, {"boxes": [(1, 10, 0, 16, 5), (1, 0, 12, 3, 16)]}, None])
    model = _Recording()
    guide = GuidedAttention(model, layer="features", alpha=0, omega=0, terms={"box_swap": 1.0})
    out = guide(images, labels, ann)
    swapped = model.seen[1]  # the clean batch, then the two boxed images swapped
    inside, _ = ann.box_targets(3, (16, 16))
    box0, box1 = inside[0].any(0), inside[1].any(0)
    assert box0[3:9, 2:8].all() and box0.sum() == 36 and box1.sum() == 30 + 12
    assert swapped.shape[0] == 2
    from attnguide.core.step import background_fill

    cut = torch.stack([box0, box1]).unsqueeze(1).float()
    background = background_fill(images[[1, 0]], cut[[1, 0]])  # each boxed image's partner, boxes painted over
    assert torch.equal(swapped, torch.where(cut.bool(), images[:2], background))
    assert out.losses["box_swap"] > 0
    assert torch.allclose(out.loss, out.losses["cls"] + out.losses["box_swap"])
    kwargs = guide_kwargs(TrainConfig(data="x", guidance="self+energy+box_swap", swap_weight=2).to_dict())
    assert kwargs["terms"] == {"energy": 1.0, "box_swap": 2.0}
    with pytest.raises(AttnGuideError, match="--swap-weight 0 adds nothing"):
        TrainConfig(data="x", guidance="self+box_swap", swap_weight=0).validate()


def test_box_swap_attention_cuts_only_the_attended_part_of_each_box():
    from attnguide.core.annotations import Annotations
    from attnguide.core.step import background_fill

    images, labels, _ = _batch(n=2)
    ann = Annotations([{"boxes": [(0, 2, 3, 10, 11)]}, {"boxes": [(1, 6, 0, 16, 8)]}])
    model = _Recording()
    guide = GuidedAttention(model, layer="features", alpha=0, omega=0, terms={"box_swap_attention": 1.0})
    out = guide(images, labels, ann)
    inside, _ = ann.box_targets(3, (16, 16))
    soft = guide.mask(out.attention).detach()  # (2, 16, 16): one positive class per image
    cut = (inside.any(1).float() * soft).unsqueeze(1)  # attention inside the box only
    partner = torch.tensor([1, 0])  # two images: each takes the other
    background = background_fill(images[partner], cut[partner])
    assert torch.allclose(model.seen[1], cut * images + (1 - cut) * background, atol=1e-6)
    assert 0 < float(cut.sum()) < float(inside.any(1).sum())  # less than the whole boxes
    assert out.losses["box_swap_attention"] > 0
    kwargs = guide_kwargs(TrainConfig(data="x", guidance="self+energy+box_swap",
                                      swap_source="attention").to_dict())
    assert kwargs["terms"] == {"energy": 1.0, "box_swap_attention": 1.0}


def test_swap_needs_two_labelled_images_in_the_batch():
    images, labels, masks = _two_labelled()
    model = _Recording()
    out = GuidedAttention(model, layer="features", alpha=0, omega=0, terms={"swap": 1.0})(
        images[1:], labels[1:], masks[1:])  # one labelled image: no partner
    assert len(model.seen) == 1 and out.losses["swap"] == 0


def test_swap_never_draws_the_image_itself():
    images, labels, masks = _batch(n=5, size=16)
    model = _Recording()
    guide = GuidedAttention(model, layer="features", alpha=0, omega=0, terms={"swap": 1.0})
    for _ in range(5):
        model.seen.clear()
        guide(images, labels, masks)
        assert not (model.seen[1] == images).flatten(1).all(1).any()


def test_swap_attention_cuts_unlabelled_images_by_their_attention():
    from attnguide.core.step import background_fill

    images, labels, masks = _two_labelled()  # images 0 and 1 labelled, image 2 not
    model = _Recording()
    guide = GuidedAttention(model, layer="features", alpha=0, omega=0, terms={"swap_attention": 1.0})
    torch.manual_seed(3)
    out = guide(images, labels, masks)
    torch.manual_seed(3)
    partner = (torch.arange(3) + torch.randint(1, 3, (3,))) % 3  # the draw the step makes
    objects = torch.stack([(masks[0] != 0).float(), (masks[1] != 0).float(),
                           guide.mask(out.attention[2:3])[0].detach()]).unsqueeze(1)
    background = background_fill(images[partner], objects[partner])
    want = objects * images + (1 - objects) * background
    assert torch.allclose(model.seen[1], want, atol=1e-6)
    assert out.losses["swap_attention"] > 0
    one = GuidedAttention(TinyNet(), layer="features", alpha=0, omega=0, terms={"swap_attention": 1.0})
    assert one(images[2:], labels[2:], None).losses["swap_attention"] == 0  # no partner


def test_swap_guidance_from_the_config():
    kwargs = guide_kwargs(TrainConfig(data="x", guidance="ext+swap", swap_weight=2.0,
                                      swap_source="masks").to_dict())
    assert kwargs["terms"] == {"swap": 2.0} and kwargs["omega"] == 10.0
    auto = guide_kwargs(TrainConfig(data="x", guidance="ext+swap").to_dict())  # swap_source auto
    assert auto["terms"] == {"swap": 1.0}  # auto swaps the pixel-labelled images only
    assert guide_kwargs(TrainConfig(data="x", guidance="swap").to_dict())["terms"] == {"swap": 1.0}
    assert guide_kwargs(TrainConfig(data="x", guidance="swap").to_dict())["alpha"] == 0
    kwargs = guide_kwargs(TrainConfig(data="x", guidance="ext+swap", swap_source="attention").to_dict())
    assert kwargs["terms"] == {"swap_attention": 1.0}
    with pytest.raises(AttnGuideError, match="swap-source"):
        TrainConfig(data="x", swap_source="boxes").validate()
    with pytest.raises(AttnGuideError, match="swap-weight 0"):
        TrainConfig(data="x", guidance="swap", swap_weight=0).validate()


def test_term_settings_live_on_the_terms():
    """am_score and fill configure the terms given by name; a configured term replaces its
    namesake; both spellings of the weights end in ``guide.terms``."""
    guide = GuidedAttention(TinyNet(), layer="features", am_score="logit", fill=0.5,
                            terms={"bg": 2.0})
    assert guide.terms["am"][0].settings == {"fill": 0.5, "score": "logit"}
    assert guide.terms["bg"][0].settings == {"fill": 0.5} and guide.terms["bg"][1] == 2.0
    assert (guide.am_score, guide.fill, guide.alpha) == ("logit", 0.5, 1.0)
    assert TERMS.get("am").settings == {"fill": 0.0, "score": "auto"}  # the registry is untouched
    with pytest.raises(AttnGuideError, match="no setting 'scor'"):
        TERMS.get("am").configured(scor="logit")

    images, labels, masks = _batch()
    by_keyword = GuidedAttention(TinyNet(), layer="features", am_score="logit", fill=0.5)
    by_term = GuidedAttention(TinyNet(), layer="features",
                              terms={TERMS.get("am").configured(score="logit", fill=0.5): 1.0})
    by_term.load_state_dict(by_keyword.state_dict())
    assert set(by_term.terms) == set(by_keyword.terms) and by_term.fill == 0.5
    a, b = by_keyword(images, labels, masks), by_term(images, labels, masks)
    assert torch.allclose(a.loss, b.loss) and torch.allclose(a.losses["am"], b.losses["am"])
    assert not torch.allclose(a.losses["am"], GuidedAttention(
        by_keyword.model, layer="features")(images, labels, masks).losses["am"])


def test_terms_do_not_import_the_wrapper():
    import ast
    import inspect

    import attnguide.core.step as step_module
    import attnguide.core.terms as terms_module

    for module in (terms_module, step_module):
        tree = ast.parse(inspect.getsource(module))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "attnguide.core.guide" not in imported, module.__name__
