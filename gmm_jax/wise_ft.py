r"""WiSE-FT: weight-space ensembles of a zero-shot model and its fine-tuned versions.

    python -m gmm_jax.wise_ft --zeroshot=A --finetuned=B [--finetuned=C ...] \
        --alphas=0,0.1,...,1 --config=CONFIG --out=DIR [--step N] [--config.eval.*=...]
    python -m gmm_jax.wise_ft --zeroshot=A --finetuned=B --config=CONFIG \
        --save-alpha=0.5 --save-to=DIR2

``theta_alpha = (1 - alpha) * theta_A + alpha * theta_B`` for every tensor of the two
parameter trees (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022).
A and B are model directories (``python -m gmm_jax.convert`` / ``save_pretrained``) or
training-run workdirs (their latest checkpoint, or ``--step``); both must have the same
architecture and the same tokenizer. Each ``theta_alpha`` is evaluated with
``eval_lib.evaluate`` (eval.py's suites, sharded over a ``data`` mesh like eval.py), so
``alpha = 0`` reproduces eval.py on A and ``alpha = 1`` eval.py on B.

Temperature: every run's ``logit_scale`` is OpenAI's ``log(scale)`` once loaded
(runs trained with the ``softplus``/``exp`` reparameterisations are converted by the
loader), and it is interpolated like any other tensor: the scale of ``theta_alpha`` is the
geometric interpolation ``scale_A**(1-alpha) * scale_B**alpha``, which keeps both
endpoints exact. ``--config.eval.calibration.scale=S`` evaluates every alpha at one
fixed scale ``S`` instead (ECE then compares the embeddings alone).

Outputs in DIR: ``wise_ft.json`` (``{"alphas": [...], "metrics": {run: [flat metrics of
each alpha]}}`` plus the metric choices), ``wise_ft.md``, ``wise_ft_id_ood.png`` (in- vs
out-of-distribution metric, one curve per fine-tuned run) and ``wise_ft_ece.png`` (ECE vs
alpha); each alpha's own eval output under ``DIR/evals/``. See docs/robustness.md.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from gmm_jax import paths as fs  # `paths` names run directories below

log = logging.getLogger(__name__)

ZEROSHOT_NAME = "zeroshot"
# Model-config fields that do not change the function a parameter tree computes
# (run-time options, and the initial value of a tensor both models have).
IGNORED_FIELDS = ("dtype", "remat", "attention", "logit_scale_init")


class WiseFTError(ValueError):
    """A user error (incompatible models, bad flag): reported without a traceback."""


# --------------------------------------------------------------------------- loading

def load_model(path: str, step: int | None = None):
    """``(model, params, tokenizer)`` of a model directory or a training-run workdir.

    The single place this module reads models from disk. ``step`` applies to run
    workdirs (default: the latest checkpoint) and is ignored for model directories.
    Raises WiseFTError naming ``path`` when it is neither or lacks a tokenizer.
    """
    from gmm_jax import checkpointing, pretrained
    if not fs.isdir(path):
        raise WiseFTError(f"{path!r} does not exist or is not a directory")
    try:
        if fs.isdir(fs.join(path, checkpointing.CHECKPOINT_DIR)):
            model, params, tok, _, _ = checkpointing.load_run(path, step=step)
        elif fs.isfile(fs.join(path, pretrained.CONFIG_FILE)):
            model, params, tok = pretrained.load_pretrained(path)
        else:
            raise WiseFTError(
                f"{path!r} is neither a model directory ({pretrained.CONFIG_FILE}, params/) "
                f"nor a training-run workdir ({checkpointing.CHECKPOINT_DIR}/)")
    except (FileNotFoundError, ValueError) as e:
        if isinstance(e, WiseFTError):
            raise
        raise WiseFTError(f"{path!r}: {e}") from e
    if tok is None:
        raise WiseFTError(f"{path!r} has no tokenizer/ directory")
    return model, params, tok


# --------------------------------------------------------------------------- maths

def _flat(params) -> list[tuple[str, tuple]]:
    """``[(path, shape)]`` in tree order; leaves may be arrays or ``ShapeDtypeStruct``s."""
    import jax
    return [(jax.tree_util.keystr(k), tuple(np.shape(v) if not hasattr(v, "shape") else v.shape))
            for k, v in jax.tree_util.tree_leaves_with_path(params)]


def check_compatible(params_a, params_b, name_a: str = "A", name_b: str = "B",
                     config_a=None, config_b=None) -> None:
    """Raise WiseFTError naming the first difference between two models: a model-config
    field (with ``config_a``/``config_b``: ``CLIPConfig``s; ``IGNORED_FIELDS`` such
    as ``dtype`` do not count), then the first tensor (in ``name_a``'s tree order) missing
    from the other tree or with another shape, then a tensor only ``name_b`` has."""
    if config_a is not None and config_b is not None:
        da, db = config_a.to_dict(), config_b.to_dict()
        for key in sorted(set(da) | set(db)):
            if key not in IGNORED_FIELDS and da.get(key) != db.get(key):
                raise WiseFTError(f"different architectures: model config {key!r} is "
                                  f"{da.get(key)!r} in {name_a} and {db.get(key)!r} in {name_b}")
    flat_b = dict(_flat(params_b))
    flat_a = _flat(params_a)
    for path, shape in flat_a:
        if path not in flat_b:
            raise WiseFTError(f"different layouts: tensor {path} of {name_a} (shape "
                              f"{shape}) is missing from {name_b}")
        if shape != flat_b[path]:
            raise WiseFTError(f"different shapes: tensor {path} is {shape} in {name_a} "
                              f"and {flat_b[path]} in {name_b}")
    extra = [p for p in flat_b if p not in dict(flat_a)]
    if extra:
        raise WiseFTError(f"different layouts: tensor {extra[0]} of {name_b} (shape "
                          f"{flat_b[extra[0]]}) is missing from {name_a}")


def _interpolate_fn():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def fn(params_a, params_b, alpha):
        # (1-alpha)*a + alpha*b rather than a + alpha*(b-a): both endpoints are exact.
        def mix(a, b):
            a, b = jnp.asarray(a), jnp.asarray(b)
            w = jnp.asarray(alpha, jnp.float32)
            return ((1 - w) * a.astype(jnp.float32) + w * b.astype(jnp.float32)).astype(a.dtype)
        return jax.tree.map(mix, params_a, params_b)
    return fn


_INTERPOLATE = None


def interpolate(params_a, params_b, alpha: float):
    """``(1 - alpha) * params_a + alpha * params_b`` leaf by leaf (float32 arithmetic,
    the leaves' dtype kept). ``logit_scale`` (log scale) included: the interpolated
    scale is geometric. The trees must match (``check_compatible``)."""
    global _INTERPOLATE
    if _INTERPOLATE is None:  # one compiled function for every alpha
        _INTERPOLATE = _interpolate_fn()
    return _INTERPOLATE(params_a, params_b, float(alpha))


def parse_alphas(spec) -> list[float]:
    """``"0,0.25,1"`` or a list -> floats; ``"0,0.1,...,1"`` expands the step between the
    first two values up to the value after ``...``. Each must be finite; duplicates
    are removed, order kept."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [str(s) for s in items if str(s)]
    if not items:
        raise WiseFTError("--alphas is empty")
    if "..." in items:
        i = items.index("...")
        if i != 2 or len(items) != 4:
            raise WiseFTError(f"--alphas={','.join(items)}: write 'first,second,...,last'")
        a0, a1, last = (_float_alpha(x) for x in (items[0], items[1], items[3]))
        step = a1 - a0
        n = round((last - a0) / step) if step else -1
        if n < 1 or abs(a0 + n * step - last) > 1e-9 * max(1.0, abs(last)):
            raise WiseFTError(f"--alphas={','.join(items)}: {last} is not reached from {a0} "
                              f"in steps of {step}")
        values = [round(a0 + k * step, 12) for k in range(n + 1)]
    else:
        values = [_float_alpha(x) for x in items]
    out: list[float] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _float_alpha(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise WiseFTError(f"--alphas: {text!r} is not a number") from None
    if not np.isfinite(v):
        raise WiseFTError(f"--alphas: {text!r} is not finite")
    return v


# --------------------------------------------------------------------------- the curve

def run_names(paths: Sequence[str]) -> list[str]:
    """Report names of the fine-tuned runs: directory basenames, made unique."""
    names: list[str] = []
    for p in paths:
        base = fs.basename(fs.absolute(p)) or "finetuned"
        name, k = base, 2
        while name in names or name == ZEROSHOT_NAME:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def alpha_dir(out_dir: str, run: str, alpha: float) -> str:
    return fs.join(out_dir, "evals", run, f"alpha_{alpha:g}")


def wise_ft_curve(model, params_a, finetuned: Mapping[str, object], tokenizer, config,
                  alphas: Sequence[float], out_dir: str, mesh=None,
                  evaluate: Callable | None = None) -> dict:
    """Evaluate ``interpolate(params_a, params_b, alpha)`` for every fine-tuned run
    (``finetuned``: name -> params) and alpha. ``evaluate`` defaults to
    ``eval_lib.evaluate``; alpha = 0 (the zero-shot model) is evaluated once and shared.
    Returns ``{"alphas": [...], "metrics": {name: [flat metrics per alpha]}}``."""
    if evaluate is None:
        from gmm_jax import eval_lib
        evaluate = eval_lib.evaluate
    zeroshot_values = None
    metrics: dict[str, list] = {}
    for name, params_b in finetuned.items():
        rows = []
        for alpha in alphas:
            if alpha == 0.0:
                if zeroshot_values is None:
                    zeroshot_values = evaluate(
                        model, params_a, tokenizer, config, fs.join(
                            out_dir, "evals", ZEROSHOT_NAME), mesh=mesh,
                        title="WiSE-FT: zero-shot model (alpha = 0)")
                rows.append(dict(zeroshot_values))
                continue
            log.info("WiSE-FT %s alpha=%g", name, alpha)
            params = interpolate(params_a, params_b, alpha)
            rows.append(dict(evaluate(model, params, tokenizer, config,
                                      alpha_dir(out_dir, name, alpha), mesh=mesh,
                                      title=f"WiSE-FT: {name}, alpha = {alpha:g}")))
        metrics[name] = rows
    return {"alphas": [float(a) for a in alphas], "metrics": metrics}


# --------------------------------------------------------------------------- CLI

def _fail(msg: str):
    print(f"wise_ft: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _define_flags():
    from absl import flags
    from ml_collections import config_flags
    f = {}
    f["config"] = config_flags.DEFINE_config_file("config", None, "Eval config file (its "
                                                  "data and eval sections).", lock_config=False)
    f["zeroshot"] = flags.DEFINE_string("zeroshot", None, "Zero-shot model: a model "
                                        "directory or a run workdir.")
    f["finetuned"] = flags.DEFINE_multi_string("finetuned", [], "Fine-tuned model (repeat "
                                               "for several): model directory or run workdir.")
    f["alphas"] = flags.DEFINE_string("alphas", "0,0.1,...,1", "Mixing coefficients: a "
                                      "comma list, or 'first,second,...,last'.")
    f["step"] = flags.DEFINE_integer("step", None, "Checkpoint step of the run workdirs "
                                     "(default: latest).")
    f["out"] = flags.DEFINE_string("out", None, "Output directory of the curve.")
    f["id"] = flags.DEFINE_string("id-metric", "", "In-distribution metric key (default: "
                                  "the first zero-shot set's top1).")
    f["ood"] = flags.DEFINE_string("ood-metrics", "", "Out-of-distribution metric key(s), "
                                   "comma-separated, averaged (default: the other zero-shot "
                                   "sets' top1).")
    f["ece"] = flags.DEFINE_string("ece-metrics", "", "ECE keys to plot (default: "
                                   "calibration/ece and every zeroshot/*/ece).")
    f["save_alpha"] = flags.DEFINE_float("save-alpha", None, "Write theta_alpha at this alpha "
                                         "as a model directory (needs --save-to).")
    f["save_to"] = flags.DEFINE_string("save-to", None, "Model directory for --save-alpha.")
    f["no_shard"] = flags.DEFINE_boolean("no_shard", False, "One device instead of a data mesh.")
    for name in ("id-metric", "ood-metrics", "ece-metrics", "save-alpha", "save-to"):
        flags.DEFINE_alias(name.replace("-", "_"), name)
    return f


def save_interpolated(model, params_a, params_b, tokenizer, alpha: float, out_dir: str) -> str:
    """Write ``theta_alpha`` as a model directory (eval.py ``--checkpoint``, train.py
    ``config.init`` and ``gmm_jax.convert`` read it). Returns its absolute path."""
    from gmm_jax import pretrained
    params = interpolate(params_a, params_b, alpha)
    cfg = model.config.replace(dtype="float32", remat=False, attention="einsum")
    return pretrained.save_pretrained(out_dir, cfg, params, tokenizer)


def _load_all(F):
    zs = F["zeroshot"].value
    if not zs:
        _fail("--zeroshot is required (the model before fine-tuning)")
    if not F["finetuned"].value:
        _fail("give at least one --finetuned model")
    model, params_a, tok = load_model(zs, F["step"].value)
    runs = {}
    for name, path in zip(run_names(F["finetuned"].value), F["finetuned"].value):
        model_b, params_b, tok_b = load_model(path, F["step"].value)
        check_compatible(params_a, params_b, f"--zeroshot {zs}", f"--finetuned {path}",
                         model.config, model_b.config)
        if (tok_b.encoder, tok_b.merges) != (tok.encoder, tok.merges):
            raise WiseFTError(f"--finetuned {path}: its tokenizer differs from the one of "
                              f"--zeroshot {zs}; the interpolated model needs one vocabulary")
        runs[name] = (path, params_b)
    return model, params_a, tok, runs


def main(argv, F) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}")
    from absl import flags
    saving = F["save_alpha"].value is not None
    curve = not saving or flags.FLAGS["alphas"].present
    if saving and not F["save_to"].value:
        _fail("--save-alpha needs --save-to=DIR")
    if F["save_to"].value and not saving:
        _fail("--save-to needs --save-alpha=ALPHA")
    if saving and len(F["finetuned"].value) != 1:
        _fail(f"--save-alpha interpolates towards one --finetuned model; got "
              f"{len(F['finetuned'].value)}")
    from gmm_jax import eval_lib
    config = F["config"].value
    if curve and config is None:
        _fail("--config is required (it names the data and the eval suites)")
    if curve and not F["out"].value:
        _fail("--out=DIR is required")
    try:
        alphas = parse_alphas(F["alphas"].value) if curve else []
        model, params_a, tok, runs = _load_all(F)
        if saving:
            ((_, params_b),) = runs.values()
            out = save_interpolated(model, params_a, params_b, tok, F["save_alpha"].value,
                                    F["save_to"].value)
            print(f"wrote the model at alpha={F['save_alpha'].value:g} to {out}")
        if not curve:
            return
        import jax
        from jax.sharding import AxisType

        from gmm_jax import wise_ft_report
        if "eval" not in config:
            config.eval = eval_lib.default_eval_config()
        mesh = None
        if not F["no_shard"].value and jax.device_count() > 1:
            mesh = jax.make_mesh((jax.device_count(),), ("data",),
                                 axis_types=(AxisType.Auto,))
        out = F["out"].value
        result = wise_ft_curve(model, params_a, {n: p for n, (_, p) in runs.items()}, tok,
                               config, alphas, out, mesh=mesh)
        result["zeroshot"] = fs.absolute(F["zeroshot"].value)
        result["finetuned"] = {n: fs.absolute(p) for n, (p, _) in runs.items()}
        scale = config.eval.calibration.scale
        result["temperature"] = (f"fixed scale {scale:g}" if scale > 0 else
                                 "log(scale) interpolated like every tensor")
        md = wise_ft_report.write(result, out, F["id"].value, F["ood"].value,
                                  F["ece"].value)
        print(md)
        print(f"wrote {fs.join(out, 'wise_ft.json')}, wise_ft.md and figures")
    except (WiseFTError, eval_lib.EvalError, FileNotFoundError) as e:
        _fail(str(e))


def cli() -> None:
    """Entry point: absl flags + ``app.run``."""
    import sys

    from absl import app

    from gmm_jax.cli import resolve_config_names
    sys.argv = resolve_config_names(sys.argv)
    flag_holders = _define_flags()
    app.run(lambda argv: main(argv, flag_holders))


if __name__ == "__main__":
    # Run the imported module's cli(), so that gmm_jax.wise_ft.WiseFTError (raised by
    # wise_ft_report too) is the class main() catches, not a __main__ copy.
    from gmm_jax.wise_ft import cli as _cli
    _cli()
