"""TFDS builder ``image_text_files``: a user's own image-caption pairs.

Input: a JSONL file (one object per line: ``{"image": "rel/path.jpg", "captions": [...]}``
or ``{"image": ..., "caption": "..."}``) or a CSV file with header ``image,caption``
(several rows per image allowed: their captions are grouped, first-seen order), plus
``images_dir`` that the image paths are relative to. Unreadable or corrupt images are
skipped and counted (``fail_on_bad_image=True`` raises instead); an empty caption or a
malformed line raises ``ValueError`` naming the file and line number.

Each source gets its own TFDS config whose name hashes the captions file's content and
the options, so ``data_dir`` caches several users' sets side by side and an edited file
is rebuilt.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
from typing import Iterable

import tensorflow_datasets as tfds
from PIL import Image

# Formats tf.io.decode_image reads directly; anything else is re-encoded as PNG.
_TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP")


class BadImageError(ValueError):
    """An image file is missing, unreadable or corrupt (with fail_on_bad_image)."""


def load_image_bytes(path: str) -> bytes:
    """Read and fully decode an image (catches truncated/corrupt files); returns bytes
    ``tf.io.decode_image`` can read as RGB. Raises ``BadImageError`` naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes every pixel: a truncated or corrupt file raises here
            fmt, mode = im.format, im.mode
            if fmt in _TF_FORMATS and mode in ("RGB", "L", "RGBA", "P", "LA"):
                return data
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"bad image {path}: {type(e).__name__}: {e}") from e


def _check_caption(cap, where: str) -> str:
    if not isinstance(cap, str):
        raise ValueError(f"{where}: caption must be a string, got {type(cap).__name__}")
    if not cap.strip():
        raise ValueError(f"{where}: empty caption")
    return cap.strip()


def parse_captions_file(path: str) -> list[tuple[str, list[str]]]:
    """``[(image relative path, [captions...]), ...]`` in first-seen order.

    Raises ``FileNotFoundError`` if ``path`` is missing and ``ValueError`` with
    ``path:line`` for malformed lines, missing keys, or empty captions.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"captions file not found: {path}")
    grouped: dict[str, list[str]] = {}

    def add(image, caps: Iterable, where: str):
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{where}: missing or empty 'image' path")
        caps = [_check_caption(c, where) for c in caps]
        if not caps:
            raise ValueError(f"{where}: no captions")
        grouped.setdefault(image.strip(), []).extend(caps)

    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8", newline="") as f:
        if ext in (".jsonl", ".json", ".ndjson"):
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise ValueError(f"{where}: expected a JSON object")
                if "captions" in obj:
                    caps = obj["captions"]
                    if not isinstance(caps, list):
                        raise ValueError(f"{where}: 'captions' must be a list of strings")
                elif "caption" in obj:
                    caps = [obj["caption"]]
                else:
                    raise ValueError(f"{where}: needs 'caption' or 'captions'")
                add(obj.get("image"), caps, where)
        elif ext in (".csv", ".tsv"):
            reader = csv.reader(f, delimiter="\t" if ext == ".tsv" else ",")
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["image", "caption"]:
                raise ValueError(f"{path}:1: expected header 'image,caption', got {header}")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 2:
                    raise ValueError(f"{where}: expected 2 columns (image,caption), got "
                                     f"{len(row)}")
                add(row[0], [row[1]], where)
        else:
            raise ValueError(f"{path}: unsupported captions file type {ext!r} "
                             "(use .jsonl or .csv)")
    if not grouped:
        raise ValueError(f"{path}: no image-caption pairs")
    return list(grouped.items())


@dataclasses.dataclass
class ImageTextFilesConfig(tfds.core.BuilderConfig):
    files_path: str = ""
    images_dir: str = ""
    fail_on_bad_image: bool = False


def make_config(files_path: str, images_dir: str,
                fail_on_bad_image: bool = False) -> ImageTextFilesConfig:
    """A config named after the captions file and a hash of its content and the options."""
    if not os.path.isfile(files_path):
        raise FileNotFoundError(f"captions file not found: {files_path} "
                                "(config.data.files_path)")
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"images directory not found: {images_dir} "
                                "(config.data.images_dir)")
    h = hashlib.sha256()
    with open(files_path, "rb") as f:
        h.update(f.read())
    h.update(os.path.abspath(images_dir).encode())
    h.update(str(bool(fail_on_bad_image)).encode())
    stem = "".join(c if c.isalnum() else "_" for c in
                   os.path.splitext(os.path.basename(files_path))[0])[:40]
    return ImageTextFilesConfig(name=f"{stem}_{h.hexdigest()[:12]}",
                                files_path=os.path.abspath(files_path),
                                images_dir=os.path.abspath(images_dir),
                                fail_on_bad_image=fail_on_bad_image)


def generate_pairs(entries, images_dir: str, fail_on_bad_image: bool, stats: dict):
    """Yields ``(key, example)`` for readable images; counts bad ones in ``stats``."""
    stats.setdefault("num_bad_images", 0)
    stats.setdefault("bad_images", [])
    for rel, caps in entries:
        path = os.path.join(images_dir, rel)
        try:
            data = load_image_bytes(path)
        except BadImageError as e:
            if fail_on_bad_image:
                raise
            stats["num_bad_images"] += 1
            if len(stats["bad_images"]) < 100:
                stats["bad_images"].append(rel)
            logging.warning("skipping %s", e)
            continue
        yield rel, {"image": data, "image_path": rel, "captions": caps}


class ImageTextFiles(tfds.core.GeneratorBasedBuilder):
    """A user's image-caption pairs from a JSONL/CSV file and an image folder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def __init__(self, *, config: ImageTextFilesConfig, **kwargs):
        if not isinstance(config, ImageTextFilesConfig):
            raise TypeError("ImageTextFiles needs an ImageTextFilesConfig (see make_config)")
        super().__init__(config=config, **kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "image_path": tfds.features.Text(),
                "captions": tfds.features.Sequence(tfds.features.Text()),
            }),
            metadata=tfds.core.MetadataDict(),
            description=__doc__,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        entries = parse_captions_file(cfg.files_path)  # errors surface before writing
        return {"train": self._generate_examples(entries)}

    def _generate_examples(self, entries):
        cfg = self.builder_config
        stats: dict = {}
        yield from generate_pairs(entries, cfg.images_dir, cfg.fail_on_bad_image, stats)
        self.info.metadata["train"] = stats
        if stats["num_bad_images"]:
            logging.warning("%s: skipped %d unreadable image(s), e.g. %s", cfg.files_path,
                            stats["num_bad_images"], stats["bad_images"][:5])


def builder(files_path: str, images_dir: str, data_dir: str | None = None,
            fail_on_bad_image: bool = False) -> ImageTextFiles:
    return ImageTextFiles(config=make_config(files_path, images_dir, fail_on_bad_image),
                          data_dir=data_dir)
