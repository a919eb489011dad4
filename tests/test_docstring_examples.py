"""Every ``>>>`` docstring example of nfnets_jax, experiments, launch, benchmarks runs right.

Modules are discovered from the source tree (``pkgutil.iter_modules``, recursively, so
nothing is imported to find them) and only those whose source has a ``>>>`` line are
imported. That keeps the command-line modules that define absl flags at import
(``experiments/train.py``, ``experiments/signal_prop.py``) out of the test process, where
two definitions of one flag name would clash; none of them has examples.

Examples that need what a test cannot have (DeepMind's released weights, ImageNet tars,
a finished training run) are marked ``# doctest: +SKIP``; everything else must run.
"""

from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("nfnets_jax", "experiments", "launch", "benchmarks")
OPTIONFLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
# A line that starts a doctest example.
PROMPT = re.compile(r"^\s*>>>", flags=re.M)
# Bounds for the whole collection (272 examples run and 17 skipped in 40 modules when
# this was written): a broken discovery cannot pass by checking nothing, and skips
# cannot quietly take over.
MIN_RUN = 250
MAX_SKIPPED = 20


def _walk(path: pathlib.Path, prefix: str):
    for info in pkgutil.iter_modules([str(path)]):
        name = prefix + info.name
        if info.ispkg:
            yield name, path / info.name / "__init__.py"
            yield from _walk(path / info.name, name + ".")
        elif info.name != "__main__":  # running it would start a command-line tool.
            yield name, path / f"{info.name}.py"


def all_modules() -> dict[str, pathlib.Path]:
    """Every module of the packages: dotted name -> source file."""
    modules = {}
    for package in PACKAGES:
        modules[package] = ROOT / package / "__init__.py"
        modules.update(_walk(ROOT / package, package + "."))
    return modules


def prompt_count(file: pathlib.Path) -> int:
    """Number of ``>>>`` lines in a source file."""
    return len(PROMPT.findall(file.read_text()))


MODULES = sorted(name for name, file in all_modules().items() if prompt_count(file))


def _examples(module) -> tuple[int, int]:
    """``(examples found by doctest, of which skipped)`` in a module's docstrings."""
    found = skipped = 0
    for test in doctest.DocTestFinder().find(module):
        for example in test.examples:
            found += 1
            skipped += bool(example.options.get(doctest.SKIP, False))
    return found, skipped


def test_discovery_sees_the_packages():
    modules = all_modules()
    # Packages and plain modules, in both trees.
    for name in ("nfnets_jax", "nfnets_jax.optim.agc", "experiments.configs.nfnet"):
        assert name in modules
        assert modules[name].is_file()
    # Modules with examples in every area.
    for name in (
        "nfnets_jax.data.preprocess",
        "nfnets_jax.models.nfnet",
        "nfnets_jax.optim.agc",
        "nfnets_jax.training.losses",
        "nfnets_jax.data.imagenet",
    ):
        assert name in MODULES
    # The absl-flag CLIs have no examples, so they are never imported here.
    assert "experiments.train" in modules and "experiments.train" not in MODULES


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    found, skipped = _examples(module)
    # Every ">>>" line of the source is an example doctest reaches (none hides in a
    # docstring doctest does not collect, e.g. of a nested function).
    prompts = prompt_count(all_modules()[module_name])
    assert found == prompts, (
        f"doctest finds {found} examples in {module_name} but its source has {prompts} "
        "'>>>' lines: some docstring is out of doctest's reach (e.g. a nested function's)."
    )
    result = doctest.testmod(module, optionflags=OPTIONFLAGS)
    assert result.failed == 0
    assert result.attempted == found - skipped


def test_the_collection_runs_enough_examples():
    found = skipped = 0
    for name in MODULES:
        module_found, module_skipped = _examples(importlib.import_module(name))
        found += module_found
        skipped += module_skipped
    assert found - skipped >= MIN_RUN
    assert skipped <= MAX_SKIPPED
