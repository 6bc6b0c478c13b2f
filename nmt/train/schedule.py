"""Learning-rate schedules as pure functions of the update number (1-based)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nmt.train.config import TrainConfig


def noam_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5) (§5.3, eq. 3), times ``scale``."""
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def inverse_sqrt_lr(step: int, peak: float, warmup: int, init: float = 1e-7) -> float:
    """fairseq's inverse_sqrt: linear from ``init`` to ``peak`` over ``warmup`` updates, then peak·√(warmup/step)."""
    step = max(step, 1)
    if step < warmup:
        return init + (peak - init) * step / warmup
    return peak * (warmup / step) ** 0.5


def learning_rate(train: TrainConfig, d_model: int, step: int) -> float:
    """The run's learning rate at update ``step`` (1-based), by its ``lr_schedule``."""
    if train.lr_schedule == "noam":
        return noam_lr(step, d_model, train.warmup, train.lr_scale)
    return inverse_sqrt_lr(step, train.peak_lr, train.warmup, train.warmup_init_lr)
