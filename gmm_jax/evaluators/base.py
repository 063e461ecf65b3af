"""The evaluator interface and its registry.

An evaluation suite is a class registered under a name::

    @register("retrieval")
    class Retrieval(Evaluator):
        @staticmethod
        def defaults():            # knobs of config.eval.retrieval
            return {"ks": (1, 5, 10)}
        def run(self, ctx):        # ctx: EvalContext (encoder, tokenizer, data, scale, ...)
            return Result({"retrieval/i2t_r1": ...})

``config.eval.suites`` names the suites to run; the driver (``eval_lib.evaluate``)
looks each up here, builds it from its config section and calls ``run``. A new
suite is one module in this package plus its import in ``__init__``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import ml_collections


class EvalError(ValueError):
    """A user error (missing checkpoint, dataset, bad config): reported without a trace."""


class DataMissing(EvalError):
    """A suite's data set is not present locally. Evaluation never downloads: the suite
    is skipped with one warning (or, with ``strict``, evaluation stops before it starts)."""

    def __init__(self, dataset: str, how: str):
        self.dataset, self.how = dataset, how
        super().__init__(f"{dataset} is not available locally; {how}")


@dataclasses.dataclass
class Result:
    """What a suite returns.

    metrics: flat ``{key: float}`` written to metrics.json.
    reliability: ``{label: metrics.reliability_bins(...)}``, drawn together in
      reliability.png by the driver.
    info: JSON-able extras for eval_info.json (e.g. duplicate-caption counts).
    """
    metrics: dict[str, float]
    reliability: dict[str, dict] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Evaluator:
    """Base class of a suite. Subclasses set ``defaults`` and ``run``; optionally
    ``missing`` (data checks, offline) and ``needs_other_data``.

    ``self.cfg`` is the suite's section ``config.eval.<name>``, ``self.ecfg`` the
    whole ``config.eval``. Every section also has ``log_every`` (in-training period in
    steps; 0 = ``config.eval_every_steps``, -1 = never during training) and ``at_end``
    (run at the end of training).
    """
    name: ClassVar[str] = ""
    # False: not in the default ``config.eval.suites`` (expensive suites, opt-in by name).
    in_defaults: ClassVar[bool] = True

    def __init__(self, cfg, ecfg):
        self.cfg, self.ecfg = cfg, ecfg

    @staticmethod
    def defaults() -> dict:
        return {}

    def needs_other_data(self, ctx) -> bool:
        """True when the suite reads a data set other than ``config.data`` (CIFAR,
        SIMAT, ...): such suites are left out of the own-data defaults."""
        return False

    def missing(self, ctx) -> list[DataMissing]:
        """Data sets this suite needs that are not present (checked without network)."""
        return []

    def run(self, ctx) -> Result:
        raise NotImplementedError


_REGISTRY: dict[str, type[Evaluator]] = {}


def register(name: str):
    """Class decorator: make an ``Evaluator`` selectable as ``config.eval.suites=name``."""
    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"evaluator {name!r} registered twice ({_REGISTRY[name].__module__}"
                             f" and {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def get(name: str) -> type[Evaluator]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EvalError(f"config.eval.suites: unknown suite {name!r}; known: "
                        f"{list(_REGISTRY)}") from None


def names() -> tuple[str, ...]:
    """Registered suites, in registration order."""
    return tuple(_REGISTRY)


def default_names() -> tuple[str, ...]:
    """The suites run when ``config.eval.suites`` is left at its default."""
    return tuple(n for n, cls in _REGISTRY.items() if cls.in_defaults)


def section_config(cls: type[Evaluator]) -> ml_collections.ConfigDict:
    """``config.eval.<name>``: the suite's defaults plus the in-training knobs."""
    c = ml_collections.ConfigDict(cls.defaults())
    c.log_every = 0   # in training: every N steps; 0 = config.eval_every_steps; -1 = never
    c.at_end = True   # in training: after the last step
    return c


def as_list(value) -> list:
    """A comma-separated string or a sequence -> list of stripped non-empty items."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)
