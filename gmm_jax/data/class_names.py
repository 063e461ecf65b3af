"""Class names and prompt templates for zero-shot classification.

ImageNet class names and the CLIP paper's 80 prompt templates are read at run time from
the installed ``open_clip`` package's ``zero_shot_metadata.py``, parsed with ``ast``
(importing open_clip would need torchvision). Templates are returned as format strings
with one ``{}`` slot: ``template.format(class_name)``.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import os

_METADATA_FILE = "zero_shot_metadata.py"


def _metadata_path() -> str:
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = os.path.join(loc, _METADATA_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"ImageNet class names and the CLIP prompt templates are read from open_clip's "
        f"{_METADATA_FILE}, but it was not found (open_clip locations: {locations or 'none'}). "
        "Install it without its dependencies: pip install --no-deps open_clip_torch==3.3.0")


def _lambda_to_format(node: ast.AST, path: str) -> str:
    """``lambda c: f'a photo of a {c}.'`` -> ``'a photo of a {}.'``."""
    if not (isinstance(node, ast.Lambda) and isinstance(node.body, ast.JoinedStr)):
        raise ValueError(f"{path}: unexpected template entry {ast.dump(node)[:80]}")
    parts = []
    for value in node.body.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value).replace("{", "{{").replace("}", "}}"))
        elif isinstance(value, ast.FormattedValue):
            parts.append("{}")
        else:
            raise ValueError(f"{path}: unexpected template part {ast.dump(value)[:80]}")
    return "".join(parts)


@functools.lru_cache(maxsize=None)
def _open_clip_metadata() -> dict:
    path = _metadata_path()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                node.targets[0], ast.Name) and isinstance(node.value, (ast.Tuple, ast.List)):
            out[node.targets[0].id] = (node.value.elts, path)
    return out


def _get(name: str):
    meta = _open_clip_metadata()
    if name not in meta:
        raise KeyError(f"{name} not found in {_metadata_path()}")
    return meta[name]


@functools.lru_cache(maxsize=None)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names (OpenAI's cleaned names), in ImageNet-1k index order."""
    elts, path = _get("IMAGENET_CLASSNAMES")
    names = tuple(ast.literal_eval(e) for e in elts)
    if len(names) != 1000:
        raise ValueError(f"{path}: expected 1000 IMAGENET_CLASSNAMES, got {len(names)}")
    return names


@functools.lru_cache(maxsize=None)
def openai_imagenet_templates() -> tuple[str, ...]:
    """The CLIP paper's 80 ImageNet prompt templates as ``str.format`` strings."""
    elts, path = _get("OPENAI_IMAGENET_TEMPLATES")
    templates = tuple(_lambda_to_format(e, path) for e in elts)
    if len(templates) != 80:
        raise ValueError(f"{path}: expected 80 OPENAI_IMAGENET_TEMPLATES, got {len(templates)}")
    return templates


@functools.lru_cache(maxsize=None)
def simple_imagenet_templates() -> tuple[str, ...]:
    """OpenAI's 7-template subset (a cheaper ensemble)."""
    elts, path = _get("SIMPLE_IMAGENET_TEMPLATES")
    return tuple(_lambda_to_format(e, path) for e in elts)


def tfds_label_names(names) -> tuple[str, ...]:
    """TFDS ClassLabel names (``aquarium_fish``) -> prompt-ready names (``aquarium fish``)."""
    return tuple(n.replace("_", " ") for n in names)
