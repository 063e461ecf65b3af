"""The demo: m2-Mix end to end on generated data, offline, on a CPU (docs/demo.md).

    python train.py --config=configs/demo.py [--workdir=runs/demo] \
        [--config.demo.runs=ft,m2mix,m3mix] [--config.demo.pretrain.rebuild=True]

1. loads the shipped pre-trained demo CLIP (gmm_jax/assets/demo_clip, made by
   experiments/make_demo_model.py: a small CLIP trained from scratch on the demo's
   ``source_train`` split with the CLIP loss and a learned temperature), or with
   ``config.demo.pretrain.rebuild=True`` trains it again (``config.demo.pretrain``);
2. fine-tunes it on ``target_train`` once per run of ``config.demo.runs`` (``ft`` = CLIP
   loss, ``m2mix`` = + the m2-Mix term, ...; see ``gmm_jax.demo_flow.RECIPES``), each in
   WORKDIR/<run>, with the settings of this config (below);
3. evaluates the pre-trained model and every run on ``target_test`` and the shifted splits
   and writes WORKDIR/demo_report.{json,md} and the gap figures.

The top level of this config is the fine-tuning setting shared by every run (and what
``python eval.py --config=configs/demo.py --workdir=WORKDIR/ft`` evaluates with); the
``demo`` section holds the flow's own knobs. Without a ``demo`` section train.py trains
one ordinary run.
"""  # noqa: E501 (the command line above is kept whole)
from gmm_jax.configs import default

# The model: the "demo" preset made cheaper for a 2-core CPU: the 64 px scenes at 48 px in
# 8 px patches (36 tokens), width 96, 4 image + 3 text layers, 96-d embeddings, 32 text
# tokens.
_MODEL = dict(image_size=48, patch_size=8, vision_width=96, vision_mlp_dim=384,
              text_width=96, text_mlp_dim=384, text_layers=3, embed_dim=96)


def get_config():
    config = default.get_config()
    config.model.preset = "demo"
    for k, v in _MODEL.items():
        config.model[k] = v
    config.tokenizer_vocab_size = 1024    # BPE learned on the source captions
    config.data.name = "demo"
    config.data.demo_config = "default"
    config.data.train_split = "target_train"
    config.data.eval_split = "target_test"
    config.data.caption_mode = "random"
    config.data.shuffle_buffer = 10_000

    # Fine-tuning (every run): the reference's recipe scaled to the demo. Fixed tau as the
    # reference (which uses CLIP's own final tau, 0.01): here the pre-trained model's
    # learned tau (config.demo.tau_from_pretrained). m2-Mix weights are the reference's.
    config.loss.method = "clip"
    config.loss.temperature = "fixed"
    config.batch_size = 128
    config.num_epochs = 3
    config.optim.lr = 3e-4
    config.optim.weight_decay = 0.1
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200
    config.eval.suites = "retrieval,geometry,calibration,zeroshot,fewshot,arithmetic"
    config.eval.retrieval.extra_splits = "shift_background,shift_combo"
    config.eval.fewshot.ks = (1, 4, 16)
    config.eval.fewshot.max_train_examples = 2000

    from gmm_jax import demo_flow
    config.demo = demo_flow.demo_section()
    return config
