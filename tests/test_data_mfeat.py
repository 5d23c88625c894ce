"""The shipped UCI Multiple Features data and its DataModule."""

from __future__ import annotations

import pytest
import torch

import pidsched.data.mfeat as mfeat
from pidsched.data import MFEAT_VIEWS, MFeatDataModule, load_mfeat
from pidsched.data.arrays import standardize
from pidsched.data.in_memory import stratified_split


def test_shipped_arrays_have_the_documented_shapes_and_values():
    inputs, labels = load_mfeat()
    assert {v: tuple(x.shape) for v, x in inputs.items()} == {
        v: (2000, d) for v, d in MFEAT_VIEWS.items()
    }
    assert torch.equal(torch.bincount(labels), torch.full((10,), 200))
    # First row of mfeat-mor in the UCI file; pix holds 0..6 pixel counts.
    expected = torch.tensor([1.0, 0.0, 0.0, 133.15, 1.3117, 1620.2])
    assert torch.allclose(inputs["mor"][0], expected, rtol=1e-6)
    assert set(inputs["pix"].unique().tolist()) <= set(range(7))
    assert labels[:200].eq(0).all() and labels[-200:].eq(9).all()


def test_checksum_is_verified(monkeypatch):
    monkeypatch.setattr(mfeat, "MFEAT_SHA256", "0" * 64)
    with pytest.raises(OSError, match="SHA-256"):
        load_mfeat(("mor",))


def test_license_note_is_shipped():
    from importlib import resources

    note = resources.files("pidsched.data").joinpath("MFEAT_LICENSE.md").read_text()
    assert "CC BY 4.0" in note and "van Breukelen" in note


def test_split_is_stratified_fixed_and_standardised_on_train_only():
    dm = MFeatDataModule(views=("zer", "mor"), val_fraction=0.15, test_fraction=0.2)
    dm.setup()
    assert dm.modality_names == ("zer", "mor") and dm.num_classes == 10
    assert dm.input_shapes == {"zer": (47,), "mor": (6,)}
    counts = {s: torch.bincount(ds.target).tolist() for s, ds in dm.splits.items()}
    assert counts == {"train": [130] * 10, "val": [30] * 10, "test": [40] * 10}

    train_zer = dm.splits["train"].inputs["zer"]
    assert torch.allclose(train_zer.mean(0), torch.zeros(47), atol=1e-4)
    assert torch.allclose(train_zer.std(0), torch.ones(47), atol=1e-4)
    assert dm.splits["test"].inputs["zer"].mean(0).abs().max() > 1e-3  # not refitted on test

    # The test split is standardised with the training statistics.
    raw, labels = load_mfeat(("zer",))
    train_idx, _, test_idx = stratified_split(labels, (0.15, 0.2), seed=0)
    mean, std = raw["zer"][train_idx].mean(0), raw["zer"][train_idx].std(0)
    expected = (raw["zer"][test_idx] - mean) / std
    assert torch.allclose(dm.splits["test"].inputs["zer"], expected, atol=1e-5)

    again = MFeatDataModule(views=("zer", "mor"))
    again.setup()
    assert torch.equal(again.splits["val"].target, dm.splits["val"].target)
    assert torch.equal(again.splits["val"].inputs["mor"], dm.splits["val"].inputs["mor"])


def test_constant_features_stay_finite():
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    scaled_train, scaled_other = standardize(train, torch.tensor([[2.0, 7.0]]))
    assert torch.isfinite(scaled_train).all()
    assert scaled_other.tolist() == [[0.0, 2.0]]


def test_any_subset_of_views_becomes_the_modalities():
    dm = MFeatDataModule(views=("pix", "fou", "mor"), batch_size=16)
    inputs, target = next(iter(dm.train_dataloader()))
    assert list(inputs) == ["pix", "fou", "mor"]
    assert [inputs[v].shape[1] for v in inputs] == [240, 76, 6]
    assert target.shape == (16,)


@pytest.mark.parametrize("views", [(), ("fou", "fou"), ("fou", "colour")])
def test_bad_views_are_rejected(views):
    with pytest.raises(ValueError, match="views"):
        MFeatDataModule(views=views)


def test_one_view_name_is_one_view():
    # data.views=fou on the command line: the string was split into 'f', 'o', 'u'.
    inputs, _ = load_mfeat("fou")
    assert list(inputs) == ["fou"]
