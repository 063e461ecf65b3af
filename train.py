r"""Train / fine-tune CLIP (the checkout's entry point; installed: ``gmm-train``).

    python train.py --config=configs/coco.py --workdir=/ckpt/run1 [--config.loss.method=clip ...]
    python train.py --config=configs/demo.py          # the demo, offline (docs/demo.md)

Everything lives in ``gmm_jax/train_main.py``; see docs/training.md.
"""
from gmm_jax.train_main import run

if __name__ == "__main__":
    run()
