"""The ports against the official classes themselves, on the same weights. Needs a local clone
of github.com/enyac-group/MA-AVT named by $MA_AVT_OFFICIAL_DIR (skipped otherwise; nothing of
the official code is in this repository). ~3 min on CPU: ViT-Tiny at 224 x 224."""

from __future__ import annotations

import os

import pytest

from tasks.ave.models.official_check import compare

OFFICIAL = os.environ.get("MA_AVT_OFFICIAL_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not OFFICIAL, reason="set MA_AVT_OFFICIAL_DIR to a MA-AVT clone")
def test_same_weights_same_outputs_as_the_official_classes():
    diffs = compare(OFFICIAL, vit="tiny", batch=2, segments=2)
    assert len(diffs) == 15
    bad = {k: v for k, v in diffs.items() if not v <= 1e-4}
    assert not bad, bad
