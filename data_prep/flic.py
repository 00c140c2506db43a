"""FLIC -> train / val / test crops (the release's 9 joints), the paper's FLIC protocol.

    python -m data_prep flic --root FLIC_DIR --out data/flic [--left-right release|as_annotated]

Layout (as FLIC ships): FLIC_DIR/examples.mat (struct array `examples`: coords 2 x 29 with NaN
in unused slots, filepath, imgdims, torsobox, istrain, istest) and FLIC_DIR/images/<filepath>.
3987 training examples (minus a seeded validation split) and 1016 test examples.

Joints: shoulders, elbows, wrists, hips and the nose as "head" (eyes dropped), all visible.
Left/right (--left-right, recorded in each file's provenance as options.left_right):
  release       (default, for the paper's numbers) the release's rule: where the annotated right
                shoulder lies right of the left one in the image, every left/right label of the
                person is swapped, so each person is labelled as if facing the camera. FLIC has
                247 such people of 5003 (199 of the 3987 istrain, 48 of the 1016 istest).
  as_annotated  examples.mat's labels as they are (the stacked-hourglass authors' person-centric
                FLIC file holds these).

Centre and scale from the torso box (x1, y1, x2, y2), for every split as the release did:
centre = ((x1 + x2) / 2, 0.7 y1 + 0.3 y2), scale = 0.0110 * torso height, i.e. a "person
height" (scale * 200) of 2.2 torso heights: at the 368 input the torso becomes
TARGET_DIST * 200 / 2.2 = 106 px, leaving room for the head and raised arms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cpm_lightning.data.skeletons import FLIC9
from data_prep.common import (
    ErrorPolicy,
    Person,
    SourceDataError,
    add_common_arguments,
    load_mat,
    reports_source_errors,
    require_finite,
    validation_split,
    write_splits,
)

# examples.mat coords columns (1-based slots 1-6, 7, 10, 17) in FLIC9's order.
FLIC_SLOTS = {
    "l_shoulder": 1, "l_elbow": 2, "l_wrist": 3, "r_shoulder": 4, "r_elbow": 5, "r_wrist": 6,
    "l_hip": 7, "r_hip": 10, "head": 17,
}  # fmt: skip
COORD_COLUMNS = [FLIC_SLOTS[name] - 1 for name in FLIC9.joint_names]
LEFT_RIGHT_CONVENTIONS = ("release", "as_annotated")
SCALE_PER_TORSO_PX = 0.0110
CENTRE_TOP_WEIGHT = 0.7


def read_examples(path: Path) -> list:
    mat = load_mat(path, "FLIC annotation file")
    if "examples" not in mat:
        raise SourceDataError(f"FLIC annotation file {path} has no 'examples' struct array (it has {sorted(mat)}).")
    return list(np.atleast_1d(mat["examples"]))


def example_person(example, n: int, root: Path, source: Path, left_right: str) -> Person:
    """One FLIC example; MATLAB 1-based coordinates become 0-based here, once."""
    entry = f"{source} examples({n}) ({example.filepath})"
    coords = np.asarray(example.coords, np.float64)
    if coords.shape != (2, 29):
        raise SourceDataError(f"{entry}: coords has shape {coords.shape}, expected 2 x 29.")
    joints = coords[:, COORD_COLUMNS].T - 1.0
    torso = np.asarray(example.torsobox, np.float64).reshape(-1) - 1.0
    image_path = root / "images" / str(example.filepath)
    require_finite(joints, "joint coordinate", entry, image_path)
    require_finite(torso, "torso box", entry, image_path)
    if left_right == "release" and right_shoulder_on_image_right(joints):
        joints = joints[FLIC9.flip_permutation]  # labelled as if facing the camera, as the release
    x1, y1, x2, y2 = torso
    return Person(
        image_path=image_path,
        entry=entry,
        joints=joints,
        states=np.full(FLIC9.num_joints, 2, np.uint8),
        centre=np.array([(x1 + x2) / 2, CENTRE_TOP_WEIGHT * y1 + (1 - CENTRE_TOP_WEIGHT) * y2]),
        scale=SCALE_PER_TORSO_PX * (y2 - y1),
        source_index=(n, 1),
    )


def right_shoulder_on_image_right(joints: np.ndarray) -> bool:
    """The release's swap test: the annotated right shoulder lies right of the left one in the
    image, where a person facing the camera has it on the image's left."""
    return bool(joints[FLIC9.index("r_shoulder"), 0] > joints[FLIC9.index("l_shoulder"), 0])


def flic_splits(
    root: Path, seed: int, val_fraction: float, policy: ErrorPolicy, left_right: str
) -> dict[str, list[Person]]:
    if left_right not in LEFT_RIGHT_CONVENTIONS:
        raise ValueError(f"left_right must be one of {LEFT_RIGHT_CONVENTIONS}, got {left_right!r}")
    source = root / "examples.mat"
    examples = read_examples(source)
    train_examples = [(n, e) for n, e in enumerate(examples, start=1) if e.istrain]
    test_examples = [(n, e) for n, e in enumerate(examples, start=1) if e.istest]
    held_out = validation_split(len(train_examples), val_fraction, seed)
    splits: dict[str, list[Person]] = {"train": [], "val": [], "test": []}
    for (n, example), is_val in zip(train_examples, held_out):
        person = policy.attempt(f"examples({n})", lambda e=example, n=n: example_person(e, n, root, source, left_right))
        if person is not None:
            splits["val" if is_val else "train"].append(person)
    for n, example in test_examples:
        person = policy.attempt(f"examples({n})", lambda e=example, n=n: example_person(e, n, root, source, left_right))
        if person is not None:
            splits["test"].append(person)
    return splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, required=True, help="FLIC folder: examples.mat and images/")
    parser.add_argument(
        "--left-right",
        choices=LEFT_RIGHT_CONVENTIONS,
        default="release",
        help="release (default): swap a person's left/right labels where the right shoulder lies right of "
        "the left one, as the release did; as_annotated: keep examples.mat's labels (see above)",
    )
    add_common_arguments(parser)


@reports_source_errors
def run(args: argparse.Namespace) -> int:
    policy = ErrorPolicy(args.on_error)
    splits = flic_splits(args.root, args.seed, args.val_fraction, policy, args.left_right)
    options = {"seed": args.seed, "val_fraction": args.val_fraction, "left_right": args.left_right}
    write_splits(args.out, "flic", FLIC9, splits, policy, options, [args.root / "examples.mat"], args.workers)
    return 0
