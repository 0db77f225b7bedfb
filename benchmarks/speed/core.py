"""Core speed and memory: a GAIN step against a plain classification step, and
attention() against the grad-cam package and torchcam, measured side by side.

Every number is a ratio against a baseline measured in the same run, with the
two alternated round by round (the machines are shared and noisy).

    python benchmarks/speed/core.py                    # CPU: resnet18, 224 px, batch 8
    python benchmarks/speed/core.py --device cuda --amp
    python benchmarks/speed/core.py --write            # the run's tables into benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
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

from attnguide import GuidedAttention

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (f"{platform.machine()} CPU, {torch.get_num_threads()} threads "
            f"(torch {torch.__version__})")


def make_labels(batch: int, classes: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C) multi-hot with exactly k positives per image."""
    labels = torch.zeros(batch, classes)
    for i in range(batch):
        labels[i, torch.randperm(classes, generator=generator)[:k]] = 1
    return labels


def make_masks(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, size, size) int64 pixel labels in VOC convention (0 background, class c -> c + 1):
    each positive class of each image paints a random box of a quarter to a half of a side."""
    masks = torch.zeros(labels.shape[0], size, size, dtype=torch.long)
    for b, c in labels.nonzero().tolist():
        h, w = torch.randint(size // 4, size // 2 + 1, (2,), generator=generator).tolist()
        y, x = torch.randint(0, size - h + 1, (1,), generator=generator).item(), \
            torch.randint(0, size - w + 1, (1,), generator=generator).item()
        masks[b, y:y + h, x:x + w] = c + 1
    return masks


def autocast(args):
    """bf16 autocast with --amp, else nothing (reusable: each `with` enters it anew)."""
    if args.amp:
        return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def timed_step(opt, loss_fn, device: str) -> float:
    """Seconds for one optimiser step: ``loss_fn()``, backward, ``opt.step()``."""
    opt.zero_grad(set_to_none=True)
    sync(device)
    t0 = time.perf_counter()
    loss_fn().backward()
    opt.step()
    sync(device)
    return time.perf_counter() - t0


def graph_bytes(fn) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct storages the autograd graph saves while ``fn`` runs:
    the memory a step holds at its peak, before backward, beyond the model itself."""
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    return sum(seen.values()), loss


def step_table(args) -> list[str]:
    device = args.device
    gen = torch.Generator().manual_seed(0)
    model = timm.create_model(args.model, num_classes=20).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    guide = GuidedAttention(model, detach_weights=args.detach)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    amp = autocast(args)

    def plain():
        with amp:
            return F.binary_cross_entropy_with_logits(model(images).float(), labels)

    def gain():
        with amp:
            return guide(images, labels).loss

    def ext():  # GAIN_ext: the same step plus omega L_e on every image's pixel mask
        with amp:
            return guide(images, labels, masks).loss

    def run(fn):
        return timed_step(opt, fn, device)

    def peak(fn) -> int:
        """Memory of one step of fn beyond the model's: peak allocated on CUDA, else the
        bytes the autograd graph saves."""
        opt.zero_grad(set_to_none=True)
        if not device.startswith("cuda"):
            return graph_bytes(fn)[0]
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn().backward()
        used = torch.cuda.max_memory_allocated() - base
        opt.zero_grad(set_to_none=True)
        return used

    rows = []
    for k in args.k:
        labels = make_labels(args.batch, 20, k, gen).to(device)
        masks = make_masks(labels.cpu(), args.size, gen).to(device)
        steps = {"plain": plain, "gain": gain, "ext": ext}
        for _ in range(args.warmup):
            for fn in steps.values():
                run(fn)
        times = {name: [] for name in steps}
        for _ in range(args.rounds):  # alternate, so drifts in machine load hit all three
            for name, fn in steps.items():
                times[name].append(run(fn))
        t = {name: statistics.median(v) for name, v in times.items()}
        mem = {name: peak(fn) for name, fn in steps.items()}
        budget = 2.1 if k == 1 else 1.05 * (1 + k)
        mem_budget = " (budget 1.8x)" if k == 1 else ""
        rows.append(
            f"| {k} | {t['plain'] * 1e3:.0f} | {t['gain'] * 1e3:.0f} | **{t['gain'] / t['plain']:.2f}x** "
            f"(budget {budget:.2f}x) | {t['ext'] * 1e3:.0f} | **{t['ext'] / t['plain']:.2f}x** "
            f"| {mem['plain'] / 2**20:.0f} | {mem['gain'] / 2**20:.0f} | **{mem['gain'] / mem['plain']:.2f}x**"
            f"{mem_budget} | {mem['ext'] / 2**20:.0f} | **{mem['ext'] / mem['plain']:.2f}x** |"
        )
        print(rows[-1], flush=True)
    mem_kind = "peak allocated" if device.startswith("cuda") else "saved by autograd"
    head = [
        f"GAIN-self and GAIN_ext steps vs a plain classification step: {args.model}, {args.size} px, "
        f"batch {args.batch}, 20 classes, k positive classes per image (GAIN_ext: every image has "
        f"a pixel mask, omega 10), SGD; "
        f"{'detached' if args.detach else 'second-order (create_graph)'} CAM weights"
        f"{', bf16 autocast' if args.amp else ''}; median of {args.rounds} alternated rounds; "
        f"memory = {mem_kind} (MiB); ratios are against the plain step.",
        "",
        "| k | plain ms | GAIN ms | GAIN ratio | GAIN_ext ms | GAIN_ext ratio | plain MiB | GAIN MiB "
        "| GAIN memory | GAIN_ext MiB | GAIN_ext memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    return head + rows


def ports_step(model, images, labels, alpha: float = 1.0):
    """GAIN as the public ports run it: one image and one class at a time (batch 1),
    detached Grad-CAM weights, one erased forward per (image, class); same losses."""
    feats = {}
    layer = model.get_submodule(GuidedAttention(model).layer_name)
    handle = layer.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    try:
        total = 0.0
        for b in range(images.shape[0]):
            img = images[b : b + 1]
            logits = model(img)
            act = feats["a"]  # the clean image's activation (the erased passes overwrite feats)
            loss = F.binary_cross_entropy_with_logits(logits, labels[b : b + 1])
            for c in labels[b].nonzero().flatten().tolist():
                (grad,) = torch.autograd.grad(logits[0, c], act, retain_graph=True)
                cam = F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
                cam = F.interpolate(cam, size=img.shape[-2:], mode="bilinear", align_corners=False)
                lo, hi = cam.min(), cam.max()
                att = (cam - lo) / (hi - lo).clamp_min(1e-8)
                erased = img - torch.sigmoid(10 * (att - 0.5)) * img
                loss = loss + alpha * torch.sigmoid(model(erased)[0, c]) / labels[b].sum()
            total = total + loss / images.shape[0]
        return total
    finally:
        handle.remove()


def ports_table(args) -> list[str]:
    """attnguide's batched step against the ports' per-image loop, same model and batch."""
    device = args.device
    gen = torch.Generator().manual_seed(2)
    model = timm.create_model(args.model, num_classes=20).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    guide = GuidedAttention(model, detach_weights=True)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    amp = autocast(args)
    rows = []
    for k in args.k:
        labels = make_labels(args.batch, 20, k, gen).to(device)

        def run(fn):
            return timed_step(opt, fn, device)

        def ours(labels=labels):
            with amp:
                return guide(images, labels).loss

        def loop(labels=labels):
            with amp:
                return ports_step(model, images, labels)

        run(ours), run(loop)
        t_ours, t_loop = [], []
        for _ in range(max(2, args.rounds // 2)):
            t_ours.append(run(ours))
            t_loop.append(run(loop))
        mo, ml = statistics.median(t_ours), statistics.median(t_loop)
        rows.append(f"| {k} | {ml * 1e3:.0f} | {mo * 1e3:.0f} | **{ml / mo:.1f}x** |")
        print(rows[-1], flush=True)
    return [
        f"attnguide's batched GAIN step vs the public ports' per-image loop (batch 1, one class "
        f"at a time, detached CAM weights in both): {args.model}, {args.size} px, batch {args.batch}, "
        f"k positive classes per image{', bf16 autocast' if args.amp else ''}; median of "
        f"{max(2, args.rounds // 2)} alternated rounds.",
        "",
        "| k | per-image loop ms | attnguide ms | attnguide speed-up |",
        "|---|---|---|---|",
    ] + rows


def attention_table(args) -> list[str]:
    """All positive classes of a VOC-like batch (20 classes, 1 to 3 positives)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchcamGradCAM

    device = args.device
    gen = torch.Generator().manual_seed(1)
    model = timm.create_model(args.model, num_classes=20).to(device).eval()
    images = torch.randn(args.cam_batch, 3, args.size, args.size, generator=gen).to(device)
    npos = torch.randint(1, 4, (args.cam_batch,), generator=gen)
    classes = [torch.randperm(20, generator=gen)[: int(n)].tolist() for n in npos]
    slots = max(len(c) for c in classes)
    # (B, slots): slot j holds the j-th positive class, repeating the last one when short
    table = torch.tensor([c + [c[-1]] * (slots - len(c)) for c in classes], device=device)
    pairs = [(b, j) for b, c in enumerate(classes) for j in range(len(c))]
    guide = GuidedAttention(model, layer="layer4")

    def ours():
        maps = guide.attention(images, table, resize=True, normalize=True)
        return np.stack([maps[b, j].cpu().numpy() for b, j in pairs])

    gc_cam = GradCAM(model=model, target_layers=[model.layer4])

    def grad_cam():  # the package's best case: one batched call per class slot
        out = []
        for j in range(slots):
            out.append(gc_cam(input_tensor=images,
                              targets=[ClassifierOutputTarget(int(c)) for c in table[:, j]]))
        return np.stack([out[j][b] for b, j in pairs])

    def torchcam():
        with TorchcamGradCAM(model, target_layer="layer4") as extractor:
            out = []
            for j in range(slots):
                scores = model(images)
                cams = extractor(table[:, j].tolist(), scores, normalized=False)[0]  # (B, h, w)
                # same post-processing as the others: ReLU, resize, then min-max per map
                cams = F.interpolate(torch.relu(cams)[:, None], size=images.shape[-2:],
                                     mode="bilinear", align_corners=False)[:, 0]
                flat = cams.flatten(1)
                lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
                out.append(((flat - lo) / (hi - lo).clamp_min(1e-8)).view_as(cams).detach().cpu().numpy())
        return np.stack([out[j][b] for b, j in pairs])

    ref = grad_cam()
    mine = ours()
    err = float(np.abs(ref - mine).max())
    err_tc = float(np.abs(torchcam() - mine).max())
    if max(err, err_tc) > 1e-3:  # timing different maps would compare nothing
        raise SystemExit(f"attnguide's maps differ from grad-cam's by {err:.1e} and torchcam's by "
                         f"{err_tc:.1e} (max |difference| of [0, 1] maps); not timing them")
    times = {"attnguide": [], "grad-cam": [], "torchcam": []}
    fns = {"attnguide": ours, "grad-cam": grad_cam, "torchcam": torchcam}
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    for _ in range(args.rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    n = len(pairs)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        f"attention() for all positive classes of a VOC-like batch: {args.model} layer4, "
        f"{args.cam_batch} images of {args.size} px, 20 classes, {n} (image, class) pairs; maps "
        f"resized and min-max normalised by all three; max |difference| to grad-cam {err:.1e}, "
        f"to torchcam {err_tc:.1e}; median of {args.rounds} rounds.",
        "",
        "| implementation | ms per batch | maps/s | attnguide speed-up |",
        "|---|---|---|---|",
    ]
    for name, t in med.items():
        rows.append(f"| {name} | {t * 1e3:.0f} | {n / t:.0f} | {t / med['attnguide']:.1f}x |")
    for r in rows[:1] + rows[4:]:
        print(r, flush=True)
    gc_cam.activations_and_grads.release()
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cam-batch", type=int, default=16)
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--detach", action="store_true", help="detached CAM weights (ports' variant)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-attention", action="store_true")
    p.add_argument("--ports", action="store_true", help="also time the ports' per-image loop")
    p.add_argument("--write", action="store_true",
                   help="put the tables in benchmarks/RESULTS.md, replacing the run of the same settings "
                        "(moved to benchmarks/history/speed.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = step_table(args)
    if args.ports:
        lines += [""] + ports_table(args)
    if not args.skip_attention:
        lines += [""] + attention_table(args)
    if args.write:
        cmd = "python benchmarks/speed/core.py " + " ".join(sys.argv[1:])
        block = [f"### Core step and attention() — {dt.date.today()} — {machine(args.device)}",
                 "", f"`{cmd}`", ""] + lines
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/results_page.py
        from results_page import record

        gpu = args.device.startswith("cuda")
        dtype = "bf16" if args.amp else "fp32"
        key = (f"speed/core.py {'cuda' if gpu else 'cpu'} {args.model} batch {args.batch} {dtype}"
               + (f" size {args.size}" if args.size != 224 else "") + (" detach" if args.detach else ""))
        record(key, "\n".join(block), section=f"Core speed on a {'GPU' if gpu else 'CPU'}: {args.model}, {dtype}",
               history="speed.md", results=RESULTS)


if __name__ == "__main__":
    main()
