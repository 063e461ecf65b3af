"""Retrieval calibration (ECE) of the contrastive softmax at the model's scale."""
from __future__ import annotations

from gmm_jax import eval_suites
from gmm_jax.evaluators.base import Evaluator, Result, register
from gmm_jax.evaluators.retrieval import protocol_view


@register("calibration")
class Calibration(Evaluator):
    """``calibration/ece_i2t``, ``ece_t2i``, ``ece``, ``scale`` on the retrieval split
    (same protocol and duplicate-caption rule as retrieval); reliability bins for
    the driver's reliability.png."""

    @staticmethod
    def defaults():
        return {"n_bins": 10,
                "scale": 0.0}  # >0: fixed scale (1/tau); 0 = the model's exp(logit_scale)

    def missing(self, ctx):
        return ctx.missing_retrieval()

    def run(self, ctx) -> Result:
        data = ctx.retrieval(ctx.ecfg.retrieval.split)
        txt, t2i, groups = protocol_view(data, ctx.ecfg.retrieval.protocol)
        values, bins = eval_suites.calibration_suite(data.image, txt, t2i, ctx.scale,
                                                     self.cfg.n_bins, text_groups=groups)
        return Result(values, reliability={f"retrieval {d}": b for d, b in bins.items()})
