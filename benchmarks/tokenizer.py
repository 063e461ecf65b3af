"""Batch tokenisation throughput (captions/s) on one CPU core, COCO-like captions.

    python benchmarks/tokenizer.py                   # 20k captions, OpenAI vocabulary
    python benchmarks/tokenizer.py --n 50000 --non-ascii 0.2 --compare

"cold" starts from an empty BPE cache (every new word runs BPE); "warm" is a second
pass (the steady state of an input pipeline, where caption words repeat). --compare
also times Hugging Face's Rust-backed CLIPTokenizer (which skips ftfy/html clean-up).
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

SUBJECTS = ("man woman boy girl child person dog cat horse cow sheep elephant giraffe zebra "
            "bear bird surfer skier skateboarder player chef couple family group").split()
ADJ = ("small large young old white black brown red blue green yellow wooden metal "
       "empty crowded busy snowy grassy sunny dark bright colorful").split()
VERBS = ("riding holding eating sitting on standing next to walking down looking at "
         "playing with carrying throwing catching flying laying on cutting").split(" ")
OBJECTS = ("surfboard skateboard frisbee kite umbrella pizza sandwich cake laptop phone "
           "bench table bed couch bus train truck motorcycle bicycle boat plane street "
           "beach field kitchen bathroom sink toilet clock tower").split()
PLACES = ("in a park|on the beach|in a kitchen|on a city street|in the snow|at a table|"
          "near the water|in a field|inside a room|at night|under a bridge").split("|")
UNICODE = ["café", "naïve", "São Paulo", "Zürich", "東京", "🍕", "🐶", "“quoted”", "—", "&amp;"]


def make_captions(n: int, non_ascii: float, seed: int = 0) -> list[str]:
    """COCO-style captions; a fraction `non_ascii` carries a unicode/html word."""
    rng = random.Random(seed)
    caps = []
    for _ in range(n):
        words = ["A", rng.choice(ADJ), rng.choice(SUBJECTS), rng.choice(VERBS).strip(),
                 rng.choice(["a", "the", "some", str(rng.randint(2, 12))]), rng.choice(OBJECTS)]
        if rng.random() < 0.7:
            words.append(rng.choice(PLACES))
        if rng.random() < non_ascii:
            words.insert(rng.randint(1, len(words)), rng.choice(UNICODE))
        caps.append(" ".join(words) + rng.choice([".", "", " ."]))
    return caps


def _rate(fn, caps, batch):
    t0 = time.perf_counter()
    for i in range(0, len(caps), batch):
        fn(caps[i:i + batch])
    return len(caps) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--non-ascii", type=float, default=0.1)
    ap.add_argument("--vocab", default=None, help="tokenizer path (default: OpenAI's)")
    ap.add_argument("--compare", action="store_true", help="also time HF's CLIPTokenizer")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

    from gmm_jax.tokenizer import Tokenizer
    tok = Tokenizer.from_path(args.vocab) if args.vocab else Tokenizer.default()
    caps = make_captions(args.n, args.non_ascii)
    print(f"{args.n} captions, {args.non_ascii:.0%} with a non-ASCII/html word, "
          f"batch {args.batch}, "
          f"1 core; {tok!r}")
    cold = _rate(lambda b: tok(b, context_length=77), caps, args.batch)
    warm = _rate(lambda b: tok(b, context_length=77), caps, args.batch)
    print(f"gmm_jax Tokenizer   cold cache: {cold:10,.0f} captions/s")
    print(f"gmm_jax Tokenizer   warm cache: {warm:10,.0f} captions/s")
    if args.compare:
        from transformers import CLIPTokenizer
        with tempfile.TemporaryDirectory() as d:
            tok.save(d)
            hf = CLIPTokenizer.from_pretrained(d)
        hf_rate = _rate(lambda b: hf(b, padding="max_length", truncation=True, max_length=77,
                                     return_tensors="np"), caps, args.batch)
        print(f"HF CLIPTokenizer (Rust, no ftfy): {hf_rate:10,.0f} captions/s")


if __name__ == "__main__":
    main()
