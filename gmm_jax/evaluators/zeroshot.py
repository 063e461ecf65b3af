"""Zero-shot classification with prompt-ensemble classifiers (CLIP's recipe)."""
from __future__ import annotations

import numpy as np

from gmm_jax import eval_suites
from gmm_jax.evaluators.base import Evaluator, Result, as_list, register

DEMO_DATASETS = "gmm_demo:target_test,gmm_demo:shift_background,gmm_demo:shift_combo"
OTHER_DATASETS = "cifar10,cifar100"


@register("zeroshot")
class ZeroShot(Evaluator):
    """``zeroshot/<label>/{top1,top5,ece}`` per dataset and ``zeroshot/mean_top1``."""

    @staticmethod
    def defaults():
        return {"datasets": "",    # "name" or "name:split", comma-separated; "" = auto
                "data_dir": "",    # "" = config.data.data_dir
                "manual_dir": ""}  # ImageNet and friends need their archives here

    def datasets(self, ctx) -> list[tuple[str, str | None, str]]:
        """(dataset, split or None, label) of each set; auto: the demo's shifted
        splits for the demo, CIFAR-10/100 otherwise."""
        names = as_list(self.cfg.datasets) or as_list(
            DEMO_DATASETS if ctx.is_demo else OTHER_DATASETS)
        out = []
        for entry in names:
            name, _, split = entry.partition(":")
            out.append((name, split or None, f"{name}_{split}" if split else name))
        return out

    def _dirs(self, ctx):
        return (self.cfg.data_dir or ctx.data_field("data_dir"), self.cfg.manual_dir or None)

    def needs_other_data(self, ctx) -> bool:
        return any(name != "gmm_demo" for name, _, _ in self.datasets(ctx))

    def missing(self, ctx):
        data_dir, manual_dir = self._dirs(ctx)
        found = (ctx.classification_missing(name, data_dir, manual_dir)
                 for name in dict.fromkeys(n for n, _, _ in self.datasets(ctx)))
        return [m for m in found if m is not None]

    def run(self, ctx) -> Result:
        data_dir, manual_dir = self._dirs(ctx)
        values, reliability, top1 = {}, {}, []
        for name, split, label in self.datasets(ctx):
            ds = ctx.classification(name, split, data_dir, manual_dir)
            texts = [t.format(c) for c in ds.class_names for t in ds.templates]
            weights = eval_suites.class_weights(ctx.text_embeddings(texts, "prompts"),
                                                len(ds.class_names))
            img, labels = ctx.embed_labelled(ds, ctx.ecfg.max_examples, f"zeroshot {label}")
            res, bins = eval_suites.zeroshot_suite(img, labels, weights, ctx.scale,
                                                   ctx.ecfg.calibration.n_bins,
                                                   prefix=f"zeroshot/{label}")
            values.update(res)
            top1.append(res[f"zeroshot/{label}/top1"])
            reliability[f"zero-shot {label}"] = bins
        values["zeroshot/mean_top1"] = float(np.mean(top1))
        return Result(values, reliability=reliability)
