"""The loss specification: ``config.loss`` read and validated once, as a frozen value.

``LossSpec.from_config(config.loss)`` is the only place that parses the loss section;
``losses.build_objective`` and ``distributed_loss.local_objective`` both take its
result, so defaults and checks cannot drift apart. Errors name the config key, e.g.
``config.loss.method='foo': expected one of ('clip', 'm2mix', ...)``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from gmm_jax.config_access import config_get

METHODS = ("clip", "m2mix", "m3mix", "cua", "cuaxu")
MIX_SCHEDULES = ("inverse_epoch", "constant")
MIX_FORMS = ("reference", "openclip")
SWAPS = ("none", "hard", "soft")
# Contrastive temperature modes; the trained ones keep a parameter in params["logit_scale"].
TRAINED_TEMPERATURES = ("learned", "softplus", "exp")
TEMPERATURES = ("learned", "fixed", "schedule", "softplus", "exp")
# The authors' m2-Mix Beta parameter per recipe (their m3-Mix script uses 0.2), used when
# config.loss.beta_m2 is None; an explicit value always wins.
BETA_M2_DEFAULTS = {"m3mix": 0.2}
BETA_M2_DEFAULT = 0.5

_CHOICES = {"method": METHODS, "mix_schedule": MIX_SCHEDULES, "mix_form": MIX_FORMS,
            "swap": SWAPS, "temperature": TEMPERATURES}


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Every field of ``config.loss``, with the defaults of ``configs/default.py``.

    The objective fields: ``method`` (recipe), ``mix_schedule`` / ``mix_form`` (how the
    mix terms are weighted and formed), the m2-Mix / m3-Mix weights ``c_*`` and Beta
    parameters ``beta_*`` (``beta_m2=None``: the recipe's default, ``BETA_M2_DEFAULTS``),
    ``m2_scale`` (the m2-Mix logit scale; ``None`` = the contrastive one), the
    uniformity/alignment weights and exponents, and modality swapping (``swap``,
    ``swap_p``). The temperature fields are read by the train state.
    """
    method: str = "clip"
    mix_schedule: str = "inverse_epoch"
    mix_form: str = "reference"
    c_m2: float = 0.01
    beta_m2: Optional[float] = None
    m2_scale: Optional[float] = 1 / 0.07
    c_u: float = 0.05
    beta_u: float = 0.5
    c_vl: float = 0.1
    beta_vl: float = 0.5
    w_uniformity: float = 1.0
    w_alignment: float = 1.0
    w_cross_uniformity: float = 1.0
    uniformity_t: float = 2.0
    alignment_alpha: float = 2.0
    temperature: str = "fixed"
    tau: float = 0.01
    tau_start: float = 0.01
    tau_end: float = 0.03
    temp_exp_s: float = 4.0
    temp_lr_mult: float = 1.0
    max_logit_scale: float = math.log(100.0)
    swap: str = "none"
    swap_p: float = 0.0

    def __post_init__(self):
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"config.loss.{key}={getattr(self, key)!r}: "
                                 f"expected one of {choices}")
        if self.beta_m2 is None:  # resolved once, so every reader sees the number
            object.__setattr__(self, "beta_m2",
                               BETA_M2_DEFAULTS.get(self.method, BETA_M2_DEFAULT))
        if not 0.0 <= self.swap_p <= 1.0:
            raise ValueError(f"config.loss.swap_p={self.swap_p}: expected a probability "
                             "in [0, 1]")
        for key in ("beta_m2", "beta_u", "beta_vl", "uniformity_t", "alignment_alpha",
                    "temp_exp_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"config.loss.{key}={getattr(self, key)}: must be > 0")
        if self.temperature == "fixed" and not self.tau > 0:
            raise ValueError(f"config.loss.tau={self.tau}: must be > 0")
        if self.m2_scale is not None and not self.m2_scale > 0:
            raise ValueError(f"config.loss.m2_scale={self.m2_scale}: must be > 0 "
                             "(or None for the contrastive scale)")

    @classmethod
    def from_config(cls, cfg: Any) -> "LossSpec":
        """The spec of ``cfg`` (``config.loss`` as a ConfigDict, a dict, an object with
        these attributes, or a ``LossSpec``); missing fields take their defaults.
        Raises ``ValueError`` naming the key for unknown keys, wrong types and values."""
        if isinstance(cfg, LossSpec):
            return cfg
        if hasattr(cfg, "keys"):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(str(k) for k in cfg.keys() if k not in known)
            if unknown:
                raise ValueError(f"config.loss has unknown key(s) {unknown}; "
                                 f"known: {sorted(known)}")
        values = {}
        for f in dataclasses.fields(cls):
            value = config_get(cfg, f.name, f.default, keep_none=True)
            if isinstance(f.default, str):
                values[f.name] = value  # checked against its choices in __post_init__
            elif value is None and f.name in ("m2_scale", "beta_m2"):
                values[f.name] = None
            else:
                try:
                    values[f.name] = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"config.loss.{f.name}={value!r}: expected a number"
                                     ) from None
        return cls(**values)

    @property
    def mixes(self) -> bool:
        """Whether the recipe has the m2-Mix term (``m2mix``, ``m3mix``)."""
        return self.method in ("m2mix", "m3mix")

    @property
    def spreads(self) -> bool:
        """Whether the recipe has the uniformity/alignment terms (``cua``, ``cuaxu``)."""
        return self.method in ("cua", "cuaxu")

    def unused_fields(self) -> tuple[str, ...]:
        """The objective's knobs this recipe never reads (``losses.loss_terms``): e.g. the
        m2-Mix weights of a ``clip`` run, ``swap_p`` without swapping. Runs that differ
        only there train the same thing (the random draws do not depend on them)."""
        out = []
        if not self.mixes:
            out += ["mix_schedule", "mix_form", "c_m2", "beta_m2", "m2_scale"]
        if self.method != "m3mix":
            out += ["c_u", "beta_u", "c_vl", "beta_vl"]
        if not self.spreads:
            out += ["w_uniformity", "w_alignment", "uniformity_t", "alignment_alpha"]
        if self.method != "cuaxu":
            out += ["w_cross_uniformity"]
        if self.swap == "none":
            out += ["swap_p"]
        return tuple(out)
