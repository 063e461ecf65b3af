"""Fine-tune a converted CLIP on Flickr30k (Karpathy 29k train split, manual download).

    python train.py --config=configs/flickr30k.py --workdir=/ckpt/f30k_m2mix \
        --config.init=/models/b32 --config.data.manual_dir=/data/flickr30k
"""
from gmm_jax.configs import default


def get_config():
    config = default.get_config()
    config.allow_from_scratch = False       # needs --config.init (a converted checkpoint)
    config.data.name = "flickr30k"          # needs data.manual_dir (see docs/data.md)
    config.loss.method = "m2mix"
    config.batch_size = 128
    config.num_epochs = 9
    config.optim.lr = 1e-5
    config.optim.weight_decay = 0.2
    config.checkpoint_every_steps = 500
    return config
