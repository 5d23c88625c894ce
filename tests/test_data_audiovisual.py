"""Audio-visual DataModules on fabricated CREMA-D / AVE / Kinetics-Sounds trees."""

from __future__ import annotations

import shutil
import struct

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
from scipy.io import wavfile

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


def _extensible_pcm24(path, samples, rate):
    """A WAVE_FORMAT_EXTENSIBLE 24-bit PCM file, as ffmpeg writes above 16 bits (Python's wave
    reads it only from 3.12)."""
    ints = np.round(np.clip(samples, -1, 1) * (2**23 - 1)).astype("<i4")
    data = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    pcm_guid = bytes.fromhex("0100000000001000800000aa00389b71")
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, rate, rate * 3, 3, 24, 22, 24, 0x4) + pcm_guid
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    body = b"WAVE" + chunks + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_read_wav_decodes_float_and_extensible_headers(tmp_path):
    samples = np.array([0.0, 0.5, -0.5, 0.25, -1.0])
    wavfile.write(tmp_path / "float.wav", 8000, samples.astype(np.float32))  # torchaudio's default
    _extensible_pcm24(tmp_path / "extensible.wav", samples, 8000)
    for name in ("float.wav", "extensible.wav"):
        decoded, rate = read_wav(tmp_path / name)
        assert rate == 8000
        np.testing.assert_allclose(decoded, samples, atol=1e-4)


def test_a_clip_of_an_unsupported_sample_type_is_named_once(tmp_path):
    root = make_cremad(tmp_path, clips_per_class=2)
    train = CremaDDataModule(root, val_fraction=0.5, image_size=32).split_dataset("train")
    path = root / "AudioWAV" / f"{train.clips[0].clip_id}.wav"
    wavfile.write(path, 8000, np.zeros(800, dtype=np.int64))  # 64-bit PCM
    with pytest.raises(ValueError, match="unsupported sample type int64") as refused:
        train[0]
    assert str(refused.value).count(str(path)) == 1


def test_an_unreadable_clip_is_named(tmp_path):
    root = make_cremad(tmp_path, clips_per_class=2)
    train = CremaDDataModule(root, val_fraction=0.5, image_size=32).split_dataset("train")
    clip = train.clips[0].clip_id
    (root / "AudioWAV" / f"{clip}.wav").write_bytes(b"")  # e.g. a download cut short
    with pytest.raises(ValueError, match=f"cannot read the audio clip .*{clip}\\.wav"):
        train[0]


def test_empty_splits_are_refused(tmp_path):
    root = make_cremad(tmp_path, clips_per_class=2)
    (root / "test.csv").write_text("")
    with pytest.raises(ValueError, match=r"test split file .*test\.csv lists no clips"):
        CremaDDataModule(root, val_fraction=0.5)
    root = make_cremad(tmp_path / "small", clips_per_class=2)
    # 2 training clips per class: a tenth of each rounds to no validation clip at all.
    with pytest.warns(UserWarning, match=r"`val_fraction`=0\.1 .*data\.val_fraction"):
        dm = CremaDDataModule(root, val_fraction=0.1)
    assert len(dm.split_dataset("val")) == 0 and len(dm.split_dataset("train")) == 12


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


def test_ave_split_files_may_start_with_the_annotation_header(tmp_path):
    root = make_ave(tmp_path)
    for name in ("trainSet.txt", "valSet.txt", "testSet.txt"):
        split = root / name
        split.write_text("Category&VideoID&Quality&StartTime&EndTime\n" + split.read_text())
    dm = AVEDataModule(root, image_size=32)
    assert dm.class_names == ("Bark", "Church bell", "Male speech, man speaking")
    assert {s: len(c) for s, c in dm.clips.items()} == {"train": 9, "val": 3, "test": 3}


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


# --- the loader base, the spectrogram cache and the input benchmark ---------------------------


def test_one_loader_base_for_file_and_in_memory_data(cremad_root):
    from pidsched.data import SyntheticDataModule
    from pidsched.data.in_memory import EpochShuffleSampler, MultimodalDataModule

    cremad = CremaDDataModule(cremad_root, batch_size=4)
    synthetic = SyntheticDataModule(num_samples=240, batch_size=4)
    for data in (cremad, synthetic):
        assert isinstance(data, MultimodalDataModule)
        train, val = data.train_dataloader(), data.val_dataloader()
        assert isinstance(train.sampler, EpochShuffleSampler)
        assert not isinstance(val.sampler, EpochShuffleSampler)
        assert not train.pin_memory  # no trainer on a CUDA device: nothing to pin for
    assert CremaDDataModule(cremad_root, pin_memory=True).train_dataloader().pin_memory
    with pytest.raises(TypeError, match="pin_memory"):
        CremaDDataModule(cremad_root, pin_memory="yes")


def test_the_training_order_depends_only_on_seed_and_epoch():
    from pidsched.data.in_memory import EpochShuffleSampler

    data = list(range(50))
    sampler, again = EpochShuffleSampler(data, seed=3), EpochShuffleSampler(data, seed=3)
    orders = []
    for epoch in (0, 1, 2):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    again.set_epoch(2)  # a resumed fit jumps straight to its epoch
    assert list(again) == orders[2]
    assert orders[0] != orders[1] and sorted(orders[0]) == data
    other = EpochShuffleSampler(data, seed=4)
    assert list(other) != orders[0]


class _CountingSpectrogram:
    def __init__(self, monkeypatch):
        import pidsched.data.audiovisual as audiovisual

        self.calls = 0
        original = audiovisual.log_spectrogram

        def counted(*args):
            self.calls += 1
            return original(*args)

        monkeypatch.setattr(audiovisual, "log_spectrogram", counted)


def test_the_spectrogram_cache_computes_once_and_is_exact(cremad_root, tmp_path, monkeypatch):
    counter = _CountingSpectrogram(monkeypatch)
    cache_dir = tmp_path / "cache"
    plain = CremaDDataModule(cremad_root).split_dataset("val")
    cached = CremaDDataModule(cremad_root, cache_dir=cache_dir).split_dataset("val")
    expected = [plain[i][0]["audio"] for i in range(len(plain))]
    counter.calls = 0
    for _epoch in range(3):
        for i in range(len(cached)):
            assert torch.equal(cached[i][0]["audio"], expected[i])
    assert counter.calls == len(cached)  # the first epoch only
    (folder,) = cache_dir.glob("spectrogram-*")
    assert len(list(folder.glob("*.npy"))) == len(cached)


def test_the_cache_is_invalidated_by_settings_and_by_a_changed_wav(
    cremad_root, tmp_path, monkeypatch
):
    import pidsched.data.audiovisual as audiovisual

    root = tmp_path / "cremad"
    shutil.copytree(cremad_root, root)
    cache_dir = tmp_path / "cache"
    counter = _CountingSpectrogram(monkeypatch)
    dataset = CremaDDataModule(root, cache_dir=cache_dir).split_dataset("test")
    first = dataset[0][0]["audio"]
    dataset[0]
    assert counter.calls == 1

    monkeypatch.setattr(audiovisual, "HOP_LENGTH", 2 * audiovisual.HOP_LENGTH)
    changed = CremaDDataModule(root, cache_dir=cache_dir).split_dataset("test")
    assert changed[0][0]["audio"].shape[-1] < first.shape[-1]  # recomputed, new settings
    assert counter.calls == 2 and len(list(cache_dir.glob("spectrogram-*"))) == 2
    monkeypatch.undo()

    counter = _CountingSpectrogram(monkeypatch)
    wav = root / "AudioWAV" / f"{dataset.clips[0].clip_id}.wav"
    write_wav(wav, np.zeros(4000))
    silent = CremaDDataModule(root, cache_dir=cache_dir).split_dataset("test")[0][0]["audio"]
    assert counter.calls == 1 and not torch.equal(silent, first)


@pytest.mark.slow
def test_the_input_benchmark_runs(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "audiovisual_input.py"
    out = tmp_path / "result.json"
    subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert set(result["samples_per_s_per_worker"]) == {
        "audio",
        "audio, cached",
        "frames",
        "sample",
        "sample, cached",
    }
    assert all(rate > 0 for rate in result["samples_per_s_per_worker"].values())
