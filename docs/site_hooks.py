"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``).

The pages of docs/ link to a few files of the repository outside docs/ (benchmarks/RESULTS.md,
benchmarks/voc2012/README.md) so that they work on a code host and in an editor. A site
holds only what is under docs_dir, so these hooks copy each such file into the site under
``repo/<path>`` (Markdown as a page, pictures as files) and point the links there. Inside a
copied page, a link to a docs page goes to that page, a link to a picture is copied along,
and a link to anything else of the repository becomes its text plus the path (the site has
no copy of it; no link is left broken). The run markers the docs tests read after a code
block's language (```bash no-run) are dropped from the site's fences.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PREFIX = "repo"
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
PICTURES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")


def _targets(path: Path) -> list[tuple[str, Path, str]]:
    """(link, the repository file it names, #anchor) of the relative links of a Markdown file."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    out = []
    for match in LINK.finditer(text):
        target = match["target"]
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file, _, anchor = target.partition("#")
        out.append((target, (path.parent / file).resolve(), anchor))
    return out


def _outside(path: Path) -> bool:
    return path.is_file() and path.is_relative_to(ROOT) and not path.is_relative_to(DOCS)


def _copied() -> set[Path]:
    """The repository files the site carries: those docs pages link to outside docs/, and the
    pictures those Markdown files show."""
    files: set[Path] = set()
    for page in DOCS.rglob("*.md"):
        files |= {path for _, path, _ in _targets(page) if _outside(path)}
    for page in [f for f in files if f.suffix == ".md"]:
        files |= {path for _, path, _ in _targets(page)
                  if _outside(path) and path.suffix.lower() in PICTURES}
    return files


def _uri(path: Path) -> str:
    return f"{PREFIX}/{path.relative_to(ROOT).as_posix()}"


def on_files(files, config):
    for path in sorted(_copied()):
        uri = _uri(path)
        if path.suffix == ".md":
            files.append(File.generated(config, uri, content=path.read_text(encoding="utf-8")))
        else:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    # the docs tests' markers after a fence's language (```bash no-run, ```text file=...) are
    # not part of the language; Python-Markdown would not see a fence there
    markdown = re.sub(r"^(```[\w+-]+)[ \t]+\S.*$", r"\1", markdown, flags=re.M)
    uri = page.file.src_uri
    copied = _copied()
    if uri.startswith(PREFIX + "/"):
        source = ROOT / uri[len(PREFIX) + 1:]
    else:
        source = DOCS / uri

    def relink(match: re.Match) -> str:
        target = match["target"]
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return match[0]
        file, sep, anchor = target.partition("#")
        path = (source.parent / file).resolve()
        if path.is_relative_to(DOCS) and path.is_file():
            new = posixpath.relpath(path.relative_to(DOCS).as_posix(), posixpath.dirname(uri) or ".")
        elif path in copied:
            new = posixpath.relpath(_uri(path), posixpath.dirname(uri) or ".")
        else:  # a repository file the site does not carry
            where = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else file
            return f"{match['text']} (`{where}` in the repository)"
        return f"{match['bang']}[{match['text']}]({new}{sep}{anchor})"

    parts = re.split(r"(^```.*?^```)", markdown, flags=re.M | re.S)  # code blocks stay as they are
    return "".join(part if part.startswith("```") else LINK.sub(relink, part) for part in parts)


try:  # the docs extra installs griffe (mkdocstrings-python); the hooks need it only for this
    from griffe import Extension
except ImportError:  # pragma: no cover
    Extension = object  # type: ignore[misc,assignment]


class ExampleSections(Extension):
    """A griffe extension (mkdocs.yml: ``extensions: [docs/site_hooks.py:ExampleSections]``):
    the docstrings' ``Example:`` sections (torch-cam's style) are read like ``Examples:``, so
    their ``>>>`` lines show as code, not as Markdown text."""

    def on_instance(self, *, obj, **kwargs) -> None:
        doc = getattr(obj, "docstring", None)
        if doc is not None and "Example:" in doc.value:
            doc.value = re.sub(r"^(\s*)Example:\s*$", r"\1Examples:", doc.value, flags=re.M)
