"""Your own features through ``ArraysDataModule`` and ``pidsched-train data=arrays``."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pidsched.cli.reload import load_run
from pidsched.data import ArraysDataModule
from pidsched.data.in_memory import stratified_split

CLASSES = np.array(["cat", "dog", "eel"])


def features(num_samples: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """Two views of a 3-class task (string labels) and a label-free third array."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, num_samples)
    return {
        "audio": rng.normal(size=(num_samples, 5)) + 3.0 * np.eye(3, 5)[y] + 10.0,
        "video": 4.0 * rng.normal(size=(num_samples, 4)) + np.eye(3, 4)[y],
        "text": rng.normal(size=(num_samples, 2)),
        "label": CLASSES[y],
    }


def save(tmp_path: Path, arrays: dict[str, np.ndarray], name: str = "features.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_default_views_split_and_train_only_standardisation(tmp_path):
    arrays = features()
    dm = ArraysDataModule(save(tmp_path, arrays), seed=3)
    # Every array but the label, in the file's order; string labels in sorted order.
    assert dm.modality_names == ("audio", "video", "text")
    assert dm.input_shapes == {"audio": (5,), "video": (4,), "text": (2,)}
    assert dm.modality_kinds == dict.fromkeys(dm.modality_names, "vector")
    assert dm.num_classes == 3 and dm.class_names == ("cat", "dog", "eel")
    dm.setup()

    target = torch.from_numpy(np.searchsorted(CLASSES, arrays["label"]))
    expected = stratified_split(target, (0.15, 0.2), seed=3)
    train_idx = expected[0]
    for split, idx in zip(("train", "val", "test"), expected, strict=True):
        assert torch.equal(dm.splits[split].target, target[idx])
        raw = torch.from_numpy(arrays["audio"]).float()
        mean, std = raw[train_idx].mean(0), raw[train_idx].std(0)
        torch.testing.assert_close(dm.splits[split].inputs["audio"], (raw[idx] - mean) / std)
    assert dm.splits["test"].inputs["video"].mean(0).abs().max() > 1e-3  # not refitted on test


def test_views_label_and_split_arrays_by_name(tmp_path):
    arrays = features(120)
    arrays["y"] = arrays.pop("label")
    split = np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20)
    arrays["fold"] = np.random.default_rng(1).permutation(split)
    dm = ArraysDataModule(save(tmp_path, arrays), views=["video", "audio"], label="y", split="fold")
    assert dm.modality_names == ("video", "audio")
    dm.setup()
    for name in ("train", "val", "test"):
        (idx,) = np.nonzero(arrays["fold"] == name)
        labels = [dm.class_names[t] for t in dm.splits[name].target.tolist()]
        assert labels == arrays["y"][idx].tolist()
    assert {name: len(ds) for name, ds in dm.splits.items()} == {
        "train": 80,
        "val": 20,
        "test": 20,
    }


def test_integer_labels_keep_numeric_order(tmp_path):
    arrays = features(200)
    arrays["label"] = np.array([3, 10, 7])[np.searchsorted(CLASSES, arrays["label"])]
    arrays["split"] = np.array(["train", "val", "test", "train"] * 50)
    dm = ArraysDataModule(save(tmp_path, arrays), split="split")
    assert dm.class_names == ("3", "7", "10")  # not the string order 10, 3, 7
    dm.setup()
    (train_idx,) = np.nonzero(arrays["split"] == "train")
    labels = [int(dm.class_names[t]) for t in dm.splits["train"].target.tolist()]
    assert labels == arrays["label"][train_idx].tolist()


def test_hdf5_reads_like_npz(tmp_path):
    h5py = pytest.importorskip("h5py")
    arrays = features(150)
    arrays["fold"] = np.array(["train", "train", "val", "test", "train"] * 30)
    with h5py.File(tmp_path / "features.h5", "w") as file:
        for name in ("audio", "video", "text"):
            file[name] = arrays[name]
        # Strings as h5py writes them from Python: variable length (label) and fixed (fold).
        file.create_dataset("label", data=arrays["label"].tolist(), dtype=h5py.string_dtype())
        file["fold"] = arrays["fold"].astype("S")
    from_h5 = ArraysDataModule(tmp_path / "features.h5", views=["audio", "video"], split="fold")
    from_npz = ArraysDataModule(save(tmp_path, arrays), views=["audio", "video"], split="fold")
    from_h5.setup()
    from_npz.setup()
    assert from_h5.class_names == from_npz.class_names == ("cat", "dog", "eel")
    for split in ("train", "val", "test"):
        assert torch.equal(from_h5.splits[split].target, from_npz.splits[split].target)
        assert torch.equal(
            from_h5.splits[split].inputs["video"], from_npz.splits[split].inputs["video"]
        )


def _text_file(tmp_path):
    path = tmp_path / "features.csv"
    path.write_text("audio,video,label\n")
    return path


def _write_one_array(path):
    """What np.save writes (one .npy array), under an .npz name."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 2)))
    path.write_bytes(buffer.getvalue())


def _not_an_archive(write):
    def make(tmp_path):
        path = tmp_path / "features.npz"
        write(path)
        return path

    return make


def _broken(change):
    def make(tmp_path):
        arrays = features(60)
        change(arrays)
        return save(tmp_path, arrays)

    return make


@pytest.mark.parametrize(
    ("make_file", "kwargs", "error", "match"),
    [
        (lambda tmp: tmp / "absent.npz", {}, FileNotFoundError, "data.path"),
        (_text_file, {}, ValueError, "suffix '.csv'.*numpy.savez"),
        (
            _broken(lambda a: a.pop("label")),
            {},
            ValueError,
            r"`label`='label'.*audio \(60, 5\)",
        ),
        (_broken(lambda a: None), {"views": ["audio", "depth"]}, ValueError, r"video \(60, 4\)"),
        (_broken(lambda a: None), {"views": ["audio"]}, ValueError, "at least two"),
        (_broken(lambda a: None), {"val_fraction": 0.01}, ValueError, r"'val': 0.*data.split"),
        (_broken(lambda a: None), {"views": ["audio", "label"]}, ValueError, "other than"),
        (_broken(lambda a: None), {"split": "fold"}, ValueError, r"`split`='fold'.*text"),
        (
            _broken(lambda a: a.update(ids=np.arange(60))),
            {},
            ValueError,
            r"'ids' has shape \(60,\).*data.views",
        ),
        (
            _broken(lambda a: a.update(text=a["text"][:50])),
            {},
            ValueError,
            "N = 60",
        ),
        (
            _broken(lambda a: a["audio"].__setitem__((4, 1), np.nan)),
            {},
            ValueError,
            "NaN or infinite values in 1 of 60 rows",
        ),
        (
            _broken(lambda a: a.update(label=np.full(60, "cat"))),
            {},
            ValueError,
            "one class",
        ),
        (
            _broken(lambda a: a.update(label=np.linspace(0, 1, 60))),
            {},
            ValueError,
            "astype\\(int\\)",
        ),
        (
            _broken(lambda a: a.update(fold=np.array(["train"] * 50 + ["valid"] * 10))),
            {"split": "fold"},
            ValueError,
            r"'val': 0.*\['valid'\]",
        ),
        (
            _broken(lambda a: a.update(label=a["label"].astype(object))),
            {},
            ValueError,
            "Python objects",
        ),
        # numpy's messages said "pickled data ... load it unsafely" or "context manager".
        (
            _not_an_archive(lambda p: p.write_text("audio,video,label\n")),
            {},
            ValueError,
            r"is not a numpy \.npz archive.*numpy\.savez\(path, audio=",
        ),
        (
            _not_an_archive(_write_one_array),
            {},
            ValueError,
            r"holds a single array \(\(3, 2\)\), not an \.npz archive",
        ),
        (
            _broken(lambda a: a.update(video=np.zeros((60, 0)))),
            {},
            ValueError,
            r"'video' has shape \(60, 0\).*D >= 1",
        ),
        (
            _broken(lambda a: a.update(fold=np.array(["train"] * 40 + ["val", "test"] * 10))),
            {},
            ValueError,
            r"'fold' has shape \(60,\).*as 'fold' holds split names, set data\.split=fold\.",
        ),
    ],
    ids=[
        "missing file",
        "suffix",
        "no label array",
        "unknown view",
        "one view",
        "empty split",
        "label as view",
        "no split array",
        "1-d view",
        "row count",
        "nan",
        "one class",
        "float labels",
        "bad split names",
        "object array",
        "text named .npz",
        "np.save output",
        "zero-width view",
        "unnamed split array",
    ],
)
def test_bad_files_say_what_the_file_holds(tmp_path, make_file, kwargs, error, match):
    with pytest.raises(error, match=match):
        ArraysDataModule(make_file(tmp_path), **kwargs)


def test_one_view_name_is_one_view_and_the_fix_names_the_files_arrays(tmp_path):
    arrays = features()
    path = save(tmp_path, {"text": arrays["text"], "image": arrays["audio"], "y": arrays["label"]})
    # A single name is one view (it was split into characters), and the suggested fix names the
    # file's own arrays, not audio and video.
    with pytest.raises(ValueError, match=r"`views`=\['text'\].*data\.views=\[text,image\]"):
        ArraysDataModule(path, views="text", label="y")


@pytest.mark.slow
def test_pidsched_train_on_your_own_file_and_reload_the_run(tmp_path):
    command = shutil.which("pidsched-train", path=str(Path(sys.executable).parent))
    assert command is not None, "pidsched-train is not installed beside this interpreter"
    launch = tmp_path / "project"
    launch.mkdir()
    save(launch, features(300))
    run_dir = tmp_path / "run"
    subprocess.run(
        [
            command,
            "data=arrays",
            "data.path=features.npz",  # relative to the launch directory
            "data.views=[audio,video]",
            "schedule=fixed",
            "stage1_max_epochs=1",
            "trainer.max_epochs=3",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=launch,
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["test_acc"]) == ["audio", "video", "fused"]
    assert summary["switch_epoch"] == 1 and summary["selected_epoch"] in (1, 2)

    # Reloaded from elsewhere: the relative data path still resolves against the launch dir.
    model, datamodule = load_run(run_dir)
    assert datamodule.class_names == ("cat", "dog", "eel")
    datamodule.setup()
    test = datamodule.splits["test"]
    with torch.no_grad():
        heads = dict(model.modality_logits(test.inputs), fused=model(test.inputs))
    target = test.target.numpy()
    for head, logits in heads.items():
        accuracy = np.mean(logits.argmax(-1).numpy() == target)
        assert summary["test_acc"][head] == pytest.approx(accuracy, abs=1e-6), head

    last, _ = load_run(run_dir, checkpoint="last.ckpt")  # epoch 2, not the selected one
    selected_epoch = torch.load(run_dir / "checkpoints" / Path(summary["checkpoint"]).name)["epoch"]
    assert (selected_epoch == 2) == all(
        torch.equal(p, q) for p, q in zip(last.parameters(), model.parameters(), strict=True)
    )
    with pytest.raises(FileNotFoundError, match=r"holds \['best-epoch=.*', 'last.ckpt'\]"):
        load_run(run_dir, checkpoint="epoch=7.ckpt")
    with pytest.raises(FileNotFoundError, match="pidsched-train run"):
        load_run(tmp_path)
