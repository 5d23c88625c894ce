"""Your own precomputed features as modalities: one array per modality in an ``.npz`` or HDF5 file.

``pidsched-train data=arrays data.path=features.npz`` trains on a file that holds, by name, one
float array ``(N, D_m)`` per modality, an array of ``N`` labels (ints or strings, named by
``label``) and optionally an array of ``N`` split names ``train``/``val``/``test`` (named by
``split``; without it the samples are split per class by ``seed``). Every modality is
standardised with its training split's statistics only. An ``.h5``/``.hdf5`` file works the
same way when ``h5py`` is installed (top-level datasets only).

:func:`standardize` and :func:`standardized_splits` are also what the shipped mfeat data uses.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from pidsched._checks import as_names
from pidsched.data.in_memory import (
    InMemoryMultimodalDataModule,
    MultimodalTensorDataset,
    check_split_fractions,
    stratified_split,
)

__all__ = [
    "SPLIT_NAMES",
    "ArraysDataModule",
    "read_arrays",
    "standardize",
    "standardized_splits",
]

#: The values a split array may hold, one per sample.
SPLIT_NAMES = ("train", "val", "test")
_NPZ_SUFFIXES = (".npz",)
_HDF5_SUFFIXES = (".h5", ".hdf5")


def _holds_split_names(values: np.ndarray) -> bool:
    """Whether a 1-D array holds only split names (``train``/``val``/``test``): a split array
    the user has not named with ``split``."""
    return (
        values.ndim == 1
        and values.dtype.kind in "US"
        and set(values.astype(str)) <= set(SPLIT_NAMES)
    )


def standardize(train: Tensor, *others: Tensor) -> list[Tensor]:
    """Scale every tensor by the per-feature mean and std of ``train`` only.

    Features that are constant on the training split keep their scale (std taken as 1), so
    no division by zero can leak NaNs.

    Args:
        train: ``(N_train, D)`` features that define the statistics.
        others: further ``(N_i, D)`` tensors scaled with the same statistics.

    Returns:
        ``[train, *others]`` standardised.
    """
    mean = train.mean(dim=0)
    std = train.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return [(x - mean) / std for x in (train, *others)]


def standardized_splits(
    inputs: Mapping[str, Tensor], target: Tensor, indices: Mapping[str, Tensor]
) -> dict[str, MultimodalTensorDataset]:
    """Cut ``inputs`` and ``target`` into the splits, each modality standardised on ``train``.

    Args:
        inputs: modality name -> float features ``(N, D_m)``.
        target: integer labels ``(N,)``.
        indices: ``{"train": idx, "val": idx, "test": idx}``, index tensors into ``range(N)``.

    Returns:
        ``{split: MultimodalTensorDataset}`` in the order of ``indices``.
    """
    splits = list(indices)
    scaled = {
        name: standardize(*(x[indices[split]] for split in splits)) for name, x in inputs.items()
    }
    return {
        split: MultimodalTensorDataset(
            {name: parts[i] for name, parts in scaled.items()}, target[indices[split]]
        )
        for i, split in enumerate(splits)
    }


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (or the top-level datasets of an HDF5 file), by name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unsupported suffix, or an array that cannot be read without pickle.
        ImportError: an HDF5 file without ``h5py`` installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"`path`={str(path)!r} is not a file (resolved to {path.resolve()}); set data.path "
            "to an existing .npz (or .h5 with h5py) file of one array per modality and labels."
        )
    suffix = path.suffix.lower()
    if suffix in _NPZ_SUFFIXES:
        return _read_npz(path)
    if suffix in _HDF5_SUFFIXES:
        return _read_hdf5(path)
    raise ValueError(
        f"`path`={str(path)!r} has suffix {path.suffix!r}; pidsched reads "
        f"{' or '.join(_NPZ_SUFFIXES + _HDF5_SUFFIXES)} files (save with numpy.savez)."
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        # numpy's own messages (a text file "contains pickled data ... load it unsafely") would
        # point the wrong way.
        raise ValueError(
            f"`path`={str(path)!r} is not a numpy .npz archive ({type(error).__name__}); write "
            "it with numpy.savez(path, audio=..., video=..., label=...)."
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a single array saved by np.save
        raise ValueError(
            f"`path`={str(path)!r} holds a single array ({archive.shape}), not an .npz "
            "archive of named arrays; write it with numpy.savez(path, audio=..., video=..., "
            "label=...)."
        )
    with archive:
        for name in archive.files:
            try:
                arrays[name] = archive[name]
            except ValueError:
                raise ValueError(
                    f"array {name!r} of {str(path)!r} holds Python objects, which pidsched does "
                    "not unpickle; save labels and split names as numpy string arrays "
                    "(np.asarray(values, dtype=str)) and features as float arrays."
                ) from None
    return arrays


def _read_hdf5(path: Path) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise ImportError(
            f"reading {str(path)!r} needs h5py: `pip install h5py`, or save the arrays as .npz."
        ) from None
    arrays = {}
    with h5py.File(path, "r") as file:
        for name, item in file.items():
            if isinstance(item, h5py.Dataset):
                # String datasets (fixed or variable length) would come back as bytes.
                is_text = h5py.check_string_dtype(item.dtype) is not None
                values = item.asstr()[()] if is_text else item[()]
                arrays[name] = np.asarray(values, dtype=str if is_text else None)
    return arrays


def _describe(arrays: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {value.shape} {value.dtype}" for name, value in arrays.items())


class ArraysDataModule(InMemoryMultimodalDataModule):
    """Precomputed per-modality features from one file, split and standardised on train only.

    Args:
        path: an ``.npz`` file (``numpy.savez``) or, with ``h5py``, an ``.h5``/``.hdf5`` file.
        views: the arrays that become the modalities, in order; None takes every array except
            ``label`` and ``split``, in the file's order. Each is ``(N, D_m)``, numeric, finite.
        label: name of the label array ``(N,)``; ints or strings, mapped to ``0..K-1`` in
            sorted order (:attr:`class_names` keeps the original values as strings).
        split: name of an array ``(N,)`` of ``"train"``/``"val"``/``"test"``; None draws a
            stratified split by ``seed`` with ``val_fraction`` and ``test_fraction``.
        val_fraction: share of each class held out for validation (without ``split``).
        test_fraction: share of each class held out for the final test (without ``split``).
        seed: seed of the split (independent of the training seed).
        batch_size: samples per batch.
        num_workers: dataloader worker processes.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: a named array is missing or malformed; the message lists the arrays found.

    Example::

        np.savez("features.npz", audio=audio, video=video, label=labels)  # (N, D_m), (N,)
        dm = ArraysDataModule("features.npz")
        dm.modality_names, dm.input_shapes  # ('audio', 'video'), {'audio': (D_a,), ...}
    """

    def __init__(
        self,
        path: str | Path,
        views: Sequence[str] | None = None,
        label: str = "label",
        split: str | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.path = Path(path).resolve()
        self.fractions = (val_fraction, test_fraction)
        if split is None:
            check_split_fractions(self.fractions)
        self.seed = seed
        arrays = read_arrays(path)
        values, target = np.unique(self._labels(arrays, label, split), return_inverse=True)
        #: The original label of each class index, as a string (numeric order for int labels).
        self.class_names = tuple(str(value) for value in values.tolist())
        if len(self.class_names) < 2:
            raise ValueError(
                f"label array {label!r} holds one class ({list(self.class_names)}); a "
                "classifier needs at least two."
            )
        self.target = torch.from_numpy(target.reshape(-1).astype(np.int64))
        names = self._view_names(arrays, views, label, split)
        self.features = {name: self._features(arrays, name, len(target)) for name in names}
        self.split_indices = self._split_indices(arrays, split)
        self.modality_names = names
        self.modality_kinds = dict.fromkeys(names, "vector")
        self.input_shapes = {name: (x.shape[1],) for name, x in self.features.items()}
        self.num_classes = len(self.class_names)

    def _labels(
        self, arrays: Mapping[str, np.ndarray], label: str, split: str | None
    ) -> np.ndarray:
        for argument, name in (("label", label), ("split", split)):
            if name is not None and name not in arrays:
                raise ValueError(
                    f"`{argument}`={name!r} is not an array of {str(self.path)!r}; it holds "
                    f"{_describe(arrays)}. Set data.{argument} to one of these names."
                )
        labels = arrays[label]
        if labels.ndim != 1 or len(labels) == 0 or labels.dtype.kind not in "biuUS":
            raise ValueError(
                f"label array {label!r} has shape {labels.shape} and dtype {labels.dtype}; "
                "expected (N,) integers or strings, one label per sample (cast float labels "
                f"with .astype(int)). The file holds {_describe(arrays)}."
            )
        return labels.astype(str) if labels.dtype.kind == "S" else labels

    def _view_names(
        self,
        arrays: Mapping[str, np.ndarray],
        views: Sequence[str] | None,
        label: str,
        split: str | None,
    ) -> tuple[str, ...]:
        reserved = {label, split} - {None}
        candidates = [n for n in arrays if n not in reserved]
        names = tuple(candidates) if views is None else as_names(views)
        unknown = [n for n in names if n not in arrays or n in reserved]
        if unknown or len(names) < 2 or len(set(names)) != len(names):
            example = f"[{','.join(candidates[:2])}]" if len(candidates) >= 2 else "[audio,video]"
            raise ValueError(
                f"`views`={list(names)} must name at least two distinct feature arrays, other "
                f"than the label ({label!r}) and split ({split!r}) arrays; "
                f"{str(self.path)!r} holds {_describe(arrays)}. "
                f"Set data.views, e.g. data.views={example}."
            )
        return names

    def _features(self, arrays: Mapping[str, np.ndarray], name: str, num_samples: int) -> Tensor:
        values = arrays[name]
        if (
            values.ndim != 2
            or values.shape[0] != num_samples
            or values.shape[1] == 0
            or values.dtype.kind not in "biuf"
        ):
            raise ValueError(
                f"feature array {name!r} has shape {values.shape} and dtype {values.dtype}; "
                f"expected numbers shaped (N, D) with N = {num_samples} (the labels' length) "
                "and D >= 1. "
                f"The file holds {_describe(arrays)}; pick the feature arrays with data.views"
                + (
                    f", or, as {name!r} holds split names, set data.split={name}."
                    if _holds_split_names(values)
                    else "."
                )
            )
        features = torch.from_numpy(values.astype(np.float32))
        if not torch.isfinite(features).all():
            bad = int((~torch.isfinite(features)).any(dim=1).sum())
            raise ValueError(
                f"feature array {name!r} has NaN or infinite values in {bad} of {num_samples} "
                "rows; impute or drop them before training."
            )
        return features

    def _split_indices(
        self, arrays: Mapping[str, np.ndarray], split: str | None
    ) -> dict[str, Tensor]:
        if split is None:
            parts = stratified_split(self.target, self.fractions, self.seed)
            sizes = {name: len(part) for name, part in zip(SPLIT_NAMES, parts, strict=True)}
            if not all(sizes.values()):
                raise ValueError(
                    f"the stratified split of {len(self.target)} samples into {sizes} leaves a "
                    "split empty; raise data.val_fraction/data.test_fraction or give a split "
                    "array (data.split)."
                )
            return dict(zip(SPLIT_NAMES, parts, strict=True))
        values = arrays[split]
        if values.shape != (len(self.target),):
            raise ValueError(
                f"split array {split!r} has shape {values.shape}; expected ({len(self.target)},), "
                "one split name per sample."
            )
        values = values.astype(str)
        unknown = sorted(set(np.unique(values).tolist()) - set(SPLIT_NAMES))
        counts = {name: int((values == name).sum()) for name in SPLIT_NAMES}
        if unknown or not all(counts.values()):
            raise ValueError(
                f"split array {split!r} must hold only {list(SPLIT_NAMES)}, each at least once; "
                f"it has counts {counts} and other values {unknown}."
            )
        return {name: torch.from_numpy(np.flatnonzero(values == name)) for name in SPLIT_NAMES}

    @override
    def build_splits(self) -> dict[str, MultimodalTensorDataset]:
        return standardized_splits(self.features, self.target, self.split_indices)
