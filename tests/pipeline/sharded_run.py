"""Run by tests/pipeline/test_sharding.py under torchrun: ``attnguide pseudo-label`` and
``attnguide predict`` through the CLI, one after the other in each process. The script opens
the process group itself, as a user's script that already runs one would: the commands use
it (each on its slice of the images) and leave it open.

    python -m torch.distributed.run --standalone --nproc_per_node 2 sharded_run.py \\
        CLASSIFIER SEGMENTER DATA OUT [EXTRA OPTIONS OF BOTH COMMANDS, e.g. --resume]
"""

from __future__ import annotations

import sys

import torch.distributed as dist

from attnguide.cli.main import main


def run(classifier: str, segmenter: str, data: str, out: str, *extra: str) -> int:
    code = main(["pseudo-label", classifier, "--data", data, "--out", f"{out}/pseudo", "--scales",
                 "1.0,0.5", "--save-cams", "--device", "cpu", "--quiet", *extra])
    if code:
        return code
    return main(["predict", segmenter, "--data", data, "--split", "train", "--out", f"{out}/pred",
                 "--overlay", "--device", "cpu", "--quiet", *extra])


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        code = run(*sys.argv[1:])
        assert dist.is_initialized(), "a command closed a process group it did not open"
    finally:
        dist.destroy_process_group()
    sys.exit(code)
