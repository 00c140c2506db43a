"""Per-stage L2 loss between predicted and ideal belief maps (the paper's Eq. 4 and 5)."""

from __future__ import annotations

import torch

from cpm_lightning.errors import ConfigError

REDUCTIONS = ("paper", "mean")


def stage_losses(
    belief_maps: torch.Tensor,
    targets: torch.Tensor,
    stage1_targets: torch.Tensor | None = None,
    reduction: str = "paper",
) -> torch.Tensor:
    """L2 loss of every stage, shape (T,).

    belief_maps: (N, T, C, h, w); targets: (N, C, h, w) for stages >= 2 (the subject);
    stage1_targets: the stage-1 targets (MPII: everyone near the subject), default `targets`.
    reduction "paper": sum over channels and pixels of (x - y)^2 / (2N), Caffe's EuclideanLoss
    as the release trained with (a mean-reduced loss is ~15 x 46 x 46 times smaller and barely
    trains at the paper's SGD learning rate); "mean": mean squared error, for Adam.
    """
    if reduction not in REDUCTIONS:
        raise ConfigError(f"loss reduction {reduction!r} is invalid: choose one of {REDUCTIONS}")
    stage1_targets = targets if stage1_targets is None else stage1_targets
    beliefs = belief_maps.float()
    # Each target broadcasts over its stages (no (N, T, C, h, w) copy of the targets); stage 1's
    # error is then written over its slice, which keeps the summation order of one tensor.
    error = beliefs - targets.float()[:, None]
    error[:, :1] = beliefs[:, :1] - stage1_targets.float()[:, None]
    squared = error.pow(2)
    if reduction == "paper":
        return squared.sum(dim=(0, 2, 3, 4)) / (2 * belief_maps.shape[0])
    return squared.mean(dim=(0, 2, 3, 4))
