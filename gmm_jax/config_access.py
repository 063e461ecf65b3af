"""One way to read a config field, whatever holds it (the project's configs are
ml_collections ConfigDicts; tests and library callers also pass dicts and objects)."""
from __future__ import annotations

from typing import Any


def config_get(cfg: Any, key: str, default: Any = None, *, keep_none: bool = False) -> Any:
    """``cfg[key]`` for a ConfigDict or mapping, ``cfg.key`` for any other object.

    ``default`` when ``cfg`` is None, the key is absent, or its value is None (the
    configs' "unset", as in ``config_dict.placeholder``); ``keep_none``: a None value
    is returned as it is (for fields where None is itself a setting, e.g.
    ``config.loss.m2_scale``). Falsy values (0, "", False) are values.
    """
    if cfg is None:
        return default
    if hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        try:
            value = getattr(cfg, key)
        except (AttributeError, KeyError):
            value = default
    return default if value is None and not keep_none else value
