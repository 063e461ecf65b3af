"""Image captioning on the model's frozen image embeddings (opt-in: it trains a captioner).

Run with ``--config.eval.suites=...,captioning``; knobs in ``config.eval.captioning``
(``gmm_jax.captioning.captioning_config`` plus ``train_split``). See docs/captioning.md.
"""
from __future__ import annotations

from gmm_jax import paths
from gmm_jax.evaluators.base import Evaluator, Result, register
from gmm_jax.evaluators.context import load, take


@register("captioning")
class Captioning(Evaluator):
    """``captioning/*``: BLEU-1..4, ROUGE-L, CIDEr-D (+ METEOR/SPICE with Java) of a
    ClipCap-style captioner trained on ``train_split`` of ``config.data`` (default: the
    source's training split) and scored on the retrieval split against all of each
    image's captions. Writes ``captioning_samples.md``."""
    in_defaults = False

    @staticmethod
    def defaults():
        from gmm_jax.captioning import captioning_config
        cfg = captioning_config().to_dict()
        cfg["train_split"] = ""  # "" = the data source's training split
        return cfg

    def missing(self, ctx):
        return ctx.missing_retrieval()

    def run(self, ctx) -> Result:
        from gmm_jax.captioning import captioning_from_embeddings, check_config
        from gmm_jax.captioning.suite import captions_by_image
        from gmm_jax.data import load_retrieval_split
        from gmm_jax.data.sources import get_source
        cfg = self.cfg
        check_config(cfg)
        test = ctx.retrieval(ctx.ecfg.retrieval.split)
        n_test = len(test.image) if not cfg.max_test_images else min(
            len(test.image), int(cfg.max_test_images))
        split = cfg.train_split or get_source(ctx.config.data).default_splits[0]
        train = load(f"captioning training split {split!r}", load_retrieval_split,
                     ctx.config.data, split, ctx.tokenizer, ctx.image_size,
                     context_length=ctx.context_length)
        n_train = train.num_images if not cfg.max_train_images else min(
            train.num_images, int(cfg.max_train_images))
        enc = ctx.encoder
        train_emb = enc.images(take(train.iter_images(enc.batch_size), n_train), n_train,
                               "captioning train images")
        metrics, samples, _ = captioning_from_embeddings(
            train_emb, captions_by_image(train)[:n_train], test.image[:n_test],
            captions_by_image(test.rs)[:n_test], ctx.tokenizer, cfg)
        if ctx.is_writer:
            paths.write_text(ctx.path("captioning_samples.md"), samples)
        return Result(metrics)
