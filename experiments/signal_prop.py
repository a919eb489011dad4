"""Signal Propagation Plots of models at initialization (arXiv:2101.08692, Figure 1).

Usage:

    python -m experiments.signal_prop --models=resnet50_bn,nf_resnet50,resnet50_gn_pn \\
        --out=/tmp/spp [--batch_size=16 --image_size=224 --seed=0]

Each entry of ``--models`` is a preset name (``experiments.configs.PRESETS``) or a config
file ``path.py[:arg]``, optionally labelled ``label=spec``. Writes
``OUT/signal_propagation.png`` (average channel squared mean, average channel variance
and residual-branch variance per block, one line per model) and
``OUT/signal_propagation.json`` (the plotted numbers). The computation lives in
``nfnets_jax.models.signal_prop_plots``.
"""

from __future__ import annotations

import os

from absl import app, flags

from nfnets_jax import cli
from nfnets_jax.errors import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["resnet50_bn", "nf_resnet50"], "Presets or config files to plot.")
flags.DEFINE_string("out", None, "Output directory for the PNG and JSON.")
flags.DEFINE_integer("batch_size", 16, "Number of unit-Gaussian input images.")
flags.DEFINE_integer("image_size", 224, "Input side in pixels.")
flags.DEFINE_integer("seed", 0, "Seed of the parameters and the inputs.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's and XLA's start-up messages.")
flags.DEFINE_bool(
    "active_branches",
    True,
    "Start residual branches switched on (no zero-init / skip_gain 1), as in the paper's "
    "plots; --noactive_branches keeps each preset's own initialization.",
)


def run(
    specs: list[str],
    out: str,
    *,
    batch_size: int = 16,
    image_size: int = 224,
    seed: int = 0,
    active_branches: bool = True,
) -> str:
    """Computes and plots the SPPs of `specs`; returns the PNG path."""
    from experiments import configs
    from nfnets_jax.models import signal_prop_plots

    if not specs:
        raise ConfigError("--models is empty: name at least one preset or config file.")
    for name, value in (("batch_size", batch_size), ("image_size", image_size)):
        if value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}.")
    profiles = []
    for spec in specs:
        label, _, source = spec.rpartition("=") if "=" in spec else ("", "", spec)
        config = configs.load_config(source)
        profiles.append(
            signal_prop_plots.profile_from_config(
                config,
                label or source,
                batch_size=batch_size,
                image_size=image_size,
                seed=seed,
                active_branches=active_branches,
            )
        )
        print(f"{profiles[-1].name}: {profiles[-1].num_blocks} blocks", flush=True)
    os.makedirs(out, exist_ok=True)
    png = os.path.join(out, "signal_propagation.png")
    signal_prop_plots.plot_signal_propagation(
        profiles, png, title=f"Signal propagation at initialization ({image_size} px, N(0, 1))"
    )
    signal_prop_plots.save_profiles(profiles, os.path.join(out, "signal_propagation.json"))
    print(f"Wrote {png}", flush=True)
    return png


def _main(argv) -> None:
    if len(argv) > 1:
        raise ConfigError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.out:
        raise ConfigError("--out=DIR is required (the PNG and JSON are written there).")
    run(
        FLAGS.models,
        FLAGS.out,
        batch_size=FLAGS.batch_size,
        image_size=FLAGS.image_size,
        seed=FLAGS.seed,
        active_branches=FLAGS.active_branches,
    )


def main(argv) -> int:
    cli.quiet_console(FLAGS.verbose)
    return cli.run_main(lambda: _main(argv))


if __name__ == "__main__":
    app.run(main)
