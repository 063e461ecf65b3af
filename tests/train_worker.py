"""Run ``train_lib.train_and_evaluate`` on the tiny config in its own process, optionally
killing itself, for the resume tests (tests/test_train_loop.py).

    python tests/train_worker.py WORKDIR DATA_DIR [--sigkill-after-save S]
        [--sigkill-during-save S] [--sigterm-at S] [--sigkill-before-step S]
        [--raise-at S] [--nan-at S] [key=value ...]
"""
import argparse
import json
import os
import signal


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("data_dir")
    p.add_argument("--sigkill-after-save", type=int, default=0,
                   help="SIGKILL once the checkpoint of this step is complete")
    p.add_argument("--sigkill-during-save", type=int, default=0,
                   help="SIGKILL right after starting the (async) save of this step")
    p.add_argument("--sigterm-at", type=int, default=0, help="SIGTERM after this step")
    p.add_argument("--sigkill-before-step", type=int, default=0,
                   help="SIGKILL just before this step is computed (1: before compiling)")
    p.add_argument("--raise-at", type=int, default=0,
                   help="raise RuntimeError just before this step (a crash mid-run)")
    p.add_argument("--nan-at", type=int, default=0,
                   help="feed this step a batch of NaN images (a non-finite loss)")
    p.add_argument("overrides", nargs="*", help="dotted config key=JSON value")
    args = p.parse_intermixed_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from gmm_jax import checkpointing, train_lib, train_state
    from gmm_jax.configs import tiny

    config = tiny.get_config()
    config.data.data_dir = args.data_dir
    config.progress_bar = False
    for item in args.overrides:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = json.loads(value)

    save = checkpointing.TrainCheckpointer.save

    def patched_save(self, step, *a, **k):
        out = save(self, step, *a, **k)
        if step == args.sigkill_during_save:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == args.sigkill_after_save:
            self.wait()
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    checkpointing.TrainCheckpointer.save = patched_save
    make_step = train_state.make_train_step

    def patched_make_step(*a, **k):
        step_fn = make_step(*a, **k)

        def wrapped(state, batch, epoch):
            nxt = int(state.step) + 1
            if nxt == args.sigkill_before_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if nxt == args.raise_at:
                raise RuntimeError(f"worker: raising before step {nxt}")
            if nxt == args.nan_at:
                batch = {**batch, "image": batch["image"] * float("nan")}
            state, metrics = step_fn(state, batch, epoch)
            if int(state.step) == args.sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)  # handled: save and stop
            return state, metrics
        return wrapped

    train_state.make_train_step = patched_make_step
    out = train_lib.train_and_evaluate(config, args.workdir)
    print(f"finished at step {out['step']}" + (" (stopped)" if out["stopped"] else ""))


if __name__ == "__main__":
    main()
