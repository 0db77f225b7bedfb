"""Every code block in docs/*.md runs, page by page.

Rules (docs/index.md repeats them for writers):

- ```python blocks of a page run in order, in one namespace, in a fresh temporary
  folder (the current directory while the page runs). Tracebacks point at the
  page's own lines.
- ```bash blocks run too, in the same folder and in page order with the python
  blocks. Each line must be an ``attnguide ...`` command (``\\`` continues a line,
  ``#`` starts a comment); it runs through ``attnguide.cli.main.main`` and must exit
  with 0. Sizes are shrunk first (``TINY`` below: e.g. ``--epochs 12`` becomes
  ``--epochs 2``, ``--model resnet18`` becomes ``--model test_resnet``), so the
  commands show realistic settings but run in seconds.
- A block fenced ```python no-run or ```bash no-run is skipped; the page says why
  (Lightning or Accelerate not installed, torchrun, a GPU, real VOC data).
- Other languages (yaml, text, csv) are not run, except a block whose info
  string holds ``file=PATH``: its text is written to PATH before the next block.
- A page may ask for prepared inputs with an HTML comment
  ``<!-- docs-test: data/scenes runs/ext -->``: ``data/scenes`` is a tiny scenes
  data set (24 train, 8 val, 8 test images of 48 px, as ``make_scenes`` writes
  it), ``runs/ext`` a GAIN_ext classifier run on it (timm ``test_resnet``).
"""

from __future__ import annotations

import re
import shlex
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md"))

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
NEEDS = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->", re.S)
PREPARED = ("data/scenes", "runs/ext")

# Option values replaced before a documented command runs: same options, tiny sizes.
TINY: dict[tuple[str, ...], dict[str, str]] = {
    ("data", "scenes"): {"--n-train": "24", "--n-val": "8", "--n-test": "8", "--image-size": "48"},
    ("train",): {"--model": "test_resnet", "--image-size": "48", "--epochs": "2",
                 "--warmup-epochs": "1", "--batch-size": "8", "--workers": "0", "--pixel-labels": "2"},
    ("pseudo-label",): {"--scales": "1.0,0.5", "--workers": "0"},
    ("segment",): {"--encoder": "resnet18", "--crop-size": "32", "--batch-size": "4",
                   "--epochs": "1", "--iterations": "2", "--workers": "0", "--crf-workers": "0"},
    ("predict",): {"--workers": "0"},
    ("demo",): {"--scale": "0.02"},
}


@dataclass
class Block:
    lang: str
    flags: tuple[str, ...]
    code: str
    line: int  # line of the block's first code line in the page (1-based)

    @property
    def runs(self) -> bool:
        return "no-run" not in self.flags

    @property
    def file(self) -> str | None:
        return next((f[5:] for f in self.flags if f.startswith("file=")), None)


def parse_blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        info = match.group(1).split()
        line = text.count("\n", 0, match.start(2)) + 1
        blocks.append(Block(info[0] if info else "", tuple(info[1:]), match.group(2), line))
    return blocks


def shrink(args: list[str]) -> list[str]:
    """Replace the values of TINY's options in one command's arguments."""
    key = next((k for k in sorted(TINY, key=len, reverse=True) if tuple(args[: len(k)]) == k), None)
    if key is None:
        return args
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg in TINY[key] and not out[i + 1].startswith("--"):
            out[i + 1] = TINY[key][arg]
    return out


def bash_commands(block: Block, page: str) -> list[list[str]]:
    """The attnguide commands of a bash block, as argument lists (without 'attnguide')."""
    joined = re.sub(r"\\\n", " ", block.code)
    commands = []
    for raw in joined.splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        if words[0] != "attnguide":
            raise AssertionError(
                f"{page} line {block.line}: ```bash blocks may hold only attnguide commands, "
                f"found {line!r}; fence the block as ```bash no-run and say why")
        commands.append(words[1:])
    return commands


# ---------------------------------------------------------------------- prepared inputs


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A folder holding data/scenes and runs/ext, made once per session."""
    from attnguide.cli.main import main
    from attnguide.data import make_scenes

    base = tmp_path_factory.mktemp("docs-prepared")
    make_scenes(base / "data" / "scenes", n_train=24, n_val=8, n_test=8, image_size=48, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["train", "--data", str(base / "data" / "scenes"), "--model", "test_resnet",
                     "--image-size", "48", "--batch-size", "8", "--epochs", "2",
                     "--warmup-epochs", "1", "--guidance", "ext", "--lr", "0.02",
                     "--device", "cpu", "--quiet", "--out", str(base / "runs" / "ext")])
    assert code == 0
    return base


# ---------------------------------------------------------------------- the test


def test_docs_exist():
    assert {"index.md", "quickstart.md", "concepts.md", "api.md", "cli.md", "recipes.md",
            "benchmarks.md", "troubleshooting.md"} <= set(PAGES)


def test_shrink_replaces_only_known_options():
    assert shrink(["train", "--epochs", "12", "--lr", "0.1"]) == ["train", "--epochs", "2", "--lr", "0.1"]
    assert shrink(["data", "scenes", "d", "--n-train", "2000"])[-1] == "24"


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page, tmp_path, monkeypatch, request, capsys):
    from attnguide.cli.main import main

    path = DOCS / page
    text = path.read_text(encoding="utf-8")
    blocks = parse_blocks(text)
    needs = " ".join(NEEDS.findall(text)).split()
    unknown = [n for n in needs if n not in PREPARED]
    assert not unknown, f"{page}: unknown docs-test inputs {unknown}; known: {PREPARED}"
    if not any(b.runs and (b.lang in ("python", "bash") or b.file) for b in blocks):
        pytest.skip(f"{page} has no block to run")
    if needs:
        source = request.getfixturevalue("prepared")
        for item in needs:
            shutil.copytree(source / item, tmp_path / item)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    torch.manual_seed(0)
    for block in blocks:
        if not block.runs:
            continue
        if block.file:
            target = tmp_path / block.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code, encoding="utf-8")
        elif block.lang == "python":
            # Pad with newlines so that tracebacks show the page's own line numbers.
            code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
            exec(code, namespace)  # noqa: S102 - the docs are our own code
        elif block.lang == "bash":
            for args in bash_commands(block, page):
                tiny = shrink(args)
                code = main(tiny)
                if code != 0:
                    err = capsys.readouterr().err.strip().splitlines()[-3:]
                    raise AssertionError(f"{page} line {block.line}: `attnguide {' '.join(tiny)}` "
                                         f"exited {code}: " + " ".join(err))
