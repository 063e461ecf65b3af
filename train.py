"""Training entry point (placeholder until the training loop lands)."""
import sys

if __name__ == "__main__":
    sys.exit("train.py: the training loop and the demo (configs/demo.py) are not implemented yet "
             "in this version of gmm_jax; see the open issues. Nothing was run.")
