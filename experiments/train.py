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

import sys

from absl import app, flags, logging

from nfnets_jax.training import config as config_lib

flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"], "Call jax.distributed.initialize()."
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (manual multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (manual multi-host).")
flags.DEFINE_integer("process_id", None, "Rank of this process (manual multi-host).")
FLAGS = flags.FLAGS

_CONFIG: list = []  # filled before absl parses the remaining flags


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        _fail("--workdir is required (checkpoints, logs and metrics go there).")
    # Imported after flag parsing: JAX and TensorFlow are slow to import.
    import jax

    from nfnets_jax.training import distributed, loop
    from nfnets_jax.training.checkpoint import CheckpointError

    try:
        distributed.initialize(
            FLAGS.distributed,
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    except ValueError as error:
        _fail(str(error))
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)
    try:
        result = loop.train_and_evaluate(_CONFIG[0], FLAGS.workdir)
    except config_lib.ConfigError as error:
        _fail(str(error))
    except (loop.NonFiniteLossError, CheckpointError) as error:
        _fail(str(error), code=1)
    if "eval" in result:
        logging.info("Final evaluation: %s", result["eval"])


def run(argv: list[str]) -> None:
    """Parses `--config` and its overrides, then hands the other flags to absl."""
    from experiments import configs

    try:
        spec, overrides, rest = config_lib.split_config_args(argv)
        config = configs.load_config(spec)
        config_lib.apply_overrides(config, overrides)
    except config_lib.ConfigError as error:
        _fail(str(error))
    _CONFIG.append(config)
    app.run(main, argv=rest)


if __name__ == "__main__":
    run(sys.argv)
