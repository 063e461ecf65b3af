"""The captioning suite on a dataset the project can read (COCO, Flickr30k, own
image-caption files, the demo): both splits come from ``config.data``."""
from __future__ import annotations

from gmm_jax.captioning.cache import clip_image_encoder, params_fingerprint
from gmm_jax.captioning.suite import captioning_metrics, captions_by_image
from gmm_jax.data.retrieval import load_retrieval_split
from gmm_jax.data.sources import DEFAULT_SPLITS, get_source


def captioning_on_data(model, params, tokenizer, data_cfg, cfg, train_split: str | None = None,
                       test_split: str | None = None):
    """Train the captioner on ``train_split`` of ``data_cfg`` (default: the source's
    training split) and score it on ``test_split`` (default: its evaluation split).
    Returns ``captioning_metrics``' ``(metrics, samples_md)``."""
    source = get_source(data_cfg)
    default_train, default_test = DEFAULT_SPLITS[source.name]
    size = model.config.image_size
    splits, images, caps = {}, {}, {}
    for role, name in (("train", train_split or default_train),
                       ("test", test_split or default_test)):
        split = load_retrieval_split(data_cfg, name, tokenizer, size, source=source)
        splits[role] = f"{source.name}:{name}"
        images[role] = (lambda s=split: s.iter_images(int(cfg.encode_batch_size)))
        caps[role] = captions_by_image(split)
    encode = clip_image_encoder(model, params, int(cfg.encode_batch_size))
    return captioning_metrics(encode, images["train"], caps["train"], images["test"],
                              caps["test"], tokenizer, cfg,
                              fingerprint=params_fingerprint(params),
                              train_split=splits["train"], test_split=splits["test"])
