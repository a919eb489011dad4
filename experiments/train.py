r"""Trains and evaluates a model: `python -m experiments.train --config=NAME`.

Examples:

    # The offline quickstart: a narrow NFNet on scikit-learn's digits, a few minutes on CPU.
    python -m experiments.train --config=nfnet_demo --workdir=/tmp/nfnet_demo

    # NFNet-F0 on ImageNet with DeepMind's recipe, bigger eval batches, shard_map.
    python -m experiments.train --config=nfnet_f0 --workdir=gs://bucket/f0 \
        --config.eval_batch_size=2048 --config.parallelism=shard_map

    # A config file of your own, with its argument.
    python -m experiments.train --config=path/to/my_config.py:F1 --workdir=/tmp/run

Rerunning with the same `--workdir` resumes from the newest checkpoint. On a multi-host
TPU pod or a SLURM cluster, start the same command on every host (see launch/).
"""

from __future__ import annotations

import functools
import sys

from absl import app, flags, logging

from nfnets_jax import cli, host_memory

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"], "Call jax.distributed.initialize()."
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (manual multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (manual multi-host).")
flags.DEFINE_integer("process_id", None, "Rank of this process (manual multi-host).")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's and XLA's start-up messages.")
FLAGS = flags.FLAGS

_CONFIG: list = []  # filled before absl parses the remaining flags


def _train(argv: list[str]) -> None:
    from nfnets_jax.training import config as config_lib

    if len(argv) > 1:
        raise config_lib.ConfigError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        raise config_lib.ConfigError(
            "--workdir is required (checkpoints, logs and metrics go there)."
        )
    # Imported after flag parsing: JAX and TensorFlow are slow to import.
    import jax

    from nfnets_jax.training import distributed, loop

    distributed.initialize(
        FLAGS.distributed,
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
    )
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)
    loop.train_and_evaluate(_CONFIG[0], FLAGS.workdir)


def main(argv: list[str]) -> int:
    return cli.run_main(functools.partial(_train, argv))


def run(argv: list[str]) -> None:
    """Reads `--config` and its overrides (with config_flags), then hands the rest to absl."""
    cli.quiet_console(cli.wants_verbose(argv))
    # Opt-in (NFNETS_JAX_KEEP_HOST_MEMORY=1), before JAX starts its CPU threads: XLA:CPU's
    # large step buffers are then reused instead of page-faulted in at every step
    # (nfnets_jax/host_memory.py says when that pays off).
    if host_memory.requested() and host_memory.cpu_only_host():
        host_memory.keep_host_memory()
    rest: list[str] = []

    def load() -> None:
        # Imported after quiet_console: they load TensorFlow.
        from experiments import configs

        config, remaining = configs.config_from_argv(argv)
        _CONFIG.append(config)
        rest.extend(remaining)

    status = cli.run_main(load)
    if status:
        sys.exit(status)
    app.run(main, argv=rest)


if __name__ == "__main__":
    run(sys.argv)
