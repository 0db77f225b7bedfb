"""Dense CRF images per second by worker count (pydensecrf in a process pool).

    python benchmarks/speed/crf.py --workers 1 2 --write

Worker start-up (spawning processes, importing attnguide) is reported apart from
the rate; the ratio column is against one worker, measured in the same run.
:func:`crf_throughput` is the measurement, on synthetic images; it lives here,
not in :mod:`attnguide.wsss.crf`, which keeps the CRF and its pool only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from attnguide.errors import AttnGuideError
from attnguide.wsss.crf import CRFParams, CRFPool, dense_crf

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"


def _synthetic_crf_inputs(
    n_images: int, size: int, n_labels: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random blocky images ``uint8 (size, size, 3)`` with blurred, noisy scores
    ``float32 (n_labels, size, size)``: inputs for :func:`crf_throughput`."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n_images):
        blocks = rng.integers(0, n_labels, size=(4, 4))
        truth = np.kron(blocks, np.ones((size // 4 + 1, size // 4 + 1), dtype=np.int64))
        truth = truth[:size, :size]
        palette = rng.integers(0, 256, size=(n_labels, 3))
        image = np.clip(palette[truth] + rng.normal(0, 10, (size, size, 3)), 0, 255)
        probs = np.eye(n_labels)[truth].transpose(2, 0, 1) + rng.uniform(
            0, 1, (n_labels, size, size)
        )
        items.append((image.astype(np.uint8), (probs / probs.sum(0)).astype(np.float32)))
    return items


def crf_throughput(
    n_images: int = 20,
    size: int = 200,
    workers: int = 1,
    n_labels: int = 3,
    params: CRFParams | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Images per second of :func:`~attnguide.wsss.crf.dense_crf` through a ``CRFPool``.

    The worker processes are started and warmed up (one CRF each) before the
    clock starts, so the number is the steady-state rate of a long run.
    ``n_labels`` 3 is background plus two classes, typical of a VOC image
    (IRN runs the CRF over background and the image's own classes only).

    Returns:
        ``{"images_per_s", "seconds", "startup_s", "workers", "n_images", "size"}``.
    """
    if n_images < 1 or size < 4:
        raise AttnGuideError(f"need n_images >= 1 and size >= 4, got {n_images} and {size}")
    params = params or CRFParams()
    items = _synthetic_crf_inputs(n_images, size, n_labels, seed)
    with CRFPool(workers) as pool:
        start = time.perf_counter()
        pool.map(dense_crf, [(*items[0], params)] * max(1, workers))
        startup = time.perf_counter() - start
        start = time.perf_counter()
        pool.map(dense_crf, [(image, probs, params) for image, probs in items])
        seconds = time.perf_counter() - start
    return {
        "images_per_s": n_images / seconds,
        "seconds": seconds,
        "startup_s": startup,
        "workers": workers,
        "n_images": n_images,
        "size": size,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--rounds", type=int, default=2, help="alternated rounds; the best rate counts")
    p.add_argument("--write", action="store_true",
                   help="put the table in benchmarks/RESULTS.md, replacing the run of the same size "
                        "(moved to benchmarks/history/crf.md)")
    args = p.parse_args(argv)
    best: dict[int, dict] = {}
    for _ in range(args.rounds):
        for w in args.workers:
            r = crf_throughput(n_images=args.images, size=args.size, workers=w)
            if w not in best or r["images_per_s"] > best[w]["images_per_s"]:
                best[w] = r
    base = best[args.workers[0]]["images_per_s"]
    lines = [f"Dense CRF (IRN parameters, 3 labels, {args.images} images of {args.size}x{args.size}), "
             f"{os.cpu_count()} cores, best of {args.rounds} alternated rounds.", "",
             "| workers | images/s | vs 1 worker | pool start-up s |", "|---|---|---|---|"]
    for w in args.workers:
        r = best[w]
        lines.append(f"| {w} | {r['images_per_s']:.2f} | {r['images_per_s'] / base:.2f}x | {r['startup_s']:.1f} |")
    print("\n".join(lines))
    if args.write:
        cmd = "python benchmarks/speed/crf.py " + " ".join(argv if argv is not None else sys.argv[1:])
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/results_page.py
        from results_page import record

        record(f"speed/crf.py {args.images} images of {args.size} px",
               f"### Dense CRF by workers — {dt.date.today()} — {platform.machine()} CPU\n\n"
               f"`{cmd}`\n\n" + "\n".join(lines), section="Dense CRF by workers", history="crf.md",
               results=RESULTS)


if __name__ == "__main__":
    main()
