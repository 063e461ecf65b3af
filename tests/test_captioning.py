"""Captioning: decoder training, greedy/beam search against brute force, metric wiring
against pycocoevalcap called directly, the embedding cache, the suite end to end."""
import itertools
import logging
import os

import jax
import numpy as np
import pytest

from gmm_jax import captioning
from gmm_jax.captioning import decode
from gmm_jax.captioning.generate import decoder_step_fn, make_generate_fn
from gmm_jax.captioning.model import Captioner, sequence_log_prob, target_mask
from gmm_jax.tokenizer import Tokenizer

CAPTIONS = ["a red square on the left", "two blue circles", "a small green triangle",
            "a big yellow star at the top right"]


def tiny_cfg(**kw):
    cfg = captioning.captioning_config()
    cfg.update(dict(prefix_length=2, width=32, layers=1, heads=2, max_length=16, steps=100,
                    batch_size=4, lr=1e-2, warmup_frac=0.1, weight_decay=0.0, beam_size=3,
                    decode_batch_size=3, num_samples=2, java_metrics=""))
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(CAPTIONS * 2, vocab_size=560)


SOT, EOT, T = 2, 3, 5   # the random captioner's tiny vocabulary: words {0, 1}, SOT, EOT


@pytest.fixture(scope="module")
def random_captioner():
    model = Captioner(vocab_size=4, prefix_length=2, max_length=T, width=16, layers=1, heads=2)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 8), np.float32),
                                               np.zeros((1, T), np.int32)))["params"]
    # Weights drawn in NumPy (no init to compile), large enough for peaked,
    # well-separated distributions (fewer near-ties).
    return model, random_like(shapes, seed=2, std=0.6)


def random_like(shapes, seed, std):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (std * rng.normal(size=s.shape)).astype(np.float32), shapes)


def test_target_mask_matches_a_loop():
    eot = 7
    tokens = np.array([[5, 1, 2, 7, 0, 0], [5, 7, 7, 0, 7, 0], [5, 0, 0, 0, 0, 0],
                       [5, 1, 2, 3, 4, 7]], np.int32)
    targets, mask = target_mask(tokens, eot)
    for r, row in enumerate(tokens):
        want, seen = [], False
        for tok in row[1:]:
            want.append(not seen)
            seen = seen or tok == eot
        assert np.array_equal(np.asarray(mask[r]), want), r
    assert np.array_equal(np.asarray(targets), tokens[:, 1:])


@pytest.mark.slow
def test_decoder_overfits_a_tiny_set(tokenizer):
    """4 embeddings -> their 4 captions, exactly, with greedy and with beam search."""
    emb = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    cfg = tiny_cfg()
    model, params, losses = captioning.train_captioner(emb, [[c] for c in CAPTIONS], tokenizer, cfg)
    assert losses[-1] < 0.05 * losses[0]
    for beam in (1, 3):
        cfg.beam_size = beam
        assert captioning.generate_captions(model, params, emb, tokenizer, cfg) == CAPTIONS


def test_beam_one_equals_greedy(random_captioner):
    model, params = random_captioner
    emb = np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)

    @jax.jit
    def both(params, emb):
        step = decoder_step_fn(model, params, emb)
        return (decode.greedy_search(step, len(emb), T, SOT, EOT),
                decode.beam_search(step, len(emb), 1, T, SOT, EOT, alpha=0.0))
    (g_tok, g_score), (b_tok, b_score) = jax.device_get(both(params, emb))
    assert np.array_equal(g_tok, b_tok)
    np.testing.assert_allclose(g_score, b_score, rtol=1e-6)
    # Rows end with EOT then padding, and the varied lengths exercise the finished rows.
    lengths = [list(r).index(EOT) for r in g_tok]
    assert len(set(lengths)) > 1
    for row, n in zip(g_tok, lengths):
        assert row[0] == SOT and SOT not in row[1:] and not row[n + 1:].any()


def test_full_beam_equals_brute_force(random_captioner):
    """Vocabulary {0, 1} + SOT + EOT, at most 3 words: every caption is scored by a
    teacher-forced pass; a beam wide enough to keep all of them must find the best
    under each length normalisation."""
    model, params = random_captioner
    emb = np.random.default_rng(2).normal(size=(6, 8)).astype(np.float32)
    seqs = np.array([[SOT, *w, EOT] + [0] * (T - 2 - n) for n in range(T - 1)
                     for w in itertools.product((0, 1), repeat=n)], np.int32)
    # Every (image, caption) pair in one teacher-forced batch.
    pairs = np.tile(seqs, (len(emb), 1))
    logits = jax.jit(model.apply)({"params": params}, np.repeat(emb, len(seqs), 0), pairs)
    logp, n = (np.asarray(a, np.float64).reshape(len(emb), len(seqs))
               for a in sequence_log_prob(logits, pairs, EOT))
    search = make_generate_fn(model, 16, SOT, EOT)
    winners = set()
    for alpha in (0.0, 0.7, 3.0):
        tok, score = (np.asarray(a) for a in search(params, emb, alpha))
        norm = logp / ((5.0 + n) / 6.0) ** alpha
        for i in range(len(emb)):
            order = np.argsort(-norm[i])
            np.testing.assert_allclose(score[i], norm[i, order[0]], rtol=1e-5, atol=1e-6)
            if norm[i, order[0]] - norm[i, order[1]] > 1e-4:
                assert np.array_equal(tok[i], seqs[order[0]]), (alpha, i, tok[i])
            winners.add(int(n[i, order[0]]))
    assert len(winners) > 1  # the normalisation changed which length wins somewhere


def test_beam_search_rejects_bad_arguments():
    step = lambda tokens, t: np.zeros(tokens.shape + (4,), np.float32)  # noqa: E731
    with pytest.raises(ValueError, match="alpha"):
        decode.beam_search(step, 1, 2, 5, 2, 3, alpha=-1.0)
    with pytest.raises(ValueError, match="beam_size"):
        decode.beam_search(step, 1, 0, 5, 2, 3)


REFS = [["A man riding a horse.", "Someone on a brown horse!", "a rider, a horse"],
        ["Two dogs play in the snow", "dogs playing in snow"],
        ["A plate of food; with broccoli.", "food on a white plate", "broccoli and rice"]]
HYPS = ["A man rides a horse.", "two dogs in the snow", "a plate with broccoli"]
# The same strings tokenised by hand: lower case, punctuation removed.
REFS_TOK = [["a man riding a horse", "someone on a brown horse", "a rider a horse"],
            ["two dogs play in the snow", "dogs playing in snow"],
            ["a plate of food with broccoli", "food on a white plate", "broccoli and rice"]]
HYPS_TOK = ["a man rides a horse", "two dogs in the snow", "a plate with broccoli"]


def test_simple_tokenize():
    assert [captioning.simple_tokenize(h) for h in HYPS] == HYPS_TOK
    assert captioning.simple_tokenize("  Don't  STOP--now!! ") == "dont stop now"


def test_metric_wiring_equals_pycocoevalcap(caplog):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    gts = {f"img{i}": r for i, r in enumerate(REFS_TOK)}
    res = {f"img{i}": [h] for i, h in enumerate(HYPS_TOK)}
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    want = {"bleu1": bleu[0], "bleu2": bleu[1], "bleu3": bleu[2], "bleu4": bleu[3],
            "rouge_l": Rouge().compute_score(gts, res)[0],
            "cider": Cider().compute_score(gts, res)[0]}
    with caplog.at_level(logging.INFO, logger="gmm_jax.captioning.scores"):
        got = captioning.caption_scores(REFS, HYPS, java_metrics=("meteor",), java=None)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k
    assert 0 < got["bleu4"] < got["bleu1"] < 1 and got["cider"] > 0
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "meteor" in skipped[0].getMessage()
    with pytest.raises(ValueError, match="2 hypotheses for 3 images"):
        captioning.caption_scores(REFS, HYPS[:2])


def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_clip():
    from gmm_jax.models import CLIP, get_config
    model = CLIP(get_config("tiny", vision_layers=1))
    # The image tower's parameters only (the text tower is not needed), drawn in NumPy.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), _images(1),
                                               method=model.encode_image))["params"]
    return model, random_like(shapes, seed=0, std=0.1)


@pytest.mark.slow
def test_cached_embeddings_equal_a_fresh_encoding(tiny_clip, tmp_path):
    model, params = tiny_clip
    images = _images(7)
    fp = captioning.params_fingerprint(params)
    enc = captioning.clip_image_encoder(model, params, batch_size=4)
    batches = [images[:3], images[3:]]
    first = captioning.cached_image_embeddings(enc, batches, cache_dir=str(tmp_path),
                                               fingerprint=fp, split="demo:test")

    def fail(_):
        raise AssertionError("the image tower ran although the embeddings are cached")
    again = captioning.cached_image_embeddings(fail, lambda: fail(None), cache_dir=str(tmp_path),
                                               fingerprint=fp, split="demo:test")
    # Fresh: one unpadded, un-jitted pass over all images, normalised in float64.
    fresh = np.asarray(model.apply({"params": params}, images, method=model.encode_image),
                       np.float64)
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    np.testing.assert_allclose(first, fresh, atol=1e-5)
    assert np.array_equal(first, again)
    # Other parameters or another split: another file, so recomputed.
    other = jax.tree.map(lambda x: x * 1.5, params)
    assert captioning.params_fingerprint(other) != fp
    assert captioning.params_fingerprint(jax.tree.map(np.array, params)) == fp
    captioning.cached_image_embeddings(captioning.clip_image_encoder(model, other), batches,
                                       cache_dir=str(tmp_path),
                                       fingerprint=captioning.params_fingerprint(other),
                                       split="demo:test")
    assert len([f for _, _, fs in os.walk(tmp_path) for f in fs]) == 2
    with pytest.raises(ValueError, match=r"returned shape \(2, 32\) for image batch 0"):
        captioning.embed_images(lambda x: np.zeros((2, 32)), [images[:3]])


@pytest.mark.slow
def test_captioning_metrics_end_to_end(tokenizer, tmp_path):
    """The suite's plumbing: image caps, cache files, keys, the sample table."""
    proj = np.random.default_rng(4).normal(size=(32 * 32 * 3, 16)).astype(np.float32)
    encode = lambda x: np.asarray(x).reshape(len(x), -1) @ proj  # noqa: E731
    train_caps = [[CAPTIONS[i % 4], CAPTIONS[(i + 1) % 4]] for i in range(10)]
    test_caps = [[CAPTIONS[i % 4]] for i in range(5)]
    cfg = tiny_cfg(steps=5, beam_size=1, max_test_images=4, cache_dir=str(tmp_path))
    metrics, md = captioning.captioning_metrics(
        encode, lambda: iter([_images(6, seed=1), _images(4, seed=2)]), train_caps,
        [_images(5, seed=3)], test_caps, tokenizer, cfg, fingerprint="fp0", java=None)
    for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"):
        assert 0 <= metrics[f"captioning/{k}"] <= 10, k
    assert metrics["captioning/num_train_images"] == 10
    assert metrics["captioning/num_test_images"] == 4
    assert md.count("\n") == 2 + cfg.num_samples and md.startswith("| image | generated |")
    files = sorted(os.listdir(os.path.join(tmp_path, "fp0")))
    assert len(files) == 2 and files[0].startswith("test_4-") and files[1].startswith("train-")


def test_config_errors_name_the_key():
    cfg = captioning.captioning_config()
    captioning.check_config(cfg)
    cfg.width = 30
    cfg.heads = 4
    with pytest.raises(ValueError, match=r"captioning\.width=30 is not divisible by heads=4"):
        captioning.check_config(cfg)
    cfg = captioning.captioning_config()
    cfg.java_metrics = "meteor,bleu"
    with pytest.raises(ValueError, match=r"java_metrics.*\['bleu'\]"):
        captioning.check_config(cfg)
    with pytest.raises(ValueError, match=r"embeddings \(3, 4\) must be \(N, D\) with N = "
                                         r"len\(captions\) = 2"):
        captioning.train_captioner(np.zeros((3, 4)), [["a"], ["b"]], None,
                                   captioning.captioning_config())


def test_captions_by_image_groups_in_image_order():
    from types import SimpleNamespace

    from gmm_jax.captioning.suite import captions_by_image
    split = SimpleNamespace(num_images=3, captions=["a0", "a1", "b0", "c0", "c1", "c2"],
                            text_to_image=np.array([0, 0, 1, 2, 2, 2], np.int32))
    assert captions_by_image(split) == [["a0", "a1"], ["b0"], ["c0", "c1", "c2"]]


def test_mismatched_test_embeddings_are_named():
    with pytest.raises(ValueError, match=r"test embeddings \(2, 5\) do not match the "
                                         r"training embeddings \(3, 4\)"):
        captioning.captioning_from_embeddings(np.zeros((3, 4)), [["a"]] * 3, np.zeros((2, 5)),
                                     [["a"]] * 2, None, captioning.captioning_config())
