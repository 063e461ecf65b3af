"""Embedding arithmetic (SIMAT protocol) on the demo's attribute swaps or on SIMAT."""
from __future__ import annotations

from gmm_jax import eval_suites
from gmm_jax.evaluators.base import DataMissing, EvalError, Evaluator, Result, register
from gmm_jax.evaluators.context import load, take


@register("arithmetic")
class Arithmetic(Evaluator):
    """``arithmetic/<source>/{score,best_lambda,num_queries}``."""

    @staticmethod
    def defaults():
        return {"source": "",        # "demo" | "simat" | "" = demo for the demo, else simat
                "simat_dir": "",     # SIMAT files: transfos.csv, triplets.csv, images/, ...
                "simat_domain": "test",  # | "dev"
                "max_triples": 1000,
                "lambdas": eval_suites.LAMBDAS}

    def source(self, ctx) -> str:
        source = self.cfg.source or ("demo" if ctx.is_demo else "simat")
        if source not in ("demo", "simat"):
            raise EvalError(f"config.eval.arithmetic.source={source!r}; expected 'demo' or "
                            "'simat'")
        return source

    def needs_other_data(self, ctx) -> bool:
        return self.source(ctx) == "simat"

    def missing(self, ctx):
        if self.source(ctx) == "demo":
            return ctx.missing_retrieval()
        if not self.cfg.simat_dir:  # not configured: missing; a wrong path stays an error
            return [DataMissing("SIMAT", "download it yourself and set "
                                "config.eval.arithmetic.simat_dir")]
        return []

    def _word_embeddings(self, ctx, words):
        words = sorted(set(words))
        return dict(zip(words, ctx.text_embeddings(words, "words")))

    def run(self, ctx) -> Result:
        lams = tuple(float(x) for x in self.cfg.lambdas)
        if self.source(ctx) == "demo":
            return Result(self._demo(ctx, lams))
        from gmm_jax import eval_simat
        a = self.cfg
        db = load(f"SIMAT from config.eval.arithmetic.simat_dir={a.simat_dir!r}",
                  eval_simat.load_simat, a.simat_dir, a.simat_domain, ctx.image_size)
        enc = ctx.encoder
        img = enc.images(take(db.iter_images(enc.batch_size), 0), db.num_images, "SIMAT images")
        words = self._word_embeddings(ctx, list(db.value_words) + list(db.target_words))
        return Result(eval_suites.simat_suite(img, db.source, db.value_words, db.target_words,
                                              db.target_ids, db.norm2, db.similarity, words, lams))

    def _demo(self, ctx, lams):
        from gmm_jax.data import demo_arithmetic_triples
        data = ctx.retrieval(ctx.ecfg.retrieval.split)
        if not data.rs.attributes:
            raise EvalError(f"arithmetic source 'demo' needs the demo data (config.data.name="
                            f"{ctx.data_field('name')!r}); set config.eval.arithmetic.source"
                            "=simat and simat_dir")
        n = len(data.image)
        attrs = {k: v[:n] for k, v in data.rs.attributes.items()}
        triples = demo_arithmetic_triples(attrs, max_triples=self.cfg.max_triples or None)
        words = [w for tr in triples for w in (tr.word, tr.new_word)]
        return eval_suites.demo_arithmetic_suite(data.image, triples,
                                                 self._word_embeddings(ctx, words), lams)
