"""One process of a multi-host test run (see test_multihost.py).

`python -m tests.training.multihost_worker PROCESS_ID PORT OUTDIR` joins a 2-process JAX
cluster on localhost (2 CPU devices each), trains the tiny NFNet for a few steps on fixed
global batches with both parallelisms, checkpoints with orbax from both processes, and
process 0 writes the final parameters to OUTDIR/<parallelism>.npz. Then both processes
restore the newest checkpoint with a read failure injected on process 1 only, and each
writes what it restored to OUTDIR/restore_<process>.json.
"""

import json
import os
import sys

NUM_STEPS = 3
GLOBAL_BATCH = 16


def global_batches(num_steps=NUM_STEPS, size=16):
    import numpy as np

    rng = np.random.default_rng(7)
    return [
        {
            "images": rng.normal(size=(GLOBAL_BATCH, size, size, 3)).astype(np.float32),
            "labels": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32),
        }
        for _ in range(num_steps)
    ]


def train_fixed_steps(parallelism, checkpoint_dir=None):
    """Trains the tiny config on `global_batches()`; each process feeds its own rows."""
    import jax

    from nfnets_jax import data
    from nfnets_jax.training import checkpoint, parallel, startup, step
    from tests.training.tiny import tiny_config

    config = tiny_config(parallelism=parallelism)
    mapper = parallel.DeviceMapper(parallelism)
    plan = startup.plan_run(config, mapper)
    setup = startup.build_setup(config, plan, mapper)
    state = jax.jit(setup.init, out_shardings=mapper.replicated)(
        jax.random.PRNGKey(0), jax.numpy.zeros((1, 16, 16, 3))
    )
    train_step = step.make_train_step(
        setup.train_model.apply,
        setup.optimizer,
        num_classes=10,
        learning_rate_fn=setup.learning_rate_fn,
        label_smoothing=0.1,
        ema_decay=0.99999,
    )
    fn = mapper.map_train_step(train_step)
    device_state = mapper.to_device_state(state)
    rows = GLOBAL_BATCH // jax.process_count()
    start = jax.process_index() * rows
    checkpointer = checkpoint.Checkpointer(checkpoint_dir) if checkpoint_dir else None
    for index, batch in enumerate(global_batches()):
        local = {k: v[start : start + rows] for k, v in batch.items()}
        if parallelism == "pmap":
            local = {
                k: v.reshape((mapper.num_local_devices, -1) + v.shape[1:]) for k, v in local.items()
            }
        # The pipeline's placement (each process contributes its rows of a global batch).
        with data.prefetch_to_device([local], size=1, sharding=mapper.batch_sharding) as placed:
            device_state, metrics = fn(device_state, next(placed))
        if checkpointer is not None and index + 1 in (1, NUM_STEPS):  # an older one too
            checkpointer.save(
                index + 1, mapper.from_device_state(device_state), {"step": index + 1}
            )
    final = mapper.from_device_state(device_state)
    if checkpointer is not None:
        checkpointer.wait()
        final, _ = checkpointer.restore(NUM_STEPS, setup.abstract_state)
        checkpointer.close()
    return parallel.host_copy(final), float(metrics["loss"])


def restore_with_a_failure_on_process_1(checkpoint_dir, failing_steps):
    """`Checkpointer.restore_latest` when orbax cannot read `failing_steps` on process 1.

    Returns what this process got: the restored step, or the error message.
    """
    import jax
    import orbax.checkpoint as ocp

    from nfnets_jax.training import checkpoint, parallel, startup
    from tests.training.tiny import tiny_config

    config = tiny_config()
    mapper = parallel.DeviceMapper()
    setup = startup.build_setup(config, startup.plan_run(config, mapper), mapper)
    real_restore = ocp.StandardCheckpointHandler.restore

    def restore(self, directory, *args, **kwargs):
        step = int(directory.parent.name)
        if jax.process_index() == 1 and step in failing_steps:  # a read error inside orbax
            raise OSError(f"injected read failure of step {step}")
        return real_restore(self, directory, *args, **kwargs)

    ocp.StandardCheckpointHandler.restore = restore
    checkpointer = checkpoint.Checkpointer(checkpoint_dir)
    try:
        _, meta = checkpointer.restore_latest(setup.abstract_state)
        return {"step": meta["step"]}
    except checkpoint.CheckpointError as error:
        return {"error": str(error)}
    finally:
        ocp.StandardCheckpointHandler.restore = real_restore
        checkpointer.close()


def main(process_id: int, port: int, outdir: str) -> None:
    import jax
    import numpy as np

    from nfnets_jax.checkpoints import flatten_params
    from nfnets_jax.training import distributed

    distributed.initialize(
        "on", coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
    )
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    for parallelism in ("pmap", "shard_map"):
        state, loss = train_fixed_steps(parallelism, os.path.join(outdir, f"ckpt_{parallelism}"))
        if process_id == 0:
            np.savez(
                os.path.join(outdir, f"{parallelism}.npz"),
                loss=loss,
                step=state.step,
                **flatten_params(state.params),
            )
    checkpoints = os.path.join(outdir, "ckpt_pmap")  # steps 1 and 3
    outcome = {
        "newest_unreadable": restore_with_a_failure_on_process_1(checkpoints, {3}),
        "all_unreadable": restore_with_a_failure_on_process_1(checkpoints, {1, 3}),
    }
    with open(os.path.join(outdir, f"restore_{process_id}.json"), "w") as f:
        json.dump(outcome, f)
    print(f"process {process_id} done", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
