"""configs/demo.py shrunk for tests: the tiny preset with one block per tower, a few dozen
generated examples per split, a few steps per stage.

    python train.py --config=tests/demo_tiny_config.py:DATA_DIR --workdir=W
"""

SPLITS = {"source_train": 64, "source_test": 16, "target_train": 48, "target_test": 32,
          "shift_background": 16, "shift_combo": 16}


def demo_config():
    """configs/demo.py's get_config()."""
    from gmm_jax.configs import demo as demo_cfg_module
    return demo_cfg_module.get_config()


def get_config(data_dir=None):
    from gmm_jax import train_lib
    from gmm_jax.data import demo
    config = demo_config()
    config.model.preset = "tiny"
    for f in train_lib.MODEL_FIELDS:
        config.model[f] = None
    config.model.vision_layers = config.model.text_layers = 1
    config.tokenizer_vocab_size = 600
    config.data.data_dir = data_dir or None
    with config.ignore_type():
        config.data.demo_config = demo.GmmDemoConfig(name="demoflow", split_sizes=dict(SPLITS),
                                                     num_workers=1)
    config.data.shuffle_buffer = 64
    config.batch_size = 16
    config.total_steps = 3
    config.log_every_steps = 1
    config.checkpoint_every_steps = 100
    config.progress_bar = False
    config.async_checkpointing = False
    config.eval.progress = False
    config.eval.batch_size = 16
    config.eval.fewshot.ks = (1, 2)
    config.eval.fewshot.seeds = (0,)
    config.eval.figure_pairs = 16
    config.demo.pretrain.rebuild = True  # pre-train the tiny model (the shipped one is bigger)
    config.demo.pretrain.batch_size = 16
    config.demo.pretrain.total_steps = 6
    config.demo.pretrain.lr = 1e-3
    config.demo.wise_ft.alphas = "0,1"  # the ends: the report's pre-trained and run rows
    config.demo.wise_ft.reevaluate_ends = True  # ... evaluated again from interpolated weights
    c = config.demo.captioning
    c.seeds, c.steps, c.batch_size, c.width, c.layers, c.beam_size = "0,1", 4, 16, 32, 1, 2
    c.max_test_images, c.num_samples, c.max_length = 8, 3, 24
    return config
