"""Train a small CLIP from scratch on the generated demo data (offline, CPU is enough).

    python train.py --config=configs/demo.py [--workdir=runs/demo]

This is the pre-training stage of the demo (source split, CLIP loss, learned
temperature). The full demo flow (pre-train, fine-tune with FT and m2-Mix, evaluate,
report) builds on it; see the README.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402


def get_config():
    config = default.get_config()
    config.model.preset = "demo"          # 32 px, patch 4, width 128, 4+4 layers
    config.tokenizer_vocab_size = 1024    # BPE learned on the demo captions
    config.data.name = "demo"
    config.data.demo_config = "default"
    config.data.train_split = "source_train"
    config.data.eval_split = "source_test"
    config.data.caption_mode = "random"
    config.data.shuffle_buffer = 10_000
    config.loss.method = "clip"
    config.loss.temperature = "learned"   # from ln(1/0.07), clamped at ln(100)
    config.batch_size = 128
    config.num_epochs = 4
    config.optim.lr = 5e-4
    config.optim.weight_decay = 0.1
    config.log_every_steps = 20
    config.checkpoint_every_steps = 100
    config.eval_at_end = True
    if "eval" in config:
        config.eval.suites = "retrieval,geometry,calibration"
    return config
