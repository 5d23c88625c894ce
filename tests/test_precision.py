"""Mixed precision with PIDSchedulerCallback and OGM-GE: bf16 (CPU) and fp16 with a gradient
scaler (Lightning's MixedPrecision plugin with a CPU GradScaler stands in for CUDA here)."""

from __future__ import annotations

import json

import pytest
import torch
from _lightning_helpers import (
    NUM_CLASSES,
    ScriptedController,
    assert_states_equal,
    loaders,
    make_model,
    make_trainer,
    single_thread,  # noqa: F401  (fixture)
)
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from test_cli import run_two_stages
from test_trainer_features import SCRIPT, assert_schedule_applied, fit_scheduled

from pidsched import JointController, PIDSchedulerCallback
from pidsched.callbacks.ogm_ge import OGMGECallback


class ProbedDtypes(Callback):
    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        self.dtypes |= {logits.dtype for logits in outputs["modality_logits"].values()}


def test_bf16_pauses_exactly_and_accumulates_in_float64():
    dtypes = ProbedDtypes()
    callback, recorder, *_ = fit_scheduled(callbacks=[dtypes], precision="bf16-mixed")
    assert dtypes.dtypes == {torch.bfloat16}  # the probe really saw low-precision logits
    assert callback.switch_epoch == 4
    assert_schedule_applied(recorder)
    (metric,) = callback.metric.pair_metrics
    assert metric.joint.dtype == torch.float64
    # Soft counts of the 64 validation samples, summed in float64: the mass is exact.
    assert abs(float(metric.joint.sum()) - 64) < 1e-9
    assert all(abs(record["gap"]) < 1e-4 for record in callback.history)


def test_bf16_resume_equals_the_uninterrupted_fit(tmp_path):
    def run(ckpt_path=None):
        callback = PIDSchedulerCallback(NUM_CLASSES, ScriptedController(SCRIPT))
        saver = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
        model = make_model()
        trainer = make_trainer(
            5, [callback, saver], enable_checkpointing=True, precision="bf16-mixed"
        )
        trainer.fit(model, *loaders(), ckpt_path=ckpt_path)
        return callback, model

    callback, model = run()
    resumed, resumed_model = run(tmp_path / "epoch=1.ckpt")
    assert resumed.history == callback.history and resumed.switch_epoch == 4
    assert_states_equal(resumed_model.state_dict(), model.state_dict())


class GradientSpy(Callback):
    """The encoders' gradients as the hook sees them, per optimiser step (and, given the OGM-GE
    callback that ran before, its coefficients of that step)."""

    def __init__(self, ogm: OGMGECallback | None = None) -> None:
        self.ogm = ogm
        self.steps: list[dict[str, torch.Tensor]] = []
        self.coefficients: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append(
            {
                name: torch.cat([p.grad.flatten().clone() for p in encoder.parameters()])
                for name, encoder in pl_module.encoders.items()
            }
        )
        if self.ogm is not None:
            self.coefficients.append(dict(self.ogm.last_coefficients))


def _joint_fit(callbacks, **trainer_kwargs):
    schedule = PIDSchedulerCallback(NUM_CLASSES, JointController())
    trainer = make_trainer(1, [schedule, *callbacks], **trainer_kwargs)
    trainer.fit(make_model(), *loaders(signal={"a": 3.0, "b": 0.5}))


@pytest.mark.parametrize("noise", [False, True], ids=["OGM", "OGM-GE"])
def test_ogm_ge_modulates_unscaled_gradients_under_a_grad_scaler(noise):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    ogm = OGMGECallback(alpha=0.5, noise=noise)
    before, after = GradientSpy(), GradientSpy(ogm)
    _joint_fit([before, ogm, after], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    reference = GradientSpy()
    _joint_fit([reference])

    # What OGM-GE sees is the true gradient (fp16 rounding apart), not 2^14 times it.
    ratio = before.steps[0]["a"].norm() / reference.steps[0]["a"].norm()
    assert 0.5 < float(ratio) < 2.0
    # Some modality led and was slowed down (the case where scaling matters).
    assert any(float(k) < 1 for step in after.coefficients for k in step.values())
    for grads, modulated, coefficients in zip(
        before.steps, after.steps, after.coefficients, strict=True
    ):
        for name, k in coefficients.items():
            scaled = grads[name] * k.to(grads[name].dtype)
            if noise:
                added = modulated[name] - scaled
                assert 0.3 < float(added.std() / grads[name].std()) < 3.0
            else:
                assert torch.equal(modulated[name], scaled)


@pytest.mark.slow
def test_the_app_trains_in_bf16(tmp_path):
    summary = run_two_stages(tmp_path, "trainer.precision=bf16-mixed")
    assert summary["switch_epoch"] == 1 and summary["selected_epoch"] in (1, 2)
    assert summary["test_acc"]["fused"] > 0.3
    assert "precision: bf16-mixed" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_cuda_mixed_precision_pauses_exactly(precision):
    callback, recorder, *_ = fit_scheduled(
        accelerator="gpu", precision=precision, deterministic=False
    )
    assert callback.switch_epoch == 4
    assert_schedule_applied(recorder)


def _gpu_check():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_fails_clearly_without_cuda(monkeypatch, capsys, tmp_path):
    gpu_check = _gpu_check()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--json", str(tmp_path / "x.json")]) == gpu_check.NO_CUDA_EXIT
    message = capsys.readouterr().err
    assert "no CUDA device" in message and "--cpu-smoke" in message
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_gpu_check_reports_the_issue_cuda_goals_it_measured():
    gpu_check = _gpu_check()
    assert (101, 1) in [(k, 1) for k in gpu_check.FULL.single]
    assert (20, 4096) in gpu_check.FULL.batched
    rows = [
        {"size": "20x20x20", "batch": 4096, "seconds": 0.4},
        {"size": "101x101x101", "batch": 1, "seconds": 1.7},
        {"size": "10x10x10", "batch": 1, "seconds": 0.01},
    ]
    lines = gpu_check.cuda_goal_lines(rows)
    assert lines[1].endswith("0.400 s, met") and "20x20x20, batch 4096" in lines[1]
    assert lines[2].endswith("1.700 s, NOT met") and "101x101x101, batch 1" in lines[2]
    assert len(lines) == 3
    assert gpu_check.cuda_goal_lines(rows[2:]) == []


def test_gpu_check_cpu_smoke_runs_every_part(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, str(script), "--cpu-smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [row["batch"] for row in report["solver"]] == [1, 8]
    assert all(row["max_error_vs_cpu_bits"] < 1e-6 for row in report["solver"])
    assert report["metric"]["joint_dtype"] == "torch.float64"
    assert set(report["fit"]["median_steps_per_s"]) == {"plain", "probed"}
    assert all(rate > 0 for rate in report["fit"]["median_steps_per_s"].values())
    assert "Probe overhead" in result.stdout and "## Solver on the device" in result.stdout
