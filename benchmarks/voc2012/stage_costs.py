"""What the VOC 2012 recipe costs: each stage timed at VOC's sizes on synthetic images,
projected to hours per row of the table before anyone starts the real run.

Stages (settings read from configs/*.yaml and run.py's rows, so the projection follows
the recipe):

- classifier steps of timm VGG16 (random weights) at the recipe's image size, attention
  at its layer: a plain step (warm-up epochs and the unguided row), a GAIN step and a
  GAIN_ext step (an image with a pixel mask), at batch 1 (paper) and at the batched
  row's batch size;
- the per-epoch CAM evaluation of the classifier: ``attention()`` of val images, batched;
- pseudo labels of one VOC-sized image (375x500 by default): the pass of
  ``attnguide pseudo-label`` at its scales + flip, and PSA's dense CRF on it;
- DeepLab-LargeFOV training iterations (crops, batch 15): the pseudo-label route
  (cross-entropy) and the SEC route (seeding, expansion and constrain losses, its 15
  CRFs in this process);
- the segmenter's val evaluation: one VOC-sized image forward and DeepLab's CRF.

Projection: steps x seconds per step, images x seconds per image, CRFs divided by
``--workers`` processes (as the recipe runs them), summed per row. What is not timed
(data loading, checkpoint writes, Python start-up) is not in it.

    python benchmarks/voc2012/stage_costs.py --device cuda          # the recipe's sizes
    python benchmarks/voc2012/stage_costs.py --quick                # tiny sizes: a test of the script
    python benchmarks/voc2012/stage_costs.py --device cuda --write  # into benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from attnguide import GuidedAttention
from attnguide.models.segmenters import DeepLabLargeFOV
from attnguide.models.trained import TrainedModel
from attnguide.tasks.pseudo_labels import PseudoLabelConfig, _Labeller
from attnguide.wsss.crf import CRFParams, dense_crf
from attnguide.wsss.sec import constrain_loss, expansion_loss, seeding_loss

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "RESULTS.md"
CLASSES = 20  # VOC foreground classes
TRAIN_AUG, VAL = 10_582, 1_449  # images


def _recipe():
    spec = importlib.util.spec_from_file_location("voc2012_run", HERE / "run.py")
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # its dataclasses look their module up
    spec.loader.exec_module(run)
    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, steps: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def multi_hot(batch: int, k: int, gen: torch.Generator) -> torch.Tensor:
    labels = torch.zeros(batch, CLASSES)
    for i in range(batch):
        labels[i, torch.randperm(CLASSES, generator=gen)[:k]] = 1
    return labels


def box_masks(labels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """(B, size, size) VOC-convention masks: a box of each positive class."""
    masks = torch.zeros(labels.shape[0], size, size, dtype=torch.long)
    for b, c in labels.nonzero().tolist():
        h, w = torch.randint(size // 4, size // 2 + 1, (2,), generator=gen).tolist()
        y, x = int(torch.randint(0, size - h + 1, (1,), generator=gen)), int(torch.randint(0, size - w + 1, (1,), generator=gen))
        masks[b, y:y + h, x:x + w] = c + 1
    return masks


def classifier_costs(args, train_cfg, device) -> dict[str, float]:
    """Seconds per optimiser step: plain, GAIN, GAIN_ext at batch 1 and batched; per val image of
    the CAM evaluation."""
    gen = torch.Generator().manual_seed(0)
    size = args.image_size or int(train_cfg["image_size"])
    model = timm.create_model(args.model, num_classes=CLASSES).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    guide = GuidedAttention(model, layer=args.layer or train_cfg["layer"])
    out = {}
    for batch in (1, args.batched):
        images = torch.randn(batch, 3, size, size, generator=gen).to(device)
        labels = [multi_hot(batch, k, gen).to(device) for k in args.k]
        masks = [box_masks(lab.cpu(), size, gen).to(device) for lab in labels]
        turn = {"i": 0}

        def step(kind, images=images, labels=labels, masks=masks, turn=turn):
            i = turn["i"] = (turn["i"] + 1) % len(labels)  # cycle through the class counts
            opt.zero_grad(set_to_none=True)
            if kind == "plain":
                loss = F.binary_cross_entropy_with_logits(model(images), labels[i])
            else:
                loss = guide(images, labels[i], masks[i] if kind == "ext" else None).loss
            loss.backward()
            opt.step()

        for kind in ("plain", "gain", "ext"):
            out[f"{kind} b{batch}"] = timed(lambda kind=kind: step(kind), device, args.steps * len(args.k))
            print(f"  {kind} step, batch {batch}: {out[f'{kind} b{batch}']:.3f} s", flush=True)
    model.eval()
    images = torch.randn(args.eval_batch, 3, size, size, generator=gen).to(device)
    classes = torch.randint(0, CLASSES, (args.eval_batch, 1), generator=gen).to(device)
    out["cam eval"] = timed(lambda: guide.attention(images, classes), device, args.steps) / args.eval_batch
    print(f"  CAM evaluation: {out['cam eval']:.3f} s per image", flush=True)
    return out


def pseudo_costs(args, train_cfg, pseudo_cfg, device) -> dict[str, float]:
    """Seconds per image: the pseudo-label pass and PSA's CRF."""
    height, width = args.voc_size
    model = timm.create_model(args.model, num_classes=CLASSES).to(device).eval()
    trained = TrainedModel(model=model, class_names=[f"c{i}" for i in range(CLASSES)], multilabel=True,
                           layer=args.layer or train_cfg["layer"], image_size=height, config={})
    cfg = PseudoLabelConfig(run="-", data="-", scales=pseudo_cfg["scales"], flip=pseudo_cfg["flip"]).validate()
    labeller = _Labeller(cfg, trained, device)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    turn = {"i": 0}

    def one():
        turn["i"] += 1
        k = args.k[turn["i"] % len(args.k)]
        return labeller([(image, tuple(range(k)), ())])[0]  # one image: VOC's sizes vary

    out = {"pseudo": timed(one, device, args.steps * len(args.k))}
    _, _, scores, _ = one()
    probs = scores.numpy().astype(np.float32)
    probs = probs / probs.sum(0, keepdims=True).clip(min=1e-8)
    out["pseudo crf"] = timed(lambda: dense_crf(image, probs, CRFParams.psa()), device, args.steps)
    print(f"  pseudo labels: {out['pseudo']:.3f} s per image, PSA CRF {out['pseudo crf']:.3f} s", flush=True)
    return out


def segmenter_costs(args, seg_cfg, device) -> dict[str, float]:
    """Seconds per LargeFOV iteration (pseudo-label and SEC routes) and per val image."""
    gen = torch.Generator().manual_seed(1)
    crop, batch = args.crop or int(seg_cfg["crop_size"]), args.seg_batch or int(seg_cfg["batch_size"])
    model = DeepLabLargeFOV(num_classes=CLASSES + 1).to(device).train()
    opt = torch.optim.SGD(model.param_groups(1e-3), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    images = torch.randn(batch, 3, crop, crop, generator=gen).to(device)
    target = torch.randint(0, CLASSES + 1, (batch, crop, crop), generator=gen).to(device)
    rgb = np.random.default_rng(1).integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8)
    labels = multi_hot(batch, 1, gen).to(device)

    def pseudo_iter():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), target, ignore_index=255).backward()
        opt.step()

    def sec_iter():
        opt.zero_grad(set_to_none=True)
        logits = model.classifier(model.forward_features(images))  # (B, 21, h, w), stride 8
        h, w = logits.shape[-2:]
        cues = F.interpolate(target[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        loss = (seeding_loss(logits, cues) + expansion_loss(logits, labels)
                + constrain_loss(logits, rgb))
        loss.backward()
        opt.step()

    out = {"seg pseudo": timed(pseudo_iter, device, args.steps),
           "seg sec": timed(sec_iter, device, args.steps)}
    height, width = args.voc_size
    model.eval()
    image = torch.randn(1, 3, height, width, generator=gen).to(device)
    with torch.no_grad():
        out["seg eval"] = timed(lambda: model(image), device, args.steps)
        probs = torch.softmax(model(image)[0], 0).float().cpu().numpy()
    rgb_full = np.random.default_rng(2).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out["seg eval crf"] = timed(lambda: dense_crf(rgb_full, probs, CRFParams.deeplab()), device, args.steps)
    print(f"  LargeFOV: {out['seg pseudo']:.3f} s per pseudo-route iteration, {out['seg sec']:.3f} s per "
          f"SEC iteration, {out['seg eval']:.3f} s + CRF {out['seg eval crf']:.3f} s per val image", flush=True)
    return out


def project(cost: dict[str, float], run, train_cfg, seg_cfg, args) -> list[tuple[str, dict[str, float]]]:
    """Hours of each stage of every row of the recipe."""
    epochs, warmup = int(train_cfg["epochs"]), int(train_cfg["warmup_epochs"])
    workers = max(1, args.workers)
    iters, batch = int(seg_cfg["iterations"]), int(seg_cfg["batch_size"])
    seg_epochs = math.ceil(iters * batch / TRAIN_AUG)  # one val evaluation per epoch
    val_eval = VAL * (cost["seg eval"] + cost["seg eval crf"] / workers)
    pseudo = TRAIN_AUG * (cost["pseudo"] + cost["pseudo crf"] / workers)
    rows = []
    for row, (_, _, opts) in run.ROWS.items():
        b = int(opts.get("batch_size", train_cfg["batch_size"]))
        key = "b1" if b == 1 else f"b{args.batched}"  # a batched row costs what --batched measured
        steps = math.ceil(TRAIN_AUG / b)
        guidance = opts.get("guidance", train_cfg["guidance"])
        if guidance == "none":
            train = epochs * steps * cost[f"plain {key}"]
        else:
            masked = int(opts.get("pixel_labels", 0)) if guidance == "ext" else 0
            # batch 1: an image with a mask takes a GAIN_ext step; batched: a share of the steps
            share = masked / TRAIN_AUG
            guided = (1 - share) * cost[f"gain {key}"] + share * cost[f"ext {key}"]
            train = warmup * steps * cost[f"plain {key}"] + (epochs - warmup) * steps * guided
        cam_eval = epochs * VAL * cost["cam eval"]
        hours = {"train": train / 3600, "CAM eval": cam_eval / 3600, "pseudo-label": pseudo / 3600,
                 "segment pseudo": (iters * cost["seg pseudo"] + seg_epochs * val_eval) / 3600,
                 "segment SEC": (iters * cost["seg sec"] + seg_epochs * val_eval) / 3600}
        rows.append((row, hours))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="vgg16")
    p.add_argument("--layer", default=None, help="attention layer (default: the recipe's)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, resnet10t for VGG16's classifier steps, one step: a test of the script")
    p.add_argument("--steps", type=int, default=3, help="timed steps per stage (median)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2],
                   help="positive classes per image, cycled (VOC images hold one to a few)")
    p.add_argument("--batched", type=int, default=16, help="batch of the batched classifier row")
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--voc-size", default="375x500", help="HxW of a VOC image (pseudo labels, val)")
    p.add_argument("--image-size", type=int, default=None, help="classifier size (default: the recipe's)")
    p.add_argument("--crop", type=int, default=None, help="LargeFOV crop (default: the recipe's)")
    p.add_argument("--seg-batch", type=int, default=None, help="LargeFOV batch (default: the recipe's)")
    p.add_argument("--workers", type=int, default=8, help="CRF processes the recipe runs (run.py --workers)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--write", action="store_true", help="put the tables in benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:  # VGG16's 138M parameters make even a tiny step slow on a CPU
        args.model, args.layer = "resnet10t", args.layer or "layer3"  # stride 16, as features.29
        args.steps, args.batched, args.eval_batch = 1, 2, 2
        args.voc_size, args.image_size, args.crop, args.seg_batch = "64x80", 64, 48, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, _, w = args.voc_size.lower().partition("x")
    args.voc_size = (int(h), int(w or h))
    device = torch.device(args.device)
    run = _recipe()
    train_cfg, pseudo_cfg = run.load_yaml("train-vgg16.yaml"), run.load_yaml("pseudo-label.yaml")
    seg_cfg = run.load_yaml("segment-largefov.yaml")["common"]
    t0 = time.perf_counter()
    cost = {**classifier_costs(args, train_cfg, device), **pseudo_costs(args, train_cfg, pseudo_cfg, device),
            **segmenter_costs(args, seg_cfg, device)}
    seconds = time.perf_counter() - t0
    size = args.image_size or int(train_cfg["image_size"])
    crop = args.crop or int(seg_cfg["crop_size"])
    seg_batch = args.seg_batch or int(seg_cfg["batch_size"])
    vh, vw = args.voc_size
    what = {
        "plain b1": f"plain step, {args.model} {size} px, batch 1",
        "gain b1": "GAIN step, batch 1",
        "ext b1": "GAIN_ext step, batch 1",
        f"plain b{args.batched}": f"plain step, batch {args.batched}",
        f"gain b{args.batched}": f"GAIN step, batch {args.batched}",
        f"ext b{args.batched}": f"GAIN_ext step, batch {args.batched} (every image masked)",
        "cam eval": f"CAM evaluation, per val image (batches of {args.eval_batch})",
        "pseudo": f"pseudo labels of a {vh}x{vw} image, scales {pseudo_cfg['scales']} + flip",
        "pseudo crf": f"PSA's CRF on a {vh}x{vw} image (one process)",
        "seg pseudo": f"LargeFOV iteration, {crop} crops, batch {seg_batch}, pseudo-label route",
        "seg sec": "LargeFOV iteration, SEC route (its CRFs in one process)",
        "seg eval": f"LargeFOV forward of a {vh}x{vw} val image",
        "seg eval crf": f"DeepLab's CRF on a {vh}x{vw} image (one process)",
    }
    classes = "/".join(map(str, args.k))
    lines = [
        f"Stage costs of the VOC 2012 recipe on synthetic images (random weights)"
        f"{' at --quick sizes, meaningless for VOC' if args.quick else ''}; "
        f"{classes} positive classes per image, cycled; median of {args.steps} timed calls per stage "
        f"({args.steps * len(args.k)} for the classifier steps and pseudo labels) after one warm-up; "
        f"{seconds:.0f} s for the whole measurement.",
        "",
        "| stage | seconds |",
        "|---|---|",
    ] + [f"| {what[k]} | {v:.3f} |" for k, v in cost.items()]
    rows = project(cost, run, train_cfg, seg_cfg, args)
    stages = list(rows[0][1])
    batched_rows = [r for r, (_, _, o) in run.ROWS.items() if int(o.get("batch_size", 1)) not in (1, args.batched)]
    lines += [
        "",
        f"Projected hours per row ({TRAIN_AUG:,} train_aug and {VAL:,} val images, {train_cfg['epochs']} "
        f"epochs of which {train_cfg['warmup_epochs']} plain, {seg_cfg['iterations']} LargeFOV iterations and "
        f"a val evaluation per epoch, CRFs over {args.workers} processes; data loading and checkpoints not "
        f"included{'; ' + ', '.join(batched_rows) + f' priced at the batch-{args.batched} step' if batched_rows else ''}):",
        "",
        "| row | " + " | ".join(stages) + " | total |",
        "|---|" + "---|" * (len(stages) + 1),
    ] + [f"| {row} | " + " | ".join(f"{h[s]:.1f}" for s in stages) + f" | **{sum(h.values()):.1f}** |"
         for row, h in rows]
    total = {s: sum(h[s] for _, h in rows) for s in stages}
    lines.append("| all rows | " + " | ".join(f"{total[s]:.1f}" for s in stages)
                 + f" | **{sum(total.values()):.1f}** |")
    print("\n".join(lines), flush=True)
    if args.write:
        dev = (f"{torch.cuda.get_device_name()} (torch {torch.__version__})" if device.type == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads (torch {torch.__version__})")
        cmd = " ".join(["python benchmarks/voc2012/stage_costs.py", *(sys.argv[1:] if argv is None else argv)])
        block = [f"### VOC 2012 recipe stage costs — {dt.date.today()} — {dev}", "", f"`{cmd}`", ""] + lines
        sys.path.insert(0, str(HERE.parent))  # benchmarks/results_page.py
        from results_page import record

        record(f"voc2012/stage_costs.py {device.type}{' quick' if args.quick else ''}", "\n".join(block),
               section="What the VOC 2012 recipe costs", history="voc2012.md", results=RESULTS)


if __name__ == "__main__":
    main()
