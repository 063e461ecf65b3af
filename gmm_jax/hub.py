"""Hub names as checkpoint sources: Hugging Face hub ids and OpenCLIP pretrained tags.

    fetch("openai/clip-vit-base-patch32", "hf")      # -> Fetched(snapshot dir, {})
    fetch("ViT-B-32:laion2b_s34b_b79k", "openclip")  # -> Fetched(weights file, {"act": "gelu"})
    resolve_model_dir("openai/clip-vit-base-patch32")  # -> converted gmm_jax model directory

Files come through ``huggingface_hub``'s cache (``HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``): the cache is looked at first and used without any network
call when it holds the files; otherwise they are downloaded (unless ``HF_HUB_OFFLINE=1``).
When neither works, ``HubError`` says so in one line naming the hub name and the cache.

``resolve_model_dir`` (what ``config.init`` goes through) converts a hub name once into
``$GMM_JAX_CACHE/<name>`` (default ``~/.cache/gmm_jax``) and reuses that directory later.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
from typing import Any, Optional

from gmm_jax import paths

# OpenCLIP's pretrained tags for the ViT CLIP models this project converts: tag ->
# (hub repo, whether the weights were trained with quick_gelu). Facts read from
# open_clip's pretrained.py (open_clip_torch 3.3.0); the weights of every entry sit in
# the repo as open_clip_model.safetensors and/or open_clip_pytorch_model.bin.
_TIMM = "timm/vit_{}_clip_{}.{}"
OPENCLIP_TAGS: dict[str, dict[str, tuple[str, bool]]] = {
    "ViT-B-32": {
        "openai": (_TIMM.format("base_patch32", 224, "openai"), True),
        "laion400m_e31": (_TIMM.format("base_patch32", 224, "laion400m_e31"), True),
        "laion400m_e32": (_TIMM.format("base_patch32", 224, "laion400m_e32"), True),
        "laion2b_e16": (_TIMM.format("base_patch32", 224, "laion2b_e16"), False),
        "laion2b_s34b_b79k": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", False),
        "datacomp_xl_s13b_b90k": ("laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K", False),
        "metaclip_400m": (_TIMM.format("base_patch32", 224, "metaclip_400m"), True),
        "metaclip_fullcc": (_TIMM.format("base_patch32", 224, "metaclip_2pt5b"), True),
    },
    "ViT-B-32-256": {
        "datacomp_s34b_b86k": ("laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K", False),
    },
    "ViT-B-16": {
        "openai": (_TIMM.format("base_patch16", 224, "openai"), True),
        "laion400m_e31": (_TIMM.format("base_patch16", 224, "laion400m_e31"), False),
        "laion400m_e32": (_TIMM.format("base_patch16", 224, "laion400m_e32"), False),
        "laion2b_s34b_b88k": ("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", False),
        "datacomp_xl_s13b_b90k": ("laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K", False),
        "dfn2b": ("apple/DFN2B-CLIP-ViT-B-16", True),
        "metaclip_400m": (_TIMM.format("base_patch16", 224, "metaclip_400m"), True),
        "metaclip_fullcc": (_TIMM.format("base_patch16", 224, "metaclip_2pt5b"), True),
    },
    "ViT-L-14": {
        "openai": (_TIMM.format("large_patch14", 224, "openai"), True),
        "laion400m_e31": (_TIMM.format("large_patch14", 224, "laion400m_e31"), False),
        "laion400m_e32": (_TIMM.format("large_patch14", 224, "laion400m_e32"), False),
        "laion2b_s32b_b82k": ("laion/CLIP-ViT-L-14-laion2B-s32B-b82K", False),
        "datacomp_xl_s13b_b90k": ("laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K", False),
        "dfn2b": ("apple/DFN2B-CLIP-ViT-L-14", True),
        "dfn2b_s39b": ("apple/DFN2B-CLIP-ViT-L-14-39B", False),
        "metaclip_400m": (_TIMM.format("large_patch14", 224, "metaclip_400m"), True),
        "metaclip_fullcc": (_TIMM.format("large_patch14", 224, "metaclip_2pt5b"), True),
    },
    "ViT-L-14-336": {
        "openai": (_TIMM.format("large_patch14", 336, "openai"), True),
    },
}
# Head counts the tensors cannot tell: OpenCLIP's default is 64-wide heads, which the
# converter assumes; the models above all use it (ViT-H and larger do not, hence absent).
OPENCLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPENCLIP_EXTRA = ("open_clip_config.json", "vocab.json", "merges.txt", "tokenizer.json")
# What a Hugging Face CLIP directory needs: config, weights (single or sharded), tokenizer.
HF_PATTERNS = ["config.json", "model.safetensors", "model.safetensors.index.json",
               "model-*-of-*.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
               "tokenizer_config.json"]
HF_BIN = "pytorch_model.bin"  # fetched only when the repo has no safetensors weights
ETAG_TIMEOUT_S = 10.0         # per metadata request: a dead network fails, never hangs

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_OPENCLIP_NAME = re.compile(r"^([\w.-]+):([\w.-]+)$")
HF_HUB_PREFIX = "hf-hub:"     # OpenCLIP's spelling of "the open_clip files of this repo"


class HubError(FileNotFoundError):
    """A hub name that is neither in the cache nor downloadable (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Fetched:
    path: str                     # HF snapshot directory, or an OpenCLIP weights file
    options: dict[str, Any]       # converter overrides the files cannot tell (act)
    repo_id: str
    revision: str                 # the snapshot's commit hash


# --------------------------------------------------------------------------- names

def is_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name and "--" not in name


def parse_openclip_name(name: str) -> Optional[tuple[str, str, bool]]:
    """``"ViT-B-32:laion2b_s34b_b79k"`` -> ``(repo_id, model:tag, quick_gelu)``;
    ``"hf-hub:org/name"`` -> ``(org/name, ..., None)``; None if ``name`` is neither form.
    HubError for the ``MODEL:TAG`` form with an unknown model or tag."""
    if name.startswith(HF_HUB_PREFIX):
        repo = name[len(HF_HUB_PREFIX):].rstrip("/")
        return (repo, name, None) if is_repo_id(repo) else None
    m = _OPENCLIP_NAME.match(name)
    if not m:
        return None
    model, tag = m.group(1), m.group(2).lower().replace("-", "_")  # OpenCLIP's tag spelling
    base = model[:-len("-quickgelu")] if model.endswith("-quickgelu") else model
    if base not in OPENCLIP_TAGS:
        raise HubError(f"OpenCLIP name {name!r}: unknown model {model!r}; known: "
                       f"{', '.join(OPENCLIP_TAGS)} (or hf-hub:ORG/REPO, or a local file)")
    tags = OPENCLIP_TAGS[base]
    if tag not in tags:
        raise HubError(f"OpenCLIP name {name!r}: unknown tag {tag!r} for {base}; known: "
                       f"{', '.join(tags)}")
    repo, quick = tags[tag]
    return repo, f"{base}:{tag}", quick or model.endswith("-quickgelu")


def hub_format(name: str) -> Optional[str]:
    """"hf" / "openclip" when ``name`` reads as a hub name (and is no existing path)."""
    if not name or "://" in name or paths.exists(name):
        return None
    if name.startswith(HF_HUB_PREFIX) or _OPENCLIP_NAME.match(name):
        return "openclip"
    return "hf" if is_repo_id(name) else None


# --------------------------------------------------------------------------- cache

def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once at import)."""
    from huggingface_hub import constants
    return _env_true("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> str:
    """huggingface_hub's cache folder, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants
    return constants.HF_HUB_CACHE


def gmm_cache_dir() -> str:
    """Where hub names are kept converted: $GMM_JAX_CACHE, else ~/.cache/gmm_jax."""
    return os.path.expanduser(os.environ.get("GMM_JAX_CACHE") or "~/.cache/gmm_jax")


def _short(e: Exception) -> str:
    """The first line of an error; huggingface_hub wraps the network's as 'Got: X: ...'."""
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")[:200]
    if first.startswith("Got: "):
        return first[len("Got: "):]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _fail(what: str, name: str, cache: str, reason: str) -> HubError:
    return HubError(f"{what} {name}: not in the Hugging Face cache {cache} and {reason}; "
                    "download it where there is network (same command) and copy the cache, "
                    "or pass a local path")


def _revision(path: str) -> str:
    parts = os.path.normpath(path).split(os.sep)
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else ""


def _has_hf_weights(d: str) -> bool:
    return any(os.path.isfile(os.path.join(d, f)) for f in
               ("model.safetensors", "model.safetensors.index.json", HF_BIN))


def _openclip_weights(d: str) -> Optional[str]:
    found = [os.path.join(d, f) for f in OPENCLIP_WEIGHTS if os.path.isfile(os.path.join(d, f))]
    return found[0] if found else None


@contextlib.contextmanager
def _quiet_hub():
    """huggingface_hub logs every retry as a warning; the failure is reported once, by us."""
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _snapshot(repo_id: str, cache: str, what: str, name: str, complete, download) -> str:
    """The cached snapshot of ``repo_id`` if ``complete(dir)``, else ``download()``
    (unless offline). HubError naming ``name`` and ``cache`` when neither works."""
    from huggingface_hub import snapshot_download
    with _quiet_hub():
        try:
            d = snapshot_download(repo_id, cache_dir=cache, local_files_only=True)
            if complete(d):
                return d
        except Exception:  # noqa: BLE001 - any cache miss: try the network
            pass
        if offline():
            raise _fail(what, name, cache, "downloads are off (HF_HUB_OFFLINE=1)")
        try:
            d = download()
        except Exception as e:  # noqa: BLE001 - network, auth, missing repo: one line
            raise _fail(what, name, cache, f"the download failed ({_short(e)})") from None
    if not complete(d):
        raise HubError(f"{what} {name}: the hub repo has none of the expected files "
                       f"(got {sorted(os.listdir(d))} in {d})")
    return d


def fetch_hf(repo_id: str) -> Fetched:
    """A Hugging Face CLIP repo's config, weights and tokenizer files: the cached
    snapshot if complete, else downloaded. HubError (one line) when neither works."""
    from huggingface_hub import hf_hub_download, snapshot_download
    cache = hf_cache_dir()

    def complete(d):
        return os.path.isfile(os.path.join(d, "config.json")) and _has_hf_weights(d)

    def download():
        d = snapshot_download(repo_id, allow_patterns=HF_PATTERNS, cache_dir=cache,
                              etag_timeout=ETAG_TIMEOUT_S)
        if os.path.isfile(os.path.join(d, "config.json")) and not _has_hf_weights(d):
            hf_hub_download(repo_id, HF_BIN, cache_dir=cache, etag_timeout=ETAG_TIMEOUT_S)
        return d

    d = _snapshot(repo_id, cache, "Hugging Face hub id", repr(repo_id), complete, download)
    return Fetched(d, {}, repo_id, _revision(d))


def fetch_openclip(name: str) -> Fetched:
    """An OpenCLIP weights file for ``MODEL:TAG`` or ``hf-hub:ORG/REPO`` (with the
    repo's open_clip_config.json and tokenizer files beside it when it has them), cache
    first. Only one weights file is downloaded: safetensors when the repo has it."""
    from huggingface_hub import HfApi, snapshot_download
    parsed = parse_openclip_name(name)
    if parsed is None:
        raise HubError(f"{name!r} is not an OpenCLIP name (MODEL:TAG, e.g. "
                       "ViT-B-32:laion2b_s34b_b79k, or hf-hub:ORG/REPO)")
    repo_id, _, quick = parsed
    options = {} if quick is None else {"act": "quick_gelu" if quick else "gelu"}
    cache = hf_cache_dir()
    shown = f"{name!r} (hub repo {repo_id})" if quick is not None else repr(name)

    def download():
        files = {s.rfilename for s in HfApi().model_info(repo_id, timeout=ETAG_TIMEOUT_S).siblings}
        weights = [f for f in OPENCLIP_WEIGHTS if f in files][:1]
        return snapshot_download(repo_id, allow_patterns=weights + list(OPENCLIP_EXTRA),
                                 cache_dir=cache, etag_timeout=ETAG_TIMEOUT_S)

    d = _snapshot(repo_id, cache, "OpenCLIP name", shown, _openclip_weights, download)
    return Fetched(_openclip_weights(d), options, repo_id, _revision(d))


def fetch(name: str, fmt: str) -> Fetched:
    """``fetch_hf`` for ``fmt == "hf"``, ``fetch_openclip`` for ``"openclip"``."""
    if fmt == "hf":
        if not is_repo_id(name):
            raise HubError(f"{name!r} is neither a local path nor a Hugging Face hub id "
                           "(ORG/NAME)")
        return fetch_hf(name)
    if fmt == "openclip":
        return fetch_openclip(name)
    raise ValueError(f"hub names are for --format hf or openclip, not {fmt!r}")


# --------------------------------------------------------------------------- config.init

SOURCE_FILE = "hub_source.json"  # written last: its presence marks a complete conversion


def converted_dir(name: str) -> str:
    """The directory ``resolve_model_dir`` keeps ``name`` converted in."""
    safe = re.sub(r"[^\w.-]+", "--", name).strip("-")
    return os.path.join(gmm_cache_dir(), safe)


def resolve_model_dir(init: str) -> str:
    """``config.init`` as a local model directory: a path (local or ``gs://``) comes back
    unchanged; a hub name is converted once into ``converted_dir(name)`` and that
    directory is returned (reused on later calls, no network)."""
    fmt = hub_format(init) if isinstance(init, str) else None
    if fmt is None:
        return init
    out = converted_dir(init)
    if os.path.isfile(os.path.join(out, SOURCE_FILE)):
        return out
    import jax
    if jax.process_count() > 1:  # each host would convert into its own disk; Orbax
        # writes from the first host only, so the others would end up without params
        raise HubError(f"config.init={init!r} is a hub name not yet converted in {out}; on "
                       "several hosts convert it once first (python -m gmm_jax.convert "
                       f"--src {init} --format {fmt} --out gs://BUCKET/DIR) and pass that "
                       "directory as config.init")
    try:
        fetched = fetch(init, fmt)
    except HubError as e:
        raise HubError(f"config.init={init!r} is not a local path; {e}") from None
    from gmm_jax import convert
    from gmm_jax.pretrained import save_pretrained
    model, params = convert.load_source(fmt, fetched.path, **fetched.options)
    tok = convert.source_tokenizer(fmt, fetched.path, model.config.context_length)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(tmp, model.config, params, tok)
    with open(os.path.join(tmp, SOURCE_FILE), "w") as f:
        json.dump({"name": init, "format": fmt, "repo_id": fetched.repo_id,
                   "revision": fetched.revision, "path": fetched.path,
                   "options": fetched.options}, f, indent=2)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first (or a stale partial dir): keep one
        if not os.path.isfile(os.path.join(out, SOURCE_FILE)):
            shutil.rmtree(out, ignore_errors=True)
            os.rename(tmp, out)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
