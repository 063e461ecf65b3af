"""Training iterator: pairing, determinism, resume, host slicing, global arrays."""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from gmm_jax.data import demo, make_train_iterator, preprocess
from gmm_jax.data.sources import get_source

L = 128
N_TRAIN = 44
B = 8


class CharTokenizer:
    """Stand-in with the project tokenizer's call convention; invertible for checks."""
    sot, eot = 1, 2

    def __call__(self, texts, context_length=77):
        out = np.zeros((len(texts), context_length), np.int32)
        for i, t in enumerate(texts):
            ids = [self.sot] + [ord(c) for c in t][:context_length - 2] + [self.eot]
            out[i, :len(ids)] = ids
        return out

    def decode(self, row):
        row = list(row)
        return "".join(chr(c) for c in row[1:row.index(self.eot)])


TOK = CharTokenizer()


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    tfds.disable_progress_bar()
    sizes = {"target_train": N_TRAIN, "target_test": 8}
    cfg = {"name": "demo", "data_dir": str(tmp_path_factory.mktemp("tfds")),
           "demo_config": demo.GmmDemoConfig(name="pipe", split_sizes=sizes, num_workers=1),
           "train_split": "target_train", "caption_mode": "first", "augment": False,
           "shuffle_buffer": 64, "context_length": L}
    get_source(cfg)  # generate once
    return cfg


@pytest.fixture(scope="module")
def reference(data_cfg):
    """Every training example preprocessed independently, with its captions."""
    src = get_source(data_cfg)
    imgs, caps = [], []
    for ex in src.raw("target_train").as_numpy_iterator():
        imgs.append(preprocess.clip_transform(preprocess.decode_image(ex["image"]), 32).numpy())
        caps.append([c.decode() for c in ex["captions"]])
    return np.stack(imgs), caps


def _match(batch_images, ref_images):
    """Index of the reference example each row equals (exactly)."""
    d = ((batch_images[:, None] - ref_images[None]) ** 2).reshape(
        len(batch_images), len(ref_images), -1).sum(-1)
    idx = d.argmin(1)
    assert np.all(d[np.arange(len(idx)), idx] == 0), "row is not a dataset image"
    return idx


def _cfg(data_cfg, **kw):
    return dict(data_cfg, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_pair_images_with_their_captions(data_cfg, reference):
    ref_imgs, ref_caps = reference
    it = make_train_iterator(data_cfg, TOK, 32, B, seed=0)
    assert it.steps_per_epoch == N_TRAIN // B
    epoch0 = _take(it, it.steps_per_epoch)
    seen = []
    for b in epoch0:
        assert b["image"].shape == (B, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["tokens"].shape == (B, L) and b["tokens"].dtype == np.int32
        assert b["epoch"] == 0
        idx = _match(b["image"], ref_imgs)
        for row, i in zip(b["tokens"], idx):
            assert TOK.decode(row) == ref_caps[i][0]  # caption_mode="first"
        seen.extend(idx)
    # one epoch: distinct examples, the last partial batch dropped
    assert len(seen) == len(set(seen)) == (N_TRAIN // B) * B
    nxt = next(it)
    assert nxt["epoch"] == 1


def test_random_caption_mode(data_cfg, reference):
    ref_imgs, ref_caps = reference
    it = make_train_iterator(_cfg(data_cfg, caption_mode="random"), TOK, 32, B, seed=0)
    chosen = {}
    for b in _take(it, 3 * it.steps_per_epoch):
        for row, i in zip(b["tokens"], _match(b["image"], ref_imgs)):
            cap = TOK.decode(row)
            assert cap in ref_caps[i]
            chosen.setdefault(i, set()).add(cap)
    # over three epochs some images got different captions, and not always the first
    assert any(len(v) > 1 for v in chosen.values())


def test_order_is_deterministic_and_seeded(data_cfg):
    n = 2 * (N_TRAIN // B)
    a = _take(make_train_iterator(data_cfg, TOK, 32, B, seed=3), n)
    b = _take(make_train_iterator(data_cfg, TOK, 32, B, seed=3), n)
    c = _take(make_train_iterator(data_cfg, TOK, 32, B, seed=4), n)
    for x, y in zip(a, b):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["tokens"], y["tokens"])
    assert not all(np.array_equal(x["tokens"], z["tokens"]) for x, z in zip(a, c))
    spe = N_TRAIN // B  # epochs are shuffled differently
    assert not all(np.array_equal(a[k]["tokens"], a[k + spe]["tokens"]) for k in range(spe))


@pytest.mark.parametrize("augment", [False, True])
def test_resume_gives_the_same_batches(data_cfg, augment):
    cfg = _cfg(data_cfg, caption_mode="random", augment=augment)
    spe = N_TRAIN // B
    it = make_train_iterator(cfg, TOK, 32, B, seed=7)
    states, batches = [], []
    for _ in range(2 * spe + 2):
        states.append(it.get_state())
        batches.append(next(it))
    assert states[spe] == {"epoch": 1, "step_in_epoch": 0}
    for k in (3, spe, spe + 2):  # mid-epoch, at the boundary, into the second epoch
        resumed = make_train_iterator(cfg, TOK, 32, B, seed=7, state=states[k])
        assert resumed.get_state() == states[k]
        for want in batches[k:k + 3]:
            got = next(resumed)
            assert got["epoch"] == want["epoch"]
            assert np.array_equal(got["image"], want["image"])
            assert np.array_equal(got["tokens"], want["tokens"])
    import json
    json.dumps(states[-1])  # JSON-able


def test_augmentation_changes_images_deterministically(data_cfg, reference):
    plain = next(make_train_iterator(data_cfg, TOK, 32, B, seed=1))
    aug1 = next(make_train_iterator(_cfg(data_cfg, augment=True), TOK, 32, B, seed=1))
    aug2 = next(make_train_iterator(_cfg(data_cfg, augment=True), TOK, 32, B, seed=1))
    assert np.array_equal(aug1["image"], aug2["image"])
    assert np.array_equal(aug1["tokens"], plain["tokens"])  # same order and captions
    assert not np.array_equal(aug1["image"], plain["image"])
    assert np.abs(aug1["image"] - plain["image"]).mean() < 0.5  # still the same pictures


def test_host_slices_make_up_the_global_batch(data_cfg):
    full = _take(make_train_iterator(data_cfg, TOK, 32, B, seed=2), 3)
    parts = [_take(make_train_iterator(data_cfg, TOK, 32, B, seed=2, process_index=p,
                                       process_count=2), 3) for p in range(2)]
    for k in range(3):
        for key in ("image", "tokens"):
            assert parts[0][k][key].shape[0] == B // 2
            joined = np.concatenate([parts[0][k][key], parts[1][k][key]])
            assert np.array_equal(joined, full[k][key])


def test_global_arrays_with_sharding(data_cfg):
    mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    gb = 2 * len(jax.devices())
    host = next(make_train_iterator(data_cfg, TOK, 32, gb, seed=5))
    glob = next(make_train_iterator(data_cfg, TOK, 32, gb, seed=5, sharding=sharding))
    for key in ("image", "tokens"):
        assert isinstance(glob[key], jax.Array) and glob[key].sharding == sharding
        assert glob[key].shape == host[key].shape
        np.testing.assert_array_equal(np.asarray(glob[key]), host[key])
    assert glob["epoch"] == 0


def test_bad_arguments(data_cfg):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make_train_iterator(data_cfg, TOK, 32, 1000, seed=0)
    with pytest.raises(ValueError, match="bad iterator state"):
        make_train_iterator(data_cfg, TOK, 32, B, seed=0, state={"epoch": 0})
    with pytest.raises(ValueError, match="caption_mode"):
        make_train_iterator(_cfg(data_cfg, caption_mode="all"), TOK, 32, B, seed=0)
    with pytest.raises(ValueError, match="not divisible"):
        make_train_iterator(data_cfg, TOK, 32, B + 1, seed=0, process_count=2, process_index=0)
    with pytest.raises(ValueError, match="config.data.name"):
        make_train_iterator({"name": "imagenet"}, TOK, 32, B, seed=0)
