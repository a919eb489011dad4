"""Builds the API reference of nfnets_jax from its docstrings into a static HTML site.

Usage (from the repository root):

    python docs/build.py [--out=site]
    python -m http.server -d site   # then open http://localhost:8000

The pages cover the public API (each package's ``__all__``): models, AGC and the
optimizers, data pipelines, weights, pretrained models and the training runner, with
the Google-style docstrings rendered by pdoc (https://pdoc.dev). The test suite builds
the site too (tests/test_api_docs.py), so the reference cannot stop building.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ("nfnets_jax",)


def build(out: str) -> list[str]:
    """Writes the site to `out`; returns the HTML pages written (relative paths)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Our modules are imported to read their docstrings; let them call `uname` (platform).
    os.environ.setdefault("PDOC_ALLOW_EXEC", "1")
    sys.path.insert(0, ROOT)
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="google", show_source=True, search=True)
    with warnings.catch_warnings():
        # pdoc cannot resolve annotations that name TYPE_CHECKING-only imports; the
        # annotation is then shown as written, which is what a reader needs.
        warnings.filterwarnings("ignore", message="Error parsing type annotation")
        pdoc.pdoc(*MODULES, output_directory=pathlib.Path(out))
    pages = []
    for folder, _, files in os.walk(out):
        pages += [
            os.path.relpath(os.path.join(folder, f), out) for f in files if f.endswith(".html")
        ]
    return sorted(pages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="site", help="output directory (default: site)")
    args = parser.parse_args(argv)
    pages = build(args.out)
    print(f"Wrote {len(pages)} pages to {args.out}/ (open {args.out}/index.html).")


if __name__ == "__main__":
    main()
