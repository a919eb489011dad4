"""One process of a multi-host test run (see test_multihost.py).

`python -m tests.training.multihost_worker PROCESS_ID PORT OUTDIR` joins a 2-process JAX
cluster on localhost (2 CPU devices each), trains the tiny NFNet for a few steps on fixed
global batches with both parallelisms, checkpoints with orbax from both processes, and
process 0 writes the final parameters to OUTDIR/<parallelism>.npz.
"""

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
    from nfnets_jax.training import checkpoint, loop, parallel, step
    from tests.training.tiny import tiny_config

    config = tiny_config(parallelism=parallelism)
    mapper = parallel.DeviceMapper(parallelism)
    plan = loop.plan_run(config, mapper)
    setup = loop.build_setup(config, plan, mapper)
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
    for batch in global_batches():
        local = {k: v[start : start + rows] for k, v in batch.items()}
        if parallelism == "pmap":
            local = {
                k: v.reshape((mapper.num_local_devices, -1) + v.shape[1:]) for k, v in local.items()
            }
        # The pipeline's placement (each process contributes its rows of a global batch).
        (placed,) = data.prefetch_to_device([local], size=1, sharding=mapper.batch_sharding)
        device_state, metrics = fn(device_state, placed)
    final = mapper.from_device_state(device_state)
    if checkpoint_dir is not None:
        checkpointer = checkpoint.Checkpointer(checkpoint_dir)
        checkpointer.save(NUM_STEPS, final, {"step": NUM_STEPS})
        checkpointer.wait()
        restored, _ = checkpointer.restore(NUM_STEPS, setup.abstract_state)
        checkpointer.close()
        final = restored
    return parallel.host_copy(final), float(metrics["loss"])


def main(process_id: int, port: int, outdir: str) -> None:
    import jax
    import numpy as np

    from nfnets_jax.training import distributed
    from nfnets_jax.weights import flatten_params

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
    print(f"process {process_id} done", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
