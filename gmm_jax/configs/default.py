"""Every training knob with its default (docs/method.md: recipes, temperature, set-up). Other configs start from this.

    python train.py --config=configs/default.py --workdir=DIR --config.loss.method=m2mix

Defaults are the reference's (ViT-B/32 fine-tuning, batch 128, 9 epochs, lr 1e-5,
wd 0.2, fixed tau = 0.01, m2mix weights) unless a comment says otherwise.
"""  # noqa: E501 (the docstring summary is kept on one line)
import math

import ml_collections
from ml_collections import config_dict


def _model() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.preset = "ViT-B/32"          # gmm_jax.models.presets (used when config.init is empty)
    m.dtype = "float32"            # compute dtype: "float32" | "bfloat16" (params stay fp32)
    m.remat = False                # nn.remat per residual block (memory for compute)
    m.attention = "einsum"         # einsum | xla | cudnn (fused, NVIDIA GPUs; docs/models.md)
    # Overrides of the preset's CLIPConfig fields (None = the preset's value).
    for name, typ in (("embed_dim", int), ("act", str), ("image_size", int),
                      ("patch_size", int), ("vision_width", int), ("vision_layers", int),
                      ("vision_heads", int), ("vision_mlp_dim", int), ("vocab_size", int),
                      ("context_length", int), ("text_width", int), ("text_layers", int),
                      ("text_heads", int), ("text_mlp_dim", int), ("logit_scale_init", float)):
        m[name] = config_dict.placeholder(typ)
    return m


def _loss() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = "clip"              # clip | m2mix | m3mix | cua | cuaxu
    c.mix_schedule = "inverse_epoch"  # | "constant": w_e multiplying the mix terms
    c.mix_form = "reference"       # | "openclip" (the authors' OpenCLIP variant)
    c.c_m2 = 0.01                  # m2mix weight
    # lam ~ Beta(beta_m2, beta_m2); None = the authors' per-method value (m3mix 0.2, else 0.5)
    c.beta_m2 = config_dict.placeholder(float)
    c.m2_scale = 1 / 0.07          # m2mix logit scale (separate from the contrastive one)
    c.c_u = 0.05                   # m3mix: vmix / lmix weight
    c.beta_u = 0.5
    c.c_vl = 0.1                   # m3mix: vlmix weight
    c.beta_vl = 0.5
    c.w_uniformity = 1.0           # cua / cuaxu weights
    c.w_alignment = 1.0
    c.w_cross_uniformity = 1.0
    c.uniformity_t = 2.0
    c.alignment_alpha = 2.0
    # Contrastive temperature: learned (checkpoint logit_scale, clamped) | fixed (1/tau)
    # | schedule (tau_start -> tau_end linearly) | softplus / exp (reparameterised).
    c.temperature = "fixed"
    c.tau = 0.01                   # the reference fine-tunes with a fixed tau = 0.01
    c.tau_start = 0.01
    c.tau_end = 0.03
    c.temp_exp_s = 4.0             # exp mode: scale = exp(nu / s)
    c.temp_lr_mult = 1.0           # lr multiplier on the temperature parameter
    c.max_logit_scale = math.log(100.0)  # clamp: scale <= 100
    c.swap = "none"                # modality swapping: none | hard | soft
    c.swap_p = 0.0
    return c


def _eval():
    try:  # the eval suites' knobs, so --config.eval.* works for the in-training hook
        from gmm_jax.eval_lib import default_eval_config
    except ImportError:  # eval_lib missing: the hook is skipped
        return None
    return default_eval_config()


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Converted model directory (python -m gmm_jax.convert --out DIR) or another run's
    # workdir (its latest checkpoint); None = from scratch.
    config.init = config_dict.placeholder(str)
    # False: refuse to start without config.init (the fine-tuning configs, coco/flickr30k,
    # whose learning rates are meant for a pretrained model).
    config.allow_from_scratch = True
    config.model = _model()
    # Tokenizer: a HF tokenizer dir or bpe_simple_vocab_16e6.txt.gz; None = the init
    # directory's tokenizer/, or (from scratch) one trained on the training captions.
    config.tokenizer = config_dict.placeholder(str)
    config.tokenizer_vocab_size = 0  # trained tokenizer size; 0 = model.vocab_size

    config.data = ml_collections.ConfigDict()
    config.data.name = "coco"      # coco | flickr30k | image_text_files | demo | class_captions
    # TFDS data dir (None = ~/tensorflow_datasets)
    config.data.data_dir = config_dict.placeholder(str)
    config.data.manual_dir = config_dict.placeholder(str)
    config.data.files_path = config_dict.placeholder(str)
    config.data.images_dir = config_dict.placeholder(str)
    config.data.train_split = config_dict.placeholder(str)   # None = the source's default
    config.data.eval_split = config_dict.placeholder(str)
    config.data.caption_mode = "first"  # first (reference) | random
    config.data.augment = False
    config.data.augment_scale_min = 0.9
    config.data.random_flip = True
    config.data.shuffle_buffer = 10_000
    config.data.fail_on_bad_image = False
    config.data.demo_config = "default"  # demo: default | small | a GmmDemoConfig
    # name = class_captions: a TFDS classification set with class-name captions (FLYP).
    config.data.class_captions = ml_collections.ConfigDict()
    config.data.class_captions.dataset = ""      # TFDS name: imagenet2012, cifar10, gmm_demo
    config.data.class_captions.class_names = ()  # () = the zero-shot class-name table
    config.data.class_captions.templates = ()    # () = the zero-shot templates ("{}" slot)

    config.loss = _loss()
    config.loss_impl = "global"    # global | local (shard_map: local rows x gathered cols)

    config.batch_size = 128        # global batch (contrastive negatives span all of it)
    # K > 1: run the towers on 1/K of each device's rows at a time and pull the loss's
    # embedding gradients back chunk by chunk (GradCache): the SAME gradient as K = 1
    # with about 1/K of the activation memory, for one extra forward pass. Must divide
    # the per-device batch. docs/large_batch.md.
    config.embed_chunks = 1
    config.num_epochs = 9
    config.total_steps = 0         # > 0: overrides num_epochs

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"
    config.optim.lr = 1e-5
    config.optim.weight_decay = 0.2
    # b2, eps and the decay mask are OpenCLIP's fine-tuning practice (ours); the authors
    # used torch AdamW's defaults with decay on every parameter: b2=0.999, eps=1e-8,
    # decay_mask=False (docs/training.md).
    config.optim.b1 = 0.9
    config.optim.b2 = 0.98
    config.optim.eps = 1e-6
    config.optim.decay_mask = True     # False: decay every parameter (biases, norms, ...)
    config.optim.schedule = "cosine"   # cosine | constant (both after the linear warm-up)
    config.optim.warmup_frac = 0.1     # warm-up steps = warmup_frac * optimiser steps
    config.optim.end_lr_frac = 0.0     # cosine ends at lr * end_lr_frac
    config.optim.grad_clip = 0.0       # > 0: clip the global gradient norm
    # > 1: optax.MultiSteps averages the gradients of k separate micro-batch losses. This
    # CHANGES the objective (negatives only within each micro-batch of batch_size rows);
    # embed_chunks is the exact alternative (docs/large_batch.md).
    config.optim.grad_accum_steps = 1

    config.mesh = ml_collections.ConfigDict()
    config.mesh.axes = ("data",)   # add "fsdp" to shard parameters as well
    config.mesh.shape = (-1,)      # -1: all remaining devices
    config.distributed = False     # jax.distributed.initialize() (multi-host)

    config.checkpoint_every_steps = 1000
    config.max_to_keep = 3
    config.async_checkpointing = True
    config.log_every_steps = 50
    config.progress_bar = True
    config.eval_every_steps = 0    # > 0: run eval_lib.evaluate every N steps
    config.eval_at_end = False
    eval_cfg = _eval()
    if eval_cfg is not None:
        config.eval = eval_cfg
    return config
