"""k-shot linear probe on frozen image embeddings."""
from __future__ import annotations

from gmm_jax import eval_suites
from gmm_jax.evaluators.base import Evaluator, Result, register


@register("fewshot")
class FewShot(Evaluator):
    """``fewshot/k{k}`` and ``fewshot/k{k}_std`` (top-1 percent over seeds)."""

    @staticmethod
    def defaults():
        return {"dataset": "",      # "" = gmm_demo for the demo, cifar10 otherwise
                "train_split": "",  # "" = target_train (demo) / train
                "test_split": "",   # "" = the dataset's evaluation split
                "ks": (1, 2, 4, 8, 16),
                "seeds": (0, 1, 2),
                "max_train_examples": 5000,  # pool the k-shot draws come from
                "c": 1.0}           # inverse L2 strength of the logistic probe

    def dataset(self, ctx) -> str:
        return self.cfg.dataset or ("gmm_demo" if ctx.is_demo else "cifar10")

    def _dirs(self, ctx):  # the classification sets share zeroshot's directories
        z = ctx.ecfg.zeroshot
        return (z.data_dir or ctx.data_field("data_dir"), z.manual_dir or None)

    def needs_other_data(self, ctx) -> bool:
        return self.dataset(ctx) != "gmm_demo"

    def missing(self, ctx):
        m = ctx.classification_missing(self.dataset(ctx), *self._dirs(ctx))
        return [m] if m else []

    def run(self, ctx) -> Result:
        f, name = self.cfg, self.dataset(ctx)
        train_split = f.train_split or ("target_train" if name == "gmm_demo" else "train")
        train = ctx.classification(name, train_split, *self._dirs(ctx))
        test = ctx.classification(name, f.test_split or None, *self._dirs(ctx))
        tx, ty = ctx.embed_labelled(train, f.max_train_examples, f"fewshot {name} train")
        vx, vy = ctx.embed_labelled(test, ctx.ecfg.max_examples, f"fewshot {name} test")
        return Result(eval_suites.fewshot_suite(tx, ty, vx, vy, tuple(f.ks), tuple(f.seeds), f.c))
