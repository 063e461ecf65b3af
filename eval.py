r"""Evaluate a run or a model directory (the checkout's entry point; installed: ``gmm-eval``).

    python eval.py --config=configs/coco.py --workdir=/ckpt/run1 [--step N] [--out DIR]
    python eval.py --config=configs/coco.py --checkpoint=/models/clip-b32 --out DIR
    python eval.py --compare DIR1 DIR2 ... --out DIR

Everything lives in ``gmm_jax/eval_main.py``; see docs/evaluation.md.
"""
from gmm_jax.eval_main import run

if __name__ == "__main__":
    run()
