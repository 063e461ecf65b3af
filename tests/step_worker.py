"""One train step of the tiny CLIP on a fixed global batch, as a separate process.

    python tests/step_worker.py OUT.npz --devices 4
    python tests/step_worker.py OUT.npz --devices 2 --process-id 0 --num-processes 2 --port P

Used by tests/test_train_step.py to compare a multi-process (``jax.distributed``, CPU
collectives) step with a single-process one. The optimiser is SGD with lr 1, so the
parameter change is minus the gradient. Process 0 writes the loss and the gradient
leaves to OUT.npz.
"""
import argparse
import os
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, required=True, help="local CPU devices")
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--method", default="m2mix")
    p.add_argument("--loss-impl", default="global")
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.devices} "
                               "--xla_backend_optimization_level=0")  # compile time dominates
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    if args.num_processes > 1:
        jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.train_step_setup import batch_arrays, flat_leaves, make_step

    step, state, mesh, data_sharding = make_step(args.method, args.loss_impl)
    images, tokens = batch_arrays()
    n_local = images.shape[0] // jax.process_count()
    lo = jax.process_index() * n_local
    batch = {k: jax.make_array_from_process_local_data(data_sharding, x[lo:lo + n_local],
                                                       x.shape)
             for k, x in (("image", images), ("tokens", tokens))}
    params0 = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), state.params)
    new, metrics = step(state, batch, np.int32(0))
    params1 = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), new.params)
    grads = jax.tree.map(lambda a, b: a - b, params0, params1)
    if jax.process_index() == 0:
        np.savez(args.out, loss=np.asarray(metrics["loss/total"].addressable_data(0)),
                 **flat_leaves(grads))
    print(f"process {jax.process_index()}/{jax.process_count()}: "
          f"{jax.device_count()} devices, "
          f"loss {float(metrics['loss/total'].addressable_data(0)):.6f}")


if __name__ == "__main__":
    main()
