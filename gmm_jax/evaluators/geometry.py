"""Modality-gap geometry of image / first-caption pairs of the retrieval split."""
from __future__ import annotations

from gmm_jax import eval_suites, figures, paths
from gmm_jax.evaluators.base import Evaluator, Result, register


@register("geometry")
class Geometry(Evaluator):
    """``gap/*``: centroid distance, linear separability, mean positive cosine,
    uniformity over concat(v, t), alignment, relative alignment. Writes
    ``embeddings.npz`` (``figure_pairs`` pairs) and ``gap_projection.png``."""

    @staticmethod
    def defaults():
        return {"seed": 0, "uniformity_t": 2.0, "alignment_alpha": 2.0}

    def missing(self, ctx):
        return ctx.missing_retrieval()

    def run(self, ctx) -> Result:
        data = ctx.retrieval(ctx.ecfg.retrieval.split)
        img = data.image
        pairs = data.text[eval_suites.first_caption_index(data.t2i, len(img))]
        g = self.cfg
        values = eval_suites.geometry_suite(img, pairs, g.seed, g.uniformity_t, g.alignment_alpha)
        if ctx.is_writer:
            k = min(len(img), ctx.ecfg.figure_pairs)
            paths.save_npz(ctx.path("embeddings.npz"), compressed=True, image=img[:k],
                           text=pairs[:k])
            figures.gap_projection(img, pairs, ctx.path("gap_projection.png"),
                                   max_pairs=ctx.ecfg.figure_pairs)
        return Result(values)
