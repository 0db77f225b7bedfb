"""Where a benchmark script's ``--write`` puts its run.

benchmarks/RESULTS.md is a curated page, not a log: a summary table, then one section per
benchmark holding its newest run. Each run a script wrote sits between ``<!-- run: KEY -->``
and ``<!-- /run -->``, where KEY says what was measured (script, device kind, model, rows),
never when. :func:`record` replaces the run with the same KEY and moves the old one, verbatim
but for its relative links, to the end of ``history/<name>``; a KEY seen for the first time goes
at the end of the section it names (made before "## History" when missing). It then prints the
summary rows that link to that section: their numbers are the ones to check by hand, since
only a person can say which number of a new table a claim should quote.

The scripts import this file by path (``sys.path``), as they are run as ``python
benchmarks/<dir>/<script>.py``.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from attnguide.io.atomic import atomic_write

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
END = "<!-- /run -->"
HISTORY_HEAD = """# {name}: superseded runs

Runs that a newer run of the same benchmark replaced in [RESULTS.md](../RESULTS.md), oldest
first, moved here by the benchmark scripts' `--write`. Numbers here are not current.
"""


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def summary_rows(text: str, anchor: str) -> list[str]:
    """The rows of the page's summary table that link to ``#anchor``."""
    part = text.split("\n## Summary\n", 1)[-1].split("\n## ", 1)[0] if "\n## Summary\n" in text else ""
    return [line for line in part.splitlines() if line.startswith("|") and f"(#{anchor})" in line]


def _to_history(block: str) -> str:
    """A block of RESULTS.md as it reads one folder down: relative links get ``../``."""
    return re.sub(r"\]\((?![a-z]+:|#|/)", "](../", block)


def record(key: str, block: str, *, section: str, history: str, results: Path = RESULTS) -> list[str]:
    """Put ``block`` (one run's heading, command and tables) into ``results`` under ``key``.

    Returns (and prints) the summary rows that quote the section the run is now in."""
    results = Path(results)
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    begin = f"<!-- run: {key} -->"
    new = f"{begin}\n{block.strip()}\n{END}"
    at = text.find(begin + "\n")
    if at >= 0:  # a newer run of the same benchmark: the old one goes to history/
        stop = text.index(END, at)
        old = text[at + len(begin) + 1:stop].strip()
        text = text[:at] + new + text[stop + len(END):]
        past = results.parent / "history" / history
        before = past.read_text(encoding="utf-8") if past.exists() else \
            HISTORY_HEAD.format(name=Path(history).stem)
        moved = f"<!-- moved from RESULTS.md on {dt.date.today()}: replaced by a newer run -->"
        atomic_write(past, f"{before.rstrip()}\n\n{moved}\n{_to_history(old)}\n".encode())
        where = f"replaced the run {key!r} in {results.name}; the old one is at the end of history/{history}"
    else:
        head = f"\n## {section}\n"
        if head in text:  # at the end of that section
            start = text.index(head) + len(head)
            nxt = text.find("\n## ", start)
            nxt = len(text) if nxt < 0 else nxt
            text = f"{text[:nxt].rstrip()}\n\n{new}\n{text[nxt:]}"
        else:  # a new section, before the history list
            hist = text.find("\n## History\n")
            hist = len(text) if hist < 0 else hist
            text = f"{text[:hist].rstrip()}\n{head}\n{new}\n{text[hist:]}"
        where = f"added the run {key!r} to {results.name}"
    if not text.endswith("\n"):
        text += "\n"
    atomic_write(results, text.encode())
    headings = re.findall(r"^## (.+)$", text[:text.index(begin)], flags=re.M)
    heading = headings[-1] if headings else section
    rows = summary_rows(text, slug(heading))
    print(f"{where}, section {heading!r}.")
    if rows:
        print("Summary rows that quote this section (check their numbers against the new table):")
        for row in rows:
            print("  " + row)
    else:
        print("No summary row quotes this section; add one if the run backs a claim.")
    return rows
