"""``eval_lib.evaluate`` of a small stand-in CLIP on the demo set, as a separate process.

    python tests/eval_worker.py OUT DATA_DIR --devices 4
    python tests/eval_worker.py OUT DATA_DIR --devices 2 --process-id I --num-processes 2 --port P

Used by tests/test_eval_multihost.py (with the launch pattern of test_train_step.py's
2-process test) to compare a multi-process evaluation (``jax.distributed``, a mesh
over both processes' devices, parameters as global arrays) with a single-process
one. Evaluation output goes to OUT/proc<I> (only process 0 may write there); each
process dumps the metrics it returned to OUT/values_<I>.json.
"""
import argparse
import json
import os
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("data_dir")
    p.add_argument("--devices", type=int, required=True, help="local CPU devices")
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.devices} "
                               "--xla_backend_optimization_level=0")  # compile time dominates
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    if args.num_processes > 1:
        jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from gmm_jax import eval_lib
    from tests.eval_fakes import FakeCLIP, FakeTokenizer, demo_eval_config

    model = FakeCLIP()
    params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                        jnp.zeros((1, 12), jnp.int32))["params"]
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    # As in training: the parameters are global arrays spanning every process.
    params = jax.tree.map(lambda x: eval_lib._on_mesh(x, NamedSharding(mesh, P())), params)
    config = demo_eval_config(args.data_dir, suites="retrieval,geometry,calibration,zeroshot",
                              **{"zeroshot.datasets": "gmm_demo:target_test"})
    me = jax.process_index()
    values = eval_lib.evaluate(model, params, FakeTokenizer(), config,
                               os.path.join(args.out, f"proc{me}"), mesh=mesh)
    with open(os.path.join(args.out, f"values_{me}.json"), "w") as f:
        json.dump(values, f)
    print(f"process {me}/{jax.process_count()}: {jax.device_count()} devices, "
          f"{len(values)} metrics")


if __name__ == "__main__":
    main()
