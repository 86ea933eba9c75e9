"""What the generators and the docs put under data/ is git-ignored; the shipped QVHighlights
annotations stay tracked (``data/qvhighlights/features``, where configs/task/qvhighlights.yaml
reads real features from, was not ignored)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import ROOT

GENERATED = [
    "data/mad_synthetic/CLIP_frames_features_5fps.h5",
    "data/tiny_llama/config.json",
    "data/imagenet_tiny/train/n00000000/a.JPEG",
    "data/imagenet_tiny_shards/train-000000.tar",
    "data/qvhighlights_synthetic/annotations/highlight_val_release.jsonl",
    "data/msrvtt_tiny/vocab.txt",
    "data/mad/openl3_audio_features_5hz.h5",
    "data/imagenet/train/n01440764/x.JPEG",
    "data/qvhighlights/features/clip_features/qid1.npz",
    "data/qvhighlights/highlight_val_release.jsonl.tmp",
]
SHIPPED = [
    "data/qvhighlights/LICENSE",
    "data/qvhighlights/README.md",
    "data/qvhighlights/highlight_train_release.jsonl",
    "data/qvhighlights/highlight_val_release.jsonl",
    "data/qvhighlights/highlight_test_release.jsonl",
    "data/qvhighlights/highlight_test_with_gt.jsonl",  # released test labels (moment_detr)
]


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_generated_data_is_ignored_and_the_annotations_are_tracked():
    ignored = _git("check-ignore", "--no-index", *GENERATED).stdout.split()
    assert sorted(ignored) == sorted(GENERATED)
    proc = _git("check-ignore", "--no-index", *SHIPPED)
    assert proc.returncode == 1 and not proc.stdout  # none ignored
    assert sorted(_git("ls-files", "data").stdout.split()) == sorted(SHIPPED)
