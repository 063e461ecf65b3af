"""Image-text retrieval R@K both ways on config.data's evaluation split (+ extra splits)."""
from __future__ import annotations

from gmm_jax import eval_suites, figures
from gmm_jax.evaluators.base import Evaluator, Result, as_list, register


def protocol_view(data, protocol: str):
    """(text_emb, text_to_image, text_groups) of the captions ``protocol`` keeps."""
    idx = eval_suites.protocol_indices(data.t2i, len(data.image), protocol)
    return data.text[idx], data.t2i[idx], data.groups[idx]


@register("retrieval")
class Retrieval(Evaluator):
    """``retrieval/{i2t,t2i}_r{k}`` and ``retrieval/rsum``; ``retrieval_<split>/...``
    for each of ``extra_splits``. Captions with identical text are interchangeable."""

    @staticmethod
    def defaults():
        return {"split": "",              # "" = config.data.eval_split
                "protocol": "karpathy",   # | "first_caption"
                "ks": (1, 5, 10),
                "extra_splits": ""}       # more splits of the same source

    def missing(self, ctx):
        return ctx.missing_retrieval()

    def run(self, ctx) -> Result:
        ks = tuple(self.cfg.ks)
        values, info = {}, {}
        for split, prefix in [(self.cfg.split, "retrieval")] + [
                (s, f"retrieval_{s}") for s in as_list(self.cfg.extra_splits)]:
            data = ctx.retrieval(split, prefix)
            txt, t2i, groups = protocol_view(data, self.cfg.protocol)
            values.update(eval_suites.retrieval_suite(data.image, txt, t2i, ks, prefix=prefix,
                                                      text_groups=groups))
            info[f"{prefix}/duplicate_captions"] = int(data.duplicates)
        if ctx.is_writer:
            figures.recall_chart(values, ctx.path("recall.png"), ks)
        return Result(values, info=info)
