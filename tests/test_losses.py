"""Per-stage L2 loss (Eq. 4-5): Caffe's sum / 2N, the stage-1 target, and reductions."""

from __future__ import annotations

import pytest
import torch

from cpm_lightning.errors import ConfigError
from cpm_lightning.losses import stage_losses


def test_paper_reduction_is_sum_over_maps_divided_by_2n():
    torch.manual_seed(0)
    belief_maps = torch.rand(4, 3, 15, 8, 8)
    targets, stage1_targets = torch.rand(4, 15, 8, 8), torch.rand(4, 15, 8, 8)
    losses = stage_losses(belief_maps, targets, stage1_targets, "paper")
    assert losses.shape == (3,)
    assert losses[0] == pytest.approx(((belief_maps[:, 0] - stage1_targets) ** 2).sum().item() / 8, rel=1e-5)
    for t in (1, 2):
        assert losses[t] == pytest.approx(((belief_maps[:, t] - targets) ** 2).sum().item() / 8, rel=1e-5)
    mean = stage_losses(belief_maps, targets, stage1_targets, "mean")
    assert mean[1] == pytest.approx(((belief_maps[:, 1] - targets) ** 2).mean().item(), rel=1e-5)


def test_stage1_target_defaults_to_the_subject_target():
    belief_maps, targets = torch.rand(2, 2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    assert torch.equal(stage_losses(belief_maps, targets), stage_losses(belief_maps, targets, targets))


def test_unknown_reduction_is_a_config_error():
    with pytest.raises(ConfigError, match="reduction"):
        stage_losses(torch.rand(1, 1, 2, 2, 2), torch.rand(1, 2, 2, 2), reduction="sum")


def materialised_target_losses(belief_maps, targets, stage1_targets, reduction):
    """The loss as first written: the targets expanded and copied to (N, T, C, h, w)."""
    per_stage = targets[:, None].expand_as(belief_maps)
    per_stage = torch.cat([stage1_targets[:, None], per_stage[:, 1:]], dim=1)
    squared = (belief_maps.float() - per_stage.float()).pow(2)
    if reduction == "paper":
        return squared.sum(dim=(0, 2, 3, 4)) / (2 * belief_maps.shape[0])
    return squared.mean(dim=(0, 2, 3, 4))


@pytest.mark.parametrize("stages", [1, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["paper", "mean"])
def test_broadcast_targets_give_exactly_the_materialised_loss_and_gradient(stages, dtype, reduction):
    # The paper's shapes at 368 px (46 x 46 maps, 15 channels); bf16: autocast's belief maps.
    torch.manual_seed(0)
    belief_maps = torch.rand(4, stages, 15, 46, 46).to(dtype).requires_grad_()
    targets, stage1_targets = torch.rand(4, 15, 46, 46), torch.rand(4, 15, 46, 46)
    losses = stage_losses(belief_maps, targets, stage1_targets, reduction)
    (grad,) = torch.autograd.grad(losses.sum(), belief_maps)
    expected = materialised_target_losses(belief_maps, targets, stage1_targets, reduction)
    (expected_grad,) = torch.autograd.grad(expected.sum(), belief_maps)
    assert torch.equal(losses, expected)
    assert torch.equal(grad, expected_grad)
