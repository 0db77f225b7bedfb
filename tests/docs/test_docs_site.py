"""The documentation site (mkdocs.yml): `mkdocs build --strict` passes, so a broken link or
anchor, a page missing from the nav or a nav entry without its page, and a docstring griffe
cannot parse all fail here; the API pages are generated from the docstrings; the site
fetches nothing from the network; every public function and class the API pages show has a
docstring."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for name in ("mkdocs", "mkdocstrings", "material", "griffe"):
    pytest.importorskip(name, reason="the docs extra is not installed: pip install -e '.[docs]' (in dev)")


def _reference_modules() -> list[str]:
    return [m for page in sorted((ROOT / "docs" / "reference").glob("*.md"))
            for m in re.findall(r"^::: (\S+)", page.read_text(), re.M)]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    warnings = [line for line in run.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert run.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(warnings or [run.stderr[-3000:]])
    return out


def test_every_docs_page_is_built(site):
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert (site / page.with_suffix(".html").name).is_file(), page.name
    assert (site / "repo" / "benchmarks" / "RESULTS.html").is_file()  # linked from docs/benchmarks.md


def test_api_pages_come_from_the_docstrings(site):
    from attnguide import GuidedAttention

    core = (site / "reference" / "core.html").read_text()
    assert "attnguide.core.guide.GuidedAttention" in core
    first = GuidedAttention.__doc__.strip().splitlines()[0].split("`")[0][:30]
    assert first and first in core
    engine = (site / "reference" / "engine.html").read_text()
    assert "parse_loggers" in engine and "open_loggers" in engine


def test_the_site_loads_nothing_from_the_network(site):
    remote = re.compile(r"<(?:link|script|img)[^>]+(?:href|src)=\"(?:https?:)?//[^\"]+\"")
    found = {str(p.relative_to(site)): remote.findall(p.read_text(errors="replace"))
             for p in site.rglob("*.html")}
    assert {k: v for k, v in found.items() if v} == {}
    assert not any("fonts.googleapis" in p.read_text(errors="replace") for p in site.rglob("*.css"))


def test_public_functions_and_classes_have_docstrings():
    import griffe

    package = griffe.load("attnguide", search_paths=[str(ROOT)], allow_inspection=False)
    missing = []
    for path in _reference_modules():
        module = package if path == "attnguide" else package[path.removeprefix("attnguide.")]
        for name, member in module.members.items():
            if name.startswith("_") or member.is_alias:
                continue
            if member.kind.value in ("function", "class") and not member.docstring:
                missing.append(member.path)
    assert missing == [], "add a docstring to: " + ", ".join(missing)


def test_every_module_has_an_api_page():
    shown = set(_reference_modules())
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "attnguide").rglob("*.py")
               if p.name != "__init__.py" and not p.name.startswith("_") and p.parent.name != "cli"}
    assert sorted(modules - shown) == [], "list these modules in a docs/reference/ page"
