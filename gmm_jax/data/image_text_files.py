"""TFDS builder ``image_text_files``: a user's own image-caption pairs.

``config.data.files_path`` is one captions file (JSONL or CSV, see
``gmm_jax.data.captions_files``; its only split is ``train``) or a directory of
``<split>.jsonl`` / ``<split>.csv`` files (one TFDS split per file: ``train``, ``test``,
``shifted``, ...). Image paths are relative to ``config.data.images_dir`` when given,
else to the directory holding the captions file(s). Unreadable or corrupt images are
skipped and counted per split (``fail_on_bad_image=True`` raises instead); a split in
which no image can be read raises, naming the images directory. Malformed lines raise
``ValueError`` naming ``file:line`` and the field.

Each source gets its own TFDS config whose name hashes the captions files' content and
the options, so ``data_dir`` caches several users' sets side by side and an edited file
is rebuilt.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging

import tensorflow_datasets as tfds
from PIL import Image

from gmm_jax import paths
from gmm_jax.data.captions_files import parse_captions_file, split_files

__all__ = ["BadImageError", "ImageTextFiles", "ImageTextFilesConfig", "builder",
           "default_images_dir", "generate_pairs", "load_image_bytes", "make_config",
           "parse_captions_file", "split_files"]
# Formats tf.io.decode_image reads directly; anything else is re-encoded as PNG.
_TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP")


class BadImageError(ValueError):
    """An image file is missing, unreadable or corrupt (with fail_on_bad_image)."""


def load_image_bytes(path: str) -> bytes:
    """Read and fully decode an image (catches truncated/corrupt files); returns bytes
    ``tf.io.decode_image`` can read as RGB. Raises ``BadImageError`` naming the file."""
    try:
        data = paths.read_bytes(path)
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


@dataclasses.dataclass
class ImageTextFilesConfig(tfds.core.BuilderConfig):
    files_path: str = ""        # a captions file or a directory of <split>.jsonl/.csv
    images_dir: str = ""
    fail_on_bad_image: bool = False


def default_images_dir(files_path: str) -> str:
    """The folder image paths are relative to when ``images_dir`` is not given."""
    return files_path if paths.isdir(files_path) else paths.dirname(files_path)


def make_config(files_path: str, images_dir: str | None = None,
                fail_on_bad_image: bool = False) -> ImageTextFilesConfig:
    """A config named after the captions file (or directory) and a hash of the split
    files' names and content and the options."""
    splits = split_files(files_path)            # FileNotFoundError names files_path
    images_dir = images_dir or default_images_dir(files_path)
    if not paths.isdir(images_dir):
        raise FileNotFoundError(f"images directory not found: {images_dir} "
                                "(config.data.images_dir)")
    h = hashlib.sha256()
    for split, path in sorted(splits.items()):
        h.update(f"{split}\0".encode())
        h.update(hashlib.sha256(paths.read_bytes(path)).digest())
    h.update(paths.absolute(images_dir).encode())
    h.update(str(bool(fail_on_bad_image)).encode())
    base = paths.path(paths.absolute(files_path).rstrip("/")).stem
    stem = "".join(c if c.isalnum() else "_" for c in base)[:40]
    return ImageTextFilesConfig(name=f"{stem}_{h.hexdigest()[:12]}",
                                files_path=paths.absolute(files_path),
                                images_dir=paths.absolute(images_dir),
                                fail_on_bad_image=fail_on_bad_image)


def generate_pairs(entries, images_dir: str, fail_on_bad_image: bool, stats: dict):
    """Yields ``(key, example)`` for readable images; counts bad ones in ``stats``."""
    stats.setdefault("num_bad_images", 0)
    stats.setdefault("bad_images", [])
    for rel, caps in entries:
        path = paths.join(images_dir, rel)
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
    """A user's image-caption pairs: one captions file, or a directory of split files."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "A directory of <split>.jsonl/.csv files gives one split each."}

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
        files = split_files(self.builder_config.files_path)
        # Parse every file first: a malformed line stops the build before anything is written.
        entries = {split: parse_captions_file(path) for split, path in files.items()}
        return {split: self._generate_examples(split, files[split], entries[split])
                for split in files}

    def _generate_examples(self, split, path, entries):
        cfg = self.builder_config
        stats: dict = {}
        n = 0
        for item in generate_pairs(entries, cfg.images_dir, cfg.fail_on_bad_image, stats):
            n += 1
            yield item
        self.info.metadata[split] = stats
        if not n:
            raise FileNotFoundError(
                f"{path}: none of its {len(entries)} images could be read from "
                f"{cfg.images_dir} (config.data.images_dir), e.g. {stats['bad_images'][:3]}")
        if stats["num_bad_images"]:
            logging.warning("%s: skipped %d unreadable image(s), e.g. %s", path,
                            stats["num_bad_images"], stats["bad_images"][:5])


def builder(files_path: str, images_dir: str | None = None, data_dir: str | None = None,
            fail_on_bad_image: bool = False) -> ImageTextFiles:
    return ImageTextFiles(config=make_config(files_path, images_dir, fail_on_bad_image),
                          data_dir=data_dir)
