"""Caption metrics shared by the captioning tasks (MAD audio description, MSRVTT).

* ``CaptionMetrics`` — BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) and SPICE from pycocoevalcap (the
  coco-caption code every captioning paper reports), with two documented variants the papers use:
  tokenisation ``ptb`` (coco-caption's Stanford PTB tokenizer, SwinBERT / MSRVTT) or ``simple``
  (lowercase + strip punctuation, STAMP appendix A.3.1 for MAD), and ROUGE-L ``coco``
  (pycocoevalcap, beta 1.2, best reference) or ``hf`` (HF ``evaluate``'s rouge: ``rouge_score``
  with the Porter stemmer, best reference, ``BootstrapAggregator`` mid F-measure).
* ``recall_within_neighbours`` — AutoAD-II's R@k/N on a (generated x ground-truth) similarity
  matrix; ``RecallWithinNeighbours`` builds that matrix with BERTScore F1 per movie.

Every score is reported x100 (the papers' tables). A metric whose local resources are missing
(Java for METEOR/SPICE/PTB, Stanford CoreNLP 3.6.0 jars for SPICE, a BERTScore model directory)
is left out of the results and listed in ``.unavailable`` with the reason and the config key to
set; the other metrics still come out. Nothing here downloads anything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import string
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

COCO_METRICS = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_caption(text: str) -> str:
    """Lowercase, remove punctuation, collapse whitespace (STAMP appendix A.3.1)."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def _pycocoevalcap_dir() -> Path:
    from pycocoevalcap.cider import cider  # pycocoevalcap is a namespace package (no __file__)

    return Path(cider.__file__).parent.parent


@contextmanager
def _numpy_seed(seed: int):
    """Seed numpy's global RNG for a block and restore it (rouge_score's bootstrap uses it)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def rouge_l_hf(
    predictions: Sequence[str], references: Sequence[Sequence[str]], seed: int = 0
) -> float:
    """ROUGE-L F as HF ``evaluate.load("rouge")`` computes it (use_stemmer, use_aggregator).

    ``score_multi`` keeps the reference with the best F; the aggregate is the bootstrap ``mid``
    (the median of 1000 resampled means, seeded here so a run is reproducible). In [0, 1].
    """
    from rouge_score import rouge_scorer, scoring

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    aggregator = scoring.BootstrapAggregator()
    for pred, refs in zip(predictions, references, strict=True):
        aggregator.add_scores(scorer.score_multi(list(refs), pred))
    with _numpy_seed(seed):
        return float(aggregator.aggregate()["rougeL"].mid.fmeasure)


class CaptionMetrics:
    """coco-caption metrics on ``{id: prediction}`` vs ``{id: [references]}``.

    ``metrics`` picks a subset of ``COCO_METRICS`` ("BLEU_4" etc.). ``spice_corenlp_dir`` is a
    local folder with ``stanford-corenlp-3.6.0.jar`` and ``stanford-corenlp-3.6.0-models.jar``
    (from ``stanford-corenlp-full-2015-12-09.zip``); pycocoevalcap would download them on first
    use, which fails offline, so without them SPICE is reported unavailable.
    """

    def __init__(
        self,
        metrics: Sequence[str] = COCO_METRICS,
        tokenize: str = "ptb",
        rouge: str = "coco",
        spice_corenlp_dir: str | None = None,
        spice_memory: str = "8G",
        seed: int = 0,
    ) -> None:
        unknown = sorted(set(metrics) - set(COCO_METRICS))
        if unknown:
            raise ValueError(f"unknown caption metrics {unknown}; choose from {COCO_METRICS}")
        if tokenize not in ("ptb", "simple"):
            raise ValueError(f"tokenize={tokenize!r}; choose one of: ptb, simple")
        if rouge not in ("coco", "hf"):
            raise ValueError(f"rouge={rouge!r}; choose one of: coco, hf")
        self.metrics = tuple(metrics)
        self.tokenize, self.rouge, self.seed = tokenize, rouge, seed
        self.spice_memory = spice_memory
        self.unavailable: dict[str, str] = {}
        java = shutil.which("java")
        if tokenize == "ptb" and java is None:
            raise RuntimeError(
                "tokenize=ptb runs Stanford's PTB tokenizer in Java; install Java "
                "or set tokenize=simple"
            )
        if java is None:
            for name in ("METEOR", "SPICE"):
                if name in self.metrics:
                    self.unavailable[name] = "needs a Java runtime on PATH (none found)"
        self.spice_classpath: list[str] = []
        if "SPICE" in self.metrics and "SPICE" not in self.unavailable:
            self.spice_classpath, reason = self._spice_classpath(spice_corenlp_dir)
            if reason:
                self.unavailable["SPICE"] = reason
        for name, reason in self.unavailable.items():
            log.warning("caption metric %s unavailable: %s", name, reason)

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(m for m in self.metrics if m not in self.unavailable)

    @staticmethod
    def _spice_classpath(corenlp_dir: str | None) -> tuple[list[str], str]:
        spice_dir = _pycocoevalcap_dir() / "spice"
        bundled = [spice_dir / "lib" / jar for jar in SPICE_CORENLP_JARS]
        if corenlp_dir is None and all(p.is_file() for p in bundled):
            corenlp_dir = str(spice_dir / "lib")
        if corenlp_dir is None:
            return [], (
                "SPICE needs Stanford CoreNLP 3.6.0: set module.metrics.spice_corenlp_dir (per "
                "machine: paths.corenlp_dir in configs/local/default.yaml) to a folder holding "
                f"{' and '.join(SPICE_CORENLP_JARS)} (from stanford-corenlp-full-2015-12-09.zip)"
            )
        missing = [jar for jar in SPICE_CORENLP_JARS if not (Path(corenlp_dir) / jar).is_file()]
        if missing:
            return [], (
                f"module.metrics.spice_corenlp_dir={corenlp_dir} lacks {', '.join(missing)}"
            )
        jars = [spice_dir / "spice-1.0.jar", *(Path(corenlp_dir) / j for j in SPICE_CORENLP_JARS)]
        return [str(p) for p in jars] + [str(spice_dir / "lib" / "*")], ""

    def _tokenize(self, captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        if self.tokenize == "simple":
            return {k: [normalize_caption(c) for c in caps] for k, caps in captions.items()}
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer().tokenize(
            {k: [{"caption": c} for c in caps] for k, caps in captions.items()}
        )

    def compute(
        self, predictions: Mapping[object, str], references: Mapping[object, Sequence[str]]
    ) -> dict[str, float]:
        """Corpus-level scores (x100) of the available metrics; ids must match exactly."""
        if set(predictions) != set(references):
            missing = set(references) ^ set(predictions)
            raise ValueError(
                f"predictions and references differ in {len(missing)} ids, e.g. "
                f"{sorted(map(str, missing))[:3]}"
            )
        if not predictions:
            raise ValueError("no predictions to score")
        for key, refs in references.items():
            if isinstance(refs, str) or len(refs) == 0:
                raise ValueError(f"references[{key!r}] must be a non-empty list of strings")
        raw_res = {str(k): [v] for k, v in predictions.items()}  # the coco scorers key by str
        raw_gts = {str(k): list(v) for k, v in references.items()}
        res, gts = self._tokenize(raw_res), self._tokenize(raw_gts)
        wanted = set(self.available)
        out: dict[str, float] = {}
        if wanted & {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4"}:
            from pycocoevalcap.bleu.bleu import Bleu

            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                if f"BLEU_{n + 1}" in wanted:
                    out[f"BLEU_{n + 1}"] = 100.0 * float(bleu[n])
        if "METEOR" in wanted:
            from pycocoevalcap.meteor.meteor import Meteor

            meteor = Meteor()
            try:
                out["METEOR"] = 100.0 * float(meteor.compute_score(gts, res)[0])
            finally:
                meteor.meteor_p.kill()  # the scorer keeps a JVM alive until garbage collection
        if "ROUGE_L" in wanted:
            if self.rouge == "hf":
                ids = list(raw_res)
                preds = [normalize_caption(raw_res[i][0]) for i in ids]
                refs = [[normalize_caption(r) for r in raw_gts[i]] for i in ids]
                out["ROUGE_L"] = 100.0 * rouge_l_hf(preds, refs, seed=self.seed)
            else:
                from pycocoevalcap.rouge.rouge import Rouge

                out["ROUGE_L"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
        if "CIDEr" in wanted:
            from pycocoevalcap.cider.cider import Cider

            out["CIDEr"] = 100.0 * float(Cider().compute_score(gts, res)[0])  # n=4, sigma=6
        if "SPICE" in wanted:
            out["SPICE"] = 100.0 * self._spice(gts, res)
        return {m: out[m] for m in self.metrics if m in out}

    def _spice(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
        """SPICE F averaged over samples, run like pycocoevalcap but with an explicit classpath."""
        items = [{"image_id": k, "test": res[k][0], "refs": gts[k]} for k in sorted(gts)]
        with tempfile.TemporaryDirectory() as tmp:
            in_file, out_file = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
            with open(in_file, "w") as f:
                json.dump(items, f)
            cmd = [
                "java",
                f"-Xmx{self.spice_memory}",
                "-cp",
                os.pathsep.join(self.spice_classpath),
                "edu.anu.spice.SpiceScorer",
                in_file,
                "-out",
                out_file,
                "-subset",
                "-silent",
            ]
            subprocess.run(cmd, check=True, cwd=_pycocoevalcap_dir() / "spice")
            with open(out_file) as f:
                results = json.load(f)
        scores = [float(r["scores"]["All"]["f"]) for r in results]
        return float(np.nanmean(np.array(scores, dtype=float)))


# ----------------------------------------------------------------------------------------------
# AutoAD-II R@k/N
# ----------------------------------------------------------------------------------------------


def window_starts(n: int, window: int) -> list[int]:
    """Starts of AutoAD-II's windows: size ``window``, stride ``window // 2``, full windows only."""
    return list(range(0, n - window + 1, window // 2))


def recall_within_neighbours(
    similarity: Tensor, topk: Sequence[int] = (5,), window: int = 16
) -> Tensor | None:
    """AutoAD-II R@k/N of one movie: ``similarity[i, j]`` scores generated AD i vs true AD j.

    For each window of ``window`` consecutive ADs (stride ``window // 2``), generated AD i is
    correct at k when true AD i is among its k most similar true ADs of the window; the result is
    the accuracy averaged over the windows, one value per k in [0, 1]. ``None`` when the movie has
    fewer ADs than one window.
    """
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got {tuple(similarity.shape)}")
    if max(topk) > window:
        raise ValueError(f"top-k {max(topk)} exceeds the window size {window}")
    starts = window_starts(similarity.shape[0], window)
    if not starts:
        return None
    target = torch.arange(window)
    per_window = []
    for s in starts:
        block = similarity[s : s + window, s : s + window]
        ranked = block.topk(max(topk), dim=1).indices  # (window, maxk)
        hits = ranked == target[:, None]
        per_window.append(torch.stack([hits[:, :k].any(dim=1).float().mean() for k in topk]))
    return torch.stack(per_window).mean(0)


class BertScoreMatrix:
    """BERTScore F1 between generated and true ADs, from a local model directory.

    The paper uses roberta-large, layer 17, rescaled with the baseline (hash
    ``roberta-large_L17_noidf_version=0.3.12(hug_trans=4.30.2)-rescaled``). Rescaling is an
    increasing affine map, so it never changes R@k/N's rankings; it is applied when a baseline
    file is given (``baseline_path``, or bert_score's bundled one for ``lang``).
    """

    def __init__(
        self,
        model_path: str,
        num_layers: int = 17,
        rescale_with_baseline: bool = True,
        baseline_path: str | None = None,
        lang: str = "en",
        batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        from bert_score import BERTScorer

        if not Path(model_path).is_dir():
            raise FileNotFoundError(f"BERTScore model directory not found: {model_path}")
        if rescale_with_baseline and baseline_path is None:
            bundled = Path(__import__("bert_score").__file__).parent / "rescale_baseline" / lang
            candidate = bundled / f"{Path(model_path).name}.tsv"
            baseline_path = str(candidate) if candidate.is_file() else None
            if baseline_path is None:
                log.warning(
                    "no BERTScore baseline for %s; scores are not rescaled (R@k/N is unaffected)",
                    model_path,
                )
                rescale_with_baseline = False
        self.scorer = BERTScorer(
            model_type=model_path,
            num_layers=num_layers,
            batch_size=batch_size,
            lang=lang,
            rescale_with_baseline=rescale_with_baseline,
            baseline_path=baseline_path,
            device=device or "cpu",
        )

    def pairs(self, candidates: Sequence[str], references: Sequence[str]) -> Tensor:
        """F1 of each (candidate, reference) pair."""
        return self.scorer.score(list(candidates), list(references), verbose=False)[2].float()

    def windows(self, generated: Sequence[str], truth: Sequence[str], window: int) -> Tensor:
        """The (n, n) similarity matrix, filled only inside the R@k/N windows (-inf elsewhere).

        AutoAD-II scores all n^2 pairs; only the window blocks enter the metric, so scoring those
        (about 24 n pairs for window 16) gives the same R@k/N for a fraction of the cost.
        """
        n = len(generated)
        pairs = sorted(
            {
                (i, j)
                for s in window_starts(n, window)
                for i in range(s, s + window)
                for j in range(s, s + window)
            }
        )
        matrix = torch.full((n, n), float("-inf"))
        if pairs:
            rows, cols = zip(*pairs, strict=True)
            f1 = self.pairs([truth[j] for j in cols], [generated[i] for i in rows])
            matrix[list(rows), list(cols)] = f1
        return matrix


class RecallWithinNeighbours:
    """R@k/N over a test set: BERTScore F1 matrices per movie, averaged over movies (x100).

    ``model_path`` is None or missing -> the metric is unavailable (``.unavailable`` says why).
    """

    def __init__(
        self,
        model_path: str | None,
        num_layers: int = 17,
        topk: Sequence[int] = (5,),
        window: int = 16,
        rescale_with_baseline: bool = True,
        baseline_path: str | None = None,
        batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        self.topk, self.window = tuple(topk), window
        self.names = [f"R@{k}_{window}" for k in self.topk]
        self.unavailable: dict[str, str] = {}
        self.scorer: BertScoreMatrix | None = None
        if not model_path or not Path(model_path).is_dir():
            reason = (
                "R@k/N needs a local BERTScore model (roberta-large in the paper): set "
                "module.bertscore_model (per machine: paths.bertscore_dir) to its directory"
                + (f" (not found: {model_path})" if model_path else "")
            )
            self.unavailable = {name: reason for name in self.names}
            log.warning("%s", reason)
            return
        self.scorer = BertScoreMatrix(
            model_path, num_layers, rescale_with_baseline, baseline_path, "en", batch_size, device
        )

    def compute(
        self, movies: Mapping[str, tuple[Sequence[str], Sequence[str]]]
    ) -> dict[str, float]:
        """``movies[movie] = (generated ADs, true ADs)`` in temporal order -> {"R@5_16": ...}.

        Movies with fewer ADs than one window are skipped (no window fits); if none fits, the
        metric is left out and recorded in ``.unavailable``.
        """
        if self.scorer is None:
            return {}
        per_movie = []
        for generated, truth in movies.values():
            if len(generated) != len(truth):
                raise ValueError("each movie needs as many generated as true ADs")
            result = recall_within_neighbours(
                self.scorer.windows(generated, truth, self.window), self.topk, self.window
            )
            if result is not None:
                per_movie.append(result)
        if not per_movie:
            reason = f"no movie has at least {self.window} ADs"
            self.unavailable = {name: reason for name in self.names}
            return {}
        mean = torch.stack(per_movie).mean(0)
        return {name: 100.0 * float(v) for name, v in zip(self.names, mean, strict=True)}
