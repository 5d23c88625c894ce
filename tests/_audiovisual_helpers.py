"""Fabricates tiny CREMA-D / AVE / Kinetics-Sounds trees (wav files, jpg frames, split files)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from PIL import Image

WAV_RATE = 16_000  # Hz; the loaders resample to 22,050
FRAMES_PER_CLIP = 3


def write_wav(path: Path, samples: np.ndarray, rate: int = WAV_RATE, width: int = 2) -> None:
    """Write mono float samples in [-1, 1] as 16-bit (width 2) or 24-bit (width 3) PCM."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = 2 ** (8 * width - 1) - 1
    ints = np.round(np.clip(samples, -1, 1) * scale).astype(np.int32)
    raw = ints.astype("<i2").tobytes() if width == 2 else _int24_bytes(ints)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(raw)


def _int24_bytes(ints: np.ndarray) -> bytes:
    as_bytes = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
    return as_bytes.tobytes()


def write_clip(audio_dir: Path, visual_dir: Path, clip_id: str, label_index: int) -> None:
    """A 0.5 s tone whose pitch and frames whose colour depend on the label."""
    t = np.arange(WAV_RATE // 2) / WAV_RATE
    write_wav(audio_dir / f"{clip_id}.wav", 0.5 * np.sin(2 * np.pi * (300 + 200 * label_index) * t))
    frames = visual_dir / clip_id
    frames.mkdir(parents=True, exist_ok=True)
    for i in range(FRAMES_PER_CLIP):
        colour = ((40 * label_index) % 256, (80 * i) % 256, 128)
        Image.new("RGB", (40, 32), colour).save(frames / f"frame_{i:05d}.jpg")


def make_cremad(root: Path, clips_per_class: int = 4, test_per_class: int = 1) -> Path:
    """CREMA-D layout with every emotion; returns ``root``."""
    emotions = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    rows = {"train": [], "test": []}
    for label, emotion in enumerate(emotions):
        for i in range(clips_per_class + test_per_class):
            clip = f"10{i:02d}_DFA_{emotion}_XX"
            write_clip(root / "AudioWAV", root / "Image-01-FPS", clip, label)
            rows["test" if i < test_per_class else "train"].append(f"{clip},{emotion}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def make_ave(
    root: Path, classes: tuple[str, ...] = ("Church bell", "Male speech, man speaking", "Bark")
) -> Path:
    """AVE layout with official-style '&' split files, train/val/test; returns ``root``."""
    counts = {"trainSet.txt": 3, "valSet.txt": 1, "testSet.txt": 1}
    for split_file, per_class in counts.items():
        lines = []
        for label, name in enumerate(sorted(classes)):
            for i in range(per_class):
                video = f"{split_file[:3]}{label}{i}xYz"
                write_clip(root / "audio", root / "visual", video, label)
                lines.append(f"{name}&{video}&good&0&10")
        (root / split_file).write_text("\n".join(lines) + "\n")
    return root


def make_kinetics_sounds(root: Path, num_classes: int = 3) -> Path:
    """Kinetics-Sounds layout with OGM-GE-style rows ``clip,10,label``; returns ``root``."""
    for split_file, per_class in {"my_train.txt": 4, "my_test.txt": 1}.items():
        lines = []
        for label in range(num_classes):
            for i in range(per_class):
                clip = f"-{split_file[3:5]}{label}{i}_000001_000011"
                write_clip(root / "audio", root / "visual", clip, label)
                lines.append(f"{clip},10,{label}")
        (root / split_file).write_text("\n".join(lines) + "\n")
    return root


def make_cremad_shaped(
    root: Path, num_clips: int, seed: int = 0, frame_size: tuple[int, int] = (480, 360)
) -> Path:
    """A CREMA-D tree of real shape: 16 kHz mono wavs of 2-3 s, 1-3 jpg frames of ``frame_size``
    (CREMA-D's videos are 480x360) per clip, six emotions round-robin; ``num_clips // 6`` (at
    least one) go to the test split. Returns ``root``."""
    emotions = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
    rng = np.random.default_rng(seed)
    rows: dict[str, list[str]] = {"train": [], "test": []}
    test_every = max(2, num_clips // max(1, num_clips // 6))
    for index in range(num_clips):
        emotion = emotions[index % len(emotions)]
        clip = f"{1001 + index // 6}_C{index:04d}_{emotion}_XX"
        seconds = rng.uniform(2.0, 3.0)
        t = np.arange(int(WAV_RATE * seconds)) / WAV_RATE
        tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * (index % 6)) * t)
        write_wav(root / "AudioWAV" / f"{clip}.wav", tone + 0.05 * rng.standard_normal(t.size))
        frames = root / "Image-01-FPS" / clip
        frames.mkdir(parents=True, exist_ok=True)
        for i in range(int(rng.integers(1, 4))):
            pixels = rng.integers(0, 256, (frame_size[1] // 8, frame_size[0] // 8, 3), np.uint8)
            image = Image.fromarray(pixels).resize(frame_size, Image.BILINEAR)
            image.save(frames / f"frame_{i:05d}.jpg", quality=90)
        rows["test" if index % test_every == test_every - 1 else "train"].append(
            f"{clip},{emotion}"
        )
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root
