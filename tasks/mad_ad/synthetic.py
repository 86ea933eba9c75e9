"""Synthetic stand-ins for the NDA-gated MAD data and the LLaMA weights, in the official formats.

* ``write_synthetic_mad`` writes MAD-layout feature files (h5, key = movie id, (T, 512) float32
  at 5 fps; visual and audio; the current MAD release's file name) and a MAD-v2 AD csv (movie,
  start, end, text). Each AD's words add fixed random directions to the frames it covers, so a
  model can learn the mapping. With ``quirks=True`` the csv files also carry the rows the
  released files have and AutoAD-II adjusts or skips (``QUIRK_COUNTS``: negative starts, empty
  texts, descriptions outside the movie's features) and a ``movie_duration`` column.
* ``build_tiny_llama`` writes a tiny random ``LlamaForCausalLM`` plus a BPE tokenizer trained
  offline with ``tokenizers`` to a local directory readable by ``from_pretrained``.

Used by ``scripts/make_mad_data.py``, ``scripts/make_tiny_llama.py`` and the tests.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tasks.mad_ad.data import AD_PROMPT, MAD_VISUAL_FILE

NAMES = ["Tony", "Margo", "Mark", "Sarah", "Hubbard", "Rebecca", "Stephen", "Ida"]
PRONOUNS = ["He", "She", "He", "She", "He", "She", "He", "She"]
VERBS = ["opens", "closes", "watches", "picks up", "puts down", "looks at", "walks to", "leaves"]
OBJECTS = ["door", "window", "glass", "letter", "phone", "car", "desk", "bottle of whisky"]
ADVERBS = ["", "slowly", "quickly", "calmly"]

VAL_MOVIES = ["3034_IDES_OF_MARCH", "3074_THE_ROOMMATE"]  # the paper's validation movies
FPS = 5.0
FEATURE_DIM = 512
VISUAL_FILE = MAD_VISUAL_FILE  # CLIP_B32_frames_features_5fps.h5
AUDIO_FILE = "openl3_audio_features_5hz.h5"
NAMED_CSV = "mad-v2-ad-named.csv"
UNNAMED_CSV = "mad-v2-ad-unnamed.csv"
# rows of each AutoAD-II rule (tasks.mad_ad.data.QUIRK_RULES) that quirks=True adds to each csv,
# all in the first training movie; the row ending before 0 s counts under two rules
QUIRK_COUNTS = {"negative_start": 3, "empty_text": 2, "outside_features": 3}


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
    quirks: bool = False,
    media: bool = False,
) -> dict[str, Path]:
    """Write the two feature h5 files and the named / unnamed AD csv files; return their paths.

    Movies: ``synthetic_train_XX`` (train), the paper's two validation movie ids, and
    ``synthetic_test_XX`` (test). Each AD lasts 2-4 s inside its own ``seconds_per_ad`` slot.
    ``quirks``: add to the first training movie the rows of ``QUIRK_COUNTS`` (starts before 0 s,
    an empty and a blank text, ADs past the features' end and one ending before 0 s) and a
    ``movie_duration`` column (the features' duration). ``media``: also the validation movies'
    raw media, ``videos/<movie>.mp4`` (``write_synthetic_media``), for the plots' panel (a).
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
        if quirks and movie == movies[0]:
            span = n_frames / FPS
            for named, unnamed in _quirk_rows(span):
                rows_named.append((movie, *named))
                rows_unnamed.append((movie, *unnamed))
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
    durations = {movie: len(array) / FPS for movie, array in features["visual"].items()}
    for key, rows in (("named", rows_named), ("unnamed", rows_unnamed)):
        if quirks:  # the quirk rows in their movie's time order
            order = {movie: i for i, movie in enumerate(movies)}
            rows = sorted(rows, key=lambda r: (order[r[0]], r[1]))
        with open(paths[key], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["movie", "start", "end", "text"] + (["movie_duration"] * quirks))
            for row in rows:
                writer.writerow(list(row) + ([durations[row[0]]] * quirks))
    if media:
        seconds = len(features["visual"][VAL_MOVIES[0]]) / FPS
        write_synthetic_media(out / "videos", VAL_MOVIES, seconds)
        paths["videos"] = out / "videos"
    (out / "test_movies.txt").write_text(
        "\n".join(m for m in movies if m.startswith("synthetic_test")) + "\n"
    )
    return paths


def write_synthetic_media(
    out_dir: str | Path, movies: Iterable[str], seconds: float, size: int = 32, rate: int = 16000
) -> list[Path]:
    """One small video with sound per movie (``<movie>.mp4``: 5 fps, ``size`` px, AAC mono), the
    raw media the plots' panel (a) reads: frame k's colour and the tone's pitch change every
    second, so a window's frames and waveform can be told apart."""
    import av

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, movie in enumerate(movies):
        path = out / f"{movie}.mp4"
        with av.open(str(path), "w") as container:
            video = container.add_stream("mpeg4", rate=int(FPS))
            video.width, video.height, video.pix_fmt = size, size, "yuv420p"
            audio = container.add_stream("aac", rate=rate, layout="mono")
            for k in range(int(seconds * FPS)):
                second = int(k / FPS)
                colour = [
                    (40 * second + 80 * n) % 256,
                    (25 * second) % 256,
                    200 - 10 * (second % 20),
                ]
                image = np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()
                container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(video.encode(None))
            t = np.arange(int(seconds * rate)) / rate
            pitch = 220.0 * (1.0 + (t.astype(int) % 4))  # 220 / 440 / 660 / 880 Hz, each 1 s
            wave = (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)
            for start in range(0, len(wave), 1024):
                frame = av.AudioFrame.from_ndarray(
                    wave[start : start + 1024][None], format="flt", layout="mono"
                )
                frame.sample_rate = rate
                container.mux(audio.encode(frame))
            container.mux(audio.encode(None))
        paths.append(path)
    return paths


def _quirk_rows(span: float) -> list[tuple[tuple, tuple]]:
    """(start, end, text) of the named and unnamed quirk rows for a movie of ``span`` seconds:
    3 negative starts (one also ending before 0 s), 2 empty texts, 2 ADs past the end."""
    rows = [
        (-1.5, 2.0, "Tony opens the door.", "He opens the door."),  # clamped to 0
        (-0.3, 1.2, "Margo looks at the letter.", "She looks at the letter."),  # clamped
        (-5.0, -2.0, "Mark leaves the car.", "He leaves the car."),  # clamped, then outside
        (10.0, 12.0, "", ""),  # empty
        (20.0, 22.0, "   ", "   "),  # blank
        (span + 5.0, span + 8.0, "Sarah picks up the phone.", "She picks up the phone."),
        (span - 1.0, span + 2.0, "Ida closes the window.", "She closes the window."),
    ]
    return [((a, b, named), (a, b, unnamed)) for a, b, named, unnamed in rows]


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
