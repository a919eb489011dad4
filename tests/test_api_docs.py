"""The documentation site (docs/build.py) builds: the public API and the guides, linked."""

import html
import importlib.util
import os
import pathlib
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDES = sorted(pathlib.Path(REPO, "docs").glob("*.md"))
ROOT_PAGES = ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md"]


def load_builder():
    spec = importlib.util.spec_from_file_location(
        "docs_build", os.path.join(REPO, "docs", "build.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    return out, load_builder().build(str(out))


def ids(page: pathlib.Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text()))


def test_site_has_a_page_per_public_package_with_rendered_docstrings(site):
    out, pages = site
    packages = ["data", "models", "optim", "pretrained", "training", "checkpoints"]
    assert set(pages) >= {"index.html", "nfnets_jax.html"} | {
        f"nfnets_jax/{name}.html" for name in packages
    }
    optim = (out / "nfnets_jax" / "optim.html").read_text()
    anchors = set(re.findall(r'id="([A-Za-z_.]+)"', optim))
    assert {"adaptive_grad_clip", "build_optimizer", "mask_from_patterns"} <= anchors
    assert "arXiv:2102.06171" in optim  # the References section is rendered
    models = (out / "nfnets_jax" / "models.html").read_text()
    assert {"NFNet", "NFResNet", "NFRegNet", "ResNet", "ProxyNorm"} <= set(
        re.findall(r'id="([A-Za-z_]+)"', models)
    )


def test_every_guide_is_rendered_and_listed_on_every_page(site):
    out, pages = site
    assert len(GUIDES) >= 8
    guides = [f"guide/{g.stem}.html" for g in GUIDES]
    guides += ["guide/overview.html", "guide/architecture.html", "guide/benchmarks.html"]
    assert set(pages) == set(guides) | {p for p in pages if not p.startswith("guide/")}
    for name in pages:
        if name == "index.html":  # pdoc's redirect to nfnets_jax.html
            continue
        page = out / name
        up = "../" * name.count("/")
        links = set(re.findall(r'href="([^"]+)"', page.read_text()))
        assert {up + g for g in guides} <= links, name
    # The guide's own text, with its tables and highlighted code, is on its page.
    optim = (out / "guide" / "optim.html").read_text()
    assert 'class="pdoc-code codehilite"' in optim and "NFNET_NO_CLIP_PATTERNS" in optim
    training = (out / "guide" / "training.html").read_text()
    assert "<table>" in training and "<h1" in training and "nfnet_f0_finetune" in training
    assert 'href="../nfnets_jax.html"' in training  # back to the API reference


def test_links_between_pages_resolve_in_the_site(site):
    """Every relative link of a rendered Markdown page reaches a page (and its anchor)."""
    out, _ = site
    checked = 0
    for page in sorted((out / "guide").glob("*.html")):
        for href in re.findall(r'href="([^"]+)"', page.read_text()):
            href = html.unescape(href)
            if "://" in href:
                continue
            target, _, anchor = href.partition("#")
            if page.stem in ("architecture", "benchmarks") and not target.endswith(".html"):
                continue  # maintained elsewhere; links into the checkout stay as on GitHub
            path = (page.parent / target).resolve() if target else page
            assert path.is_file(), f"{page.name}: {href}"
            if anchor:
                assert anchor in ids(path), f"{page.name}: {href}"
            checked += 1
    assert checked > 100


def test_links_are_rewritten_to_the_site_pages():
    builder = load_builder()
    pages = builder.guides()
    text = (
        "[a](training.md#multi-host) [b](../BENCHMARKS.md) [c](#local) "
        "[d](../launch/slurm.py) [e](https://arxiv.org/abs/2102.06171) [f](docs/data.md)"
    )
    assert builder.rewrite_links(text, "docs/models.md", pages) == (
        "[a](training.html#multi-host) [b](benchmarks.html) [c](#local) "
        "[d](../launch/slurm.py) [e](https://arxiv.org/abs/2102.06171) [f](docs/data.md)"
    )
    assert builder.rewrite_links("[f](docs/data.md#sources)", "README.md", pages) == (
        "[f](data.html#sources)"
    )
    assert [p.href for p in pages[:3]] == [
        "guide/overview.html",
        "guide/pretrained.html",
        "guide/training.html",
    ]


def github_anchors(markdown: str) -> set[str]:
    """The ids GitHub gives a Markdown page's headings."""
    anchors = set()
    prose = re.sub(r"```.*?```", "", markdown, flags=re.S)  # a "# comment" is no heading
    for heading in re.findall(r"^#{1,6} (.+)$", prose, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_markdown_links_resolve_on_github():
    """The same links, as GitHub shows the Markdown files: files exist, anchors are headings."""
    checked = 0
    for source in [pathlib.Path(REPO, p) for p in ROOT_PAGES[:1]] + GUIDES:
        text = source.read_text()
        for target, anchor in re.findall(r"\]\(([^)\s#]*)(?:#([^)\s]*))?\)", text):
            if "://" in target:
                continue
            path = (source.parent / target).resolve() if target else source
            assert path.exists(), f"{source.name}: {target}"
            if anchor:
                assert anchor in github_anchors(path.read_text()), f"{source.name}: #{anchor}"
            checked += 1
    assert checked > 30


def test_the_readme_names_every_guide():
    readme = pathlib.Path(REPO, "README.md").read_text()
    for guide in GUIDES:
        assert f"](docs/{guide.name})" in readme, guide.name
