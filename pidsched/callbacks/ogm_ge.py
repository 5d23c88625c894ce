r"""``OGMGECallback``: on-the-fly gradient modulation with generalisation enhancement (OGM-GE).

A baseline for the schedule comparison: Peng, Wei, Deng, Wang, Hu, "Balanced Multimodal Learning
via On-the-fly Gradient Modulation", CVPR 2022. It implements the authors' released training
script (``main.py`` of github.com/GeWu-Lab/OGM-GE_CVPR2022, ``train_epoch``) on a
:class:`~pidsched.MultimodalClassifier` trained jointly from the first epoch
(``schedule=ogm_ge``, which is ``schedule=joint`` plus this callback). At every optimiser step:

1. each modality's contribution to the fused logits, ``c_m = modality_contributions(z)_m``
   (``(N, K)``; for concat fusion the fused layer's weight columns of modality m plus the bias
   over M - half of it for two, as released), is computed from the features ``z_m`` of the
   step's own forward pass;
2. its score is the summed softmax probability of the true class, ``s_m = sum_i
   softmax(c_m)[i, y_i]``;
3. the discrepancy ratio is ``rho_m = s_m / mean_{n != m} s_n`` (``s_a / s_v`` for two);
4. the coefficient is ``k_m = 1 - tanh(alpha * rho_m)`` if ``rho_m > 1``, else 1 (paper Eq. 10);
5. every gradient ``g`` of encoder m becomes ``k_m * g + noise`` with ``noise ~ N(0, (std(g) +
   1e-8)^2)``, ``std(g)`` the standard deviation of the unmodulated gradient's entries (the
   generalisation enhancement, "GE"; ``noise=False`` gives plain OGM). The noise goes to every
   encoder, the one with ``k_m = 1`` included, as released.

This happens only in epochs ``modulation_starts <= epoch <= modulation_ends`` (counted from 0,
both ends included); outside that window gradients are left exactly as they are.

Choices, where the released code leaves room or where we differ from it, and why:

- The coefficient is ``1 - tanh(alpha * rho)``, not ``1 - tanh(alpha * (rho - 1))``: both the
  paper's Eq. 10 and the code use the ratio itself, so it jumps from 1 to ``1 - tanh(alpha)``
  as ``rho`` passes 1. Kept as released.
- ``alpha`` has no default. The README's "default modulation setting" is ``alpha=0.1``,
  ``modulation_starts=0``, ``modulation_ends=50`` (of 100 epochs) with concat fusion, and it
  recommends ``alpha=0.1`` for VGGSound and ``alpha=0.8`` for CREMA-D; it gives no value for
  AVE or Kinetics-Sounds. ``conf/schedule/ogm_ge.yaml`` uses 0.1; pass 0.8 for CREMA-D.
- The window follows the current script, ``modulation_starts <= epoch <= modulation_ends``
  (marked "bug fixed" there; an earlier version's test could never be true, so it modulated
  every epoch). Nothing at all happens outside it, noise included, as in the current script.
- Every parameter of the encoder is modulated. The released code touches only 4-d tensors (the
  ResNet's convolution kernels, not BatchNorm or biases); the vector encoders of the CPU
  experiments have no such tensors, so that rule would switch the method off there. Heads and
  the fusion layer are never touched, as released.
- A tie (``rho = 1``) modulates nobody; the released code then modulated the audio encoder.
- More than two modalities (our generalisation): each modality is compared with the mean score
  of the others, and every modality with ``rho_m > 1`` is modulated.
- Mixed precision: the scores come from the contributions computed in the step's autocast
  region (softmax in float32), and the gradients are modulated in ``on_before_optimizer_step``,
  after a gradient scaler (``precision="16-mixed"``) has unscaled them, so ``std(g)`` and the
  noise are those of the true gradient, not of the scaled one.
- Scores are summed over the micro-batches of an accumulated step and over DDP ranks, and the
  noise comes from a generator seeded by ``(seed, global_step)``, so every rank applies the same
  coefficients and the same noise to its (already all-reduced) gradients and the replicas stay
  identical; the released code ran one process (DataParallel).
- The released code trains with the fused cross-entropy only; ``schedule=ogm_ge`` therefore sets
  ``model.unimodal_weight=0``. The callback itself works with any joint loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from pidsched._checks import check_int_at_least
from pidsched.callbacks.pid_scheduler import PIDSchedulerCallback
from pidsched.stages import STAGE_JOINT

__all__ = ["OGMGECallback", "discrepancy_ratios", "modulation_coefficients"]

# Added to the gradient's standard deviation, as released: a zero gradient still gets noise.
_NOISE_STD_OFFSET = 1e-8
# Scores are sums of probabilities; a floor keeps ratios finite when one underflows to 0.
_SCORE_FLOOR = 1e-12


def discrepancy_ratios(scores: Tensor) -> Tensor:
    """Each modality's score over the mean score of the others.

    Args:
        scores: ``(M,)`` summed true-class softmax scores, M >= 2.

    Returns:
        ``(M,)`` ratios ``rho_m = s_m / mean_{n != m} s_n``.
    """
    others = (scores.sum() - scores) / (scores.numel() - 1)
    return scores / others.clamp_min(_SCORE_FLOOR)


def modulation_coefficients(ratios: Tensor, alpha: float) -> Tensor:
    """OGM's gradient coefficients (paper Eq. 10): ``1 - tanh(alpha * rho)`` where ``rho > 1``.

    Args:
        ratios: ``(M,)`` discrepancy ratios.
        alpha: modulation strength, > 0.

    Returns:
        ``(M,)`` coefficients in (0, 1]; 1 for every modality that does not lead.
    """
    return torch.where(ratios > 1, 1 - torch.tanh(alpha * ratios), torch.ones_like(ratios))


def true_class_score(logits: Tensor, target: Tensor) -> Tensor:
    """Summed softmax probability of the true class: ``(N, K)`` logits, ``(N,)`` target -> 0-d."""
    probabilities = logits.float().softmax(dim=-1)
    return probabilities.gather(1, target.long().unsqueeze(1)).sum()


def modulate_gradients(
    encoder: nn.Module, coefficient: Tensor, generator: torch.Generator | None
) -> None:
    """Scale every gradient of ``encoder`` by ``coefficient``; with a generator, add noise.

    The noise of each parameter is Gaussian with the standard deviation of that parameter's
    unmodulated gradient (+ 1e-8), drawn from ``generator`` in parameter order.
    """
    for parameter in encoder.parameters():
        grad = parameter.grad
        if grad is None:
            continue
        std = grad.std() if grad.numel() > 1 else torch.zeros((), device=grad.device)
        grad.mul_(coefficient.to(grad.dtype))
        if generator is not None:
            noise = torch.randn(
                grad.shape, generator=generator, device=grad.device, dtype=grad.dtype
            )
            grad.add_(noise * (std + _NOISE_STD_OFFSET))


class OGMGECallback(Callback):
    """OGM-GE: slow down the leading modality's encoder, add matched gradient noise.

    Per optimiser step it compares the modalities' contributions to the fused prediction on the
    training batch and scales the gradients of the leading encoder by ``1 - tanh(alpha * rho)``;
    with ``noise=True`` it adds Gaussian noise of the gradient's own standard deviation to every
    encoder's gradients. The module docstring gives the exact rule and where it differs from the
    released code.

    The module needs ``modality_names``, ``encoders`` (an ``nn.ModuleDict``; each encoder returns
    a ``(N, D_m)`` tensor) and ``modality_contributions(features) -> {m: (N, K)}``, as
    :class:`~pidsched.MultimodalClassifier` with concat or sum fusion has; training batches are
    ``(inputs, target)``. The features are captured by forward hooks on the encoders during the
    training step, so nothing runs twice. Use it with joint training (``JointController``). Next
    to a two-stage :class:`~pidsched.PIDSchedulerCallback` it modulates only the joint stage:
    stage 1 trains no fusion head, so contributions computed from it mean nothing (and a paused
    encoder must not be touched).

    Logged per epoch (mean over steps): ``ogm_ge/ratio_<m>`` and ``ogm_ge/coefficient_<m>``.

    Args:
        alpha: modulation strength, > 0 (0.1 in the paper's default setting, 0.8 for CREMA-D).
        modulation_starts: first modulated epoch (from 0).
        modulation_ends: last modulated epoch (included); None modulates to the end of training.
        noise: add the matched Gaussian noise (OGM-GE); False gives plain OGM.
        seed: seed of the noise; the noise of a step depends only on ``seed`` and
            ``trainer.global_step``, so resumed runs and all DDP ranks draw the same.

    Raises:
        ValueError: an argument is out of range.
        TypeError: an argument has the wrong type, or (at fit start) the module lacks what the
            callback needs; at the first training step, a fusion head without per-modality
            contributions (``MultimodalClassifier`` with FiLM or gated fusion).

    Example::

        >>> from pidsched import JointController, PIDSchedulerCallback
        >>> callbacks = [
        ...     PIDSchedulerCallback(num_classes=6, controller=JointController()),
        ...     OGMGECallback(alpha=0.8, modulation_ends=50),
        ... ]
        >>> callbacks[1].last_coefficients is None
        True
    """

    def __init__(
        self,
        alpha: float,
        modulation_starts: int = 0,
        modulation_ends: int | None = 50,
        noise: bool = True,
        seed: int = 0,
    ) -> None:
        _check_arguments(alpha, modulation_starts, modulation_ends, noise, seed)
        self.alpha = float(alpha)
        self.modulation_starts = modulation_starts
        self.modulation_ends = modulation_ends
        self.noise = noise
        self.seed = seed
        self.last_ratios: dict[str, Tensor] | None = None
        self.last_coefficients: dict[str, Tensor] | None = None

        self._names: tuple[str, ...] = ()
        self._hooks: list[RemovableHandle] = []
        self._features: dict[str, Tensor] = {}
        self._target: Tensor | None = None
        self._scores: Tensor | None = None
        self._num_samples = 0
        self._schedule: PIDSchedulerCallback | None = None

    def in_window(self, epoch: int) -> bool:
        """Whether gradients of ``epoch`` (counted from 0) are modulated."""
        ends = self.modulation_ends
        return self.modulation_starts <= epoch and (ends is None or epoch <= ends)

    # --- setup: capture the encoders' features of each training forward ---------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        _check_module(pl_module)
        schedules = [c for c in trainer.callbacks if isinstance(c, PIDSchedulerCallback)]
        self._schedule = schedules[0] if schedules else None
        self._names = tuple(pl_module.modality_names)
        self._hooks = [
            pl_module.encoders[name].register_forward_hook(self._feature_hook(name))
            for name in self._names
        ]

    def _feature_hook(self, name: str) -> Any:
        def capture(module: nn.Module, inputs: Any, output: Tensor) -> None:
            self._features[name] = output.detach()

        return capture

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._features = {}

    # --- per step: scores after each backward, modulation before the optimiser step ----------

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._features = {}
        self._target = batch[1]

    @override
    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.in_window(trainer.current_epoch) or set(self._features) != set(self._names):
            return
        # The schedule's stage is that of the epoch being trained (decisions apply at the next).
        if self._schedule is not None and self._schedule.stage != STAGE_JOINT:
            return
        # The features come from the step's autocast region (bf16/fp16 under mixed precision):
        # the contributions are computed in that same region, as the fused head computed them.
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            contributions = pl_module.modality_contributions(self._features)
            scores = torch.stack(
                [true_class_score(contributions[name], self._target) for name in self._names]
            )
        self._scores = scores if self._scores is None else self._scores + scores
        self._num_samples += int(self._target.shape[0])

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._scores is None:
            return
        # Every rank sums the same global scores, so all apply the same coefficients.
        scores = trainer.strategy.reduce(self._scores, reduce_op="sum")
        ratios = discrepancy_ratios(scores)
        coefficients = modulation_coefficients(ratios, self.alpha)
        generator = self._noise_generator(trainer, pl_module.device) if self.noise else None
        for name, coefficient in zip(self._names, coefficients, strict=True):
            modulate_gradients(pl_module.encoders[name], coefficient, generator)

        self.last_ratios = dict(zip(self._names, ratios, strict=True))
        self.last_coefficients = dict(zip(self._names, coefficients, strict=True))
        values = {f"ogm_ge/ratio_{name}": ratio for name, ratio in self.last_ratios.items()}
        values.update(
            {f"ogm_ge/coefficient_{name}": k for name, k in self.last_coefficients.items()}
        )
        pl_module.log_dict(values, on_step=False, on_epoch=True, batch_size=self._num_samples)
        self._scores = None
        self._num_samples = 0

    def _noise_generator(self, trainer: Trainer, device: torch.device) -> torch.Generator:
        # One well-mixed stream per (seed, step); the CPU generator uses only 32 seed bits, so
        # the pair is hashed rather than packed into one int.
        (step_seed,) = np.random.SeedSequence((self.seed, trainer.global_step)).generate_state(1)
        return torch.Generator(device=device).manual_seed(int(step_seed))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_arguments(
    alpha: Any, modulation_starts: Any, modulation_ends: Any, noise: Any, seed: Any
) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"`alpha` must be a float > 0, e.g. 0.1, got {alpha!r}.")
    if not alpha > 0:
        raise ValueError(f"`alpha` must be > 0 (0.1 in the paper's default), got {alpha!r}.")
    if not _is_int(modulation_starts) or modulation_starts < 0:
        raise ValueError(
            f"`modulation_starts` must be an epoch index >= 0, got {modulation_starts!r}."
        )
    if modulation_ends is not None and (
        not _is_int(modulation_ends) or modulation_ends < modulation_starts
    ):
        raise ValueError(
            f"`modulation_ends` must be an epoch index >= modulation_starts "
            f"({modulation_starts}) or None (to the end of training), got {modulation_ends!r}."
        )
    if not isinstance(noise, bool):
        raise TypeError(f"`noise` must be True (OGM-GE) or False (OGM), got {noise!r}.")
    check_int_at_least("seed", seed, 0, "the seed of the enhancement noise")


def _check_module(pl_module: LightningModule) -> None:
    names = getattr(pl_module, "modality_names", None)
    encoders = getattr(pl_module, "encoders", None)
    contributions = getattr(pl_module, "modality_contributions", None)
    problems = []
    if names is None or len(names) < 2:
        problems.append("`modality_names` with at least two names")
    if not isinstance(encoders, nn.ModuleDict) or (
        names is not None and sorted(encoders.keys()) != sorted(names)
    ):
        problems.append("`encoders`: an nn.ModuleDict with one encoder per modality name")
    if not callable(contributions):
        problems.append("`modality_contributions(features) -> {modality: (N, K) logits}`")
    if problems:
        raise TypeError(
            f"OGMGECallback cannot modulate {type(pl_module).__name__}; it needs "
            f"{'; '.join(problems)}. Use pidsched.MultimodalClassifier with concat or sum fusion."
        )
