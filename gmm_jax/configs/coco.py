"""Fine-tune a converted CLIP on MSCOCO (Karpathy train+restval), the reference setup.

    python -m gmm_jax.convert --src /models/clip-vit-base-patch32 --format hf --out /models/b32
    python train.py --config=configs/coco.py --workdir=/ckpt/coco_m2mix \
        --config.init=/models/b32 [--config.loss.method=clip ...]
"""
from gmm_jax.configs import default


def get_config():
    config = default.get_config()
    config.allow_from_scratch = False       # needs --config.init (a converted checkpoint)
    config.data.name = "coco"               # TFDS coco_captions; eval split: test (5k)
    config.loss.method = "m2mix"
    config.batch_size = 128
    config.num_epochs = 9
    config.optim.lr = 1e-5
    config.optim.weight_decay = 0.2
    config.checkpoint_every_steps = 1000
    return config
