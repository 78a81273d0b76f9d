"""The documentation: the README stays a short front door, and the topic pages under docs/ build into a site
with MkDocs in strict mode, so a broken link or anchor, or a page left out of the nav, fails CI.

mkdocs.yml turns those cases into warnings (its ``validation`` block) and ``strict: true`` makes a warning an
error; the tests below build the real site, and prove the strictness by breaking a copy of it.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
README = REPO / "README.md"
README_MAX_LINES = 150

pytest.importorskip("mkdocs", reason="MkDocs not installed (pip install -e '.[docs]'; scripts/test.sh does)")


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of the site whose mkdocs.yml is in ``root``, into ``site``."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=root, capture_output=True, text=True, timeout=300)


def nav_pages() -> list[str]:
    """Every page the nav of mkdocs.yml lists, as a path under docs/."""
    import yaml  # a dependency of MkDocs

    def walk(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [p for item in node for p in walk(item)]
        if isinstance(node, dict):
            return [p for value in node.values() for p in walk(value)]
        return []

    return walk(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])


def anchors(page: Path) -> set[str]:
    """The heading ids of a page, made as MkDocs makes them (Python-Markdown's toc extension)."""
    import markdown

    md = markdown.Markdown(extensions=["toc", "tables", "fenced_code"])
    md.convert(page.read_text())

    def ids(tokens) -> list[str]:
        return [i for t in tokens for i in [t["id"], *ids(t["children"])]]

    return set(ids(md.toc_tokens))


def test_site_builds_strictly(tmp_path):
    r = build(REPO, tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
    assert (tmp_path / "site" / "demo.png").is_file()  # pictures travel with the pages


@pytest.mark.parametrize("broken, says", [
    ("[a page that is not there](no-such-page.md)", "no-such-page.md"),
    ("[an anchor that is not there](architecture.md#no-such-heading)", "no-such-heading"),
    ("[an anchor on this page that is not there](#nowhere)", "nowhere"),
    ("[a file outside docs/](../README.md)", "README.md"),
])
def test_strict_build_fails_on_a_broken_link(tmp_path, broken, says):
    """The same site with one broken link in one page: the build fails and names the link."""
    root = tmp_path / "copy"
    shutil.copytree(DOCS, root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    page = root / "docs" / "kernels.md"
    page.write_text(page.read_text() + f"\n{broken}\n")
    r = build(root, tmp_path / "site")
    assert r.returncode != 0, r.stdout + r.stderr
    assert says in r.stdout + r.stderr


def test_strict_build_fails_on_a_page_missing_from_the_nav(tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(DOCS, root / "docs")
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    (root / "docs" / "forgotten.md").write_text("# A page nobody can reach\n")
    r = build(root, tmp_path / "site")
    assert r.returncode != 0, r.stdout + r.stderr
    assert "forgotten.md" in r.stdout + r.stderr


def test_every_page_is_in_the_nav():
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    listed = nav_pages()
    assert sorted(pages - set(listed)) == [], "pages under docs/ that the nav of mkdocs.yml leaves out"
    assert sorted(set(listed) - pages) == [], "nav entries of mkdocs.yml with no page under docs/"
    assert len(listed) == len(set(listed)), "a page listed twice in the nav"


def test_readme_is_short_and_its_doc_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\((docs/[^)#\s]*)(?:#([^)\s]+))?\)", text)
    assert len(links) >= 10, "the README links to the topic pages"
    for target, anchor in links:
        path = REPO / target
        assert path.is_file(), f"README links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(path), f"README links to {target}#{anchor}: no such heading there"
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert images and all((REPO / i).is_file() for i in images), images


def test_readme_keeps_the_two_commands():
    text = README.read_text()
    assert "bash scripts/main.sh " in text and "bash scripts/test.sh " in text


def python_api_block(text: str) -> str:
    start = text.index("# Python: a PIL image")
    return text[start:text.index("```", start)]


def test_readme_python_block_is_the_usage_page_block():
    """The README's Python block is run by tests/test_api_inputs.py; the usage page shows the same text."""
    assert python_api_block(README.read_text()) == python_api_block((DOCS / "usage.md").read_text())


# Code paths the pages name (`facecomp/train/step.py`): MkDocs cannot check them (they are not pages), so
# this does. Only paths under the repository's own top-level folders; {a,b} and * are expanded.
TOP = ("facecomp/", "kernels/", "export/", "cluster/", "slurm/", "scripts/", "bench/", "tests/", "configs/",
       "training/", "docs/")


def _expand(path: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(",") for q in _expand(path[:m.start()] + alt + path[m.end():])]


def code_paths(text: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold commands, not references
    spans = re.findall(r"`([^`\s]+)`", prose)
    return [s for s in spans if s.startswith(TOP)]


@pytest.mark.parametrize("page", sorted(itertools.chain([README], DOCS.rglob("*.md"))), ids=lambda p: p.name)
def test_code_paths_named_in_the_docs_exist(page):
    missing = []
    for path in code_paths(page.read_text()):
        for one in _expand(path.rstrip(",.;:")):
            if not (any(REPO.glob(one)) if "*" in one else (REPO / one).exists()):
                missing.append(one)
    assert not missing, f"{page.name} names paths that are not in the repository: {missing}"
