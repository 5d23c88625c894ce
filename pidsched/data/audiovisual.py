"""Audio-visual DataModules (CREMA-D, AVE, Kinetics-Sounds) with the standard preprocessing.

The pipeline of the OGM-GE lineage (docs/method.md, "The audio-visual pipeline"):

* **audio** - a wav file, mixed to mono, resampled to 22,050 Hz, tiled to 3 s, clipped to
  [-1, 1]; STFT with ``n_fft=512``, ``hop_length=353`` (Hann window, centred with zero
  padding: librosa's defaults, which the lineage used) and
  ``log(|X| + 1e-7)`` gives a spectrogram ``(1, 257, 188)``;
* **visual** - frames extracted at 1 fps as jpg files; ``num_frames`` of them (a random sorted
  subset for training, evenly spaced otherwise); training: ``RandomResizedCrop`` and a
  horizontal flip, evaluation: ``Resize``; ImageNet mean/std. Shape ``(T, 3, S, S)``.

Spectrograms do not change between epochs: with ``cache_dir`` each clip's spectrogram is
computed once and read back afterwards (one ``.npy`` per clip, in a folder named after the
preprocessing settings, so changing them starts a new cache; a changed wav file gets a new
entry too). The frames are augmented per epoch and always read from the jpg files.

Each data set is read from one directory (``root``) holding an audio folder, a frame folder
and split files; the expected names are class attributes, given in each class docstring and
in the error raised when something is missing. Where a data set has no validation split,
validation is carved from its training split, stratified, with a fixed seed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from scipy.io import wavfile
from scipy.signal import resample_poly
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms
from typing_extensions import override

from pidsched.data.in_memory import MultimodalDataModule, check_split_fractions, stratified_split

SAMPLE_RATE = 22_050  # Hz
CLIP_SECONDS = 3
N_FFT = 512
HOP_LENGTH = 353
SPECTROGRAM_SHAPE = (1, N_FFT // 2 + 1, 1 + SAMPLE_RATE * CLIP_SECONDS // HOP_LENGTH)  # 257 x 188
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOG_FLOOR = 1e-7
_FRAME_SUFFIXES = (".jpg", ".jpeg")
# Bump when log_spectrogram changes in a way its settings below do not capture.
_SPECTROGRAM_VERSION = 1


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a wav file as mono float samples in [-1, 1]: PCM of 8, 16, 24 or 32 bits, or IEEE
    float, with a plain or an extensible (``WAVE_FORMAT_EXTENSIBLE``) header.

    scipy reads it: the standard library's ``wave`` refuses float wavs, and extensible headers
    (what ffmpeg writes above 16 bits) before Python 3.12.

    Returns:
        ``(samples (L,) float32, sample rate in Hz)``.
    """
    with warnings.catch_warnings():
        # Metadata chunks (LIST, from ffmpeg) are skipped, with a warning per file.
        warnings.simplefilter("ignore", wavfile.WavFileWarning)
        rate, data = wavfile.read(str(path))
    if data.dtype == np.uint8:  # 8-bit wav is unsigned
        samples = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype in (np.int16, np.int32):  # 24-bit comes left-justified in int32
        samples = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    elif data.dtype.kind == "f":
        samples = data.astype(np.float32)
    else:
        # No path here: the dataset's error names the clip (see AudioVisualDataset.__getitem__).
        raise ValueError(
            f"unsupported sample type {data.dtype}; use PCM of 8, 16, 24 or 32 bits or float."
        )
    return (samples if samples.ndim == 1 else samples.mean(axis=1)), int(rate)


def log_spectrogram(samples: np.ndarray, rate: int) -> Tensor:
    """The audio preprocessing of the lineage: resample, tile to 3 s, clip, log |STFT|.

    Args:
        samples: mono waveform ``(L,)``, nominally in [-1, 1].
        rate: its sample rate in Hz.

    Returns:
        ``log(|STFT| + 1e-7)`` of shape ``(1, 257, 188)``, float32.
    """
    if samples.size == 0:
        raise ValueError("the audio clip is empty; every clip needs at least one sample.")
    if rate != SAMPLE_RATE:
        common = math.gcd(rate, SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // common, rate // common)
    length = SAMPLE_RATE * CLIP_SECONDS
    tiled = np.tile(samples, math.ceil(length / samples.size))[:length]
    waveform = torch.from_numpy(np.clip(tiled, -1.0, 1.0).astype(np.float32))
    stft = torch.stft(
        waveform,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        window=torch.hann_window(N_FFT),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    return torch.log(stft.abs() + LOG_FLOOR).unsqueeze(0)


def spectrogram_settings() -> dict[str, float]:
    """The preprocessing settings a cached spectrogram depends on (read when called)."""
    return {
        "version": _SPECTROGRAM_VERSION,
        "sample_rate": SAMPLE_RATE,
        "clip_seconds": CLIP_SECONDS,
        "n_fft": N_FFT,
        "hop_length": HOP_LENGTH,
        "log_floor": LOG_FLOOR,
    }


class SpectrogramCache:
    """Log spectrograms on disk: computed on first use, read back on every later one.

    Entries live in ``<cache_dir>/spectrogram-<hash of the settings>/`` as
    ``<clip_id>-<wav size>-<wav mtime ns>.npy`` (float32 ``(1, 257, 188)``), so a change of the
    preprocessing settings or of the wav file misses the old entries instead of reading them.
    Writes go to a temporary file renamed into place, so dataloader workers can share it.

    Args:
        cache_dir: the cache's root folder (created when missing).
    """

    def __init__(self, cache_dir: str | Path) -> None:
        settings = json.dumps(spectrogram_settings(), sort_keys=True)
        digest = hashlib.sha1(settings.encode()).hexdigest()[:12]
        self.folder = Path(cache_dir).expanduser() / f"spectrogram-{digest}"
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "settings.json").write_text(settings + "\n")

    def spectrogram(self, wav_path: Path) -> Tensor:
        """The log spectrogram ``(1, 257, 188)`` of ``wav_path``, from the cache when present."""
        status = wav_path.stat()
        entry = self.folder / f"{wav_path.stem}-{status.st_size}-{status.st_mtime_ns}.npy"
        if entry.is_file():
            return torch.from_numpy(np.load(entry))
        spectrogram = log_spectrogram(*read_wav(wav_path))
        partial = entry.with_name(f"{entry.stem}.{os.getpid()}.tmp.npy")
        np.save(partial, spectrogram.numpy())
        partial.replace(entry)
        return spectrogram


def frame_transform(train: bool, image_size: int = 224) -> transforms.Compose:
    """Per-frame transform: crop+flip augmentation for training, resize otherwise."""
    if train:
        geometry = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        geometry = [transforms.Resize((image_size, image_size))]
    return transforms.Compose(
        [*geometry, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def select_frames(num_available: int, num_frames: int, train: bool) -> list[int]:
    """Indices of the frames to load, in time order.

    Training draws a random sorted subset (with ``torch``'s RNG, so dataloader workers differ);
    evaluation takes evenly spaced frames. Clips with fewer frames than asked repeat frames.
    """
    if train and num_available >= num_frames:
        return sorted(torch.randperm(num_available)[:num_frames].tolist())
    return torch.linspace(0, num_available - 1, num_frames).round().long().tolist()


@dataclass(frozen=True)
class Clip:
    """One labelled sample: its id (file stem / frame folder name) and class index."""

    clip_id: str
    label: int


class AudioVisualClipDataset(Dataset):
    """Loads ``({"audio": (1, 257, 188), "visual": (T, 3, S, S)}, label)`` per clip.

    Args:
        clips: the samples of this split.
        audio_dir: folder of ``<clip_id>.wav`` files.
        visual_dir: folder of ``<clip_id>/`` frame folders (jpg, sorted by name = time).
        num_frames: frames per sample ``T``.
        train: use training augmentation and random frame choice.
        image_size: side ``S`` of the square frames.
        cache_dir: a :class:`SpectrogramCache` folder; None computes every spectrogram anew.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        audio_dir: Path,
        visual_dir: Path,
        num_frames: int,
        train: bool,
        image_size: int = 224,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.clips = list(clips)
        self.audio_dir = audio_dir
        self.visual_dir = visual_dir
        self.num_frames = num_frames
        self.train = train
        self.transform = frame_transform(train, image_size)
        self.cache = None if cache_dir is None else SpectrogramCache(cache_dir)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], Tensor]:
        clip = self.clips[index]
        wav_path = self.audio_dir / f"{clip.clip_id}.wav"
        try:
            if self.cache is None:
                audio = log_spectrogram(*read_wav(wav_path))
            else:
                audio = self.cache.spectrogram(wav_path)
        except (ValueError, OSError, EOFError) as error:
            # Raised in a dataloader worker, among thousands of clips: say which one.
            raise ValueError(f"cannot read the audio clip {wav_path}: {error}") from error
        frame_paths = _frame_files(self.visual_dir / clip.clip_id)
        chosen = select_frames(len(frame_paths), self.num_frames, self.train)
        frames = []
        for i in chosen:
            with Image.open(frame_paths[i]) as image:
                frames.append(self.transform(image.convert("RGB")))
        return {"audio": audio, "visual": torch.stack(frames)}, torch.tensor(clip.label)


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)


class AudioVisualDataModule(MultimodalDataModule, ABC):
    """Shared logic of the audio-visual DataModules; subclasses name files and parse splits.

    Subclasses set ``audio_dirname``, ``visual_dirname`` and ``split_files`` (split name ->
    file name; a missing ``"val"`` entry means validation is carved from training) and
    implement :meth:`parse_split_file` and :meth:`class_names_from`.

    Args:
        root: the data set directory.
        num_frames: frames per clip fed to the visual encoder (None: the data set's usual
            number, ``default_num_frames``).
        val_fraction: share of each training class carved out for validation when the data
            set has no validation split.
        seed: seed of that carving.
        image_size: side of the square frames (224 in the lineage).
        batch_size: clips per batch.
        num_workers: dataloader worker processes (persistent across epochs).
        pin_memory: page-locked batches; None pins exactly when training on a CUDA device.
        cache_dir: folder of the spectrogram cache (computed once, reused every epoch); None
            recomputes every spectrogram every time.

    Raises:
        FileNotFoundError: when ``root`` lacks a folder, split file, wav file or frame folder;
            the message lists the expected layout and what is missing.
    """

    audio_dirname: ClassVar[str]
    visual_dirname: ClassVar[str]
    split_files: ClassVar[dict[str, str]]
    default_num_frames: ClassVar[int] = 3
    modality_names = ("audio", "visual")

    def __init__(
        self,
        root: str | Path,
        num_frames: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        num_frames = self.default_num_frames if num_frames is None else num_frames
        if num_frames < 1 or image_size < 1:
            raise ValueError(
                f"num_frames={num_frames} and image_size={image_size} must be positive."
            )
        check_split_fractions([val_fraction])
        self.root = Path(root).expanduser()
        self.num_frames = num_frames
        self.val_fraction = val_fraction
        self.seed = seed
        self.image_size = image_size
        self.cache_dir = cache_dir
        self.modality_kinds = {"audio": "audio", "visual": "visual"}
        self.audio_dir = self.root / self.audio_dirname
        self.visual_dir = self.root / self.visual_dirname
        rows = self._read_rows()
        self.class_names = self.class_names_from(rows)
        self.clips = self._labelled_splits(rows)
        self._check_media()
        self.num_classes = len(self.class_names)
        self.input_shapes = {
            "audio": SPECTROGRAM_SHAPE,
            "visual": (num_frames, 3, image_size, image_size),
        }

    @abstractmethod
    def parse_split_file(self, path: Path) -> list[tuple[str, str]]:
        """Return ``(clip_id, class name)`` rows of one split file."""

    @abstractmethod
    def class_names_from(self, rows: dict[str, list[tuple[str, str]]]) -> tuple[str, ...]:
        """The class names in label-index order, given every split's rows."""

    def expected_layout(self) -> str:
        """The directory tree this DataModule reads, for error messages and docs."""
        splits = "\n".join(
            f"  {name}    ({split} split)" for split, name in self.split_files.items()
        )
        return (
            f"{self.root}/\n"
            f"  {self.audio_dirname}/<clip_id>.wav\n"
            f"  {self.visual_dirname}/<clip_id>/<frame>.jpg   (1 fps, sorted by name)\n"
            f"{splits}"
        )

    def _missing(self, what: Sequence[str]) -> FileNotFoundError:
        listed = "\n".join(f"  - {w}" for w in what[:10])
        more = f"\n  ... and {len(what) - 10} more" if len(what) > 10 else ""
        return FileNotFoundError(
            f"{type(self).__name__}: the data root is missing or incomplete.\n"
            f"Expected layout:\n{self.expected_layout()}\nMissing:\n{listed}{more}"
        )

    def _read_rows(self) -> dict[str, list[tuple[str, str]]]:
        needed = [self.root / name for name in self.split_files.values()]
        needed += [self.audio_dir, self.visual_dir]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            raise self._missing(missing)
        return {
            split: self.parse_split_file(self.root / name)
            for split, name in self.split_files.items()
        }

    def _labelled_splits(self, rows: dict[str, list[tuple[str, str]]]) -> dict[str, list[Clip]]:
        index = {name: i for i, name in enumerate(self.class_names)}
        clips = {split: [Clip(c, index[label]) for c, label in r] for split, r in rows.items()}
        for split, name in self.split_files.items():
            if not clips[split]:
                raise ValueError(
                    f"{type(self).__name__}: the {split} split file {self.root / name} lists no "
                    "clips; give it one row per clip (see the expected layout in the class "
                    "docstring)."
                )
        if "val" not in clips:
            labels = torch.tensor([c.label for c in clips["train"]])
            train, val = stratified_split(labels, [self.val_fraction], self.seed)
            if not len(val):
                # A warning: a schedule that measures nothing trains without validation.
                warnings.warn(
                    f"{type(self).__name__}: `val_fraction`={self.val_fraction} of the "
                    f"{len(labels)} training clips rounds to no validation clip in any class, so "
                    "the validation split is empty and nothing can be probed or selected on it; "
                    "raise val_fraction (data.val_fraction on the command line).",
                    UserWarning,
                    stacklevel=3,
                )
            clips["val"] = [clips["train"][i] for i in val.tolist()]
            clips["train"] = [clips["train"][i] for i in train.tolist()]
        return clips

    def _check_media(self) -> None:
        missing = []
        for clip in (c for split in self.clips.values() for c in split):
            wav = self.audio_dir / f"{clip.clip_id}.wav"
            frames = self.visual_dir / clip.clip_id
            if not wav.is_file():
                missing.append(str(wav))
            if not frames.is_dir() or not _frame_files(frames):
                missing.append(f"{frames}/*.jpg")
        if missing:
            raise self._missing(missing)

    @override
    def split_dataset(self, split: str) -> AudioVisualClipDataset:
        return AudioVisualClipDataset(
            self.clips[split],
            self.audio_dir,
            self.visual_dir,
            self.num_frames,
            split == "train",
            self.image_size,
            self.cache_dir,
        )


def _read_label_last_csv(path: Path) -> list[tuple[str, str]]:
    """Rows ``clip_id,...,label`` (first field the clip, last the label); blank lines skipped."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return [(row[0].strip(), row[-1].strip()) for row in csv.reader(handle) if row]


class CremaDDataModule(AudioVisualDataModule):
    """CREMA-D: 6 emotions, 7,442 clips (usual split 6,698 train / 744 test).

    Layout (the OGM-GE preprocessing)::

        root/AudioWAV/<clip_id>.wav            e.g. 1001_DFA_ANG_XX.wav
        root/Image-01-FPS/<clip_id>/*.jpg      frames at 1 fps
        root/train.csv, root/test.csv          rows "<clip_id>,<EMOTION>"

    Emotion codes map to labels in the lineage's order NEU HAP SAD FEA DIS ANG. The lineage
    uses one frame per clip (``num_frames=1``).
    """

    audio_dirname = "AudioWAV"
    visual_dirname = "Image-01-FPS"
    split_files: ClassVar[dict[str, str]] = {"train": "train.csv", "test": "test.csv"}
    default_num_frames = 1
    EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")

    @override
    def parse_split_file(self, path: Path) -> list[tuple[str, str]]:
        rows = _read_label_last_csv(path)
        unknown = sorted({label for _, label in rows} - set(self.EMOTIONS))
        if unknown:
            raise ValueError(f"{path}: unknown emotion codes {unknown}; expected {self.EMOTIONS}.")
        return rows

    @override
    def class_names_from(self, rows: dict[str, list[tuple[str, str]]]) -> tuple[str, ...]:
        return self.EMOTIONS


class AVEDataModule(AudioVisualDataModule):
    """AVE (Audio-Visual Event): 28 event classes, 4,143 ten-second videos, official splits.

    Layout (official annotation files; audio and frames extracted per video)::

        root/audio/<video_id>.wav
        root/visual/<video_id>/*.jpg            frames at 1 fps (10 per video)
        root/trainSet.txt, root/valSet.txt, root/testSet.txt
            rows "Category&VideoID&Quality&StartTime&EndTime"

    AVE ships a validation split, which is used as is. Classes are the sorted category names
    found in the three split files.
    """

    audio_dirname = "audio"
    visual_dirname = "visual"
    split_files: ClassVar[dict[str, str]] = {
        "train": "trainSet.txt",
        "val": "valSet.txt",
        "test": "testSet.txt",
    }

    @override
    def parse_split_file(self, path: Path) -> list[tuple[str, str]]:
        rows = []
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            fields = [field.strip() for field in line.split("&")]
            # AVE's Annotations.txt starts with the header row; a split file cut from it may too
            # (it would become a clip "VideoID" of a class "Category").
            if len(fields) >= 2 and fields[:2] != ["Category", "VideoID"]:
                rows.append((fields[1], fields[0]))
        return rows

    @override
    def class_names_from(self, rows: dict[str, list[tuple[str, str]]]) -> tuple[str, ...]:
        return tuple(sorted({label for split in rows.values() for _, label in split}))


class KineticsSoundsDataModule(AudioVisualDataModule):
    """Kinetics-Sounds (31 classes in the OGM-GE split, 14,799 train / 2,597 test).

    Layout::

        root/audio/<clip_id>.wav
        root/visual/<clip_id>/*.jpg             frames at 1 fps
        root/my_train.txt, root/my_test.txt     rows "<clip_id>,...,<label>"

    The label is the last comma-separated field (a class name or an integer class index, as
    in OGM-GE's split files). Classes are the labels of the training split, sorted
    (numerically when all are integers).
    """

    audio_dirname = "audio"
    visual_dirname = "visual"
    split_files: ClassVar[dict[str, str]] = {"train": "my_train.txt", "test": "my_test.txt"}

    @override
    def parse_split_file(self, path: Path) -> list[tuple[str, str]]:
        return _read_label_last_csv(path)

    @override
    def class_names_from(self, rows: dict[str, list[tuple[str, str]]]) -> tuple[str, ...]:
        labels = {label for _, label in rows["train"]}
        unseen = sorted({label for _, label in rows["test"]} - labels)
        if unseen:
            raise ValueError(f"test labels {unseen} never occur in the training split.")
        numeric = all(label.lstrip("-").isdigit() for label in labels)
        return tuple(sorted(labels, key=int if numeric else str))
