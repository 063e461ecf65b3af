"""The ``Examples:`` blocks in the public losses' and metrics' docstrings run and print
what they say (optax style: each public function documents itself with a live example)."""
import doctest
import importlib

import pytest

PUBLIC = {
    "gmm_jax.losses": ["slerp", "clip_loss", "m2mix_loss", "vmix_loss", "lmix_loss",
                       "vlmix_loss", "uniformity", "alignment", "cross_uniformity",
                       "modality_swap_hard", "modality_swap_soft"],
    "gmm_jax.metrics": ["caption_groups", "retrieval_recall", "rsum", "modality_gap",
                        "mean_positive_cosine", "relative_alignment", "uniformity",
                        "alignment", "linear_separability", "reliability_bins", "unit_rows",
                        "calibration_error", "expected_calibration_error",
                        "retrieval_confidences", "topk_accuracy", "linear_probe_accuracy"],
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} docstring example(s) failed"
    for fn in PUBLIC[name]:
        doc = getattr(module, fn).__doc__
        for section in ("Args:", "Returns:", "References:", "Examples:", ">>> "):
            assert section in doc, f"{name}.{fn}: no {section!r} in its docstring"
