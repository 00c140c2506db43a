"""Test-time procedures shared by evaluate and predict: multi-scale, flip test, decoding.

The release's test (run_benchmark.m) ran the net at scales 0.7, 0.8, ..., 1.3 of a base scale,
each crop padded to the input size around the person centre, brought the last stage's maps back
to the original image and SUMMED them, then took the argmax per part. We do the same for every
stage, in one common frame: the scale-1 network input, sampled on a grid `upsample` times finer
than the belief maps (upsample = stride is the release's full input resolution). Each scale's
maps are resampled into that frame with one bicubic grid_sample, so no scale is privileged.

Flip test: the horizontally mirrored input's maps are mirrored back, left/right channels swapped
through the skeleton's flip pairs, and averaged with the unflipped maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cpm_lightning.data.augment import BORDER_VALUE
from cpm_lightning.data.skeletons import FLIC9, LSP14, Skeleton, skeleton_for_joints
from cpm_lightning.data.targets import decode_belief_maps
from cpm_lightning.errors import ConfigError
from cpm_lightning.module import CPMModule

RELEASE_SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)


@dataclass(frozen=True)
class InferenceOptions:
    """What the test does beyond one forward pass (conf: test_time)."""

    multiscale: bool = False
    scales: tuple[float, ...] = RELEASE_SCALES  # used when multiscale is on
    flip: bool = False
    subpixel: bool = True  # quadratic peak refinement (data/targets.py)
    upsample: int = 1  # decode on a grid this many times finer than the maps (stride: input px)

    def __post_init__(self) -> None:
        if self.upsample < 1:
            raise ConfigError(f"test_time.upsample={self.upsample} is invalid: it must be an integer >= 1.")
        if self.multiscale and (not self.scales or min(self.scales) <= 0):
            raise ConfigError(f"test_time.scales={list(self.scales)} is invalid: give positive scale factors.")

    @classmethod
    def from_options(cls, options: dict) -> InferenceOptions:
        """From the `test_time` config group (a plain dict; lists become tuples)."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"test_time has unknown keys {unknown}: valid ones are {sorted(cls.__dataclass_fields__)}."
            )
        return cls(**{**options, "scales": tuple(options.get("scales", RELEASE_SCALES))})

    @property
    def used_scales(self) -> tuple[float, ...]:
        return tuple(self.scales) if self.multiscale else (1.0,)


def load_module(ckpt: str | Path, device: str = "cpu") -> CPMModule:
    """A trained CPMModule in eval mode; a clear error if `ckpt` is not a checkpoint."""
    path = Path(ckpt)
    if not path.is_file():
        raise ConfigError(f"ckpt={ckpt} does not exist: pass the .ckpt file a training run wrote under checkpoints/.")
    try:
        module = CPMModule.load_from_checkpoint(path, map_location=device, compile=False)
    except (RuntimeError, KeyError, TypeError, EOFError) as error:
        raise ConfigError(f"ckpt={ckpt} is not a cpm_lightning checkpoint ({error}).") from None
    return module.eval().to(device)


def input_size_of(module: CPMModule, configured: int) -> int:
    """The input size the model was trained at (saved in its checkpoint), else `configured`.

    A CPM's belief maps are only meaningful at the person size it was trained on, so the
    checkpoint's own size wins over a config that was not told which experiment trained it.
    """
    trained = module.hparams.get("input_size")
    if trained is None:  # checkpoints written before the size was saved
        input_size = int(configured)
    else:
        input_size = int(trained)
        if input_size != int(configured):
            print(f"input size {input_size} px, as the checkpoint was trained (not data.input_size={configured})")
    if input_size % module.model.stride:
        raise ConfigError(
            f"data.input_size={input_size} is not a multiple of the model's stride {module.model.stride}: "
            "pass the +experiment the model was trained with."
        )
    return input_size


def skeleton_of(module: CPMModule) -> Skeleton:
    """The joint set a model predicts: from its saved joint names, else from its part count."""
    names = module.hparams.get("joint_names")
    if names:
        return skeleton_for_joints(names)
    by_count = {s.num_joints: s for s in (LSP14, FLIC9)}
    num_parts = module.model.config.num_parts
    if num_parts not in by_count:
        raise ConfigError(f"the checkpoint predicts {num_parts} parts, which matches no known skeleton.")
    return by_count[num_parts]


def scale_about_centre(affine: np.ndarray, scale: float, input_size: int) -> np.ndarray:
    """image->input affine (2, 3) followed by a zoom of `scale` about the input centre."""
    middle = (input_size - 1) / 2.0
    scaled = np.array(affine, np.float64) * scale
    scaled[..., 2] += middle * (1.0 - scale)
    return scaled


def warp_images(images: Sequence[np.ndarray], affines: np.ndarray, input_size: int) -> torch.Tensor:
    """Each (H, W, 3) uint8 image warped by its (2, 3) affine -> (N, 3, S, S) uint8."""
    warped = [
        cv2.warpAffine(
            image, affine, (input_size, input_size), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(BORDER_VALUE,) * 3,
        )
        for image, affine in zip(images, affines)
    ]  # fmt: skip
    return torch.from_numpy(np.stack(warped).transpose(0, 3, 1, 2).copy())


def common_grid_stride(stride: int, upsample: int) -> float:
    """Input pixels per cell of the common frame."""
    return stride / upsample


def to_common_frame(maps: torch.Tensor, scale: float, stride: int, upsample: int) -> torch.Tensor:
    """Maps of an input zoomed by `scale` (N, T, C, h, w) -> the scale-1 frame (N, T, C, h*u, w*u).

    Common cell c sits at scale-1 input pixel x1 = (s' - 1) / 2 + s' c (s' = stride / u); that
    pixel is x = m + scale (x1 - m) in the zoomed input (m its centre), i.e. map cell
    (x - (stride - 1) / 2) / stride. Outside the zoomed input the maps count as 0.
    """
    n, t, c, h, w = maps.shape
    if scale == 1.0 and upsample == 1:
        return maps
    step = common_grid_stride(stride, upsample)
    middle = (stride * w - 1) / 2.0

    def source_cells(count: int, size: int) -> torch.Tensor:
        x1 = (step - 1) / 2.0 + step * torch.arange(count, dtype=maps.dtype, device=maps.device)
        cell = (middle + scale * (x1 - middle) - (stride - 1) / 2.0) / stride
        return 2.0 * cell / max(size - 1, 1) - 1.0  # grid_sample's [-1, 1], align_corners=True

    gx, gy = source_cells(w * upsample, w), source_cells(h * upsample, h)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1).expand(n * t, -1, -1, -1)
    out = F.grid_sample(maps.reshape(n * t, c, h, w), grid, mode="bicubic", padding_mode="zeros", align_corners=True)
    return out.reshape(n, t, c, h * upsample, w * upsample)


@torch.no_grad()
def fused_belief_maps(
    module: CPMModule,
    images: Sequence[np.ndarray],
    affines: np.ndarray,
    input_size: int,
    test_time: InferenceOptions,
    flip_permutation: Sequence[int],
) -> torch.Tensor:
    """Belief maps of every stage in the scale-1 frame, averaged over scales (and flips).

    images: (H, W, 3) uint8 RGB each, any sizes; affines: (N, 2, 3) image -> scale-1 input.
    Returns (N, T, P + 1, h * u, w * u). The release summed over scales; we divide by the number
    of scales so that scores stay in the maps' range (the argmax is the same).
    """
    device = next(module.parameters()).device
    stride = module.model.stride
    channels = torch.tensor([*flip_permutation, len(flip_permutation)], device=device)  # background stays
    total = None
    for scale in test_time.used_scales:
        batch = warp_images(images, scale_about_centre(affines, scale, input_size), input_size).to(device)
        maps = module(batch).float()
        if test_time.flip:
            mirrored = module(batch.flip(-1)).float().flip(-1)[:, :, channels]
            maps = 0.5 * (maps + mirrored)
        maps = to_common_frame(maps, scale, stride, test_time.upsample)
        total = maps if total is None else total + maps
    return total / len(test_time.used_scales)


def decode(maps: torch.Tensor, stride: int, test_time: InferenceOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Common-frame maps (..., P + 1, H, W) -> joints (..., P, 2) in scale-1 input pixels and
    scores (..., P), the belief at each peak."""
    joints = decode_belief_maps(maps, common_grid_stride(stride, test_time.upsample), test_time.subpixel)
    scores = maps[..., :-1, :, :].flatten(-2).amax(dim=-1)
    return joints, scores


def to_source(points: np.ndarray, input_to_source: np.ndarray) -> np.ndarray:
    """Points (N, ..., 2) in input pixels -> source pixels through per-sample (N, 2, 3) affines."""
    points = np.asarray(points, np.float64)
    a = np.asarray(input_to_source, np.float64)
    shape = points.shape
    flat = points.reshape(shape[0], -1, 2)
    return (np.einsum("nij,nkj->nki", a[:, :, :2], flat) + a[:, None, :, 2]).reshape(shape)


def affine_scale(affine: np.ndarray) -> np.ndarray:
    """Length scale of (N, 2, 3) similarity affines, (N,)."""
    return np.sqrt(np.abs(np.linalg.det(np.asarray(affine, np.float64)[:, :, :2])))
