"""The Convolutional Pose Machine (Wei et al., CVPR 2016), one readable file.

With the defaults this is exactly the released Caffe architecture (see docs and
../shared/reference/cpm-release.md): 368x368 RGB input plus a centre map, stride 8, 6 stages,
31,219,866 parameters for 14 parts. Every size is a constructor argument so that the same class
scales down for CPU runs. Only torch is imported: benchmarks load this file on bare GPU machines.

    stage 1:  image -> [conv k x C, pool] x num_pools -> conv 5x5x32 -> conv 9x9x512 -> (dropout)
              -> conv 1x1x512 -> (dropout) -> conv 1x1x(P+1)                   => belief maps b1
    stage t:  image -> trunk (shared by all t >= 2) -> own conv 5x5x32 = features_t
              concat[features_t, b_{t-1}, pooled centre map] -> stage_layers x conv 11x11x128
              -> conv 1x1x128 -> conv 1x1x(P+1)                                 => belief maps bt
ReLU follows every conv except the last of each stage. Pools are Caffe-style (ceil mode).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cpm_lightning.errors import ConfigError


@dataclass(frozen=True)
class CPMConfig:
    num_parts: int = 14  # P; the network predicts P + 1 maps (background last)
    num_stages: int = 6  # T >= 1
    trunk_channels: int = 128
    trunk_kernel: int = 9
    num_pools: int = 3  # output stride = 2 ** num_pools
    pool_kernel: int = 3  # 3/2 Caffe pools (the release); 2 gives the paper's 160 px field
    feature_channels: int = 32  # the 5x5x32 layer of every stage
    feature_kernel: int = 5
    stage1_channels: int = 512
    stage1_kernel: int = 9
    stage_channels: int = 128  # layers of stages >= 2
    stage_kernel: int = 11
    stage_layers: int = 3  # large-kernel layers in stages >= 2
    centre_map: bool = True
    share_trunk: bool = True  # stages >= 2 share one image trunk, as released
    dropout: float = 0.5  # after the two 512-channel stage-1 layers, training only
    init: str = "paper"  # "paper": N(0, 0.01), zero bias; "kaiming": see reset_parameters
    norm: str = "none"  # "none" as released; "batch": BatchNorm after every hidden conv (fast CPU runs)

    def __post_init__(self) -> None:
        checks = {
            "num_stages": (self.num_stages >= 1, "an integer >= 1"),
            "num_parts": (self.num_parts >= 1, "an integer >= 1"),
            "num_pools": (self.num_pools >= 0, "an integer >= 0"),
            "dropout": (0.0 <= self.dropout < 1.0, "in [0, 1)"),
            "init": (self.init in ("paper", "kaiming"), "'paper' or 'kaiming'"),
            "norm": (self.norm in ("none", "batch"), "'none' or 'batch'"),
        }
        for key in ("trunk_kernel", "feature_kernel", "stage1_kernel", "stage_kernel"):
            k = getattr(self, key)
            checks[key] = (k >= 1 and k % 2 == 1, "an odd integer >= 1 (convs keep the map size)")
        for key, (ok, allowed) in checks.items():
            if not ok:
                raise ConfigError(f"model.{key}={getattr(self, key)!r} is invalid: it must be {allowed}.")

    @property
    def stride(self) -> int:
        return 2**self.num_pools


def conv(in_channels: int, out_channels: int, kernel: int, norm: str = "none", relu: bool = True) -> list[nn.Module]:
    """Conv (stride 1, same size), then BatchNorm if asked (never on a prediction conv), then ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)]
    if not relu:
        return layers
    if norm == "batch":
        layers.append(nn.BatchNorm2d(out_channels))
    return [*layers, nn.ReLU(inplace=True)]


def image_trunk(config: CPMConfig) -> nn.Sequential:
    """[conv k x C + ReLU, Caffe max-pool] x num_pools: the stride-s image features."""
    layers: list[nn.Module] = []
    in_channels = 3
    for _ in range(config.num_pools):
        layers += conv(in_channels, config.trunk_channels, config.trunk_kernel, config.norm)
        layers.append(nn.MaxPool2d(config.pool_kernel, stride=2, ceil_mode=True))
        in_channels = config.trunk_channels
    return nn.Sequential(*layers)


class Stage1(nn.Module):
    """Local image evidence only: trunk, 5x5x32, 9x9x512, 1x1x512, 1x1x(P+1)."""

    def __init__(self, config: CPMConfig):
        super().__init__()
        c = config
        trunk_out = c.trunk_channels if c.num_pools else 3
        self.trunk = image_trunk(c)
        self.head = nn.Sequential(
            *conv(trunk_out, c.feature_channels, c.feature_kernel, c.norm),
            *conv(c.feature_channels, c.stage1_channels, c.stage1_kernel, c.norm),
            nn.Dropout(c.dropout),
            *conv(c.stage1_channels, c.stage1_channels, 1, c.norm),
            nn.Dropout(c.dropout),
            *conv(c.stage1_channels, c.num_parts + 1, 1, relu=False),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(image))


class StageT(nn.Module):
    """Stage t >= 2: its own 5x5x32 on the trunk, then context from the previous belief maps."""

    def __init__(self, config: CPMConfig):
        super().__init__()
        c = config
        trunk_out = c.trunk_channels if c.num_pools else 3
        self.features = nn.Sequential(*conv(trunk_out, c.feature_channels, c.feature_kernel, c.norm))
        in_channels = c.feature_channels + c.num_parts + 1 + int(c.centre_map)
        layers: list[nn.Module] = []
        for _ in range(c.stage_layers):
            layers += conv(in_channels, c.stage_channels, c.stage_kernel, c.norm)
            in_channels = c.stage_channels
        layers += conv(in_channels, c.stage_channels, 1, c.norm)
        layers += conv(c.stage_channels, c.num_parts + 1, 1, relu=False)
        self.refine = nn.Sequential(*layers)

    def forward(
        self, trunk_features: torch.Tensor, previous_beliefs: torch.Tensor, pooled_centre: torch.Tensor | None
    ) -> torch.Tensor:
        context = [self.features(trunk_features), previous_beliefs]
        if pooled_centre is not None:
            context.append(pooled_centre)
        return self.refine(torch.cat(context, dim=1))


class CPM(nn.Module):
    """T-stage CPM. forward(image) -> belief maps of every stage, (B, T, P + 1, H / s, W / s).

    `image` is the normalised input, (B, 3, H, W). The centre map is built from the input
    size (every crop is centred on its person) unless one is passed explicitly.
    """

    def __init__(self, checkpoint_stages: bool = False, **config):
        super().__init__()
        self.config = CPMConfig(**config)
        c = self.config
        # Recompute each stage's activations in backward instead of storing them (memory for time).
        self.checkpoint_stages = checkpoint_stages
        self.stage1 = Stage1(c)
        num_trunks = 0 if c.num_stages == 1 else (1 if c.share_trunk else c.num_stages - 1)
        self.trunks = nn.ModuleList(image_trunk(c) for _ in range(num_trunks))
        self.stages = nn.ModuleList(StageT(c) for _ in range(c.num_stages - 1))
        self.centre_pool = nn.AvgPool2d(kernel_size=c.stride + 1, stride=c.stride, ceil_mode=True)
        self._centre_cache: dict[tuple, torch.Tensor] = {}
        self.reset_parameters()

    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def num_stages(self) -> int:
        return self.config.num_stages

    def reset_parameters(self) -> None:
        """ "paper": every conv N(0, 0.01), as released. "kaiming": He-normal hidden convs (the
        activations keep their scale through a BatchNorm-free stack) but N(0, 0.01) prediction
        convs, so that training starts near the all-background answer instead of from large
        random belief maps whose correction kills ReLUs (a long plateau on short runs)."""
        prediction_convs = {id(self.stage1.head[-1])} | {id(stage.refine[-1]) for stage in self.stages}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.config.init == "paper" or id(m) in prediction_convs:
                    nn.init.normal_(m.weight, std=0.01)
                else:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """Modules first trained with stage `stage` (1-based); stage 2 owns the shared trunk."""
        if stage == 1:
            return [self.stage1]
        trunk = self.trunks[stage - 2] if not self.config.share_trunk else (self.trunks[0] if stage == 2 else None)
        return [m for m in (trunk, self.stages[stage - 2]) if m is not None]

    def pooled_centre_map(self, image: torch.Tensor, centre_map: torch.Tensor | None) -> torch.Tensor:
        if centre_map is not None:
            return self.centre_pool(centre_map)
        if torch.compiler.is_compiling():
            # Built inside the compiled graph (a few thousand flops): filling the cache there
            # changes state the graph was traced with, which recompiled it on the next call.
            pooled = self._default_pooled_centre(image)
        else:
            key = (image.shape[-2], image.shape[-1], image.device, image.dtype)
            if key not in self._centre_cache:
                self._centre_cache[key] = self._default_pooled_centre(image)
            pooled = self._centre_cache[key]
        return pooled.expand(image.shape[0], -1, -1, -1)

    def _default_pooled_centre(self, image: torch.Tensor) -> torch.Tensor:
        from cpm_lightning.data.targets import render_centre_map

        assert image.shape[-2] == image.shape[-1], "the default centre map needs a square input"
        with torch.no_grad():
            return self.centre_pool(render_centre_map(image.shape[-1]).to(image.device, image.dtype))

    def forward(
        self, image: torch.Tensor, centre_map: torch.Tensor | None = None, num_stages: int | None = None
    ) -> torch.Tensor:
        """Belief maps of stages 1..num_stages (default all), stacked on dim 1."""

        def run(module: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
            if self.checkpoint_stages and self.training and torch.is_grad_enabled():
                return checkpoint(module, *args, use_reentrant=False)
            return module(*args)

        beliefs = [run(self.stage1, image)]
        num_stages = self.config.num_stages if num_stages is None else num_stages
        if num_stages > 1:
            pooled = self.pooled_centre_map(image, centre_map) if self.config.centre_map else None
            shared = run(self.trunks[0], image) if self.config.share_trunk else None
            for t, stage in enumerate(self.stages[: num_stages - 1]):
                trunk_features = shared if shared is not None else run(self.trunks[t], image)
                beliefs.append(run(stage, trunk_features, beliefs[-1], pooled))
        return torch.stack(beliefs, dim=1)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops(config: CPMConfig, input_size: int) -> float:
    """Multiply-adds x 2 of one forward pass at a square input (convs only), for MFU."""
    total = 0.0
    size = input_size

    def conv_flops(cin: int, cout: int, k: int, hw: int) -> float:
        return 2.0 * cin * cout * k * k * hw * hw

    trunk = 0.0
    cin = 3
    for _ in range(config.num_pools):
        trunk += conv_flops(cin, config.trunk_channels, config.trunk_kernel, size)
        size = math.ceil((size - config.pool_kernel) / 2) + 1
        cin = config.trunk_channels
    m = size
    p1 = config.num_parts + 1
    total += trunk + conv_flops(cin, config.feature_channels, config.feature_kernel, m)
    total += conv_flops(config.feature_channels, config.stage1_channels, config.stage1_kernel, m)
    total += conv_flops(config.stage1_channels, config.stage1_channels, 1, m)
    total += conv_flops(config.stage1_channels, p1, 1, m)
    later = config.num_stages - 1
    if later:
        total += trunk * (1 if config.share_trunk else later)
        c_in = config.feature_channels + p1 + int(config.centre_map)
        stage = conv_flops(cin, config.feature_channels, config.feature_kernel, m)
        for _ in range(config.stage_layers):
            stage += conv_flops(c_in, config.stage_channels, config.stage_kernel, m)
            c_in = config.stage_channels
        stage += conv_flops(c_in, config.stage_channels, 1, m) + conv_flops(config.stage_channels, p1, 1, m)
        total += later * stage
    return total
