"""TFDS builder ``flickr30k_karpathy``: Flickr30k with Karpathy's splits, from a manual dir.

``manual_dir`` must hold ``dataset_flickr30k.json`` (Karpathy & Fei-Fei's split file,
from ``caption_datasets.zip``) and ``flickr30k-images/`` (the 31,783 JPEGs). Splits:
``train`` (29,000 images), ``val`` (1,014), ``test`` (1,000); 5 captions per image.
"""
from __future__ import annotations

import dataclasses
import json
import logging

import tensorflow_datasets as tfds

from gmm_jax import paths
from gmm_jax.data.image_text_files import generate_pairs

JSON_NAME = "dataset_flickr30k.json"
IMAGES_DIR = "flickr30k-images"
WHERE_TO_GET = (
    "Get the images by requesting access at https://shannon.cs.illinois.edu/DenotationGraph/ "
    "(flickr30k-images.tar.gz) and the split file dataset_flickr30k.json from Karpathy's "
    "caption_datasets.zip (https://cs.stanford.edu/people/karpathy/deepimagesent/)."
)
MANUAL_INSTRUCTIONS = (
    f"Put {JSON_NAME} and the {IMAGES_DIR}/ folder in the manual dir "
    f"(config.data.manual_dir). {WHERE_TO_GET}")


def check_manual_dir(manual_dir: str | None) -> tuple[str, str]:
    """Paths of the split file and image folder; ``FileNotFoundError`` naming the expected
    paths (and where to get them) if any is missing."""
    if not manual_dir:
        raise FileNotFoundError(f"flickr30k needs config.data.manual_dir. {MANUAL_INSTRUCTIONS}")
    json_path = paths.join(manual_dir, JSON_NAME)
    img_dir = paths.join(manual_dir, IMAGES_DIR)
    missing = [p for p, ok in ((json_path, paths.isfile(json_path)),
                               (img_dir + "/", paths.isdir(img_dir))) if not ok]
    if missing:
        raise FileNotFoundError(f"flickr30k: missing {', '.join(missing)}. "
                                f"{MANUAL_INSTRUCTIONS}")
    return json_path, img_dir


def read_karpathy_json(json_path: str) -> dict[str, list[tuple[str, list[str]]]]:
    """split -> [(filename, [raw captions])] in file order."""
    try:
        images = paths.read_json(json_path)["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{json_path}: not a Karpathy split file ({e})") from None
    out: dict[str, list] = {}
    for i, im in enumerate(images):
        try:
            caps = [s["raw"].strip() for s in im["sentences"]]
            out.setdefault(im["split"], []).append((im["filename"], caps))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{json_path}: images[{i}] lacks {e}") from None
        if not caps or not all(caps):
            raise ValueError(f"{json_path}: images[{i}] ({im['filename']}) has an empty caption")
    return out


@dataclasses.dataclass
class Flickr30kConfig(tfds.core.BuilderConfig):
    fail_on_bad_image: bool = False


class Flickr30kKarpathy(tfds.core.GeneratorBasedBuilder):
    """Flickr30k images with 5 captions each and Karpathy's train/val/test splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    BUILDER_CONFIGS = [Flickr30kConfig(name="default"),
                       Flickr30kConfig(name="strict", fail_on_bad_image=True)]

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "image_path": tfds.features.Text(),
                "captions": tfds.features.Sequence(tfds.features.Text()),
            }),
            metadata=tfds.core.MetadataDict(),
            homepage="https://shannon.cs.illinois.edu/DenotationGraph/",
            description=__doc__,
        )

    def _split_generators(self, dl_manager):
        json_path, img_dir = check_manual_dir(str(dl_manager.manual_dir))
        splits = read_karpathy_json(json_path)
        return {name: self._generate_examples(name, entries, img_dir)
                for name, entries in splits.items()}

    def _generate_examples(self, split, entries, img_dir):
        stats: dict = {}
        yield from generate_pairs(entries, img_dir, self.builder_config.fail_on_bad_image,
                                  stats)
        self.info.metadata[split] = stats
        if stats["num_bad_images"]:
            logging.warning("flickr30k %s: skipped %d unreadable image(s)", split,
                            stats["num_bad_images"])


def builder(data_dir: str | None = None, fail_on_bad_image: bool = False) -> Flickr30kKarpathy:
    return Flickr30kKarpathy(data_dir=data_dir,
                             config="strict" if fail_on_bad_image else "default")
