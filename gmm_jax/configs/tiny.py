"""A seconds-long run for tests and laptops: the `tiny` preset on the demo data.

    python train.py --config=configs/tiny.py --workdir=/tmp/tiny
"""
from gmm_jax.configs import default


def get_config():
    config = default.get_config()
    config.model.preset = "tiny"
    config.tokenizer_vocab_size = 600
    config.data.name = "demo"
    config.data.demo_config = "small"
    config.data.shuffle_buffer = 1000
    config.loss.method = "m2mix"
    config.loss.temperature = "learned"
    config.batch_size = 16
    config.total_steps = 20
    config.optim.lr = 1e-3
    config.optim.weight_decay = 0.01
    config.log_every_steps = 5
    config.checkpoint_every_steps = 10
    return config
