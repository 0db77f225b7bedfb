"""Pseudo-label throughput: attnguide's batched multi-scale CAM pass against a per-image loop.

attnguide: the work of ``attnguide pseudo-label`` (its ``_Labeller``: the images to
tensors, ``multiscale_cams_batch`` over ``GuidedAttention.attention``: one call per
scale for all the images of one size (``--batch-size``), their mirror images in the
same batch, all of each image's classes at once, PSA/IRN fusion, background threshold,
label maps), files not written; and the same pass one image at a time (``--batch-size
1``, what VOC's images of many sizes mostly get).

The per-image loop is the structure of the WSSS repositories' CAM scripts (IRN's
``make_cam``), written here in our own words with Grad-CAM: one image, one scale, one
view (plain or mirrored) and one class at a time, each a forward pass with autograd on
and a backward to the layer; the maps are summed over scales and views and divided by
each class's max, exactly as attnguide fuses them. A second loop shares the forward
pass among the classes of a view (one backward per class), the kinder baseline.

Both run on the same model (random weights), images and classes; the fused maps are
compared (max |difference| of [0, 1] maps) before anything is timed.

    python benchmarks/speed/pseudo_labels.py                      # CPU: resnet18, 8 images
    python benchmarks/speed/pseudo_labels.py --layer layer3       # no closed-form gradient
    python benchmarks/speed/pseudo_labels.py --device cuda --images 32 --size 375x500
    python benchmarks/speed/pseudo_labels.py --write              # into benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from attnguide.models.trained import TrainedModel
from attnguide.tasks.common import to_input
from attnguide.tasks.pseudo_labels import PseudoLabelConfig, _Labeller, images_per_batch
from attnguide.wsss.pseudo import background_rule, cams_to_labels

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"
NUM_CLASSES = 20  # VOC's foreground classes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


class PerImageLoop:
    """Grad-CAM pseudo-label maps one image, one scale, one view, one class at a time."""

    def __init__(self, model: torch.nn.Module, layer: str, scales, flip: bool,
                 share_forward: bool) -> None:
        self.model, self.scales, self.flip = model, tuple(scales), flip
        self.layer = model.get_submodule(layer)
        self.share_forward = share_forward

    def _forward(self, view: torch.Tensor):
        """(1, 3, h, w) -> logits (1, C), the layer's output (1, K, h', w')."""
        seen = {}
        handle = self.layer.register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
        try:
            logits = self.model(view)
        finally:
            handle.remove()
        return logits, seen["a"]

    @staticmethod
    def _gradcam(score: torch.Tensor, act: torch.Tensor, retain: bool) -> torch.Tensor:
        (grad,) = torch.autograd.grad(score, act, retain_graph=retain)
        return F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1)).detach()  # (1, h', w')

    def cams(self, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """x (3, H, W) normalised, classes (K,) -> fused maps (K, H, W) in [0, 1]."""
        height, width = x.shape[-2:]
        total = torch.zeros(len(classes), height, width, device=x.device)
        for scale in self.scales:
            size = (max(1, round(scale * height)), max(1, round(scale * width)))
            scaled = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)
            for mirrored in ((False, True) if self.flip else (False,)):
                view = scaled.flip(-1) if mirrored else scaled
                if self.share_forward:
                    logits, act = self._forward(view)
                for k, c in enumerate(classes):
                    if not self.share_forward:
                        logits, act = self._forward(view)
                    cam = self._gradcam(logits[0, c], act,
                                        retain=self.share_forward and k < len(classes) - 1)
                    up = F.interpolate(cam[None], size=(height, width), mode="bilinear",
                                       align_corners=False)[0, 0]
                    total[k] += up.flip(-1) if mirrored else up
        peak = total.flatten(1).amax(dim=1)
        return total / (peak[:, None, None] + 1e-5)

    def __call__(self, image: np.ndarray, labels: tuple[int, ...], mean, std, bg, device):
        x = to_input(image, mean, std, device)
        classes = sorted(labels)
        cams = self.cams(x, classes).cpu()
        return cams, cams_to_labels(cams, torch.tensor(classes), bg)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--layer", default=None, help="attention layer (default: the model's last stage, "
                                                 "as a run trained with the default layer)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", default="192x256", help="HxW of every image (VOC's are about 375x500)")
    p.add_argument("--scales", default="1.0,0.5,1.5,2.0")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds; the median counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true",
                   help="put the table in benchmarks/RESULTS.md, replacing the run of the same settings "
                        "(moved to benchmarks/history/speed.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    height, width = parse_size(args.size)
    scales = tuple(float(s) for s in args.scales.split(","))
    flip = not args.no_flip

    model = timm.create_model(args.model, num_classes=NUM_CLASSES).to(device).eval()
    trained = TrainedModel(model=model, class_names=[f"class{i}" for i in range(NUM_CLASSES)],
                           multilabel=True, layer=args.layer, image_size=min(height, width), config={})
    cfg = PseudoLabelConfig(run="-", data="-", scales=scales, flip=flip, batch_size=16).validate()
    labeller = _Labeller(cfg, trained, device)
    rule = background_rule(cfg.bg)

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(args.images)]
    labels = [tuple(rng.choice(NUM_CLASSES, int(rng.integers(1, 4)), replace=False).tolist())
              for _ in range(args.images)]
    pairs = sum(len(c) for c in labels)

    def ours(i):
        _, cams, _, label = labeller([(images[i], labels[i], ())])[0]
        return cams, label

    def ours_batched():  # every image in one call: batches of cfg.batch_size of one size
        return labeller([(image, label, ()) for image, label in zip(images, labels)])

    ours(0)  # the first call chooses the layer
    layer = labeller.guide.layer_name
    loops = {share: PerImageLoop(model, layer, scales, flip, share_forward=share) for share in (False, True)}

    def loop(share):
        return lambda i: loops[share](images[i], labels[i], trained.mean, trained.std, rule, device)

    fns = {"attnguide": ours, "loop": loop(False), "loop-shared": loop(True)}
    batched_diff = max(float((a[1] - ours(i)[0]).abs().max()) for i, a in enumerate(ours_batched()))
    if batched_diff > 1e-3:
        raise SystemExit(f"the batched pass's maps differ from one image at a time by {batched_diff:.1e}")
    diff, same_labels = {}, {}
    for name in ("loop", "loop-shared"):
        errs, agree = [], []
        for i in range(args.images):
            (a, la), (b, lb) = ours(i), fns[name](i)
            errs.append(float((a - b).abs().max()))
            agree.append(float((la == lb).mean()))
        diff[name], same_labels[name] = max(errs), min(agree)
        if diff[name] > 1e-3:  # timing different maps would compare nothing
            raise SystemExit(f"the per-image loop's maps differ from attnguide's by {diff[name]:.1e}; "
                             "not timing them")
    times = {name: [] for name in ("attnguide-batched", *fns)}
    for _ in range(args.rounds):  # alternate, so drifts in machine load hit all four
        for name in times:
            sync(device)
            t0 = time.perf_counter()
            if name == "attnguide-batched":
                ours_batched()
            else:
                for i in range(args.images):
                    fns[name](i)
            sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    what = {
        "attnguide-batched": f"attnguide (`pseudo-label`'s pass: one call per scale for up to "
                             f"{images_per_batch((height, width), cfg.batch_size)} images of this size "
                             "+ their mirrors, all classes)",
        "attnguide": "attnguide, one image at a time (`--batch-size 1`; VOC's images of many sizes)",
        "loop": "per-image loop: a forward + backward per (scale, view, class)",
        "loop-shared": "per-image loop, forward shared by a view's classes (a backward per class)",
    }
    views = len(scales) * (1 + flip)
    batch = min(images_per_batch((height, width), cfg.batch_size), args.images)
    passes = {"attnguide-batched": f"{len(scales) / batch:.2f} (batch {batch * (1 + flip)})",
              "attnguide": f"{len(scales)} (batch {1 + flip})", "loop": f"{views * pairs / args.images:.1f}",
              "loop-shared": f"{views}"}
    lines = [
        f"Pseudo-label CAMs (Grad-CAM, scales {','.join(map(str, scales))}{' + flip' if flip else ''}, "
        f"IRN/PSA fusion, background threshold 0.15): {args.model} (random weights), layer {layer}, "
        f"{args.images} synthetic images of {height}x{width}, 1-3 classes each ({pairs} (image, class) "
        f"pairs), files not written; median of {args.rounds} alternated rounds. Max |difference| of "
        f"the fused [0, 1] maps to attnguide's one image at a time: {batched_diff:.1e} (batched), "
        f"{diff['loop']:.1e} (loop), {diff['loop-shared']:.1e} (shared forward); label maps agree on at least {100 * min(same_labels.values()):.2f}% of pixels.",
        "",
        "| implementation | forward calls per image | s per image | images/s | time against attnguide's batched pass |",
        "|---|---|---|---|---|",
    ]
    for name, t in med.items():
        lines.append(f"| {what[name]} | {passes[name]} | {t / args.images:.3f} | {args.images / t:.2f} "
                     f"| **{t / med['attnguide-batched']:.2f}x** |")
    print("\n".join(lines), flush=True)
    if args.write:
        cmd = " ".join(["python benchmarks/speed/pseudo_labels.py", *(sys.argv[1:] if argv is None else argv)])
        block = [f"### Pseudo-label CAMs vs a per-image loop — {dt.date.today()} — {machine(device)}",
                 "", f"`{cmd}`", ""] + lines
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/results_page.py
        from results_page import record

        kind = "cuda" if device.type == "cuda" else "cpu"
        record(f"speed/pseudo_labels.py {kind} {args.model} layer {layer} {height}x{width}",
               "\n".join(block), section=f"Pseudo-label throughput on a {'GPU' if kind == 'cuda' else 'CPU'}",
               history="speed.md", results=RESULTS)


if __name__ == "__main__":
    main()
