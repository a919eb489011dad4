"""Builds the documentation site of nfnets_jax: the guides and the API reference.

Usage (from the repository root):

    python docs/build.py [--out=site]
    python -m http.server -d site   # then open http://localhost:8000

The API reference covers the public API (each package's ``__all__``): models, AGC and
the optimizers, data pipelines, weights, pretrained models and the training runner, with
the Google-style docstrings rendered by pdoc (https://pdoc.dev). The guides are the
Markdown pages of this directory (one per topic), rendered by pdoc's Markdown renderer
into ``guide/`` with the README, ARCHITECTURE.md and BENCHMARKS.md they link to; links
between them are rewritten to the site's pages, and every API page lists them in its
navigation. The test suite builds the site too (tests/test_api_docs.py), so the
reference cannot stop building and its links cannot break unnoticed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import warnings
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("nfnets_jax",)
TEMPLATES = pathlib.Path(ROOT, "docs", "templates")
# The guides in reading order; a docs/*.md page not named here comes after them.
GUIDE_ORDER = (
    "pretrained",
    "training",
    "data",
    "models",
    "optim",
    "checkpoints",
    "deploy",
    "launching",
    "baselines",
)
# Repository pages the guides link to, rendered beside them: (source, page, title).
ROOT_PAGES = (
    ("README.md", "overview", "Overview"),
    ("ARCHITECTURE.md", "architecture", "Architecture"),
    ("BENCHMARKS.md", "benchmarks", "Benchmarks"),
)
_LINK = re.compile(r"\]\(([^)\s#]*)(#[^)\s]*)?\)")


class Guide(NamedTuple):
    """One Markdown page of the site."""

    source: str  # path relative to the repository root, e.g. 'docs/data.md'
    href: str  # path relative to the site root, e.g. 'guide/data.html'
    title: str  # shown in the navigation


def guides() -> list[Guide]:
    """The site's Markdown pages: the README first, the docs/ guides, then the others."""
    names = sorted(p.stem for p in pathlib.Path(ROOT, "docs").glob("*.md"))
    ordered = [n for n in GUIDE_ORDER if n in names] + [n for n in names if n not in GUIDE_ORDER]
    pages = [Guide(ROOT_PAGES[0][0], f"guide/{ROOT_PAGES[0][1]}.html", ROOT_PAGES[0][2])]
    for name in ordered:
        with open(os.path.join(ROOT, "docs", f"{name}.md"), encoding="utf-8") as f:
            heading = f.readline().removeprefix("# ").strip()
        pages.append(Guide(f"docs/{name}.md", f"guide/{name}.html", heading.split(":")[0]))
    pages += [Guide(src, f"guide/{page}.html", title) for src, page, title in ROOT_PAGES[1:]]
    return pages


def rewrite_links(text: str, source: str, pages: list[Guide]) -> str:
    """Points Markdown links between the site's pages at their HTML pages in ``guide/``.

    Links to other files of the repository, to URLs and to anchors of the same page are
    left as written.
    """
    by_source = {page.source: page for page in pages}

    def replace(match: re.Match) -> str:
        target, anchor = match[1], match[2] or ""
        if not target or "://" in target:
            return match[0]
        resolved = os.path.normpath(os.path.join(os.path.dirname(source), target))
        page = by_source.get(pathlib.PurePath(resolved).as_posix())
        return f"]({os.path.basename(page.href)}{anchor})" if page else match[0]

    return _LINK.sub(replace, text)


def build_guides(out: str, pages: list[Guide]) -> None:
    """Renders every Markdown page to ``out/guide/*.html`` in pdoc's frame."""
    import pdoc.render
    import pdoc.render_helpers

    template = pdoc.render.env.get_template("guide.html.jinja2")
    os.makedirs(os.path.join(out, "guide"), exist_ok=True)
    for page in pages:
        with open(os.path.join(ROOT, page.source), encoding="utf-8") as f:
            text = rewrite_links(f.read(), page.source, pages)
        html = pdoc.render_helpers.to_html(text)
        rendered = template.render(
            title=page.title,
            href=page.href,
            guides=pages,
            api_root=MODULES[0],
            body=html,
            toc=getattr(html, "toc_html", None),
        )
        with open(os.path.join(out, page.href), "w", encoding="utf-8") as f:
            f.write(rendered)


def build(out: str) -> list[str]:
    """Writes the site to `out`; returns the HTML pages written (relative paths)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Our modules are imported to read their docstrings; let them call `uname` (platform).
    os.environ.setdefault("PDOC_ALLOW_EXEC", "1")
    sys.path.insert(0, ROOT)
    import pdoc
    import pdoc.render

    pdoc.render.configure(
        docformat="google", show_source=True, search=True, template_directory=TEMPLATES
    )
    pages = guides()
    pdoc.render.env.globals["guides"] = pages
    with warnings.catch_warnings():
        # pdoc cannot resolve annotations that name TYPE_CHECKING-only imports; the
        # annotation is then shown as written, which is what a reader needs.
        warnings.filterwarnings("ignore", message="Error parsing type annotation")
        pdoc.pdoc(*MODULES, output_directory=pathlib.Path(out))
    build_guides(out, pages)
    written = []
    for folder, _, files in os.walk(out):
        written += [
            os.path.relpath(os.path.join(folder, f), out) for f in files if f.endswith(".html")
        ]
    return sorted(written)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="site", help="output directory (default: site)")
    args = parser.parse_args(argv)
    pages = build(args.out)
    print(f"Wrote {len(pages)} pages to {args.out}/ (open {args.out}/index.html).")


if __name__ == "__main__":
    main()
