"""A small stand-in CLIP, tokenizer and demo eval config shared by the eval tests and
tests/eval_worker.py (the real tiny CLIP is exercised in test_eval_e2e.py)."""
import dataclasses
import zlib

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

# Large enough for attribute-swap triples in target_test; small enough to render in ~1 s.
SPLITS = {"target_train": 40, "target_test": 48, "shift_background": 16, "shift_combo": 16}
DEMO_NAME = "evaltest"


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    image_size: int = 16
    context_length: int = 12


class FakeCLIP(nn.Module):
    """Pooled pixels -> Dense, and mean token embedding -> Dense; CLIP's method names."""
    config: FakeConfig = FakeConfig()

    def setup(self):
        self.img_proj = nn.Dense(8)
        self.tok_emb = nn.Embed(128, 16)
        self.txt_proj = nn.Dense(8)
        self.logit_scale = self.param("logit_scale", lambda _: jnp.log(jnp.float32(20.0)))

    def encode_image(self, x):
        n, s = x.shape[0], x.shape[1]
        pooled = x.reshape(n, 4, s // 4, 4, s // 4, 3).mean(axis=(2, 4))
        return self.img_proj(pooled.reshape(n, -1))

    def encode_text(self, tokens):
        mask = (tokens > 0)[..., None]
        e = (self.tok_emb(tokens) * mask).sum(1) / jnp.maximum(mask.sum(1), 1)
        return self.txt_proj(e)

    def __call__(self, x, tokens):
        return self.encode_image(x), self.encode_text(tokens), self.logit_scale


class FakeTokenizer:
    def __call__(self, texts, context_length=77):
        out = np.zeros((len(texts), context_length), np.int32)
        for i, t in enumerate(texts):
            ids = [zlib.crc32(w.encode()) % 127 + 1 for w in t.lower().split()][:context_length]
            out[i, :len(ids)] = ids
        return out


def demo_config():
    from gmm_jax.data import demo
    return demo.GmmDemoConfig(name=DEMO_NAME, split_sizes=dict(SPLITS), num_workers=1)


def demo_eval_config(data_dir, **eval_overrides):
    """config with the demo data in ``data_dir`` and a quick eval (dotted overrides)."""
    import ml_collections

    from gmm_jax import eval_lib
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict({"name": "demo", "data_dir": data_dir,
                                        "eval_split": "target_test"})
    c.data.demo_config = demo_config()
    c.eval = eval_lib.default_eval_config()
    c.eval.progress = False
    c.eval.batch_size = 16
    c.eval.fewshot.ks = (1, 2)
    c.eval.fewshot.seeds = (0,)
    for k, v in eval_overrides.items():
        node = c.eval
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c
