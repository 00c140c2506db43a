"""Embedded synthetic pose set: procedurally drawn people with the LSP 14-joint skeleton.

Made so that spatial context matters as it does in real photographs:
- left and right limbs are drawn identically; only a facing cue tells them apart
  (front-facing people show a face and a stripe on their left side of the torso; people seen
  from behind show hair and the stripe on the other image side), so person-centric left/right
  is learnable from context but not from a limb alone;
- the background is cluttered with limb-like distractor strokes and head-like blobs in the
  same palette as the people;
- limbs pass behind the torso (their joints are then "annotated but occluded") and leave the
  frame (joints outside the image are "not annotated", as in MPII);
- person scale, rotation and position vary, and the stored scale is a noisy estimate, as
  real annotations are;
- optionally (`--bystanders K`, the `synthetic_crowd` data config) up to K other people stand
  behind the target, overlapping it, half of them in its colours; only the target is annotated,
  as in LSP. The default set (K = 0) draws exactly what it drew before the option existed.
Deterministic from a seed: sample i of split s is drawn from the generator seeded (seed, s, i).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cpm_lightning.data.h5format import CropSample, CropWriter
from cpm_lightning.data.skeletons import LSP14

SPLITS = {"train": 0, "val": 1, "test": 2}
CROP_SIZE = 160  # stored crop; the default network input is 128 (margin for scale/rotation)
J = {name: i for i, name in enumerate(LSP14.joint_names)}
ARM_CHAIN = (("shoulder", "elbow"), ("elbow", "wrist"))
LEG_CHAIN = (("hip", "knee"), ("knee", "ankle"))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(30, 226, 3))


def _unit(angle: float) -> np.ndarray:
    """Direction of `angle` radians measured from straight down, counter-clockwise on screen."""
    return np.array([np.sin(angle), np.cos(angle)])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.integers(40, 216, (4, 4, 3)).astype(np.uint8)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 12, (size, size, 3))
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _stroke(image: np.ndarray, a: np.ndarray, b: np.ndarray, colour, width: int) -> None:
    cv2.line(image, tuple(np.round(a * 16).astype(int)), tuple(np.round(b * 16).astype(int)),
             colour, width, cv2.LINE_AA, shift=4)  # fmt: skip


def _disc(image: np.ndarray, centre: np.ndarray, radius: float, colour) -> None:
    cv2.circle(image, tuple(np.round(centre * 16).astype(int)), int(round(radius * 16)), colour, -1,
               cv2.LINE_AA, shift=4)  # fmt: skip


def _distractors(rng: np.random.Generator, image: np.ndarray, limb_width: float, count: int) -> None:
    size = image.shape[0]
    for _ in range(count):
        start = rng.uniform(0, size, 2)
        length = rng.uniform(0.1, 0.25) * size
        first = start + length * _unit(rng.uniform(0, 2 * np.pi))
        width = max(2, int(limb_width * rng.uniform(0.7, 1.2)))
        colour = _colour(rng)
        _stroke(image, start, first, colour, width)
        if rng.random() < 0.7:  # a bent "limb" with a joint-like blob at its end
            second = first + length * rng.uniform(0.7, 1.1) * _unit(rng.uniform(0, 2 * np.pi))
            _stroke(image, first, second, colour, width)
            _disc(image, second, width * 0.6, colour)
        if rng.random() < 0.25:  # a head-like disc
            _disc(image, rng.uniform(0, size, 2), limb_width * rng.uniform(1.2, 1.8), _colour(rng))


@dataclass
class Person:
    """One drawn person's pose and geometry (image coordinates, pixels)."""

    joints: np.ndarray  # (14, 2)
    centre: np.ndarray  # of the torso
    up: np.ndarray  # unit vector from pelvis to neck
    right_on_screen: np.ndarray
    facing_front: bool
    height: float  # head top to ankles when standing

    @property
    def limb_width(self) -> float:
        return max(3.0, 0.055 * self.height)

    @property
    def torso_polygon(self) -> np.ndarray:
        return self.joints[[J["l_shoulder"], J["r_shoulder"], J["r_hip"], J["l_hip"]]]


def _pose(rng: np.random.Generator, size: int, height: float | None = None, centre: np.ndarray | None = None) -> Person:
    """A random standing-to-acrobatic pose; the target person is centred, a bystander placed."""
    height = rng.uniform(0.42, 0.62) * size if height is None else height
    torso = 0.3 * height
    tilt = rng.normal(0, 0.35)  # torso rotation, radians
    up = -_unit(tilt)
    right_on_screen = np.array([np.cos(tilt), -np.sin(tilt)])
    facing_front = rng.random() < 0.5
    # A front-facing person's left side is on the image's right.
    to_left = right_on_screen if facing_front else -right_on_screen
    if centre is None:
        centre = size / 2 + rng.normal(0, 0.06 * size, 2)

    joints = np.zeros((14, 2))
    neck = centre + up * torso / 2
    pelvis = centre - up * torso / 2
    joints[J["neck"]] = neck
    head_radius = 0.075 * height
    joints[J["head_top"]] = neck + up * head_radius * 1.1 + up * head_radius
    for side, sign in (("l", 1.0), ("r", -1.0)):
        joints[J[f"{side}_shoulder"]] = neck + sign * to_left * 0.12 * height - up * 0.03 * height
        joints[J[f"{side}_hip"]] = pelvis + sign * to_left * 0.08 * height
        # Arms swing anywhere; legs stay roughly below the hips. Angles are relative to the
        # torso's "down" and mirrored per side, so the two sides have the same distribution.
        arm_angle = tilt + sign * (1 if facing_front else -1) * rng.uniform(-0.6, 2.6)
        elbow_bend = arm_angle + rng.uniform(-2.2, 2.2)
        joints[J[f"{side}_elbow"]] = joints[J[f"{side}_shoulder"]] + 0.17 * height * _unit(arm_angle)
        joints[J[f"{side}_wrist"]] = joints[J[f"{side}_elbow"]] + 0.15 * height * _unit(elbow_bend)
        leg_angle = tilt + sign * (1 if facing_front else -1) * rng.uniform(-0.35, 1.0)
        knee_bend = leg_angle + rng.uniform(-1.0, 1.0)
        joints[J[f"{side}_knee"]] = joints[J[f"{side}_hip"]] + 0.24 * height * _unit(leg_angle)
        joints[J[f"{side}_ankle"]] = joints[J[f"{side}_knee"]] + 0.23 * height * _unit(knee_bend)
    return Person(joints, centre, up, right_on_screen, facing_front, height)


def _palette(rng: np.random.Generator) -> tuple:
    """Colours of skin, shirt, trousers and the facing stripe."""
    return _colour(rng), _colour(rng), _colour(rng), _colour(rng)


def _draw(rng: np.random.Generator, image: np.ndarray, person: Person, palette: tuple) -> np.ndarray:
    """Draw `person` onto `image`; returns its visibility (2 seen, 1 behind the torso, 0 outside)."""
    skin, cloth, trousers, mark = palette
    joints, up, width = person.joints, person.up, person.limb_width
    head_radius = 0.075 * person.height
    head_centre = joints[J["neck"]] + up * head_radius * 1.1
    # Each limb goes behind the torso with some probability (then drawn first).
    limbs = []
    for side in ("l", "r"):
        for chain, colour in ((ARM_CHAIN, skin), (LEG_CHAIN, trousers)):
            points = [f"{side}_{chain[0][0]}", f"{side}_{chain[0][1]}", f"{side}_{chain[1][1]}"]
            limbs.append((points, colour, rng.random() < 0.3))

    def draw_limb(points: list[str], colour) -> None:
        for a, b in zip(points[:-1], points[1:]):
            _stroke(image, joints[J[a]], joints[J[b]], colour, int(width))
        _disc(image, joints[J[points[-1]]], width * 0.7, colour)

    for points, colour, behind in limbs:
        if behind:
            draw_limb(points, colour)
    torso_polygon = person.torso_polygon
    cv2.fillConvexPoly(image, np.round(torso_polygon * 16).astype(np.int32), cloth, cv2.LINE_AA, shift=4)
    # The facing cue on the torso: a stripe down the person's left side.
    stripe_top = joints[J["l_shoulder"]] * 0.7 + joints[J["r_shoulder"]] * 0.3
    stripe_bottom = joints[J["l_hip"]] * 0.7 + joints[J["r_hip"]] * 0.3
    _stroke(image, stripe_top, stripe_bottom, mark, max(2, int(width * 0.5)))
    _stroke(image, joints[J["neck"]], head_centre, skin, int(width))
    _disc(image, head_centre, head_radius, skin)
    if person.facing_front:  # eyes: the face is the cue that this is the person's front
        for s in (-1, 1):
            _disc(image, head_centre + up * 0.2 * head_radius + s * person.right_on_screen * 0.4 * head_radius,
                  max(1.0, 0.18 * head_radius), (20, 20, 20))  # fmt: skip
    else:  # hair
        _disc(image, head_centre + up * 0.25 * head_radius, 0.8 * head_radius, (60, 40, 20))
    for points, colour, behind in limbs:
        if not behind:
            draw_limb(points, colour)

    visibility = np.full(14, 2, np.uint8)
    for points, _, behind in limbs:
        if behind:
            for name in points[1:]:
                if cv2.pointPolygonTest(torso_polygon.astype(np.float32), tuple(joints[J[name]]), False) >= 0:
                    visibility[J[name]] = 1
    return visibility


def _bystander(rng: np.random.Generator, target: Person, size: int) -> Person:
    """Another person beside the target, overlapping it: limbs interleave with the target's."""
    height = target.height * rng.uniform(0.85, 1.15)
    offset = target.height * rng.uniform(0.35, 0.7) * _unit(rng.uniform(0, 2 * np.pi))
    return _pose(rng, size, height=height, centre=size / 2 + offset)


def draw_person(
    rng: np.random.Generator, size: int = CROP_SIZE, bystanders: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """One synthetic image: (image RGB uint8, joints (14, 2), visibility (14,), centre, scale).

    The target person is centred (the crop's centre, as the centre map assumes). With
    `bystanders` > 0, up to that many other people stand behind it, half of them in the
    target's colours (team-mates, as in LSP's sports photos): only the target is annotated, and
    parts of the wrong person can only be rejected through the pose they belong to.
    """
    target = _pose(rng, size)
    image = _background(rng, size)
    _distractors(rng, image, target.limb_width, count=int(rng.integers(6, 12)))
    palette = _palette(rng)
    # No random draw at all without bystanders: the default set stays what it always was.
    for _ in range(int(rng.integers(0, bystanders + 1)) if bystanders else 0):
        other = _bystander(rng, target, size)
        _draw(rng, image, other, palette if rng.random() < 0.5 else _palette(rng))
    visibility = _draw(rng, image, target, palette)
    joints = target.joints
    outside = ((joints < -0.5) | (joints > size - 0.5)).any(axis=1)
    visibility[outside] = 0
    # Like a real annotation, the stored scale is an estimate (within about +-10%).
    scale = target.height / 200.0 * rng.uniform(0.9, 1.1)
    return image, joints.astype(np.float32), visibility, target.centre.astype(np.float32), scale


def write_split(out: Path, split: str, count: int, seed: int, encoding: str, bystanders: int = 0) -> Path:
    path = out / f"{split}.h5"
    provenance = {
        "converter": "data_prep.synthetic",
        "converter_version": 1,
        "options": {"seed": seed, "count": count, "crop_size": CROP_SIZE, "bystanders": bystanders},
        "source_checksums": {},
        "skipped": {},
    }
    with CropWriter(
        path,
        dataset="synthetic",
        split=split,
        joint_names=list(LSP14.joint_names),
        flip_pairs=list(LSP14.flip_pairs),
        crop_size=(CROP_SIZE, CROP_SIZE),
        image_encoding=encoding,
        provenance=provenance,
    ) as writer:
        for i in tqdm(range(count), desc=f"synthetic {split}", unit="img", mininterval=1.0):
            rng = np.random.default_rng((seed, SPLITS[split], i))
            image, joints, visibility, centre, scale = draw_person(rng, bystanders=bystanders)
            writer.add(
                CropSample(
                    image=image,
                    joints=joints,
                    visibility=visibility,
                    centre=centre,
                    scale=scale,
                    crop_to_source=np.array([[1.0, 0, 0], [0, 1.0, 0]]),  # the crop is the image
                    source_image=f"synthetic_{split}_{i:06d}",
                    source_index=(i, 0),
                )
            )
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("data/synthetic"), help="output directory")
    parser.add_argument("--train", type=int, default=6000, help="training samples")
    parser.add_argument("--val", type=int, default=500, help="validation samples")
    parser.add_argument("--test", type=int, default=500, help="test samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoding", choices=("raw", "jpeg"), default="raw")
    parser.add_argument(
        "--bystanders", type=int, default=0, help="up to this many other, unannotated people behind the target"
    )


def run(args: argparse.Namespace) -> int:
    start = time.time()
    for split in SPLITS:
        path = write_split(args.out, split, getattr(args, split), args.seed, args.encoding, args.bystanders)
        print(f"wrote {path} ({getattr(args, split)} samples, {path.stat().st_size / 2**20:.1f} MiB)")
    print(f"synthetic set done in {time.time() - start:.1f} s")
    return 0
