"""Geometry from stored crop to network input as ONE affine warp, plus optional photometrics.

The release scaled, rotated, cropped and flipped the image in four resampling steps. All four
are affine, so we compose them into a single 2x3 matrix and resample once, straight from the
stored crop to the network input: one cv2.warpAffine over input_size^2 pixels per sample.
Pixels from outside the stored crop get the release's border value 128.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TARGET_DIST = 1.171  # release: the person (scale * 200 px) is resized to 1.171 * 200 px at 368
BORDER_VALUE = 128


@dataclass(frozen=True)
class AugmentConfig:
    scale_min: float = 0.7
    scale_max: float = 1.3
    max_rotation: float = 40.0  # degrees, uniform in [-max, max]
    flip_probability: float = 0.5
    photometric: bool = False  # albumentations colour jitter (real photos; off for synthetic)


def crop_to_input_affine(
    centre: np.ndarray,
    scale: float,
    input_size: int,
    scale_factor: float = 1.0,
    rotation_deg: float = 0.0,
    flip: bool = False,
) -> np.ndarray:
    """2x3 matrix taking stored-crop pixels to network-input pixels.

    The person (height scale * 200 crop px) becomes TARGET_DIST * 200 px at a 368 input (the
    same fraction of any other input size) times `scale_factor`, rotated by `rotation_deg`
    about its centre, which lands on the input centre; `flip` mirrors x about that centre.
    """
    zoom = TARGET_DIST * input_size / 368.0 / float(scale) * scale_factor
    theta = np.deg2rad(rotation_deg)
    cos, sin = np.cos(theta) * zoom, np.sin(theta) * zoom
    linear = np.array([[cos, sin], [-sin, cos]], dtype=np.float64)
    if flip:
        linear[0] *= -1.0
    middle = (input_size - 1) / 2.0
    offset = np.array([middle, middle]) - linear @ np.asarray(centre, np.float64)
    return np.concatenate([linear, offset[:, None]], axis=1)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """outer o inner as a 2x3 matrix (apply `inner` first)."""
    result = outer[:, :2] @ inner
    result[:, 2] += outer[:, 2]
    return result


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_to_input(image: np.ndarray, matrix: np.ndarray, input_size: int) -> np.ndarray:
    return cv2.warpAffine(
        image,
        matrix,
        (input_size, input_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(BORDER_VALUE,) * 3,
    )


def random_affine(
    rng: np.random.Generator, centre: np.ndarray, scale: float, input_size: int, config: AugmentConfig
) -> tuple[np.ndarray, bool]:
    """A random training transform (scale, rotation, flip) and whether it flips."""
    scale_factor = rng.uniform(config.scale_min, config.scale_max)
    rotation = rng.uniform(-config.max_rotation, config.max_rotation)
    flip = bool(rng.random() < config.flip_probability)
    return crop_to_input_affine(centre, scale, input_size, scale_factor, rotation, flip), flip


def photometric_transform():
    """Colour jitter for real photographs (albumentations imported only when asked for)."""
    import albumentations as A

    return A.Compose([A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8), A.ToGray(p=0.05)])
