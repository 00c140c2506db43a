"""Geometry from stored crop to network input as ONE affine warp, plus optional photometrics.

The release scaled, rotated, cropped and flipped the image in four resampling steps. All four
are affine, so we compose them into a single 2x3 matrix and resample once, straight from the
stored crop to the network input: one cv2.warpAffine over input_size^2 pixels per sample.
Pixels from outside the stored crop get the release's border value 128.

Every random choice (geometric and photometric) is drawn from the sample's own numpy Generator,
seeded by the dataset from (seed, epoch, index), so a sample is the same in any DataLoader
worker, on any rank and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TARGET_DIST = 1.171  # release: the person (scale * 200 px) is resized to 1.171 * 200 px at 368
BORDER_VALUE = 128

# Photometric augmentation (what albumentations' ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8) then
# ToGray(p=0.05) did here before): on 80% of samples, brightness, contrast and saturation factors
# uniform in [0.7, 1.3] and a hue shift of up to 5% of the colour circle, applied in random order
# as torchvision's ColorJitter does; then 5% of samples become grey.
JITTER_PROBABILITY = 0.8
JITTER_STRENGTH = 0.3
MAX_HUE_SHIFT = 0.05
GREY_PROBABILITY = 0.05


@dataclass(frozen=True)
class AugmentConfig:
    scale_min: float = 0.7
    scale_max: float = 1.3
    max_rotation: float = 40.0  # degrees, uniform in [-max, max]
    flip_probability: float = 0.5
    photometric: bool = False  # colour jitter and occasional grey (real photos; off for synthetic)


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


def _map_levels(image: np.ndarray, factor: float, offset: float = 0.0) -> np.ndarray:
    """Every uint8 value v becomes v * factor + offset, rounded and clipped to [0, 255]."""
    table = np.clip(np.rint(np.arange(256) * factor + offset), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Luma (0.299 R + 0.587 G + 0.114 B) in all three channels."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return _map_levels(image, factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale the distance of every value from the image's mean luma by `factor`."""
    mean = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean()
    return _map_levels(image, factor, (1.0 - factor) * mean)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the grey image: 0 is grey, 1 the image, above 1 more saturated (clipped)."""
    return cv2.addWeighted(image, factor, to_grey(image), 1.0 - factor, 0.0)


def shift_hue(image: np.ndarray, shift: float) -> np.ndarray:
    """Rotate every hue by `shift` turns of the colour circle."""
    hue_steps = round(shift * 180)  # uint8 hue is in [0, 180): 2 degrees a step
    if hue_steps == 0:
        return image  # spare the lossy uint8 RGB -> HSV -> RGB round trip
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hue_table = np.mod(np.arange(256) + hue_steps, 180).astype(np.uint8)
    hsv[..., 0] = cv2.LUT(hsv[..., 0], hue_table)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def random_photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Random colour jitter, then occasionally grey, drawn from `rng` alone ((H, W, 3) uint8 RGB)."""
    jitter = rng.random() < JITTER_PROBABILITY
    brightness, contrast, saturation = rng.uniform(1.0 - JITTER_STRENGTH, 1.0 + JITTER_STRENGTH, size=3)
    hue_shift = rng.uniform(-MAX_HUE_SHIFT, MAX_HUE_SHIFT)
    order = rng.permutation(4)
    grey = rng.random() < GREY_PROBABILITY
    if jitter:
        adjustments = [
            (adjust_brightness, brightness),
            (adjust_contrast, contrast),
            (adjust_saturation, saturation),
            (shift_hue, hue_shift),
        ]
        for step in order:
            adjust, amount = adjustments[step]
            image = adjust(image, amount)
    return to_grey(image) if grey else image
