"""Named experiment presets and config loading for `--config=NAME` or `path.py[:arg]`.

The entry points read their config with :func:`config_from_argv`: `--config=SPEC` (a
preset name, or a config file `path.py[:arg]`) is built here, and its `--config.a.b=value`
overrides go to `ml_collections.config_flags` (`nfnets_jax.training.config`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from nfnets_jax.training import config as config_lib
from nfnets_jax.training.config import ConfigError

_NFNET_VARIANTS = [f"F{i}" for i in range(8)]
_NF_RESNET_DEPTHS = (26, 50, 101, 152, 200, 288, 600)
_NF_REGNET_VARIANTS = [f"B{i}" for i in range(9)]

# preset name -> (config module in this package, argument of its get_config).
PRESETS: dict[str, tuple[str, str | None]] = {
    **{f"nfnet_{v.lower()}": ("nfnet", v) for v in _NFNET_VARIANTS},
    **{f"nfnet_{v.lower()}_plus": ("nfnet", v + "+") for v in _NFNET_VARIANTS},
    **{f"nf_resnet{d}": ("nf_resnet", f"ResNet{d}") for d in _NF_RESNET_DEPTHS},
    **{f"nf_regnet_{v.lower()}": ("nf_regnet", v) for v in _NF_REGNET_VARIANTS},
    "nfnet_demo": ("demo", None),
    # Normalized baselines (BN, GN + Proxy Norm, LN + Proxy Norm) and Bag of Tricks.
    "resnet50_bn": ("resnet", "bn"),
    "resnet50_gn_pn": ("resnet", "gn_pn"),
    "resnet50_ln_pn": ("resnet", "ln_pn"),
    **{f"bot_{v}": ("bag_of_tricks", v) for v in ("baseline", "efficient", "refined")},
    "bot_refined_mixup": ("bag_of_tricks", "refined_mixup"),
    # Fine-tuning from DeepMind's released weights (F0..F6 only were released).
    **{f"nfnet_{v.lower()}_finetune": ("finetune", v) for v in _NFNET_VARIANTS[:7]},
}


def _call_get_config(module, arg: str | None, origin: str) -> ml_collections.ConfigDict:
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{origin} has no get_config() function.")
    try:
        return module.get_config(arg) if arg is not None else module.get_config()
    except ValueError as error:
        raise ConfigError(f"{origin}: {error}") from None


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Builds the config named by `spec`.

    Args:
      spec: a preset name (`nfnet_f0`, `nfnet_f3_plus`, `nf_resnet50`, `nf_regnet_b2`,
        `nfnet_demo`, ...; see `PRESETS`) or a config file `path/to/file.py[:arg]` whose
        `get_config(arg)` returns a `ConfigDict`.

    Raises:
      ConfigError: unknown preset (with close matches), missing file, or a file without
        `get_config`.
    """
    if not spec:
        raise ConfigError(
            "No config given: pass --config=NAME (e.g. nfnet_demo, nfnet_f0) or "
            "--config=path/to/config.py[:arg]."
        )
    if spec in PRESETS:
        module_name, arg = PRESETS[spec]
        module = importlib.import_module(f"experiments.configs.{module_name}")
        return _call_get_config(module, arg, f"preset {spec!r}")
    path, _, arg = spec.partition(":")
    if path.endswith(".py"):
        if not os.path.isfile(path):
            raise ConfigError(f"Config file {path!r} does not exist.")
        module_spec = importlib.util.spec_from_file_location("_user_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return _call_get_config(module, arg or None, f"config file {path!r}")
    close = difflib.get_close_matches(spec, PRESETS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"Unknown config {spec!r}.{hint} Presets: {', '.join(PRESETS)}; or pass a file "
        "path/to/config.py[:arg]."
    )


def pop_config_spec(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Takes `--config=SPEC` (or `--config SPEC`) out of a command line.

    absl's config flag holds a `ConfigDict`, not a preset name: the config is built from
    SPEC with :func:`load_config`, and the rest of the command line (overrides included)
    goes to `config_lib.parse_config_flags`.

    Returns:
      `(spec, rest)`: the last SPEC given (None if none), and `argv` without it.
    """
    flag = f"--{config_lib.CONFIG_FLAG}"
    spec, rest = None, list(argv[:1])
    args = iter(argv[1:])
    for arg in args:
        if arg in (flag, flag[1:]):
            spec = next(args, "")
        elif arg.startswith((flag + "=", flag[1:] + "=")):
            spec = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return spec, rest


def config_from_argv(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The config a command line names (`--config=SPEC`), with its overrides applied.

    Args:
      argv: the command line, program name first: `--config=NAME` or
        `--config=path.py[:arg]`, any `--config.a.b=value`, and other arguments.

    Returns:
      `(config, rest)`: the config, and `argv` without `--config` and its overrides.

    Raises:
      ConfigError: no or an unknown config (with close matches), an unknown key, or a
        value of the wrong type.
    """
    spec, rest = pop_config_spec(argv)
    config = load_config(spec)
    return config, config_lib.parse_config_flags(config, rest)
