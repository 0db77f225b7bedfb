"""The numbers the README's "What is measured" section (and docs/benchmarks.md's "Measured"
paragraphs) quote are the current ones: each appears in the summary table of
benchmarks/RESULTS.md, whose rows link to the sections they come from. And the benchmark
scripts' --write replaces a benchmark's run there, moving the old one to history/."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# A number as prose writes it: 0.653, 108, 5.8e-06, 2.39 of "2.39x"; not the 18 of resnet18,
# the 16 of bf16 or the 200 of H200 (letters glued to it), nor a piece of a longer number.
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?(?![A-Za-wyz_\d]|\.\d)")


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a markdown page."""
    part = text.split(f"\n## {heading}\n", 1)
    assert len(part) == 2, f"no '## {heading}' section"
    return part[1].split("\n## ", 1)[0]


def summary_table() -> str:
    lines = [line for line in section(RESULTS.read_text(encoding="utf-8"), "Summary").splitlines()
             if line.startswith("|")]
    assert len(lines) > 10, "the summary table of RESULTS.md is missing"
    return "\n".join(lines)


def missing(quoting: str, summary: str) -> list[str]:
    have = set(NUMBER.findall(summary))
    return sorted(set(NUMBER.findall(quoting)) - have, key=float)


def test_number_pattern():
    text = "7.8x and 9.3x on resnet18 (H200, bf16), 5.8e-06, 0.653 ± 0.022, 108 / 80 %, 3-9 %, −0.013."
    assert NUMBER.findall(text) == ["7.8", "9.3", "5.8e-06", "0.653", "0.022", "108", "80", "3", "9",
                                    "0.013"]


def test_readme_numbers_are_in_the_summary():
    quoting = section((ROOT / "README.md").read_text(encoding="utf-8"), "What is measured so far")
    assert len(NUMBER.findall(quoting)) > 30  # the section still quotes the results
    assert not missing(quoting, summary_table()), (
        f"README's 'What is measured so far' quotes {missing(quoting, summary_table())}, which are "
        "not in benchmarks/RESULTS.md's summary table: quote the summary, or update it from its section")


def test_docs_measured_paragraphs_are_in_the_summary():
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.lstrip().startswith("Measured")]
    assert paragraphs, "docs/benchmarks.md has no 'Measured' paragraph"
    bad = missing("\n".join(paragraphs), summary_table())
    assert not bad, f"docs/benchmarks.md's 'Measured' paragraphs quote {bad}, not in RESULTS.md's summary"


def test_a_changed_number_is_caught():
    quoting = section((ROOT / "README.md").read_text(encoding="utf-8"), "What is measured so far")
    assert missing(quoting.replace("0.653", "0.654"), summary_table()) == ["0.654"]


def test_summary_links_resolve_and_runs_are_closed():
    text = RESULTS.read_text(encoding="utf-8")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results_page import slug

    anchors = {slug(h) for h in re.findall(r"^## (.+)$", text, flags=re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", summary_table())
    assert links and not set(links) - anchors, set(links) - anchors
    assert text.count("<!-- run: ") == text.count("<!-- /run -->")
    keys = re.findall(r"<!-- run: (.+) -->", text)
    assert len(keys) == len(set(keys)), "two runs of RESULTS.md have the same key"


def test_write_replaces_the_run_and_moves_the_old_one_to_history(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results_page import record

    page = tmp_path / "RESULTS.md"
    page.write_text(RESULTS.read_text(encoding="utf-8"), encoding="utf-8")
    key = "speed/crf.py 24 images of 320 px"
    old = page.read_text().split(f"<!-- run: {key} -->\n")[1].split("\n<!-- /run -->")[0]
    rows = record(key, "### Dense CRF by workers — today\n\n| workers | images/s |\n| 1 | 1.23 |",
                  section="Dense CRF by workers", history="crf.md", results=page)
    text = page.read_text()
    assert "| 1 | 1.23 |" in text and old not in text
    assert text.count(f"<!-- run: {key} -->") == 1
    assert old in (tmp_path / "history" / "crf.md").read_text()  # verbatim, at the end
    assert rows and all("#dense-crf-by-workers" in r for r in rows)  # the rows to check
    assert "check their numbers" in capsys.readouterr().out

    rows = record("speed/crf.py 50 images of 400 px", "### Dense CRF — today\n\n| 1 | 2.00 |",
                  section="Dense CRF by workers", history="crf.md", results=page)
    text = page.read_text()
    crf = section(text, "Dense CRF by workers")
    assert "| 1 | 1.23 |" in crf and "| 1 | 2.00 |" in crf  # a new key: beside, not instead
    record("voc2012/run.py: gain / sec", "### VOC 2012 — today\n\n| a | 1 |",
           section="VOC 2012: GAIN cues → DeepLab-LargeFOV", history="voc2012.md", results=page)
    text = page.read_text()
    assert text.index("## VOC 2012") < text.index("## History")  # a new section, before History
    assert "No summary row quotes this section" in capsys.readouterr().out
