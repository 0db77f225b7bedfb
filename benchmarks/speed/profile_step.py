"""Where a GAIN step spends its time beyond a plain step: torch.profiler tables.

Profiles a plain classification step and a GAIN step (second-order CAM weights by
default) on the same model and batch, one after the other, several rounds each, and
prints the operators by self CPU time side by side: what the GAIN step adds to the
plain step, operator by operator, in ms per step and as a share of the plain step.
The first convolution's input gradient (which only a step that erases images needs)
and the eval-mode BatchNorm of the erased pass are shown as rows of their own.

    python benchmarks/speed/profile_step.py                 # CPU: resnet18, 224 px, batch 8, k = 1
    python benchmarks/speed/profile_step.py --k 2 --top 20
    python benchmarks/speed/profile_step.py --write         # the table into benchmarks/RESULTS.md

Self CPU time is the time inside an operator's own code (its children excluded), so
the rows add up to the step; on a shared machine the absolute times drift with the
load, the split between operators much less.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from attnguide import GuidedAttention

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"


def make_labels(batch: int, classes: int, k: int, generator: torch.Generator) -> torch.Tensor:
    labels = torch.zeros(batch, classes)
    for i in range(batch):
        labels[i, torch.randperm(classes, generator=generator)[:k]] = 1
    return labels


def op_name(event, image_chw: tuple[int, ...]) -> str:
    """The operator's name; the first convolution's backward (its input: images) apart."""
    name = event.key
    shapes = [tuple(s) for s in (event.input_shapes or [])]
    if name == "aten::convolution_backward" and len(shapes) > 1 and shapes[1][1:] == image_chw:
        return "aten::convolution_backward (first conv)"
    return name


def profiled(steps: dict, rounds: int, image_chw) -> dict[str, dict[str, float]]:
    """Self CPU ms per step of each operator of each step, over ``rounds`` rounds that
    alternate the steps (one profiled step each), so drifts in machine load hit all."""
    totals = {name: defaultdict(float) for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                step()
            for event in prof.key_averages(group_by_input_shape=True):
                totals[name][op_name(event, image_chw)] += event.self_cpu_time_total / 1e3 / rounds
    return {name: dict(t) for name, t in totals.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--k", type=int, default=1, help="positive classes per image")
    p.add_argument("--rounds", type=int, default=3, help="profiled steps of each kind")
    p.add_argument("--timed-rounds", type=int, default=5, help="alternated rounds of the timed ladder")
    p.add_argument("--top", type=int, default=14, help="operators shown (by the GAIN step's extra time)")
    p.add_argument("--detach", action="store_true", help="detached CAM weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true",
                   help="put the table in benchmarks/RESULTS.md (older run to benchmarks/history/speed.md)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = timm.create_model(args.model, num_classes=20).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    guide = GuidedAttention(model, detach_weights=args.detach)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    labels = make_labels(args.batch, 20, args.k, gen)

    def plain():
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(images), labels).backward()
        opt.step()

    def gain():
        opt.zero_grad(set_to_none=True)
        guide(images, labels).loss.backward()
        opt.step()

    # The ladder from a plain step to a GAIN step: the same two forward graphs on fixed
    # erased images (no CAM), then with those images' input gradient (what erasing by a
    # trainable mask needs: the first conv's input gradient), then the GAIN step.
    out = guide(images, labels)
    index, classes = out.pairs[:, 0], out.pairs[:, 1]
    erased = guide.erase(images[index], guide.mask(out.attention.detach())).detach()  # (P, 3, H, W)

    def two_passes(input_grad: bool):
        def step():
            opt.zero_grad(set_to_none=True)
            x = erased.requires_grad_(True) if input_grad else erased
            loss = F.binary_cross_entropy_with_logits(model(images), labels)
            loss = loss + torch.sigmoid(guide.extra_logits(x)).gather(1, classes[:, None]).mean()
            loss.backward()
            opt.step()
            erased.requires_grad_(False)
            erased.grad = None
        return step

    steps = {"plain": plain, "two passes": two_passes(False), "two passes + input gradient": two_passes(True),
             "GAIN": gain}
    for _ in range(2):  # warm-up: allocator, kernels chosen
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(args.timed_rounds):  # alternated, so drifts in machine load hit all four
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    what = {
        "plain": "plain step (BCE, backward, SGD)",
        "two passes": f"+ a second forward graph: the {len(erased)} erased images of a GAIN step, fixed, "
                      "BatchNorm frozen, their class scores in the loss",
        "two passes + input gradient": "+ the input gradient of those images (the first conv's)",
        "GAIN": "+ the CAMs, soft masks and erasing inside the graph: the GAIN step",
    }
    ladder = [
        f"From a plain step to a GAIN step, one cost at a time ({args.model}, {args.size} px, batch "
        f"{args.batch}, k = {args.k}, {'detached' if args.detach else 'second-order'} CAM weights, SGD; "
        f"median of {args.timed_rounds} alternated rounds):",
        "",
        "| step | ms | vs plain | added by this line, % of the plain step |",
        "|---|---|---|---|",
    ]
    prev = None
    for name, t in med.items():
        added = "" if prev is None else f"{100 * (t - prev) / med['plain']:+.1f} %"
        ladder.append(f"| {what[name]} | {t * 1e3:.0f} | **{t / med['plain']:.2f}x** | {added} |")
        prev = t
    print("\n".join(ladder), flush=True)
    chw = (3, args.size, args.size)  # the first conv's input: images, clean or erased
    prof = profiled({"plain": plain, "gain": gain}, args.rounds, chw)
    total = {k: sum(v.values()) for k, v in prof.items()}
    passes = 1 + args.k  # forward images of a GAIN step, in batches: the clean one and k erased

    def beyond(name: str) -> float:  # ms the GAIN step spends beyond `passes` plain steps
        return prof["gain"].get(name, 0.0) - passes * prof["plain"].get(name, 0.0)

    names = sorted(set(prof["plain"]) | set(prof["gain"]), key=beyond, reverse=True)
    lines = [
        f"Self CPU time per step by operator (torch.profiler): {args.model}, {args.size} px, batch "
        f"{args.batch}, k = {args.k} positive class{'es' if args.k > 1 else ''} per image, "
        f"{'detached' if args.detach else 'second-order (create_graph)'} CAM weights, SGD; "
        f"{args.rounds} profiled steps each after 2 warm-up steps; {torch.get_num_threads()} threads. "
        f"Step total (sum of self times, profiler overhead included): plain {total['plain']:.0f} ms, "
        f"GAIN {total['gain']:.0f} ms (**{total['gain'] / total['plain']:.2f}x**). A GAIN step "
        f"pushes {passes}x the plain step's images through the model (the batch, then its "
        f"{args.k * args.batch} erased images), so {passes}x is its floor if every operator "
        f"scaled with the images; the last column is what each operator costs beyond that, in % "
        f"of the plain step. Rows: the {args.top} operators with the most, the four largest "
        f"operators of the GAIN step, then the rest.",
        "",
        f"| operator | plain ms | GAIN ms | GAIN / plain | beyond {passes}x plain, % of the plain step |",
        "|---|---|---|---|---|",
    ]
    biggest = sorted(prof["gain"], key=prof["gain"].get, reverse=True)[:4]  # where most time goes
    shown = names[: args.top] + [n for n in biggest if n not in names[: args.top]]
    for name in shown:
        a, b = prof["plain"].get(name, 0.0), prof["gain"].get(name, 0.0)
        ratio = f"{b / a:.2f}x" if a > 0.05 else "new"
        lines.append(f"| `{name}` | {a:.1f} | {b:.1f} | {ratio} | {100 * beyond(name) / total['plain']:+.1f} % |")
    rest = [n for n in names if n not in shown]
    a = sum(prof["plain"].get(n, 0.0) for n in rest)
    b = sum(prof["gain"].get(n, 0.0) for n in rest)
    lines.append(f"| {len(rest)} other operators | {a:.1f} | {b:.1f} | {b / max(a, 1e-9):.2f}x "
                 f"| {100 * (b - passes * a) / total['plain']:+.1f} % |")
    print("\n".join(lines), flush=True)
    lines = ladder + [""] + lines
    if args.write:
        cmd = " ".join(["python benchmarks/speed/profile_step.py", *(sys.argv[1:] if argv is None else argv)])
        block = [f"### GAIN step profile, k = {args.k} — {dt.date.today()} — {platform.machine()} CPU, "
                 f"{torch.get_num_threads()} threads (torch {torch.__version__})", "", f"`{cmd}`", ""] + lines
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/results_page.py
        from results_page import record

        record(f"speed/profile_step.py cpu {args.model} batch {args.batch} k {args.k}"
               + (" detach" if args.detach else ""), "\n".join(block),
               section=f"Core speed on a CPU: {args.model}, fp32", history="speed.md", results=RESULTS)


if __name__ == "__main__":
    main()
