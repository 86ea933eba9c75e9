"""QVHighlights on one video and one query: ranked moments and per-clip saliency.

The video's features are read, cut, normalised and given the tef exactly as the data module
reads a split (``FeatureStore``, ``QVHighlightsDataset``), batched by the same ``collate``, and
the model's output goes through the evaluation's post-processing (``submission_rows``: windows
in seconds, clamped to ``max_ts`` and rounded to clips, sorted by score; saliency through
float16), so a prediction equals that query's row of eval.py's predictions file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.common.launch.predict import TaskPrediction
from tasks.qvhighlights.data import (
    FeatureStore,
    collate,
    l2_normalize,
    load_npz_array,
    temporal_endpoint_feature,
)


def _video(store: FeatureStore, files: Sequence[str | Path], types: Sequence[str]) -> np.ndarray:
    """(n_clips, sum of dims): one ``.npz`` per feature type (key ``features``), in the order of
    ``data.v_feat_types``, as the official layout names them: ``<type>/<vid>.npz``."""
    files = [Path(f) for f in files]
    if len(files) != len(types):
        raise ValueError(
            f"input.video_features: {len(files)} files given, the model reads {len(types)} "
            f"feature types (data.v_feat_types = {list(types)}): one <type>/<vid>.npz each, "
            "in that order"
        )
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"input.video_features: {file} not found")
    stems = {f.stem for f in files}
    if len(stems) != 1:
        raise ValueError(
            f"input.video_features: the files name different videos ({sorted(stems)}); give "
            "one video's <type>/<vid>.npz of each feature type"
        )
    one = FeatureStore(
        [f.parent for f in files],
        store.t_feat_dir,
        store.max_v_l,
        store.max_q_l,
        store.normalize_v,
        store.normalize_t,
        cache=False,
    )
    return one.video(stems.pop())


def _query(store: FeatureStore, file: str | Path) -> np.ndarray:
    """(n_tokens, dim): the query's token features (key ``last_hidden_state``), cut to
    ``max_q_l`` and normalised as ``FeatureStore.text`` does for ``qid<qid>.npz``."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"input.query_features: {file} not found")
    feat = load_npz_array(file, "last_hidden_state", "input.query_features")[: store.max_q_l]
    return l2_normalize(feat) if store.normalize_t else feat


def predict_moments(
    module: Any,
    datamodule: Any,
    *,
    video_features: Sequence[str | Path] | None = None,
    query_features: str | Path | None = None,
    vid: str | None = None,
    qid: Any = None,
    query: str | None = None,
    duration: float | None = None,
) -> TaskPrediction:
    """Moments of one video for one query.

    Args:
        module: the trained ``QVHighlightsModule`` (eval mode).
        datamodule: its ``QVHighlightsDataModule`` (reading settings: normalisation, lengths).
        video_features: one ``.npz`` per ``data.v_feat_types`` (e.g. ``slowfast_features/
            <vid>.npz`` and ``clip_features/<vid>.npz``); or ``vid``: the video's files under
            ``data.feature_dir``.
        query_features: the query's token features ``.npz`` (``last_hidden_state``, CLIP
            text, (n_tokens, data.t_feat_dim)); or ``qid``: ``qid<qid>.npz`` under
            ``data.feature_dir/<data.t_feat_type>``.
        query: the query text (recorded only: the model reads its features).
        duration: the video's length in seconds (windows are fractions of it); default
            clips x ``data.clip_len``.

    Returns the prediction: ``windows`` [[start, end, score], ...] in seconds sorted by score,
    ``saliency`` (one score per clip, clip k covering [k, k+1) x clip_len seconds).
    """
    store = FeatureStore(**datamodule.store_kwargs)
    types = [p.name for p in store.v_feat_dirs]
    if video_features is not None:
        video = _video(store, video_features, types)
        vid = vid or Path(video_features[0]).stem
    elif vid is not None:
        video = store.video(str(vid))
    else:
        raise ValueError("give input.video_features=[<files>] or input.vid=<video id>")
    if query_features is not None:
        text = _query(store, query_features)
    elif qid is not None:
        text = store.text(qid)
    else:
        raise ValueError("give input.query_features=<file.npz> or input.qid=<query id>")
    if video.shape[1] != datamodule.v_feat_dim or text.shape[1] != datamodule.t_feat_dim:
        raise ValueError(
            f"features of {vid}: video dim {video.shape[1]} (data.v_feat_dim "
            f"{datamodule.v_feat_dim}), query dim {text.shape[1]} (data.t_feat_dim "
            f"{datamodule.t_feat_dim}): not the features this checkpoint was trained on"
        )
    n_clips = len(video)
    clip_len = float(datamodule.clip_len)
    duration = float(duration) if duration is not None else n_clips * clip_len
    if datamodule.item_kwargs["use_tef"]:
        video = np.concatenate([video, temporal_endpoint_feature(n_clips)], axis=1)
    meta = {"qid": qid, "query": query, "vid": vid, "duration": duration}
    batch = collate(
        [
            {
                "meta": meta,
                "video_feat": torch.from_numpy(video),
                "query_feat": torch.from_numpy(text),
            }
        ]
    )
    batch = module.transfer_batch_to_device(batch, module.device, 0)
    row = module._batch_rows(batch)[0]
    output = {
        "vid": vid,
        "qid": qid,
        "query": query,
        "duration": duration,
        "clip_length": clip_len,
        "num_clips": n_clips,
        "windows": row["pred_relevant_windows"],
        "saliency": row["pred_saliency_scores"],
    }
    return TaskPrediction(output, lambda: module(batch, with_negative=False))
