"""The paper's evaluation: embeddings from a model, the suites, the report and figures.

``evaluate(model, params, tokenizer, config, out_dir)`` extracts image and text
embeddings (batched, sharded over a mesh's ``data`` axis when given, progress bar)
and runs the suites named in ``config.eval.suites`` (see ``default_eval_config``).
It writes ``metrics.json`` (flat keys), ``metrics.md``, PNG figures and
``embeddings.npz`` (a subsample of the retrieval pairs, for side-by-side gap
pictures). The suite maths is in ``eval_suites``; report and figures in
``report`` and ``figures``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from gmm_jax import eval_suites as S
from gmm_jax import figures, report
from gmm_jax.report import compare_runs, load_metrics  # noqa: F401  (re-exported API)
from gmm_jax.figures import gap_figure_side_by_side  # noqa: F401  (re-exported API)

log = logging.getLogger(__name__)

SUITES = ("retrieval", "geometry", "calibration", "zeroshot", "fewshot", "arithmetic")
DEMO_ZEROSHOT = "gmm_demo:target_test,gmm_demo:shift_background,gmm_demo:shift_combo"


class EvalError(ValueError):
    """A user error (missing checkpoint, dataset, bad config): reported without a trace."""


def default_eval_config() -> ml_collections.ConfigDict:
    """Every evaluation knob; train configs hang it as ``config.eval``.

    Name lists are comma-separated strings (easy to override on the command line:
    ``--config.eval.suites=retrieval,geometry``); empty dataset fields mean "derive
    from ``config.data``" (the demo's splits for the demo, CIFAR otherwise).
    """
    c = ml_collections.ConfigDict()
    c.suites = ",".join(SUITES)
    c.batch_size = 256          # images / texts per device step (padded to the mesh size)
    c.max_examples = 0          # >0: cap images per split (quick runs); 0 = all
    c.progress = True           # tqdm bars
    c.figure_pairs = 500        # pairs kept in embeddings.npz and drawn in the gap picture

    c.retrieval = ml_collections.ConfigDict()
    c.retrieval.split = ""      # "" = config.data.eval_split
    c.retrieval.protocol = "karpathy"  # | "first_caption"
    c.retrieval.ks = (1, 5, 10)
    c.retrieval.extra_splits = ""  # more splits of the same source -> retrieval_<split>/...

    c.geometry = ml_collections.ConfigDict()
    c.geometry.seed = 0
    c.geometry.uniformity_t = 2.0
    c.geometry.alignment_alpha = 2.0

    c.calibration = ml_collections.ConfigDict()
    c.calibration.n_bins = 10
    c.calibration.scale = 0.0   # >0: fixed scale (1/tau); 0 = the model's exp(logit_scale)

    c.zeroshot = ml_collections.ConfigDict()
    c.zeroshot.datasets = ""    # "name" or "name:split", comma-separated; "" = auto
    c.zeroshot.data_dir = ""    # "" = config.data.data_dir
    c.zeroshot.manual_dir = ""  # ImageNet and friends need their archives here

    c.fewshot = ml_collections.ConfigDict()
    c.fewshot.dataset = ""      # "" = auto (gmm_demo for the demo, cifar10 otherwise)
    c.fewshot.train_split = ""  # "" = target_train (demo) / train
    c.fewshot.test_split = ""   # "" = the dataset's evaluation split
    c.fewshot.ks = (1, 2, 4, 8, 16)
    c.fewshot.seeds = (0, 1, 2)
    c.fewshot.max_train_examples = 5000  # pool the k-shot draws come from
    c.fewshot.c = 1.0           # inverse L2 strength of the logistic probe

    c.arithmetic = ml_collections.ConfigDict()
    c.arithmetic.source = ""    # "demo" | "simat" | "" = demo for the demo, else simat
    c.arithmetic.simat_dir = ""  # SIMAT files: transfos.csv, triplets.csv, images/, similarity
    c.arithmetic.simat_domain = "test"  # | "dev"
    c.arithmetic.max_triples = 1000
    c.arithmetic.lambdas = S.LAMBDAS
    return c


def as_list(value) -> list:
    """A comma-separated string or a sequence -> list of stripped non-empty items."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


# --------------------------------------------------------------------------
# embeddings

class Encoder:
    """Jit-compiled, L2-normalised ``encode_image`` / ``encode_text`` of one model.

    Batches are padded to a fixed size (a multiple of the mesh's ``data`` axis), so
    each tower compiles once; with a ``mesh`` the batch is split over ``data`` and the
    parameters replicated. Only the (N, D) float32 results are kept on the host.
    """

    def __init__(self, model, params, batch_size: int = 256, mesh=None, progress: bool = True):
        self.mesh, self.progress = mesh, progress
        n_dev = mesh.shape["data"] if mesh is not None else 1
        self.batch_size = int(math.ceil(max(int(batch_size), 1) / n_dev) * n_dev)
        if mesh is not None:
            params = jax.device_put(params, NamedSharding(mesh, P()))
            self._in_sharding = NamedSharding(mesh, P("data"))
        self.params = params

        def make(method):
            def fn(p, x):
                f = model.apply({"params": p}, x, method=method).astype(jnp.float32)
                return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
            return jax.jit(fn)

        self._image_fn, self._text_fn = make("encode_image"), make("encode_text")

    def _run(self, fn, batches: Iterable[np.ndarray], total: int | None, desc: str) -> np.ndarray:
        B, out, pending = self.batch_size, [], None
        bar = tqdm(total=total, desc=desc, unit="ex", disable=not self.progress, leave=False)
        for batch in batches:
            batch = np.asarray(batch)
            for start in range(0, len(batch), B):
                chunk = batch[start:start + B]
                n = len(chunk)
                if n < B:  # pad the last batch to keep one compiled shape
                    pad = np.zeros((B - n,) + chunk.shape[1:], chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                if self.mesh is not None:
                    chunk = jax.device_put(chunk, self._in_sharding)
                result = fn(self.params, chunk)
                # Fetch the previous result only now, so host work overlaps the device.
                if pending is not None:
                    out.append(np.asarray(pending[0])[:pending[1]])
                pending = (result, n)
                bar.update(n)
        if pending is not None:
            out.append(np.asarray(pending[0])[:pending[1]])
        bar.close()
        if not out:
            raise EvalError(f"{desc}: no examples to embed")
        return np.concatenate(out).astype(np.float32)

    def images(self, batches: Iterable[np.ndarray], total: int | None = None,
               desc: str = "images") -> np.ndarray:
        """Embeddings (N, D) of a stream of image batches (b, H, W, 3) float32."""
        return self._run(self._image_fn, batches, total, desc)

    def texts(self, tokens: np.ndarray, desc: str = "texts") -> np.ndarray:
        """Embeddings (M, D) of int32 tokens (M, L)."""
        tokens = np.asarray(tokens, np.int32)
        return self._run(self._text_fn, [tokens], len(tokens), desc)


def extract_embeddings(model, params, images: Iterable[np.ndarray] | None = None,
                       tokens: np.ndarray | None = None, batch_size: int = 256, mesh=None,
                       progress: bool = True, total: int | None = None):
    """Normalised embeddings of an image-batch stream and/or a token array.

    Returns ``(image_emb (N, D) or None, text_emb (M, D) or None)``.
    """
    enc = Encoder(model, params, batch_size, mesh, progress)
    img = enc.images(images, total) if images is not None else None
    txt = enc.texts(tokens) if tokens is not None else None
    return img, txt


def _take(batches: Iterator[np.ndarray], limit: int) -> Iterator[np.ndarray]:
    """The first ``limit`` rows of a batch stream (all when ``limit <= 0``)."""
    seen = 0
    for b in batches:
        if limit > 0 and seen + len(b) >= limit:
            yield b[:limit - seen]
            return
        seen += len(b)
        yield b


def model_dims(model) -> tuple[int, int]:
    """(image_size, context_length) of a CLIP module (``model.config``)."""
    cfg = getattr(model, "config", None)
    try:
        return int(cfg.image_size), int(cfg.context_length)
    except AttributeError as e:
        raise EvalError(f"model {type(model).__name__} has no config.image_size / "
                        "config.context_length") from e


def model_scale(params) -> float:
    """The model's own contrastive multiplier ``exp(params['logit_scale'])`` (OpenAI
    layout: ``train_lib.load_checkpoint`` converts reparameterised runs to it)."""
    if "logit_scale" not in params:
        raise EvalError("params have no 'logit_scale'; pass scale= or set "
                        "config.eval.calibration.scale")
    return float(np.exp(np.asarray(params["logit_scale"], np.float64)))


# --------------------------------------------------------------------------
# data access (errors become EvalError with the culprit named)

def _load(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except EvalError:
        raise
    except Exception as e:  # TFDS raises many types for a missing dataset
        raise EvalError(f"could not load {what}: {type(e).__name__}: {e}") from e


def _data_field(config, key, default=None):
    from gmm_jax.data.sources import cfg_get
    data = config.get("data") if hasattr(config, "get") else getattr(config, "data", None)
    return cfg_get(data, key, default) if data is not None else default


def _is_demo(config) -> bool:
    return _data_field(config, "name") == "demo"


def _classification(config, ecfg, name: str, split: str | None, image_size: int):
    from gmm_jax.data import load_classification_split
    data_dir = ecfg.zeroshot.data_dir or _data_field(config, "data_dir")
    return _load(f"classification dataset {name!r} split {split or '(default)'!r} "
                 f"(data_dir={data_dir!r})", load_classification_split, name, split or None,
                 image_size, data_dir, manual_dir=ecfg.zeroshot.manual_dir or None,
                 demo_config=_data_field(config, "demo_config", "default"))


# --------------------------------------------------------------------------
# suites that need the model

def _retrieval_block(enc, config, ecfg, tokenizer, split, image_size, ctx, prefix, scale):
    """Retrieval (+ geometry/calibration on the same embeddings) for one split."""
    from gmm_jax.data import load_retrieval_split
    rs = _load(f"retrieval split {split or '(config.data.eval_split)'!r} of "
               f"config.data.name={_data_field(config, 'name')!r}", load_retrieval_split,
               config.data, split or None, tokenizer, image_size, context_length=ctx)
    n = rs.num_images if ecfg.max_examples <= 0 else min(rs.num_images, ecfg.max_examples)
    img = enc.images(_take(rs.iter_images(enc.batch_size), n), n, f"{prefix} images")
    keep = rs.text_to_image < n
    txt = enc.texts(rs.tokens[keep], f"{prefix} captions")
    t2i = rs.text_to_image[keep].astype(np.int64)
    return rs, img, txt, t2i


def _run_retrieval(enc, config, ecfg, tokenizer, dims, scale, suites, out_dir, values, arrays):
    image_size, ctx = dims
    rs, img, txt, t2i = _retrieval_block(enc, config, ecfg, tokenizer, ecfg.retrieval.split,
                                         image_size, ctx, "retrieval", scale)
    arrays.update(rs=rs, image=img, text=txt, t2i=t2i)
    txt_p, t2i_p = S.apply_protocol(txt, t2i, len(img), ecfg.retrieval.protocol)
    pairs = txt[S.first_caption_index(t2i, len(img))]
    if "retrieval" in suites:
        values.update(S.retrieval_suite(img, txt_p, t2i_p, tuple(ecfg.retrieval.ks)))
        figures.recall_chart(values, os.path.join(out_dir, "recall.png"), tuple(ecfg.retrieval.ks))
        for extra in as_list(ecfg.retrieval.extra_splits):
            _, ei, et, e2i = _retrieval_block(enc, config, ecfg, tokenizer, extra, image_size,
                                              ctx, f"retrieval_{extra}", scale)
            et, e2i = S.apply_protocol(et, e2i, len(ei), ecfg.retrieval.protocol)
            values.update(S.retrieval_suite(ei, et, e2i, tuple(ecfg.retrieval.ks),
                                            prefix=f"retrieval_{extra}"))
    if "geometry" in suites:
        g = ecfg.geometry
        values.update(S.geometry_suite(img, pairs, g.seed, g.uniformity_t, g.alignment_alpha))
        k = min(len(img), ecfg.figure_pairs)
        np.savez_compressed(os.path.join(out_dir, "embeddings.npz"), image=img[:k], text=pairs[:k])
        figures.gap_projection(img, pairs, os.path.join(out_dir, "gap_projection.png"),
                               max_pairs=ecfg.figure_pairs)
    if "calibration" in suites:
        cal, bins = S.calibration_suite(img, txt_p, t2i_p, scale, ecfg.calibration.n_bins)
        values.update(cal)
        arrays["reliability"] = {f"retrieval {d}": b for d, b in bins.items()}


def _zeroshot_datasets(config, ecfg) -> list[tuple[str, str | None, str]]:
    """(dataset, split or None, label) of each zero-shot set."""
    names = as_list(ecfg.zeroshot.datasets) or as_list(
        DEMO_ZEROSHOT if _is_demo(config) else "cifar10,cifar100")
    out = []
    for entry in names:
        name, _, split = entry.partition(":")
        label = f"{name}_{split}" if split else name
        out.append((name, split or None, label))
    return out


def _prompt_classifier(enc, tokenizer, class_names, templates, ctx) -> np.ndarray:
    texts = [t.format(c) for c in class_names for t in templates]
    tokens = np.asarray(tokenizer(texts, context_length=ctx), np.int32)
    return S.class_weights(enc.texts(tokens, "prompts"), len(class_names))


def _run_zeroshot(enc, config, ecfg, tokenizer, dims, scale, values, arrays):
    image_size, ctx = dims
    top1 = []
    for name, split, label in _zeroshot_datasets(config, ecfg):
        ds = _classification(config, ecfg, name, split, image_size)
        weights = _prompt_classifier(enc, tokenizer, ds.class_names, ds.templates, ctx)
        img, labels = _embed_labelled(enc, ds, ecfg.max_examples, f"zeroshot {label}")
        res, bins = S.zeroshot_suite(img, labels, weights, scale, ecfg.calibration.n_bins,
                                     prefix=f"zeroshot/{label}")
        values.update(res)
        top1.append(res[f"zeroshot/{label}/top1"])
        arrays.setdefault("reliability_zeroshot", {})[label] = bins
    values["zeroshot/mean_top1"] = float(np.mean(top1))


def _embed_labelled(enc, ds, limit: int, desc: str):
    labels = []

    def images():
        seen = 0
        for x, y in ds.iter_batches(enc.batch_size):
            if limit > 0 and seen + len(x) > limit:
                x, y = x[:limit - seen], y[:limit - seen]
            seen += len(x)
            labels.append(np.asarray(y))
            yield x
            if limit > 0 and seen >= limit:
                return

    total = ds.num_examples if limit <= 0 else min(limit, ds.num_examples or limit)
    emb = enc.images(images(), total, desc)
    return emb, np.concatenate(labels).astype(np.int64)


def _run_fewshot(enc, config, ecfg, dims, values):
    image_size = dims[0]
    f = ecfg.fewshot
    name = f.dataset or ("gmm_demo" if _is_demo(config) else "cifar10")
    train_split = f.train_split or ("target_train" if name == "gmm_demo" else "train")
    train = _classification(config, ecfg, name, train_split, image_size)
    test = _classification(config, ecfg, name, f.test_split or None, image_size)
    tx, ty = _embed_labelled(enc, train, f.max_train_examples, f"fewshot {name} train")
    vx, vy = _embed_labelled(enc, test, ecfg.max_examples, f"fewshot {name} test")
    values.update(S.fewshot_suite(tx, ty, vx, vy, tuple(f.ks), tuple(f.seeds), f.c))


def _run_arithmetic(enc, config, ecfg, tokenizer, dims, values, arrays):
    a = ecfg.arithmetic
    source = a.source or ("demo" if _is_demo(config) else "simat")
    lams = tuple(float(x) for x in a.lambdas)
    ctx = dims[1]

    def word_embeddings(words):
        words = sorted(set(words))
        tokens = np.asarray(tokenizer(words, context_length=ctx), np.int32)
        return dict(zip(words, enc.texts(tokens, "words")))

    if source == "demo":
        from gmm_jax.data import demo_arithmetic_triples
        rs = arrays.get("rs")
        if rs is None:
            raise EvalError("arithmetic on the demo needs the retrieval split's images: keep "
                            "'retrieval', 'geometry' or 'calibration' in config.eval.suites")
        if not rs.attributes:
            raise EvalError(f"arithmetic source 'demo' needs the demo data (config.data.name="
                            f"{_data_field(config, 'name')!r}); set config.eval.arithmetic.source"
                            "=simat and simat_dir")
        n = len(arrays["image"])
        attrs = {k: v[:n] for k, v in rs.attributes.items()}
        triples = demo_arithmetic_triples(attrs, max_triples=a.max_triples or None)
        words = [w for tr in triples for w in (tr.word, tr.new_word)]
        values.update(S.demo_arithmetic_suite(arrays["image"], triples, word_embeddings(words),
                                              lams))
    elif source == "simat":
        from gmm_jax import eval_simat
        db = _load(f"SIMAT from config.eval.arithmetic.simat_dir={a.simat_dir!r}",
                   eval_simat.load_simat, a.simat_dir, a.simat_domain, dims[0])
        img = enc.images(_take(db.iter_images(enc.batch_size), 0), db.num_images, "SIMAT images")
        values.update(S.simat_suite(img, db.source, db.value_words, db.target_words,
                                    db.target_ids, db.norm2, db.similarity,
                                    word_embeddings(list(db.value_words) + list(db.target_words)),
                                    lams))
    else:
        raise EvalError(f"config.eval.arithmetic.source={source!r}; expected 'demo' or 'simat'")


# --------------------------------------------------------------------------
# the driver

def evaluate(model, params, tokenizer, config, out_dir: str, scale: float | None = None,
             mesh=None, title: str | None = None) -> dict:
    """Run the suites of ``config.eval`` (default: ``default_eval_config()``) and write
    ``out_dir/metrics.json``, ``metrics.md``, figures and ``embeddings.npz``.

    Args:
      model, params: a CLIP module (``encode_image``/``encode_text``, ``model.config``)
        and its parameters.
      tokenizer: ``tok(texts, context_length=L) -> int32 (N, L)``.
      config: a ConfigDict with ``data`` (``config.data`` of the train configs) and
        optionally ``eval``.
      out_dir: output directory (created).
      scale: contrastive multiplier for calibration/zero-shot; default
        ``config.eval.calibration.scale`` if > 0, else the model's own
        ``exp(params['logit_scale'])`` (``model_scale``).
      mesh: optional ``jax.sharding.Mesh`` with a ``data`` axis.
    Returns:
      the flat metrics dict.
    """
    ecfg = config.get("eval") if hasattr(config, "get") else None
    ecfg = ecfg if ecfg is not None else default_eval_config()
    suites = as_list(ecfg.suites)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise EvalError(f"config.eval.suites: unknown suite(s) {unknown}; known: {list(SUITES)}")
    if scale is None:
        scale = (ecfg.calibration.scale if ecfg.calibration.scale > 0
                 else model_scale(params))
    dims = model_dims(model)
    os.makedirs(out_dir, exist_ok=True)
    enc = Encoder(model, params, ecfg.batch_size, mesh, ecfg.progress)
    values, arrays, timing = {}, {}, {}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        fn(*args)
        timing[name] = round(time.perf_counter() - t0, 3)
        log.info("eval %s: %.1f s", name, timing[name])

    needs_pairs = {"retrieval", "geometry", "calibration"} & set(suites) or (
        "arithmetic" in suites and (ecfg.arithmetic.source or ("demo" if _is_demo(config) else "")) == "demo")
    if needs_pairs:
        timed("retrieval", _run_retrieval, enc, config, ecfg, tokenizer, dims, scale, suites,
              out_dir, values, arrays)
    if "zeroshot" in suites:
        timed("zeroshot", _run_zeroshot, enc, config, ecfg, tokenizer, dims, scale, values, arrays)
    if "fewshot" in suites:
        timed("fewshot", _run_fewshot, enc, config, ecfg, dims, values)
    if "arithmetic" in suites:
        timed("arithmetic", _run_arithmetic, enc, config, ecfg, tokenizer, dims, values, arrays)
    if "calibration" in suites and ("reliability" in arrays or "reliability_zeroshot" in arrays):
        bins = dict(arrays.get("reliability", {}))
        bins.update({f"zero-shot {k}": b for k, b in arrays.get("reliability_zeroshot", {}).items()})
        figures.reliability_diagram(bins, os.path.join(out_dir, "reliability.png"))

    report.write_metrics(values, out_dir, title or "Evaluation")
    with open(os.path.join(out_dir, "eval_info.json"), "w") as f:
        json.dump({"suites": suites, "scale": float(scale), "seconds": timing,
                   "eval_config": ecfg.to_dict() if hasattr(ecfg, "to_dict") else None},
                  f, indent=1, default=str)
    return values
