"""Belief-map targets and the centre map: rendering and decoding on one grid.

The release samples label Gaussians on the stride-s output grid at input-pixel coordinates
x = (s - 1) / 2 + s * g (3.5 + 8 g for stride 8), so output cell g "is" input pixel 3.5 + 8 g.
Rendering and decoding both go through `grid_coordinates`, so they cannot disagree.
"""

from __future__ import annotations

import numpy as np
import torch

from cpm_lightning.errors import ConfigError

PAPER_INPUT_SIZE = 368
PAPER_SIGMA = 7.0  # label Gaussian sigma in input pixels at 368x368
PAPER_CENTRE_SIGMA = 21.0  # centre-map sigma in input pixels at 368x368
LABEL_FLOOR = 0.01  # the release zeroes label values below this


def scaled_sigma(input_size: int, sigma_at_368: float = PAPER_SIGMA) -> float:
    """Sigma in input pixels, scaled with the input size as the release's 368 px setting."""
    if sigma_at_368 <= 0:
        raise ConfigError(f"data.sigma={sigma_at_368} is invalid: it must be a positive number of pixels.")
    return sigma_at_368 * input_size / PAPER_INPUT_SIZE


def grid_coordinates(map_size: int, stride: int) -> np.ndarray:
    """Input-pixel coordinate of each output cell: (stride - 1) / 2 + stride * g."""
    return (stride - 1) / 2.0 + stride * np.arange(map_size, dtype=np.float32)


def render_belief_maps(
    joints: np.ndarray,
    visible: np.ndarray,
    map_size: int,
    stride: int,
    sigma: float,
) -> np.ndarray:
    """Ideal belief maps, (J + 1, map_size, map_size) float32, background last.

    joints: (P, J, 2) input-pixel coordinates of P people (or (J, 2) for one person);
    visible: (P, J) or (J,) bool, whether a joint gets a peak (annotated and inside the input).
    Peaks of several people in one channel are summed, then clipped at 1, as the release did.
    """
    joints = np.asarray(joints, dtype=np.float32).reshape(-1, np.shape(joints)[-2], 2)
    visible = np.asarray(visible, dtype=bool).reshape(joints.shape[:2])
    num_joints = joints.shape[1]
    grid = grid_coordinates(map_size, stride)
    maps = np.zeros((num_joints + 1, map_size, map_size), dtype=np.float32)
    # All peaks at once: a per-joint Python loop took twice as long (docs/hdf5-format.md).
    person, joint = np.nonzero(visible)
    x, y = joints[person, joint, 0], joints[person, joint, 1]
    inv = -0.5 / (sigma * sigma)
    # Separable Gaussian: exp(-(dx^2 + dy^2) / 2s^2) = gx * gy, one row of each per peak.
    gx = np.exp(inv * (grid - x[:, None]) ** 2)
    gy = np.exp(inv * (grid - y[:, None]) ** 2)
    peaks = gy[:, :, None] * gx[:, None, :]
    peaks[peaks < LABEL_FLOOR] = 0.0
    for each_person in np.unique(person):
        # Within one person every joint appears once, so the indexed += cannot drop a peak.
        rows = person == each_person
        maps[joint[rows]] += peaks[rows]
    np.clip(maps[:num_joints], 0.0, 1.0, out=maps[:num_joints])
    maps[num_joints] = np.maximum(1.0 - maps[:num_joints].max(axis=0), 0.0)
    return maps


def render_centre_map(input_size: int, sigma: float | None = None) -> torch.Tensor:
    """The release's centre map: a Gaussian at the input centre, (1, 1, H, W).

    Every crop is centred on its person (training, validation and test alike), so the map
    depends on the input size only; the model builds and caches it instead of the loader
    shipping 368x368 floats per sample.
    """
    sigma = scaled_sigma(input_size, PAPER_CENTRE_SIGMA) if sigma is None else sigma
    coords = torch.arange(input_size, dtype=torch.float32)
    centre = (input_size - 1) / 2.0
    g = torch.exp(-((coords - centre) ** 2) / (2 * sigma * sigma))
    return (g[:, None] * g[None, :])[None, None]


def decode_belief_maps(belief_maps: torch.Tensor, stride: int, subpixel: bool = True) -> torch.Tensor:
    """Peak of each part map in input pixels: (..., J + 1, h, w) -> (..., J, 2).

    The background channel (last) is dropped. With `subpixel`, the argmax cell is refined by
    a parabola through the LOG of it and its neighbours along x and y (at most half a cell):
    the log of a Gaussian is a parabola, so an ideal label decodes exactly, and the stride
    quantisation error of a network's smooth peak mostly goes.
    """
    parts = belief_maps[..., :-1, :, :]
    h, w = parts.shape[-2:]
    flat = parts.reshape(*parts.shape[:-2], h * w)
    idx = flat.argmax(dim=-1)
    gy = torch.div(idx, w, rounding_mode="floor")
    gx = idx - gy * w
    x = gx.to(parts.dtype)
    y = gy.to(parts.dtype)
    if subpixel:

        def log_value(dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
            yy = (gy + dy).clamp(0, h - 1)
            xx = (gx + dx).clamp(0, w - 1)
            return flat.gather(-1, (yy * w + xx).unsqueeze(-1)).squeeze(-1).clamp(min=1e-6).log()

        zero, one = torch.zeros_like(gx), torch.ones_like(gx)
        centre = log_value(zero, zero)
        x = x + _parabola_offset(log_value(zero, -one), centre, log_value(zero, one), gx, w)
        y = y + _parabola_offset(log_value(-one, zero), centre, log_value(one, zero), gy, h)
    offset = (stride - 1) / 2.0
    return torch.stack([offset + stride * x, offset + stride * y], dim=-1)


def _parabola_offset(
    before: torch.Tensor, centre: torch.Tensor, after: torch.Tensor, cell: torch.Tensor, size: int
) -> torch.Tensor:
    """Vertex of the parabola through three samples, clamped to half a cell; 0 at the border."""
    curvature = before - 2 * centre + after
    offset = torch.where(curvature < 0, 0.5 * (before - after) / curvature.clamp(max=-1e-12), 0.0)
    inside = (cell > 0) & (cell < size - 1)
    return torch.where(inside, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))
