"""The paper's evaluation driver: embeddings from a model, the suites, the report.

``evaluate(model, params, tokenizer, config, out_dir)`` builds an ``Encoder``
(batched, padded, sharded over a mesh's ``data`` axis, multi-host safe) and runs the
suites named in ``config.eval.suites``. Each suite is an ``Evaluator`` in
``gmm_jax.evaluators`` (one module per suite, chosen by name from a registry), so the
driver knows no suite. It writes ``metrics.json`` (flat keys), ``metrics.md``,
``eval_info.json`` and the figures; ``metrics.json`` is written whatever happens
after the first suite, so a later failure never loses finished results.

Data is never downloaded here: a suite whose data set is not present locally is
skipped with one warning (``strict=True``: evaluation stops before any work).
"""
from __future__ import annotations

import functools
import logging
import math
import time
from typing import Iterable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from gmm_jax import evaluators, figures, losses, paths, report
from gmm_jax.config_access import config_get
from gmm_jax.evaluators import DataMissing, EvalContext, EvalError, as_list  # noqa: F401
from gmm_jax.evaluators.context import take as _take  # noqa: F401  (kept name)
from gmm_jax.evaluators.zeroshot import DEMO_DATASETS as DEMO_ZEROSHOT  # noqa: F401
from gmm_jax.figures import gap_figure_side_by_side  # noqa: F401  (re-exported API)
from gmm_jax.report import compare_runs, load_metrics  # noqa: F401  (re-exported API)

log = logging.getLogger(__name__)

SUITES = evaluators.default_names()  # registration order: the default run order
RELIABILITY_FILE = "reliability.json"  # {panel: metrics.reliability_bins(...)} per eval dir


def default_eval_config() -> ml_collections.ConfigDict:
    """Every evaluation knob; train configs hang it as ``config.eval``.

    ``suites`` is a comma-separated string (``--config.eval.suites=retrieval,geometry``).
    Each registered suite adds its section ``config.eval.<name>`` (its
    ``Evaluator.defaults()`` plus ``log_every`` / ``at_end`` for in-training runs).
    Left at its default, ``suites`` on own data (``config.data.name=image_text_files``)
    runs only the suites that need no other data set.
    """
    c = ml_collections.ConfigDict()
    c.suites = ",".join(SUITES)
    c.batch_size = 256          # images / texts per device step (padded to the mesh size)
    c.max_examples = 0          # >0: cap images per split (quick runs); 0 = all
    c.progress = True           # tqdm bars
    c.figure_pairs = 500        # pairs kept in embeddings.npz and drawn in the gap picture
    for name in evaluators.names():  # opt-in suites have their knobs too
        c[name] = evaluators.section_config(evaluators.get(name))
    return c


# --------------------------------------------------------------------------
# embeddings

def _on_mesh(x, sharding):
    """A global array of host value ``x`` (the same on every process) with ``sharding``:
    each process hands over only the slices its own devices hold."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x  # already global (e.g. the training state's parameters)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _to_host(x) -> np.ndarray:
    """Host copy of a (possibly multi-host) array: gathered, identical on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.lru_cache(maxsize=8)
def _normalised_tower(model, method: str):
    """One jitted, L2-normalised tower per (architecture, method), shared by every
    parameter set: a WiSE-FT curve or repeated in-training evals compile once."""
    def fn(p, x):
        return losses.l2_normalize(model.apply({"params": p}, x, method=method))
    return jax.jit(fn)


class Encoder:
    """Jit-compiled, L2-normalised ``encode_image`` / ``encode_text`` of one model.

    Batches are padded to a fixed size (a multiple of the mesh's ``data`` axis), so
    each tower compiles once; with a ``mesh`` the batch is split over ``data`` and the
    parameters replicated. Multi-host: every process walks the same (deterministic)
    eval stream, feeds its own devices' rows and gets the gathered (N, D) float32
    result, so the metrics that follow are identical on all processes.
    """

    def __init__(self, model, params, batch_size: int = 256, mesh=None, progress: bool = True):
        self.mesh = mesh
        self.progress = progress and jax.process_index() == 0
        n_dev = mesh.shape["data"] if mesh is not None else 1
        self.batch_size = int(math.ceil(max(int(batch_size), 1) / n_dev) * n_dev)
        if mesh is not None:
            replicated = NamedSharding(mesh, P())
            params = jax.tree.map(lambda x: _on_mesh(x, replicated), params)
            self._in_sharding = NamedSharding(mesh, P("data"))
        self.params = params

        self._image_fn = _normalised_tower(model, "encode_image")
        self._text_fn = _normalised_tower(model, "encode_text")

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
                    chunk = _on_mesh(chunk, self._in_sharding)
                result = fn(self.params, chunk)
                # Fetch the previous result only now, so host work overlaps the device.
                if pending is not None:
                    out.append(_to_host(pending[0])[:pending[1]])
                pending = (result, n)
                bar.update(n)
        if pending is not None:
            out.append(_to_host(pending[0])[:pending[1]])
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
    layout: ``checkpointing.load_run`` converts reparameterised runs to it)."""
    if "logit_scale" not in params:
        raise EvalError("params have no 'logit_scale'; pass scale= or set "
                        "config.eval.calibration.scale")
    return float(np.exp(np.asarray(params["logit_scale"], np.float64)))


# --------------------------------------------------------------------------
# which suites

def _eval_config(config):
    ecfg = config_get(config, "eval")
    return ecfg if ecfg is not None else default_eval_config()


def _section(ecfg, name: str):
    """``config.eval.<name>``, defaults filled in for a suite the config predates."""
    section = evaluators.section_config(evaluators.get(name))
    if name in ecfg:
        section.update(ecfg[name])
    return section


def resolve_suites(config, ctx=None) -> list[str]:
    """Suite names to run: ``config.eval.suites``, checked against the registry. On own
    data (``image_text_files``) the default list drops suites needing other data sets."""
    ecfg = _eval_config(config)
    names = as_list(ecfg.suites)
    for n in names:
        evaluators.get(n)  # unknown name -> EvalError listing the known ones
    if (ctx is not None and names == list(SUITES)
            and config_get(config_get(config, "data"), "name") == "image_text_files"):
        own = [n for n in names
               if not evaluators.get(n)(_section(ecfg, n), ecfg).needs_other_data(ctx)]
        log.info("eval on own data: default suites %s (the others need other data sets; "
                 "name them in config.eval.suites to run them)", ",".join(own))
        names = own
    return names


def suite_schedule(config) -> dict[str, tuple[int, bool]]:
    """``{suite: (period, at_end)}`` for in-training runs: each suite's ``log_every``
    (0 = ``config.eval_every_steps``, -1 = never) and ``at_end``. Building it reads the
    whole eval config (milliseconds): compute it once, not at every training step."""
    ecfg = _eval_config(config)
    default_every = int(config_get(config, "eval_every_steps", 0))
    schedule = {}
    for name in as_list(ecfg.suites):
        s = _section(ecfg, name)
        schedule[name] = (default_every if s.log_every == 0 else int(s.log_every),
                          bool(s.at_end))
    return schedule


def due_in(schedule: dict[str, tuple[int, bool]], step: int, total_steps: int) -> list[str]:
    """The suites of ``schedule`` (``suite_schedule``) due at ``step`` of ``total_steps``."""
    return [name for name, (every, at_end) in schedule.items()
            if (every > 0 and step % every == 0) or (step == total_steps and at_end)]


def suites_due(config, step: int, total_steps: int) -> list[str]:
    """The suites to run at training step ``step`` of ``total_steps``: each suite's
    ``log_every`` (0 = ``config.eval_every_steps``, -1 = never) and ``at_end``."""
    return due_in(suite_schedule(config), step, total_steps)


# --------------------------------------------------------------------------
# the driver

def evaluate(model, params, tokenizer, config, out_dir: str, scale: float | None = None,
             mesh=None, title: str | None = None, *, strict: bool = False,
             step: int | None = None, total_steps: int | None = None) -> dict:
    """Run the suites of ``config.eval`` (default: ``default_eval_config()``) and write
    ``out_dir/metrics.json``, ``metrics.md``, ``eval_info.json`` and figures.

    Args:
      model, params: a CLIP module (``encode_image``/``encode_text``, ``model.config``)
        and its parameters (host arrays or global arrays on ``mesh``).
      tokenizer: ``tok(texts, context_length=L) -> int32 (N, L)``.
      config: a ConfigDict with ``data`` (``config.data`` of the train configs) and
        optionally ``eval``.
      out_dir: output directory (created by process 0, the only one that writes).
      scale: contrastive multiplier for calibration/zero-shot; default
        ``config.eval.calibration.scale`` if > 0, else the model's own
        ``exp(params['logit_scale'])`` (``model_scale``).
      mesh: optional ``jax.sharding.Mesh`` with a ``data`` axis (may span hosts).
      strict: a suite whose data set is missing stops evaluation (``DataMissing``)
        before anything runs, instead of being skipped with a warning.
      step, total_steps: in training, run only the suites due at ``step``
        (``suites_due``); None runs them all.
    Returns:
      the flat metrics dict (the same on every process).
    """
    ecfg = _eval_config(config)
    if scale is None:
        cal = _section(ecfg, "calibration")
        scale = cal.scale if cal.scale > 0 else model_scale(params)
    image_size, context_length = model_dims(model)
    encoder = Encoder(model, params, ecfg.batch_size, mesh, ecfg.progress)
    suites = None if step is None else suites_due(config, step, total_steps or step)
    return run_suites(encoder, tokenizer, config, out_dir, image_size=image_size,
                      context_length=context_length, scale=float(scale), title=title,
                      strict=strict, suites=suites)


def run_suites(encoder, tokenizer, config, out_dir: str, *, image_size: int,
               context_length: int, scale: float, title: str | None = None,
               strict: bool = False, suites: list[str] | None = None) -> dict:
    """``evaluate`` for any encoder (``images``/``texts``/``batch_size``, see ``Encoder``).

    Suites run in order; ``DataMissing`` skips one (one warning line) unless ``strict``;
    any other error propagates after metrics.json holds the suites finished so far.
    """
    ecfg = _eval_config(config)
    writer = jax.process_index() == 0
    ctx = EvalContext(encoder, tokenizer, config, ecfg, int(image_size), int(context_length),
                      float(scale), out_dir, writer)
    names = resolve_suites(config, ctx) if suites is None else list(suites)
    suites_ = [evaluators.get(n)(_section(ecfg, n), ecfg) for n in names]

    # Data checks first (offline): with strict nothing runs when anything is missing.
    missing = {ev.name: ev.missing(ctx) for ev in suites_}
    missing = {k: v for k, v in missing.items() if v}
    if missing and strict:
        first = next(iter(missing.values()))[0]
        raise DataMissing(first.dataset, first.how + "".join(
            f"; also {m.dataset} (suite {k})" for k, ms in missing.items() for m in ms
            if m is not first))
    for name, ms in missing.items():
        log.warning("eval: skipping suite %r: %s", name, " | ".join(str(m) for m in ms))

    if writer:
        paths.makedirs(out_dir)
    values, reliability, info, timing = {}, {}, {}, {}
    skipped = {k: [m.dataset for m in ms] for k, ms in missing.items()}
    try:
        for ev in suites_:
            if ev.name in missing:
                continue
            t0 = time.perf_counter()
            try:
                result = ev.run(ctx)
            except DataMissing as e:  # found only while running: same rule as above
                if strict:
                    raise
                log.warning("eval: skipping suite %r: %s", ev.name, e)
                skipped[ev.name] = [e.dataset]
                continue
            values.update(result.metrics)
            reliability.update(result.reliability)
            info.update(result.info)
            timing[ev.name] = round(time.perf_counter() - t0, 3)
            log.info("eval %s: %.1f s", ev.name, timing[ev.name])
    finally:  # whatever happened, keep what was computed
        if writer:
            _write(out_dir, values, reliability, title, {
                "suites": names, "skipped": skipped, "scale": float(scale), "seconds": timing,
                **info, "eval_config": ecfg.to_dict() if hasattr(ecfg, "to_dict") else None})
    return values


def _write(out_dir, values, reliability, title, info):
    if reliability:
        figures.reliability_diagram(reliability, paths.join(out_dir, "reliability.png"))
        # The bins themselves, so reports can draw several models side by side.
        paths.write_json(paths.join(out_dir, RELIABILITY_FILE),
                         {k: {f: np.asarray(v).tolist() for f, v in b.items()}
                          for k, b in reliability.items()})
    report.write_metrics(values, out_dir, title or "Evaluation")
    paths.write_json(paths.join(out_dir, "eval_info.json"), info, indent=1, default=str)
