"""Synthetic QVHighlights features in the official layout, for any annotation file.

The task is learnable: each query has a random "concept" vector; its token features are the
concept plus noise, and the clips inside its relevant windows carry a fixed random projection of
the concept (one projection per video feature type), scaled by the clips' saliency. A model
therefore has to match text to clips through the same mapping on every video, as with real
features. Deterministic per qid / vid for a given seed, so a subset gets the same features as the
full set.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.qvhighlights.metrics import load_jsonl, save_jsonl

REAL_VIDEO_DIMS = {"slowfast_features": 2304, "clip_features": 512}
REAL_TEXT_DIM = 512
TEXT_FEATURE_TYPE = "clip_text_features"


def _rng(seed: int, *key: object) -> np.random.Generator:
    """A generator seeded by the global seed and a stable hash of ``key``."""
    return np.random.default_rng([seed, zlib.crc32(repr(key).encode())])


def query_concept(seed: int, qid: object, text_dim: int) -> np.ndarray:
    v = _rng(seed, "concept", qid).standard_normal(text_dim)
    return v / np.linalg.norm(v)


def write_synthetic_features(
    annotation_paths: Sequence[str | Path],
    out_dir: str | Path,
    video_dims: dict[str, int] | None = None,
    text_dim: int = REAL_TEXT_DIM,
    seed: int = 0,
    limit: int | None = None,
    signal: float = 2.0,
    dtype: str = "float32",
) -> dict[str, object]:
    """Write ``{type}/{vid}.npz`` (key ``features``) and ``clip_text_features/qid{qid}.npz``
    (key ``last_hidden_state``) under ``out_dir``.

    ``limit`` keeps the first N queries of each annotation file and writes those subsets to
    ``out_dir/annotations/`` under the same file names (the datamodule can point there).
    Returns a summary (counts, dims, annotation paths).
    """
    video_dims = dict(video_dims or REAL_VIDEO_DIMS)
    out = Path(out_dir)
    rows_by_file = {}
    for path in annotation_paths:
        rows = load_jsonl(path)
        rows_by_file[Path(path).name] = rows[:limit] if limit else rows
    ann_dir = out / "annotations"
    for name, rows in rows_by_file.items():
        save_jsonl(rows, ann_dir / name)
    rows = [r for rs in rows_by_file.values() for r in rs]

    projections = {
        t: _rng(seed, "projection", t).standard_normal((text_dim, d)) / np.sqrt(text_dim)
        for t, d in video_dims.items()
    }
    text_dir = out / TEXT_FEATURE_TYPE
    text_dir.mkdir(parents=True, exist_ok=True)
    by_vid: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_vid[r["vid"]].append(r)
        concept = query_concept(seed, r["qid"], text_dim)
        rng = _rng(seed, "text", r["qid"])
        n_tok = min(len(str(r.get("query", "")).split()) + 2, 40)
        tokens = concept[None, :] + 0.5 * rng.standard_normal((n_tok, text_dim)) / np.sqrt(text_dim)
        np.savez(text_dir / f"qid{r['qid']}.npz", last_hidden_state=tokens.astype(dtype))

    for t in video_dims:
        (out / t).mkdir(parents=True, exist_ok=True)
    for vid, queries in by_vid.items():
        n_clips = max(1, int(queries[0]["duration"] / 2))
        strength = np.zeros((len(queries), n_clips))
        for i, q in enumerate(queries):
            ids = np.asarray(q.get("relevant_clip_ids", []), dtype=int)
            if len(ids):
                agg = (
                    np.asarray(q["saliency_scores"], dtype=np.float64).reshape(len(ids), -1).sum(1)
                )
                keep = ids < n_clips
                strength[i, ids[keep]] = 0.5 + agg[keep] / 12.0
        concepts = np.stack([query_concept(seed, q["qid"], text_dim) for q in queries])
        rng = _rng(seed, "video", vid)
        for t, d in video_dims.items():
            direction = concepts @ projections[t]  # (n_queries, d)
            direction *= np.sqrt(d) / np.linalg.norm(direction, axis=1, keepdims=True)
            n = n_clips + (1 if t == next(iter(video_dims)) and rng.random() < 0.1 else 0)
            feat = rng.standard_normal((n, d))
            feat[:n_clips] += signal * strength.T @ direction
            np.savez(out / t / f"{vid}.npz", features=feat.astype(dtype))

    summary = {
        "queries": len(rows),
        "videos": len(by_vid),
        "video_dims": video_dims,
        "v_feat_dim": sum(video_dims.values()),
        "t_feat_dim": text_dim,
        "annotation_dir": str(ann_dir),
        "feature_dir": str(out),
        "seed": seed,
    }
    (out / "synthetic_features.json").write_text(json.dumps(summary, indent=2))
    return summary
