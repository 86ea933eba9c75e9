"""Synthetic stand-ins for the NDA-gated MAD data and the LLaMA weights, in the official formats.

* ``write_synthetic_mad`` writes MAD-layout feature files (h5, key = movie id, (T, 512) float32
  at 5 fps; visual and audio) and a MAD-v2 AD csv (movie, start, end, text). Each AD's words
  add fixed random directions to the frames it covers, so a model can learn the mapping.
* ``build_tiny_llama`` writes a tiny random ``LlamaForCausalLM`` plus a BPE tokenizer trained
  offline with ``tokenizers`` to a local directory readable by ``from_pretrained``.

Used by ``scripts/make_mad_data.py``, ``scripts/make_tiny_llama.py`` and the tests.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tasks.mad_ad.data import AD_PROMPT

NAMES = ["Tony", "Margo", "Mark", "Sarah", "Hubbard", "Rebecca", "Stephen", "Ida"]
PRONOUNS = ["He", "She", "He", "She", "He", "She", "He", "She"]
VERBS = ["opens", "closes", "watches", "picks up", "puts down", "looks at", "walks to", "leaves"]
OBJECTS = ["door", "window", "glass", "letter", "phone", "car", "desk", "bottle of whisky"]
ADVERBS = ["", "slowly", "quickly", "calmly"]

VAL_MOVIES = ["3034_IDES_OF_MARCH", "3074_THE_ROOMMATE"]  # the paper's validation movies
FPS = 5.0
FEATURE_DIM = 512
VISUAL_FILE = "CLIP_frames_features_5fps.h5"
AUDIO_FILE = "openl3_audio_features_5hz.h5"
NAMED_CSV = "mad-v2-ad-named.csv"
UNNAMED_CSV = "mad-v2-ad-unnamed.csv"


def caption_corpus() -> list[str]:
    """Every sentence the synthetic data can contain, plus the prompt (tokenizer training)."""
    out = [AD_PROMPT]
    for who in NAMES + PRONOUNS:
        for verb in VERBS:
            for obj in OBJECTS:
                out.append(f"{who} {verb} the {obj}.")
    out += [f"{adv.capitalize()}, {n.lower()} turns away." for adv in ADVERBS[1:] for n in PRONOUNS]
    return out


def write_synthetic_mad(
    out_dir: str | Path,
    train_movies: int = 4,
    test_movies: int = 1,
    ads_per_movie: int = 20,
    seconds_per_ad: float = 6.0,
    dim: int = FEATURE_DIM,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the two feature h5 files and the named / unnamed AD csv files; return their paths.

    Movies: ``synthetic_train_XX`` (train), the paper's two validation movie ids, and
    ``synthetic_test_XX`` (test). Each AD lasts 2-4 s inside its own ``seconds_per_ad`` slot.
    """
    import h5py

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    word_dirs = {
        "visual": {w: rng.standard_normal(dim).astype(np.float32) for w in _words()},
        "audio": {w: rng.standard_normal(dim).astype(np.float32) for w in _words()},
    }
    movies = (
        [f"synthetic_train_{i:02d}" for i in range(train_movies)]
        + VAL_MOVIES
        + [f"synthetic_test_{i:02d}" for i in range(test_movies)]
    )
    rows_named, rows_unnamed = [], []
    features: dict[str, dict[str, np.ndarray]] = {"visual": {}, "audio": {}}
    for movie in movies:
        n_frames = int(ads_per_movie * seconds_per_ad * FPS) + int(2 * FPS)
        for kind in features:
            features[kind][movie] = 0.5 * rng.standard_normal((n_frames, dim)).astype(np.float32)
        for j in range(ads_per_movie):
            who = int(rng.integers(len(NAMES)))
            verb, obj = VERBS[rng.integers(len(VERBS))], OBJECTS[rng.integers(len(OBJECTS))]
            start = j * seconds_per_ad + float(rng.uniform(0.5, 1.5))
            end = start + float(rng.uniform(2.0, 4.0))
            named = f"{NAMES[who]} {verb} the {obj}."
            unnamed = f"{PRONOUNS[who]} {verb} the {obj}."
            rows_named.append((movie, round(start, 2), round(end, 2), named))
            rows_unnamed.append((movie, round(start, 2), round(end, 2), unnamed))
            a, b = int(start * FPS), int(end * FPS) + 1
            for kind, dirs in word_dirs.items():
                signal = sum(dirs[w] for w in (NAMES[who], *verb.split(), *obj.split()))
                features[kind][movie][a:b] += signal / 3.0
    paths = {
        "visual": out / VISUAL_FILE,
        "audio": out / AUDIO_FILE,
        "named": out / NAMED_CSV,
        "unnamed": out / UNNAMED_CSV,
    }
    for kind in ("visual", "audio"):
        with h5py.File(paths[kind], "w") as f:
            for movie, array in features[kind].items():
                f.create_dataset(movie, data=array)
    for key, rows in (("named", rows_named), ("unnamed", rows_unnamed)):
        with open(paths[key], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["movie", "start", "end", "text"])
            writer.writerows(rows)
    (out / "test_movies.txt").write_text(
        "\n".join(m for m in movies if m.startswith("synthetic_test")) + "\n"
    )
    return paths


def _words() -> set[str]:
    words = set(NAMES)
    for phrase in VERBS + OBJECTS:
        words.update(phrase.split())
    return words


def build_tiny_llama(
    out_dir: str | Path,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 384,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    seed: int = 0,
) -> Path:
    """A random LlamaForCausalLM + fast BPE tokenizer (sentencepiece-like, trained offline)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(list(corpus or caption_corpus()), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out
