"""The API reference site (docs/build.py) builds and documents the public API."""

import importlib.util
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_builder():
    spec = importlib.util.spec_from_file_location(
        "docs_build", os.path.join(REPO, "docs", "build.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_has_a_page_per_public_package_with_rendered_docstrings(tmp_path):
    pages = load_builder().build(str(tmp_path))
    packages = ["data", "models", "optim", "pretrained", "training", "checkpoints"]
    assert set(pages) >= {"index.html", "nfnets_jax.html"} | {
        f"nfnets_jax/{name}.html" for name in packages
    }
    optim = (tmp_path / "nfnets_jax" / "optim.html").read_text()
    anchors = set(re.findall(r'id="([A-Za-z_.]+)"', optim))
    assert {"adaptive_grad_clip", "build_optimizer", "mask_from_patterns"} <= anchors
    assert "arXiv:2102.06171" in optim  # the References section is rendered
    models = (tmp_path / "nfnets_jax" / "models.html").read_text()
    assert {"NFNet", "NFResNet", "NFRegNet", "ResNet", "ProxyNorm"} <= set(
        re.findall(r'id="([A-Za-z_]+)"', models)
    )
