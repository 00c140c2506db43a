"""Analytic receptive field of every stage, in input pixels, from a model config.

For a chain of layers (kernel k, stride s): rf += (k - 1) * jump; jump *= s.
Stage 1 is one chain. Stage t >= 2 sees, on the stride-s maps, a window of
1 + stage_layers * (stage_kernel - 1) cells of both the previous belief maps and its own trunk
features, so rf_t = max(rf_{t-1}, rf_features) + (window - 1) * stride. For the release:
stage 1 = 167 px (160 px with 2x2 pools, the paper's number), stage 2 = 407 px, +240 per stage.
"""

from __future__ import annotations

from cpm_lightning.models.cpm import CPMConfig


def chain_receptive_field(layers: list[tuple[int, int]]) -> tuple[int, int]:
    """(receptive field, jump) of a chain of (kernel, stride) layers."""
    rf, jump = 1, 1
    for kernel, stride in layers:
        rf += (kernel - 1) * jump
        jump *= stride
    return rf, jump


def receptive_fields(config: CPMConfig | dict) -> list[int]:
    """Receptive field in input pixels of the belief maps of stages 1..T."""
    c = config if isinstance(config, CPMConfig) else CPMConfig(**config)
    trunk = [(c.trunk_kernel, 1), (c.pool_kernel, 2)] * c.num_pools
    features_rf, jump = chain_receptive_field([*trunk, (c.feature_kernel, 1)])
    stage1_rf, _ = chain_receptive_field([*trunk, (c.feature_kernel, 1), (c.stage1_kernel, 1)])
    window = 1 + c.stage_layers * (c.stage_kernel - 1)
    fields = [stage1_rf]
    for _ in range(c.num_stages - 1):
        fields.append(max(fields[-1], features_rf) + (window - 1) * jump)
    return fields
