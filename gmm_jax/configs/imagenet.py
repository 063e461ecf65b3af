"""Fine-tune a converted CLIP ViT-B/16 on ImageNet class-name captions (FLYP), evaluated
zero-shot on ImageNet and its shifts (V2, R, A, Sketch). See docs/robustness.md.

    python -m gmm_jax.convert --src /models/clip-vit-base-patch16 --format hf --out /models/b16
    python train.py --config=configs/imagenet.py --workdir=/ckpt/imagenet_flyp \
        --config.init=/models/b16 --config.data.manual_dir=/data/imagenet \
        [--config.loss.method=m2mix ...]

Hyper-parameters are FLYP's ImageNet setting (Goyal et al., CVPR 2023; the command in the
README of github.com/locuslab/FLYP): ViT-B/16, AdamW, lr 1e-5, weight decay 0.1, batch 512,
10 epochs, cosine schedule after 500 warm-up steps (its default ``--warmup_length``; here
2% of the 10 x 2502 steps), the CLIP loss with the checkpoint's learned temperature, and
OpenAI's 80 ImageNet templates, one drawn per image and step. Images: CLIP preprocessing
with the pipeline's random-resized-crop augmentation (FLYP uses CLIP's train transform).
"""
from gmm_jax.configs import default


def get_config():
    config = default.get_config()
    # config.init (a converted ViT-B/16 model directory) must be given on the command
    # line; the preset only names the architecture it must have.
    config.allow_from_scratch = False
    config.model.preset = "ViT-B/16"
    config.data.name = "class_captions"
    config.data.class_captions.dataset = "imagenet2012"  # needs data.manual_dir (TFDS)
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.caption_mode = "random"    # a template per image per step
    config.data.augment = True
    config.loss.method = "clip"            # FLYP = the pre-training loss; m2mix works too
    config.loss.temperature = "learned"
    config.batch_size = 512
    config.num_epochs = 10
    config.optim.lr = 1e-5
    config.optim.weight_decay = 0.1
    config.optim.warmup_frac = 0.02        # 500 of 25,020 steps
    config.checkpoint_every_steps = 2500   # about one epoch
    # Zero-shot accuracy and ECE on ImageNet (in distribution) and its shifts; retrieval
    # on class-name captions would be meaningless.
    config.eval.suites = "zeroshot"
    config.eval.zeroshot.datasets = ("imagenet2012,imagenet_v2,imagenet_r,imagenet_a,"
                                     "imagenet_sketch")
    return config
