"""Audio-visual DataModules on fabricated CREMA-D / AVE / Kinetics-Sounds trees."""

from __future__ import annotations

import shutil

import lightning as L
import numpy as np
import pytest
import torch
from _audiovisual_helpers import (
    FRAMES_PER_CLIP,
    make_ave,
    make_cremad,
    make_kinetics_sounds,
    write_wav,
)

from pidsched import FixedController, MultimodalClassifier, PIDSchedulerCallback
from pidsched.data.audiovisual import (
    SAMPLE_RATE,
    SPECTROGRAM_SHAPE,
    AVEDataModule,
    CremaDDataModule,
    KineticsSoundsDataModule,
    log_spectrogram,
    read_wav,
    select_frames,
)
from pidsched.models.encoders import ResNet18Encoder


@pytest.fixture(scope="module")
def cremad_root(tmp_path_factory):
    return make_cremad(tmp_path_factory.mktemp("cremad"))


def test_spectrogram_shape_and_peak_frequency():
    rate = 16_000
    t = np.arange(rate) / rate
    spectrogram = log_spectrogram(0.5 * np.sin(2 * np.pi * 1000.0 * t), rate)
    assert spectrogram.shape == SPECTROGRAM_SHAPE == (1, 257, 188)
    # After resampling to 22,050 Hz a 1 kHz tone peaks at bin 1000 / (22050 / 512) ~ 23.2.
    peak_bin = int(spectrogram[0].mean(dim=1).argmax())
    assert peak_bin in (23, 24)


def test_short_audio_is_tiled_to_three_seconds():
    # A 0.25 s tone tiled to 3 s keeps energy in every frame; zero padding would leave silence.
    t = np.arange(SAMPLE_RATE // 4) / SAMPLE_RATE
    spectrogram = log_spectrogram(np.sin(2 * np.pi * 440.0 * t), SAMPLE_RATE)
    frame_energy = spectrogram[0].exp().sum(dim=0)
    assert bool((frame_energy[2:-2] > 1.0).all())


def test_audio_is_clipped_to_unit_range():
    loud = log_spectrogram(np.full(SAMPLE_RATE, 5.0), SAMPLE_RATE)
    unit = log_spectrogram(np.full(SAMPLE_RATE, 1.0), SAMPLE_RATE)
    assert torch.allclose(loud, unit)


@pytest.mark.parametrize("width", [2, 3])
def test_read_wav_decodes_pcm(tmp_path, width):
    samples = np.array([0.0, 0.5, -0.5, 0.25, -1.0])
    write_wav(tmp_path / "x.wav", samples, rate=8000, width=width)
    decoded, rate = read_wav(tmp_path / "x.wav")
    assert rate == 8000
    np.testing.assert_allclose(decoded, samples, atol=1e-4)


def test_frame_selection():
    assert select_frames(10, 3, train=False) == [0, 4, 9]
    assert select_frames(1, 3, train=False) == [0, 0, 0]
    chosen = select_frames(10, 3, train=True)
    assert chosen == sorted(chosen) and len(set(chosen)) == 3


def test_cremad_splits_shapes_and_balance(cremad_root):
    dm = CremaDDataModule(cremad_root, num_frames=2, image_size=32, val_fraction=0.25, batch_size=4)
    assert dm.num_classes == 6 and dm.modality_names == ("audio", "visual")
    assert dm.input_shapes == {"audio": (1, 257, 188), "visual": (2, 3, 32, 32)}
    sizes = {split: len(clips) for split, clips in dm.clips.items()}
    assert sizes == {"train": 18, "val": 6, "test": 6}
    for split in ("train", "val", "test"):
        counts = torch.bincount(torch.tensor([c.label for c in dm.clips[split]]), minlength=6)
        assert counts.min() == counts.max()  # every emotion equally represented
    ids = {split: {c.clip_id for c in clips} for split, clips in dm.clips.items()}
    assert not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    # The carved validation split is fixed by the seed.
    again = CremaDDataModule(cremad_root, num_frames=2, image_size=32, val_fraction=0.25)
    assert [c.clip_id for c in again.clips["val"]] == [c.clip_id for c in dm.clips["val"]]

    inputs, target = next(iter(dm.val_dataloader()))
    assert inputs["audio"].shape == (4, 1, 257, 188)
    assert inputs["visual"].shape == (4, 2, 3, 32, 32)
    assert target.dtype == torch.int64
    # Evaluation frames are deterministic; training frames are augmented.
    again_inputs, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(inputs["visual"], again_inputs["visual"])


def test_ave_uses_its_validation_split(tmp_path):
    dm = AVEDataModule(make_ave(tmp_path), image_size=32)
    assert dm.num_frames == 3
    assert dm.class_names == ("Bark", "Church bell", "Male speech, man speaking")
    assert {s: len(c) for s, c in dm.clips.items()} == {"train": 9, "val": 3, "test": 3}
    assert all(c.clip_id.startswith("val") for c in dm.clips["val"])


def test_kinetics_sounds_labels_are_class_indices(tmp_path):
    dm = KineticsSoundsDataModule(make_kinetics_sounds(tmp_path), image_size=32, val_fraction=0.25)
    assert dm.class_names == ("0", "1", "2") and dm.num_classes == 3
    assert [c.label for c in dm.clips["test"]] == [0, 1, 2]
    rows = {"train": [("a", str(i)) for i in (10, 2, 9)], "test": [("b", "2")]}
    assert dm.class_names_from(rows) == ("2", "9", "10")  # numeric, not lexical, order


def test_missing_root_lists_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        CremaDDataModule(tmp_path / "nowhere")
    message = str(error.value)
    for expected in ("AudioWAV/<clip_id>.wav", "Image-01-FPS/<clip_id>/<frame>.jpg", "train.csv"):
        assert expected in message


def test_incomplete_root_names_the_missing_files(tmp_path):
    root = make_cremad(tmp_path, clips_per_class=1, test_per_class=1)
    (root / "AudioWAV" / "1000_DFA_NEU_XX.wav").unlink()
    shutil.rmtree(root / "Image-01-FPS" / "1001_DFA_SAD_XX")
    with pytest.raises(FileNotFoundError) as error:
        CremaDDataModule(root, val_fraction=0.5)
    message = str(error.value)
    assert "1000_DFA_NEU_XX.wav" in message and "1001_DFA_SAD_XX/*.jpg" in message


def test_unknown_emotion_is_rejected(tmp_path):
    root = make_cremad(tmp_path, clips_per_class=1)
    (root / "test.csv").write_text("1000_DFA_NEU_XX,BORED\n")
    with pytest.raises(ValueError, match="BORED"):
        CremaDDataModule(root, val_fraction=0.5)


def test_real_training_step_on_fabricated_tree(cremad_root, tmp_path):
    dm = CremaDDataModule(
        cremad_root, num_frames=FRAMES_PER_CLIP, image_size=32, batch_size=6, val_fraction=0.25
    )
    encoders = {"audio": ResNet18Encoder(1, 16), "visual": ResNet18Encoder(3, 16)}
    model = MultimodalClassifier(encoders, {"audio": 16, "visual": 16}, dm.num_classes)
    before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    scheduler = PIDSchedulerCallback(dm.num_classes, FixedController(unimodal_epochs=1))
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        accelerator="cpu",
        callbacks=[scheduler],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    assert scheduler.switch_epoch == 1
    changed = [k for k, v in model.encoders.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("audio.") for k in changed) and any(
        k.startswith("visual.") for k in changed
    )
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert 0.0 <= metrics["test/acc_fused"] <= 1.0
