"""Extract MAD-layout audiovisual features from video files (paper appendix A.1.3).

* visual: CLIP image features at 5 fps (open_clip; MAD used CLIP ViT-B/32, 512-d);
* audio: OpenL3 embeddings at 5 Hz (hop 0.2 s, mel128, content "env", 512-d), aligned to the
  visual frames (same count: frame k covers time k / 5 s in both files).

Output: one h5 per modality, one (T, D) float32 dataset per video, keyed by the video's file
stem (the movie id), exactly the layout of MAD's ``CLIP_B32_frames_features_5fps.h5``. Existing keys
are skipped, so an interrupted run resumes.

    python scripts/extract_features.py videos/*.mkv \\
        --visual-out data/mad/CLIP_B32_frames_features_5fps.h5 \\
        --audio-out data/mad/openl3_audio_features_5hz.h5 \\
        --clip-model ViT-B-32 --clip-weights checkpoints/clip/ViT-B-32.pt \\
        --audio-backend torchopenl3 --openl3-weights checkpoints/torchopenl3_mel128_env_512.pth.tar

Weights are local files only (nothing is downloaded):
* CLIP: OpenAI's ``ViT-B-32.pt`` or an open_clip checkpoint (``--clip-weights``);
* OpenL3 for ``torchopenl3``: ``torchopenl3_mel128_env_512.pth.tar`` from the
  github.com/torchopenl3/torchopenl3-models repository (``--openl3-weights``); the ``openl3``
  backend (TensorFlow; ``pip install openl3`` fetches its weights while installing) needs none.
``--allow-random-weights`` runs with random weights (tests, trying the pipeline only).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("extract_features")

FPS = 5.0
AUDIO_RATE = 48000  # OpenL3's sample rate


# ---------------------------------------------------------------------------------------- decoding
def read_video_frames(path: str | Path, fps: float = FPS) -> list:
    """RGB frames (PIL images) sampled at ``fps``: frame k is the one shown at time k / fps."""
    import av

    frames, previous, k = [], None, 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        last_time = 0.0
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else last_time + 1 / rate
            while previous is not None and t > k / fps + 1e-6:
                frames.append(previous)
                k += 1
            previous, last_time = frame.to_image(), t
        if previous is None:
            raise ValueError(f"{path}: no video frames decoded")
        end = last_time + 1.0 / rate  # the last frame stays on screen for one frame period
        while k / fps < end - 1e-6:
            frames.append(previous)
            k += 1
    return frames


def read_audio(path: str | Path, rate: int = AUDIO_RATE) -> np.ndarray | None:
    """Mono float32 waveform resampled to ``rate`` (None when the file has no audio stream)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = []
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def align(features: np.ndarray, length: int) -> np.ndarray:
    """Truncate, or pad by repeating the last row, to ``length`` rows (audio to video frames)."""
    if len(features) >= length:
        return features[:length]
    if len(features) == 0:
        raise ValueError("no feature rows to align")
    pad = np.repeat(features[-1:], length - len(features), axis=0)
    return np.concatenate([features, pad])


# ---------------------------------------------------------------------------------------- embedders
class ClipImageEmbedder:
    """open_clip image tower; ``weights`` is a local checkpoint (OpenAI .pt or open_clip)."""

    def __init__(
        self,
        model: str = "ViT-B-32",
        weights: str | None = None,
        model_config: str | None = None,
        allow_random: bool = False,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        import open_clip

        if model_config is not None:
            open_clip.add_model_config(model_config)  # a JSON file: registers a custom model
        if weights is None and not allow_random:
            raise FileNotFoundError(
                "CLIP weights not given: pass --clip-weights <local checkpoint> (e.g. OpenAI's "
                "ViT-B-32.pt), or --allow-random-weights for a dry run"
            )
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"--clip-weights {weights}: no such file")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            model, pretrained=weights, device=device
        )
        self.model.eval()
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, frames: Sequence) -> np.ndarray:
        out = []
        for i in range(0, len(frames), self.batch_size):
            images = torch.stack([self.preprocess(f) for f in frames[i : i + self.batch_size]])
            out.append(self.model.encode_image(images.to(self.device)).float().cpu())
        return torch.cat(out).numpy()


class TorchOpenL3Embedder:
    """OpenL3 in PyTorch (torchopenl3), weights from a local ``.pth.tar`` file."""

    def __init__(
        self,
        weights: str | None = None,
        input_repr: str = "mel128",
        content_type: str = "env",
        embedding_size: int = 512,
        allow_random: bool = False,
        batch_size: int = 32,
    ) -> None:
        from torchopenl3.models import PytorchOpenl3

        self.model = PytorchOpenl3(
            input_repr=input_repr, embedding_size=embedding_size, content_type=content_type
        )
        if weights is not None:
            if not Path(weights).is_file():
                raise FileNotFoundError(f"--openl3-weights {weights}: no such file")
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state.get("state_dict", state))
        elif not allow_random:
            raise FileNotFoundError(
                "OpenL3 weights not given: pass --openl3-weights "
                f"torchopenl3_{input_repr}_{content_type}_{embedding_size}.pth.tar (from "
                "github.com/torchopenl3/torchopenl3-models), use --audio-backend openl3, or "
                "--allow-random-weights for a dry run"
            )
        self.model.eval()
        self.batch_size = batch_size

    def __call__(self, audio: np.ndarray, rate: int, hop: float) -> np.ndarray:
        import torchopenl3

        embedding, _ = torchopenl3.get_audio_embedding(
            audio,
            rate,
            model=self.model,
            hop_size=hop,
            center=True,
            batch_size=self.batch_size,
            verbose=False,
        )
        return embedding[0].float().cpu().numpy()


class OpenL3Embedder:
    """The original TensorFlow ``openl3`` package (its weights ship with the package)."""

    def __init__(
        self, input_repr: str = "mel128", content_type: str = "env", embedding_size: int = 512
    ) -> None:
        import openl3

        self.openl3 = openl3
        self.model = openl3.models.load_audio_embedding_model(
            input_repr=input_repr, content_type=content_type, embedding_size=embedding_size
        )

    def __call__(self, audio: np.ndarray, rate: int, hop: float) -> np.ndarray:
        embedding, _ = self.openl3.get_audio_embedding(
            audio, rate, model=self.model, hop_size=hop, center=True, verbose=False
        )
        return np.asarray(embedding, dtype=np.float32)


AUDIO_BACKENDS: dict[str, Callable[..., Callable]] = {
    "torchopenl3": TorchOpenL3Embedder,
    "openl3": lambda weights=None, allow_random=False, **kw: OpenL3Embedder(**kw),
}


# ---------------------------------------------------------------------------------------- driver
def extract(
    videos: Sequence[str | Path],
    visual_out: str | Path,
    audio_out: str | Path,
    image_embedder: Callable[[Sequence], np.ndarray],
    audio_embedder: Callable[[np.ndarray, int, float], np.ndarray],
    fps: float = FPS,
    overwrite: bool = False,
) -> list[str]:
    """Write (T, D) visual and audio features per video; returns the movie ids written."""
    import h5py
    from tqdm import tqdm

    for out in (visual_out, audio_out):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    written = []
    with h5py.File(visual_out, "a") as fv, h5py.File(audio_out, "a") as fa:
        for video in tqdm(videos, desc="videos", unit="video"):
            movie = Path(video).stem
            if movie in fv and movie in fa and not overwrite:
                log.info("%s: already extracted, skipped", movie)
                continue
            frames = read_video_frames(video, fps)
            visual = image_embedder(frames).astype(np.float32)
            audio = read_audio(video)
            if audio is None or len(audio) == 0:
                log.warning("%s: no audio stream; audio features are zeros", movie)
                audio_feats = np.zeros((len(frames), 512), dtype=np.float32)
            else:
                audio_feats = align(audio_embedder(audio, AUDIO_RATE, 1.0 / fps), len(frames))
            for f, array in ((fv, visual), (fa, audio_feats.astype(np.float32))):
                if movie in f:
                    del f[movie]
                f.create_dataset(movie, data=array)
            written.append(movie)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("videos", nargs="+", help="video files; the file stem is the movie id")
    parser.add_argument("--visual-out", required=True)
    parser.add_argument("--audio-out", required=True)
    parser.add_argument("--fps", type=float, default=FPS)
    parser.add_argument("--clip-model", default="ViT-B-32")
    parser.add_argument("--clip-weights", default=None, help="local CLIP checkpoint")
    parser.add_argument("--clip-model-config", default=None, help="JSON of a custom model")
    parser.add_argument("--audio-backend", choices=sorted(AUDIO_BACKENDS), default="torchopenl3")
    parser.add_argument("--openl3-weights", default=None, help="local torchopenl3 .pth.tar")
    parser.add_argument("--openl3-input-repr", default="mel128")
    parser.add_argument("--openl3-content-type", default="env")
    parser.add_argument("--openl3-embedding-size", type=int, default=512)
    parser.add_argument("--allow-random-weights", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    missing = [v for v in args.videos if not Path(v).is_file()]
    if missing:
        sys.exit(f"no such video file(s): {missing}")
    image = ClipImageEmbedder(
        args.clip_model,
        args.clip_weights,
        args.clip_model_config,
        args.allow_random_weights,
        args.device,
    )
    audio = AUDIO_BACKENDS[args.audio_backend](
        weights=args.openl3_weights,
        input_repr=args.openl3_input_repr,
        content_type=args.openl3_content_type,
        embedding_size=args.openl3_embedding_size,
        allow_random=args.allow_random_weights,
    )
    written = extract(
        args.videos, args.visual_out, args.audio_out, image, audio, args.fps, args.overwrite
    )
    log.info("extracted %d video(s) -> %s, %s", len(written), args.visual_out, args.audio_out)


if __name__ == "__main__":
    main()
