"""Evaluation suites, one module each, chosen by name from ``config.eval.suites``.

Adding a suite: write ``gmm_jax/evaluators/<name>.py`` with a class decorated
``@register("<name>")`` (see ``base.Evaluator``) and import the module below. Its
knobs become ``config.eval.<name>`` and ``--config.eval.suites=...,<name>`` runs it;
the driver (``eval_lib.evaluate``) needs no change.
"""
from gmm_jax.evaluators.base import (DataMissing, EvalError, Evaluator, Result, as_list,
                                     default_names, get, names, register, section_config)
from gmm_jax.evaluators.context import EvalContext, RetrievalData

# Registration order is the default order of config.eval.suites.
from gmm_jax.evaluators import retrieval, geometry, calibration  # noqa: E402,F401
from gmm_jax.evaluators import zeroshot, fewshot, arithmetic  # noqa: E402,F401
from gmm_jax.evaluators import captioning  # noqa: E402,F401  (opt-in: not a default)

__all__ = ["DataMissing", "EvalContext", "EvalError", "Evaluator", "Result", "RetrievalData",
           "as_list", "default_names", "get", "names", "register", "section_config"]
