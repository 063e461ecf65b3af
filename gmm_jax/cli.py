"""Command-line error handling shared by the entry points (train.py; eval.py and convert
can use it too): mistakes a user can fix print one line naming the culprit and exit with
status 1; the traceback is shown only with ``--verbosity=1`` (absl) or
``GMM_TRACEBACK=1``."""
from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """A mistake in the command, config or data that the user can fix; its message names
    the culprit (config key, path, file:line)."""


# Raised for bad input throughout the library (config validation, the data layer,
# model and checkpoint loading), with messages that name the culprit.
USER_ERRORS = (UserError, ValueError, FileNotFoundError, NotADirectoryError)


def traceback_wanted() -> bool:
    if os.environ.get("GMM_TRACEBACK", "").strip().lower() in ("1", "true", "yes"):
        return True
    try:
        from absl import flags
        return flags.FLAGS.is_parsed() and int(flags.FLAGS["verbosity"].value) >= 1
    except (ImportError, KeyError):
        return False


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages joined with ' | ')."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def run_cli(main_fn: Callable, prog: str) -> Callable:
    """``main_fn`` wrapped for ``absl.app.run`` (or a plain call): a user error prints
    ``"<prog>: error: <message>"`` as stderr's last line and exits 1 (re-raised with its
    traceback when ``traceback_wanted()``)."""
    def wrapped(*args, **kwargs):
        try:
            return main_fn(*args, **kwargs)
        except USER_ERRORS as e:
            if traceback_wanted():
                raise
            sys.stderr.flush()
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
            sys.exit(1)
    wrapped.__name__ = getattr(main_fn, "__name__", "main")
    wrapped.__doc__ = main_fn.__doc__
    return wrapped


def packaged_config(name: str) -> str | None:
    """The file of the shipped config ``name`` (``coco``, ``demo``, ...) or None."""
    if not name.replace("_", "").isalnum():
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", f"{name}.py")
    return path if os.path.isfile(path) else None


def resolve_config_names(argv: list[str]) -> list[str]:
    """``argv`` with ``--config=NAME[:ARG]`` (or ``--config NAME``) naming a shipped
    config replaced by its packaged file, so an installed ``gmm-train --config=coco``
    works from any directory. An existing path always wins."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            prefix, value = "--config=", arg[len("--config="):]
        elif arg == "--config" and i + 1 < len(out):
            prefix, value, i = "", out[i + 1], i + 1
        else:
            continue
        base, sep, rest = value.partition(":")
        if not os.path.exists(base) and (path := packaged_config(base)):
            out[i] = f"{prefix}{path}{sep}{rest}"
    return out
