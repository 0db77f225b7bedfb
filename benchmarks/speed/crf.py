"""Dense CRF images per second by worker count (pydensecrf in a process pool).

    python benchmarks/speed/crf.py --workers 1 2 --write

Worker start-up (spawning processes, importing attnguide) is reported apart from
the rate; the ratio column is against one worker, measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
from pathlib import Path

from attnguide.wsss.crf import crf_throughput

RESULTS = Path(__file__).resolve().parents[1] / "RESULTS.md"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--rounds", type=int, default=2, help="alternated rounds; the best rate counts")
    p.add_argument("--write", action="store_true")
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
        cmd = "python benchmarks/speed/crf.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
        with RESULTS.open("a") as f:
            f.write(f"\n### Dense CRF by workers — {dt.date.today()} — {platform.machine()} CPU\n\n"
                    f"`{cmd}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
