"""How fast the CREMA-D input pipeline feeds a GPU: samples per second per dataloader worker.

Builds a fabricated tree of CREMA-D's shape (``tests/_audiovisual_helpers.make_cremad_shaped``:
16 kHz mono wavs of 2-3 s, 1-3 jpg frames of 480x360 per clip) and times, in this process
(one process = one dataloader worker), what one worker does per training sample:

- ``audio``: the wav read and the log spectrogram (resample to 22,050 Hz, STFT), recomputed;
- ``audio, cached``: the same spectrogram read back from ``data.cache_dir``;
- ``frames``: the jpg decode and the training augmentation of ``num_frames`` frames;
- ``sample`` / ``sample, cached``: a whole training sample, without and with the cache.

Each arm runs over every training clip per repeat; arms alternate within a repeat so a busy
machine slows them alike; the table gives the median samples/s over repeats and the speed-up of
the cache. A GPU step of batch B at S steps/s needs ``B * S / (samples/s per worker)`` workers.

    python benchmarks/audiovisual_input.py                # 120 clips, 5 repeats
    python benchmarks/audiovisual_input.py --quick        # 12 clips, 1 repeat (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _audiovisual_helpers import make_cremad_shaped

from pidsched.data.audiovisual import (
    AudioVisualClipDataset,
    CremaDDataModule,
    SpectrogramCache,
    log_spectrogram,
    read_wav,
)

ARMS = ("audio", "audio, cached", "frames", "sample", "sample, cached")


def _timed(function, items) -> float:
    """Samples per second of ``function`` over ``items``."""
    start = time.perf_counter()
    for item in items:
        function(item)
    return len(items) / (time.perf_counter() - start)


def measure(num_clips: int, repeats: int, num_frames: int) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = make_cremad_shaped(Path(folder) / "cremad", num_clips)
        cache_dir = Path(folder) / "cache"
        data = CremaDDataModule(root, num_frames=num_frames)
        clips = data.clips["train"]
        wavs = [data.audio_dir / f"{clip.clip_id}.wav" for clip in clips]
        plain = AudioVisualClipDataset(clips, data.audio_dir, data.visual_dir, num_frames, True)
        cached = AudioVisualClipDataset(
            clips, data.audio_dir, data.visual_dir, num_frames, True, cache_dir=cache_dir
        )
        cache = SpectrogramCache(cache_dir)
        # The first pass fills the cache (what epoch 1 costs); later passes read it.
        fill = _timed(cache.spectrogram, wavs)
        frames_only = AudioVisualClipDataset(
            clips, data.audio_dir, data.visual_dir, num_frames, True, cache_dir=cache_dir
        )
        frames_only.cache.spectrogram = lambda path: None  # frames alone: skip the audio
        arms = {
            "audio": lambda: _timed(lambda path: log_spectrogram(*read_wav(path)), wavs),
            "audio, cached": lambda: _timed(cache.spectrogram, wavs),
            "frames": lambda: _timed(frames_only.__getitem__, range(len(clips))),
            "sample": lambda: _timed(plain.__getitem__, range(len(clips))),
            "sample, cached": lambda: _timed(cached.__getitem__, range(len(clips))),
        }
        rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for _ in range(repeats):
            for arm in ARMS:
                rates[arm].append(arms[arm]())
    medians = {arm: statistics.median(values) for arm, values in rates.items()}
    return {
        "clips": len(clips),
        "repeats": repeats,
        "num_frames": num_frames,
        "cache_fill_samples_per_s": fill,
        "samples_per_s_per_worker": medians,
        "samples_per_s_all_repeats": rates,
        "speedup_audio": medians["audio, cached"] / medians["audio"],
        "speedup_sample": medians["sample, cached"] / medians["sample"],
    }


def markdown(result: dict) -> str:
    rates = result["samples_per_s_per_worker"]
    lines = [
        f"{result['clips']} training clips, {result['num_frames']} frame(s) per sample, "
        f"median of {result['repeats']} repeat(s), one process (= one worker), one thread",
        "",
        "| per worker | samples/s |",
        "|---|---|",
        *(f"| {arm} | {rates[arm]:.1f} |" for arm in ARMS),
        f"| cache fill (first epoch) | {result['cache_fill_samples_per_s']:.1f} |",
        "",
        f"Cache speed-up: audio x{result['speedup_audio']:.1f}, "
        f"whole sample x{result['speedup_sample']:.2f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-frames", type=int, default=1, help="CREMA-D's lineage uses 1")
    parser.add_argument("--quick", action="store_true", help="12 clips, 1 repeat")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    clips, repeats = (12, 1) if args.quick else (args.clips, args.repeats)
    result = measure(clips, repeats, args.num_frames)
    print(markdown(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
