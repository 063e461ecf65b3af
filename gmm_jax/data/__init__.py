"""Input pipelines and TFDS builders (COCO, Flickr30k, own image-caption files, the
generated demo set, zero-shot classification sets). See docs/data.md."""
from gmm_jax.data.demo import ArithmeticTriple, GmmDemo, GmmDemoConfig, demo_arithmetic_triples
from gmm_jax.data.flickr30k import Flickr30kKarpathy
from gmm_jax.data.image_text_files import ImageTextFiles, parse_captions_file
from gmm_jax.data.pipeline import TrainIterator, make_train_iterator
from gmm_jax.data.preprocess import CLIP_MEAN, CLIP_STD, augment_transform, clip_transform
from gmm_jax.data.retrieval import RetrievalSplit, load_retrieval_split
from gmm_jax.data.sources import Source, get_source
from gmm_jax.data.zeroshot import ClassificationSplit, load_classification_split

__all__ = [
    "ArithmeticTriple", "ClassificationSplit", "CLIP_MEAN", "CLIP_STD", "Flickr30kKarpathy",
    "GmmDemo", "GmmDemoConfig", "ImageTextFiles", "RetrievalSplit", "Source", "TrainIterator",
    "augment_transform", "clip_transform", "demo_arithmetic_triples", "get_source",
    "load_classification_split", "load_retrieval_split", "make_train_iterator",
    "parse_captions_file",
]
