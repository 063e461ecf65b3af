"""TFDS builder ``gmm_demo``: generated captioned scenes (see ``demo_render``), plus
the class names / templates for zero-shot use and attribute-swap triples for embedding
arithmetic.

Generation is deterministic (example i of split s depends only on (seed, s, i)) and
offline; TFDS caches it under ``data_dir`` so later runs reuse it.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import multiprocessing
import os
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from gmm_jax.data import demo_render

DEFAULT_SPLIT_SIZES = {
    "source_train": 60000, "source_test": 1000, "target_train": 4000, "target_test": 1000,
    "shift_background": 1000, "shift_combo": 1000,
}
CLASS_NAMES = demo_render.SHAPES
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "a {} on a background.",
             "an image of a {}.", "a picture with a {}.")
# Attributes a caption names; right answers of a swap must agree on all but the swapped one.
ARITHMETIC_ATTRIBUTES = ("shape", "colour", "size", "position", "count")
_WORDS = {"shape": demo_render.SHAPES, "colour": demo_render.COLOURS,
          "size": demo_render.SIZES, "position": demo_render.POSITIONS}


@dataclasses.dataclass
class GmmDemoConfig(tfds.core.BuilderConfig):
    """``split_sizes``: examples per split; ``seed``: generation seed; ``num_workers``:
    processes rendering in parallel (0 = all cores)."""
    split_sizes: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_SPLIT_SIZES))
    seed: int = 0
    num_workers: int = 0


def small_config(scale: float = 0.1, name: str | None = None) -> GmmDemoConfig:
    """A config with every split scaled by ``scale`` (at least 8 examples each)."""
    sizes = {k: max(8, int(round(v * scale))) for k, v in DEFAULT_SPLIT_SIZES.items()}
    return GmmDemoConfig(name=name or f"scale{scale:g}".replace(".", "p"), split_sizes=sizes)


def _render(args):
    split, index, seed = args
    ex = demo_render.make_example(split, index, seed)
    buf = io.BytesIO()
    Image.fromarray(ex["image"]).save(buf, format="PNG")
    s = ex["scene"]
    return index, {
        "image": buf.getvalue(), "captions": ex["captions"], "label": s["shape"],
        "shape": s["shape"], "colour": s["colour"], "size": s["size"],
        "position": s["position"], "background": s["background"], "style": s["style"],
        "count": s["count"],
    }


class GmmDemo(tfds.core.GeneratorBasedBuilder):
    """Synthetic captioned scenes with distribution shifts, for the gmm_jax demo."""

    VERSION = tfds.core.Version("5.0.0")
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "2.0.0": "Captions at several levels of detail; 11 colours, 3 sizes, "
                              "9 positions; 20,000 source_train scenes.",
                     "3.0.0": "Test captions all name every attribute; training splits add "
                              "three captions of less detail; larger objects; outlined "
                              "objects in the source splits too.",
                     "4.0.0": "Source splits as varied as web data: one or two objects, a "
                              "third background (wavy bands), 60,000 scenes; the target "
                              "domain through a false-colour camera.",
                     "5.0.0": "shift_background: unseen backgrounds in more colourful tones "
                              "(30% of the way to the object colours); other splits "
                              "unchanged."}
    BUILDER_CONFIGS = [GmmDemoConfig(name="default", description="full size"),
                       small_config(0.1, name="small")]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> tfds.core.DatasetInfo:
        cl = tfds.features.ClassLabel
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(
                    shape=(demo_render.IMAGE_SIZE, demo_render.IMAGE_SIZE, 3),
                    encoding_format="png"),
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "label": cl(names=demo_render.SHAPES),
                "shape": cl(names=demo_render.SHAPES), "colour": cl(names=demo_render.COLOURS),
                "size": cl(names=demo_render.SIZES), "position": cl(names=demo_render.POSITIONS),
                "background": cl(names=demo_render.BACKGROUNDS),
                "style": cl(names=demo_render.STYLES),
                "count": np.int64,
            }),
            supervised_keys=("image", "label"),
            description=__doc__,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        unknown = set(self.builder_config.split_sizes) - set(demo_render.SPLIT_RULES)
        if unknown:
            raise ValueError(f"gmm_demo: unknown split(s) {sorted(unknown)}; "
                             f"known: {list(demo_render.SPLIT_RULES)}")
        return {split: self._generate_examples(split, n)
                for split, n in self.builder_config.split_sizes.items()}

    def _generate_examples(self, split: str, num: int):
        cfg = self.builder_config
        jobs = [(split, i, cfg.seed) for i in range(num)]
        workers = cfg.num_workers or os.cpu_count() or 1
        if workers <= 1 or num < 256:
            yield from map(_render, jobs)
            return
        # Rendering is the bottleneck (~1 ms/image). Workers come from a fork server, not
        # from forking this process: a fork of a process whose JAX/TF threads may hold
        # locks can deadlock in the child (seen: a first demo run hung at 2% CPU); the
        # server is started once and has only imported modules (spawned workers would each
        # import TensorFlow again: 6 splits took 94 s instead of 15). A worker that dies
        # raises BrokenProcessPool here instead of leaving the generation waiting forever.
        # The server preloads this module, so each split's workers start without importing
        # TensorFlow again (about 60 s per split on a loaded 2-core machine otherwise).
        ctx = multiprocessing.get_context("forkserver" if os.name != "nt" else "spawn")
        if os.name != "nt":
            ctx.set_forkserver_preload([__name__])
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            yield from pool.map(_render, jobs, chunksize=128)


def builder(data_dir: str | None = None, config: str | GmmDemoConfig = "default") -> GmmDemo:
    """The demo builder; ``config`` is a name ("default", "small") or a ``GmmDemoConfig``."""
    return GmmDemo(data_dir=data_dir, config=config)


class ArithmeticTriple(NamedTuple):
    """Embedding-arithmetic query: swap ``word`` for ``new_word`` in image ``source``;
    ``answers`` are the indices of images showing the swapped scene."""
    source: int
    attribute: str
    word: str
    new_word: str
    answers: tuple[int, ...]


def _attribute_arrays(split_examples) -> dict[str, np.ndarray]:
    if isinstance(split_examples, Mapping):
        cols = split_examples
    else:
        rows = list(split_examples)
        cols = {k: [r[k] for r in rows] for k in ARITHMETIC_ATTRIBUTES if rows and k in rows[0]}
    missing = [k for k in ARITHMETIC_ATTRIBUTES if k not in cols]
    if missing:
        raise KeyError(f"demo_arithmetic_triples: examples lack attribute(s) {missing}; "
                       f"need {list(ARITHMETIC_ATTRIBUTES)}")
    out = {k: np.asarray(cols[k]).astype(np.int64).reshape(-1) for k in ARITHMETIC_ATTRIBUTES}
    n = {len(v) for v in out.values()}
    if len(n) != 1:
        raise ValueError(f"demo_arithmetic_triples: attribute lengths differ: "
                         f"{ {k: len(v) for k, v in out.items()} }")
    return out


def demo_arithmetic_triples(split_examples, max_triples: int | None = 1000, seed: int = 0,
                            swap_attributes: Sequence[str] = ("shape", "colour", "size",
                                                              "position"),
                            ) -> list[ArithmeticTriple]:
    """Attribute-swap triples (SIMAT-style) derived from the demo attributes.

    Args:
      split_examples: a mapping attribute -> (N,) ints (e.g. ``RetrievalSplit.attributes``)
        or a sequence of per-example dicts; needs ``shape, colour, size, position, count``.
      max_triples: keep at most this many (a deterministic random subset); None = all.
      seed: selection seed.
      swap_attributes: which attributes may be swapped.
    Returns:
      ``ArithmeticTriple(source, attribute, word, new_word, answers)`` where the answers
      agree with the source on every attribute of ``ARITHMETIC_ATTRIBUTES`` except the
      swapped one, which equals the new value; only triples with >= 1 answer are kept.
    """
    attrs = _attribute_arrays(split_examples)
    keys = np.stack([attrs[k] for k in ARITHMETIC_ATTRIBUTES], axis=1)  # (N, A)
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(map(tuple, keys)):
        groups.setdefault(row, []).append(i)
    triples = []
    for i, row in enumerate(map(tuple, keys)):
        for attr in swap_attributes:
            a = ARITHMETIC_ATTRIBUTES.index(attr)
            for new in range(len(_WORDS[attr])):
                if new == row[a]:
                    continue
                target = row[:a] + (new,) + row[a + 1:]
                answers = groups.get(target)
                if answers:
                    triples.append(ArithmeticTriple(i, attr, _WORDS[attr][row[a]],
                                                    _WORDS[attr][new], tuple(answers)))
    if max_triples is not None and len(triples) > max_triples:
        keep = np.sort(np.random.default_rng(seed).choice(len(triples), max_triples,
                                                          replace=False))
        triples = [triples[k] for k in keep]
    return triples
