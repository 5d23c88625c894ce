"""One command that checks pidsched on a GPU: ``python benchmarks/gpu_check.py``.

Runs, on the first CUDA device, in at most ~8 minutes on one GPU:

1. the CUDA tests of the suite (``pytest -k cuda``: solver, discretisation, metric, mixed
   precision), which skip on a machine without CUDA;
2. the solver's CUDA column: single solves at 10^3, 20^3, 50^3 and 101^3 and batches of 256
   and 4,096 at 10^3 and 20^3 (256 at 50^3), the median time over repeats after a warm-up, with
   the largest atom difference against the CPU solve of the same distributions (of at most the
   first 64 of a batch) and the largest certified gap; then the verdict on issue 10's CUDA goals
   (a batch of 4,096 at 20^3 and a single 101^3, each under 1 s);
3. the metric (``FastPID``, soft, K = 6) on CUDA: ``update`` on 4,096 logits and ``compute``,
   timed, and the atoms' difference against the same metric on the CPU;
4. a short ResNet-18 audio-visual fit on fabricated CREMA-D-shaped tensors (spectrograms
   ``(1, 257, 188)``, one 224x224 frame, 6 classes; ``trainer=gpu`` with ``bf16-mixed``)
   reporting training steps per second without and with ``PIDSchedulerCallback`` probing after
   every epoch: the probe overhead on a GPU (goal: at most 3 %). Epoch 0 is warm-up; the arms
   alternate; steps/s counts each epoch's wall time including validation and the probe;
5. the same fit compiled (``trainer.fit(torch.compile(model))``, inductor) against eager: the
   median steady-state step time and the graphs compiled after the warm-up epochs (0 expected).

It prints a Markdown report and writes the numbers as JSON (``--json``, default
``gpu_check.json``). Without CUDA it exits with code 2 and says so; ``--cpu-smoke`` runs every
path at tiny sizes on the CPU instead (what the test suite does), the fit in float32.

    python benchmarks/gpu_check.py                    # on a GPU machine
    python benchmarks/gpu_check.py --precision 16-mixed --json /tmp/gpu.json
    python benchmarks/gpu_check.py --cpu-smoke        # tiny sizes, CPU: about 15 s
    python benchmarks/gpu_check.py --compile-cpu      # only 5., on the CPU (MLP encoders)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
NO_CUDA_EXIT = 2


@dataclass(frozen=True)
class Sizes:
    """What one check run measures."""

    single: tuple[int, ...]
    batched: tuple[tuple[int, int], ...]  # (K, batch)
    repeats: int
    metric_samples: int
    fit_train: int
    fit_val: int
    fit_batch: int
    fit_epochs: int
    fit_repeats: int
    audio_shape: tuple[int, ...]
    visual_shape: tuple[int, ...]


FULL = Sizes(
    single=(10, 20, 50, 101),
    batched=((10, 256), (10, 4096), (20, 256), (20, 4096), (50, 256)),
    repeats=3,
    metric_samples=4096,
    fit_train=1536,
    fit_val=512,
    fit_batch=64,
    fit_epochs=4,
    fit_repeats=2,
    audio_shape=(1, 257, 188),
    visual_shape=(1, 3, 224, 224),
)
SMOKE = Sizes(
    single=(4,),
    batched=((4, 8),),
    repeats=1,
    metric_samples=256,
    fit_train=32,
    fit_val=16,
    fit_batch=8,
    fit_epochs=2,
    fit_repeats=1,
    audio_shape=(1, 33, 24),
    visual_shape=(1, 3, 32, 32),
)
NUM_CLASSES = 6
# Issue 10's CUDA goals: (size, batch) solved in under this many seconds.
CUDA_GOALS = {("20x20x20", 4096): 1.0, ("101x101x101", 1): 1.0}
CPU_REFERENCE_ROWS = 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(function, device: torch.device, repeats: int) -> float:
    function()  # warm-up: kernels, caches
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_cuda_tests(smoke: bool) -> dict:
    """The suite's CUDA tests (``-k cuda``) in a subprocess: counts and the summary line."""
    if smoke:
        return {"skipped": "--cpu-smoke: no CUDA device"}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-k", "cuda", "-p", "no:cacheprovider"]
    files = ["tests/test_pid.py", "tests/test_discretize.py", "tests/test_metric.py"]
    files.append("tests/test_precision.py")
    result = subprocess.run(
        [*command, *files], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return {"returncode": result.returncode, "summary": lines[-1] if lines else result.stderr}


def _atoms(result) -> torch.Tensor:
    return torch.stack(
        [result.unique_1, result.unique_2, result.redundancy, result.synergy]
    ).double()


def solver_column(device: torch.device, sizes: Sizes) -> list[dict]:
    """Times of ``pid`` on ``device`` and its atoms' difference against the CPU (bits)."""
    from pidsched.functional import pid

    generator = torch.Generator().manual_seed(0)
    rows = []
    cases = [(k, 1) for k in sizes.single] + list(sizes.batched)
    for k, batch in cases:
        shape = (k, k, k) if batch == 1 else (batch, k, k, k)
        joint = torch.rand(shape, generator=generator, dtype=torch.float64) ** 3
        on_device = joint.to(device)
        result = pid(on_device)
        seconds = _median_seconds(lambda on_device=on_device: pid(on_device), device, sizes.repeats)
        rows_checked = joint if batch == 1 else joint[:CPU_REFERENCE_ROWS]
        reference = pid(rows_checked)
        checked = result if batch == 1 else _first_rows(result, CPU_REFERENCE_ROWS)
        error = (_atoms(checked).cpu() - _atoms(reference)).abs().max()
        rows.append(
            {
                "size": f"{k}x{k}x{k}",
                "batch": batch,
                "seconds": seconds,
                "per_solve_ms": 1e3 * seconds / batch,
                "max_error_vs_cpu_bits": float(error),
                "max_gap_bits": float(result.gap.max()),
            }
        )
    return rows


def _first_rows(result, count: int):
    from dataclasses import fields, replace

    trimmed = {
        field.name: getattr(result, field.name)[:count]
        for field in fields(result)
        if isinstance(getattr(result, field.name), torch.Tensor)
        and getattr(result, field.name).dim() > 0
    }
    return replace(result, **trimmed)


def metric_check(device: torch.device, sizes: Sizes) -> dict:
    """FastPID update and compute on ``device``, against the same data on the CPU."""
    from pidsched import FastPID

    generator = torch.Generator().manual_seed(1)
    n = sizes.metric_samples
    target = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    logits_1 = torch.randn(n, NUM_CLASSES, generator=generator) + 2 * torch.nn.functional.one_hot(
        target, NUM_CLASSES
    )
    logits_2 = torch.randn(n, NUM_CLASSES, generator=generator)
    results, timings = {}, {}
    for where in ("cpu", device.type):
        where_device = torch.device("cpu") if where == "cpu" else device
        metric = FastPID(NUM_CLASSES).to(where_device)
        inputs = [t.to(where_device) for t in (logits_1, logits_2, target)]
        updates, computes = [], []
        # Each repeat is one probe: reset, one update, one compute (warm-started after the
        # first, as the callback's probes are); the first repeat is warm-up.
        for _ in range(sizes.repeats + 1):
            metric.reset()
            _sync(where_device)
            start = time.perf_counter()
            metric.update(*inputs)
            _sync(where_device)
            middle = time.perf_counter()
            results[where] = metric.compute()
            _sync(where_device)
            updates.append(middle - start)
            computes.append(time.perf_counter() - middle)
        timings[where] = {
            "update_ms": 1e3 * statistics.median(updates[1:]),
            "compute_ms": 1e3 * statistics.median(computes[1:]),
        }
    error = (_atoms(results[device.type]).cpu() - _atoms(results["cpu"])).abs().max()
    return {
        "samples": n,
        "timings": timings,
        "max_error_vs_cpu_bits": float(error),
        "joint_dtype": str(results[device.type].synergy.dtype),
    }


def fabricated_loaders(sizes: Sizes, pin_memory: bool):
    """CREMA-D-shaped in-memory tensors: a label-dependent tone-like spectrogram and frame."""
    from torch.utils.data import DataLoader

    from pidsched.data.in_memory import MultimodalTensorDataset

    generator = torch.Generator().manual_seed(2)

    def split(n: int) -> MultimodalTensorDataset:
        target = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
        audio = torch.randn((n, *sizes.audio_shape), generator=generator)
        audio[:, :, : NUM_CLASSES * 4] += target.view(-1, 1, 1, 1).float()
        visual = torch.randn((n, *sizes.visual_shape), generator=generator)
        visual[:, :, 0] += 0.2 * target.view(-1, 1, 1, 1).float()
        return MultimodalTensorDataset({"audio": audio, "visual": visual}, target)

    train, val = split(sizes.fit_train), split(sizes.fit_val)
    options = {"batch_size": sizes.fit_batch, "pin_memory": pin_memory}
    return (
        DataLoader(train, shuffle=True, drop_last=True, **options),
        DataLoader(val, **options),
    )


def _fit_rate(arm: str, device: torch.device, sizes: Sizes, precision: str, loaders) -> float:
    """Training steps per second of epochs 1.. (wall time incl. validation and the probe)."""
    import lightning as L
    from lightning.pytorch import Callback

    from pidsched import JointController, MultimodalClassifier, PIDSchedulerCallback
    from pidsched.models.encoders import ResNet18Encoder

    class EpochClock(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module):
            _sync(device)
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):  # after validation and the probe
            _sync(device)
            self.seconds.append(time.perf_counter() - self.start)

    L.seed_everything(0, verbose=False)
    encoders = {
        "audio": ResNet18Encoder(in_channels=1, output_dim=64),
        "visual": ResNet18Encoder(in_channels=3, output_dim=64),
    }
    model = MultimodalClassifier(encoders, {"audio": 64, "visual": 64}, NUM_CLASSES)
    model.set_training_stage("joint", frozenset())
    clock = EpochClock()
    callbacks = [clock]
    if arm == "probed":
        callbacks.insert(0, PIDSchedulerCallback(NUM_CLASSES, JointController(measure=True)))
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=sizes.fit_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    trainer.fit(model, *loaders)
    steps = len(loaders[0])
    timed = clock.seconds[1:] or clock.seconds
    return steps / statistics.median(timed)


def fit_check(device: torch.device, sizes: Sizes, precision: str) -> dict:
    """Steps/s of the ResNet-18 fit without (``plain``) and with (``probed``) the callback."""
    loaders = fabricated_loaders(sizes, pin_memory=device.type == "cuda")
    rates: dict[str, list[float]] = {"plain": [], "probed": []}
    for _ in range(sizes.fit_repeats):
        for arm in rates:
            rates[arm].append(_fit_rate(arm, device, sizes, precision, loaders))
    plain, probed = (statistics.median(rates[arm]) for arm in ("plain", "probed"))
    return {
        "precision": precision,
        "train_samples": sizes.fit_train,
        "val_samples": sizes.fit_val,
        "batch_size": sizes.fit_batch,
        "epochs": sizes.fit_epochs,
        "steps_per_s": rates,
        "median_steps_per_s": {"plain": plain, "probed": probed},
        "probe_overhead_percent": 100.0 * (plain / probed - 1.0),
    }


def _vector_loaders(batch: int):
    """In-memory loaders of the default experiment's shape (two 32-d modalities, 8 classes)."""
    from torch.utils.data import DataLoader

    from pidsched.data.in_memory import MultimodalTensorDataset

    generator = torch.Generator().manual_seed(3)

    def split(n: int) -> MultimodalTensorDataset:
        target = torch.randint(0, 8, (n,), generator=generator)
        inputs = {
            name: torch.randn(n, 32, generator=generator)
            + torch.nn.functional.pad(torch.nn.functional.one_hot(target, 8).float(), (0, 24))
            for name in ("a", "b")
        }
        return MultimodalTensorDataset(inputs, target)

    return (
        DataLoader(split(64 * batch), batch_size=batch, shuffle=True, drop_last=True),
        DataLoader(split(8 * batch), batch_size=batch),
    )


def compile_check(device: torch.device, backend: str, model_kind: str, epochs: int) -> dict:
    """Steady-state training step time of ``trainer.fit(torch.compile(model))`` against eager.

    The same model and data are fitted eagerly and compiled (``backend``) with
    ``PIDSchedulerCallback`` probing every epoch; a step's time is the median over steps of the
    epochs after the first two (compilation happens in epoch 0 and its validation). Graphs
    compiled after that (none expected) are counted too.
    """
    import lightning as L
    from lightning.pytorch import Callback
    from torch._dynamo.utils import counters

    from pidsched import JointController, MultimodalClassifier, PIDSchedulerCallback
    from pidsched.models.encoders import MLPEncoder, ResNet18Encoder

    class StepClock(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.graphs_after_warmup = 0

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                self.graphs_after_warmup = -counters["stats"]["unique_graphs"]

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            _sync(device)
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            if trainer.current_epoch >= 2:
                self.seconds.append(time.perf_counter() - self.start)

        def on_train_end(self, trainer, pl_module):
            self.graphs_after_warmup += counters["stats"]["unique_graphs"]

    if model_kind == "resnet":
        loaders = fabricated_loaders(FULL, pin_memory=device.type == "cuda")
    else:
        loaders = _vector_loaders(batch=64)
    results = {}
    for arm in ("eager", "compiled"):
        torch._dynamo.reset()
        L.seed_everything(0, verbose=False)
        if model_kind == "resnet":
            encoders = {
                "audio": ResNet18Encoder(in_channels=1, output_dim=64),
                "visual": ResNet18Encoder(in_channels=3, output_dim=64),
            }
            num_classes = NUM_CLASSES
        else:
            encoders = {name: MLPEncoder(32, hidden_dims=(64,), output_dim=32) for name in "ab"}
            num_classes = 8
        dims = {name: encoder.output_dim for name, encoder in encoders.items()}
        model = MultimodalClassifier(encoders, dims, num_classes)
        model.set_training_stage("joint", frozenset())
        clock = StepClock()
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[PIDSchedulerCallback(num_classes, JointController(measure=True)), clock],
        )
        fitted = model if arm == "eager" else torch.compile(model, backend=backend)
        trainer.fit(fitted, *loaders)
        results[arm] = {
            "median_step_ms": 1e3 * statistics.median(clock.seconds),
            "steps_timed": len(clock.seconds),
            "graphs_after_warmup": clock.graphs_after_warmup if arm == "compiled" else None,
        }
    results["speedup"] = results["eager"]["median_step_ms"] / results["compiled"]["median_step_ms"]
    results["backend"], results["model"] = backend, model_kind
    return results


def compile_markdown(result: dict) -> str:
    eager, compiled = result["eager"], result["compiled"]
    return "\n".join(
        [
            f"## torch.compile ({result['backend']}, {result['model']} encoders)",
            "",
            "| arm | median step (ms) | steps timed | graphs compiled after warm-up |",
            "|---|---|---|---|",
            f"| eager | {eager['median_step_ms']:.2f} | {eager['steps_timed']} | - |",
            f"| compiled | {compiled['median_step_ms']:.2f} | {compiled['steps_timed']} | "
            f"{compiled['graphs_after_warmup']} |",
            "",
            f"Compiled / eager speed-up: x{result['speedup']:.2f}.",
        ]
    )


def cuda_goal_lines(rows: list[dict]) -> list[str]:
    """Markdown lines with the verdict on each of ``CUDA_GOALS`` that ``rows`` (the solver
    column) measured; none where it measured none (``--cpu-smoke``)."""
    lines = []
    for row in rows:
        limit = CUDA_GOALS.get((row["size"], row["batch"]))
        if limit is not None:
            verdict = "met" if row["seconds"] < limit else "NOT met"
            lines.append(
                f"- goal: {row['size']}, batch {row['batch']}, under {limit:g} s: "
                f"{row['seconds']:.3f} s, {verdict}"
            )
    return ["", *lines] if lines else []


def markdown(report: dict) -> str:
    lines = [f"# pidsched GPU check ({report['device_name']})", ""]
    lines += [f"torch {report['torch']}, CUDA {report['cuda']}, {report['mode']}", ""]
    tests = report["cuda_tests"]
    lines += ["## CUDA tests", "", tests.get("summary", tests.get("skipped", "")), ""]
    lines += [
        "## Solver on the device",
        "",
        "| size | batch | time (s) | per solve (ms) | max error vs CPU (bits) | max gap (bits) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['size']} | {r['batch']} | {r['seconds']:.4f} | {r['per_solve_ms']:.3f} | "
        f"{r['max_error_vs_cpu_bits']:.1e} | {r['max_gap_bits']:.1e} |"
        for r in report["solver"]
    ]
    lines += cuda_goal_lines(report["solver"])
    metric = report["metric"]
    device_type = report["device_type"]
    lines += [
        "",
        "## Metric (FastPID, K = 6)",
        "",
        f"{metric['samples']} samples; update {metric['timings'][device_type]['update_ms']:.2f} ms "
        f"(CPU {metric['timings']['cpu']['update_ms']:.2f} ms), compute "
        f"{metric['timings'][device_type]['compute_ms']:.1f} ms "
        f"(CPU {metric['timings']['cpu']['compute_ms']:.1f} ms); max error vs CPU "
        f"{metric['max_error_vs_cpu_bits']:.1e} bits; atoms in {metric['joint_dtype']}.",
    ]
    fit = report["fit"]
    rates = fit["median_steps_per_s"]
    lines += [
        "",
        f"## ResNet-18 audio-visual fit ({fit['precision']})",
        "",
        f"{fit['train_samples']} train / {fit['val_samples']} val samples, batch "
        f"{fit['batch_size']}, {fit['epochs']} epochs (epoch 0 is warm-up), median over "
        f"{len(fit['steps_per_s']['plain'])} alternating repeat(s).",
        "",
        "| arm | steps/s |",
        "|---|---|",
        f"| without PIDSchedulerCallback | {rates['plain']:.2f} |",
        f"| with PIDSchedulerCallback (probe every epoch) | {rates['probed']:.2f} |",
        "",
        f"Probe overhead: {fit['probe_overhead_percent']:.1f} % (goal: at most 3 %).",
        "",
        compile_markdown(report["compile"]),
        "",
        f"Total: {report['seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--precision", default="bf16-mixed", help="bf16-mixed or 16-mixed")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument(
        "--compile-cpu",
        action="store_true",
        help="only the torch.compile comparison, on the CPU with inductor and MLP encoders",
    )
    args = parser.parse_args(argv)
    if args.compile_cpu:
        torch.set_num_threads(1)
        result = compile_check(torch.device("cpu"), "inductor", "mlp", epochs=6)
        print(compile_markdown(result))
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    if args.cpu_smoke:
        device, sizes, mode = torch.device("cpu"), SMOKE, "--cpu-smoke (tiny sizes, CPU)"
        # bf16 autocast is emulated on CPUs without bf16 instructions (one ResNet-18 step on 8
        # 3x32x32 images: 3.2 s against 0.1 s in float32; the smoke took 128 s for it). The
        # callback under bf16 is tested in tests/test_precision.py; here the fit's code runs.
        precision = "32-true"
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device is visible to torch "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); run it on a "
            "GPU machine, or use --cpu-smoke to exercise its code paths on the CPU.",
            file=sys.stderr,
        )
        return NO_CUDA_EXIT
    else:
        device, sizes, mode, precision = torch.device("cuda", 0), FULL, "full", args.precision
    start = time.perf_counter()
    report = {
        "mode": mode,
        "device_type": device.type,
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else (platform.processor() or "CPU")
        ),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_tests": run_cuda_tests(args.cpu_smoke),
        "solver": solver_column(device, sizes),
        "metric": metric_check(device, sizes),
        "fit": fit_check(device, sizes, precision),
        "compile": (
            compile_check(device, "eager", "mlp", epochs=3)
            if args.cpu_smoke
            else compile_check(device, "inductor", "resnet", epochs=4)
        ),
    }
    report["seconds"] = time.perf_counter() - start
    print(markdown(report))
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed_tests = report["cuda_tests"].get("returncode", 0) != 0
    return 1 if failed_tests else 0


if __name__ == "__main__":
    sys.exit(main())
