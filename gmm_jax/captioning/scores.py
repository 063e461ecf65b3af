"""Caption metrics from ``pycocoevalcap``'s scorers, with a tokenisation that needs no Java.

The COCO caption toolkit tokenises with Stanford's PTBTokenizer (a Java program). By
default we use ``simple_tokenize`` instead: lower case, every character that is not
a letter, a digit, an apostrophe or whitespace becomes a space, apostrophes are
dropped, runs of whitespace collapse to one space. On plain English captions it
gives the same words as the PTB pipeline up to contractions ("don't" -> "dont"
here, "do n't" there), so scores are comparable to published ones but not
bit-identical. BLEU-1..4 (``Bleu(4)``, "closest" reference length), ROUGE-L and
CIDEr-D (``Cider``: pycocoevalcap's CIDEr is the CIDEr-D variant: clipped counts,
Gaussian length penalty, sigma 6, x10) are pure Python and corpus-level: every
hypothesis against all reference captions of its image, with CIDEr's document
frequencies taken over the scored references. METEOR and SPICE run Java; they are
computed only when ``java`` is on PATH and named in ``java_metrics``.
"""
from __future__ import annotations

import logging
import shutil
from typing import Sequence

import regex

log = logging.getLogger(__name__)

_DROP_RE = regex.compile(r"'")
_PUNCT_RE = regex.compile(r"[^\p{L}\p{N}\s]")
_WS_RE = regex.compile(r"\s+")

METRIC_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")


def simple_tokenize(text: str) -> str:
    """Lower-cased words separated by single spaces, punctuation removed (see module)."""
    text = _DROP_RE.sub("", text.lower())
    return _WS_RE.sub(" ", _PUNCT_RE.sub(" ", text)).strip()


def _prepare(references: Sequence[Sequence[str]], hypotheses: Sequence[str]):
    if len(references) != len(hypotheses):
        raise ValueError(f"caption_scores: {len(hypotheses)} hypotheses for "
                         f"{len(references)} images")
    if not hypotheses:
        raise ValueError("caption_scores: nothing to score")
    gts, res = {}, {}
    for i, (refs, hyp) in enumerate(zip(references, hypotheses)):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"caption_scores: references[{i}] must be a non-empty list of "
                             f"captions, got {refs!r}")
        gts[i] = [simple_tokenize(r) for r in refs]
        res[i] = [simple_tokenize(hyp)]
    return gts, res


def caption_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str],
                   java_metrics: Sequence[str] = (), java: str | None = "auto") -> dict:
    """Corpus scores of ``hypotheses[i]`` against all of ``references[i]``.

    Returns ``{"bleu1".."bleu4", "rouge_l", "cider"}`` (+ ``"meteor"``, ``"spice"``
    when asked for in ``java_metrics`` and Java is found; ``java="auto"`` looks it up
    on PATH, None means no Java). Values as pycocoevalcap reports them (BLEU and ROUGE
    in [0, 1], CIDEr-D about 0..10).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _prepare(references, hypotheses)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    wanted = [m.lower() for m in java_metrics]
    if wanted:
        java = shutil.which("java") if java == "auto" else java
        if not java:
            log.info("captioning: %s skipped (no `java` on PATH)", ", ".join(wanted))
        else:
            out.update(_java_scores(wanted, gts, res))
    return out


def _java_scores(wanted: list[str], gts, res) -> dict:
    out = {}
    if "meteor" in wanted:
        from pycocoevalcap.meteor.meteor import Meteor
        scorer = Meteor()
        try:
            out["meteor"] = float(scorer.compute_score(gts, res)[0])
        finally:  # the scorer holds a Java process that its __del__ ends
            del scorer
    if "spice" in wanted:
        # SPICE fetches Stanford CoreNLP models on first use (network); opt-in only.
        from pycocoevalcap.spice.spice import Spice
        out["spice"] = float(Spice().compute_score(gts, res)[0])
    return out


def samples_markdown(references: Sequence[Sequence[str]], hypotheses: Sequence[str],
                     num: int, ids: Sequence | None = None) -> str:
    """A Markdown table of the first ``num`` generated captions beside their references."""
    def cell(s):
        return str(s).replace("|", "\\|").replace("\n", " ")
    ids = list(range(len(hypotheses))) if ids is None else list(ids)
    rows = ["| image | generated | references |", "|---|---|---|"]
    for i in range(min(int(num), len(hypotheses))):
        refs = "<br>".join(cell(r) for r in references[i])
        rows.append(f"| {cell(ids[i])} | {cell(hypotheses[i])} | {refs} |")
    return "\n".join(rows) + "\n"
