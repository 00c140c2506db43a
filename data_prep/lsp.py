"""LSP + LSPET (person-centric) -> train / val / test crops, the paper's LSP protocol.

    python -m data_prep lsp --lsp-root LSP_DIR [--lspet-root LSPET_DIR] --out data/lsp

train = LSP images 1-1000 + all LSPET images, minus a seeded validation split (5% of those
people); test = LSP images 1001-2000. Expected layout (as the datasets ship):
    LSP_DIR/joints.mat     `joints` 3 x 14 x 2000 (x, y, flag; flag 0 = visible)
    LSP_DIR/images/im0001.jpg ... im2000.jpg
    LSPET_DIR/joints.mat   `joints` 14 x 3 x 10000 (x, y, flag; flag 1 = visible)
    LSPET_DIR/images/im00001.jpg ... im10000.jpg

Centre and scale (docs/datasets.md derives the constants)
    train / val, as the release: LSP people are centred on the image centre (LSP images are
        cut around their person), LSPET people on the box of their visible joints; the scale
        comes from limb lengths (0.75-quantile of the visible limbs, each divided by its
        dataset median, times the height of a median person), raised where needed so that
        the visible joints fit in the central 304 px of the 368 input.
    test: never from the joints. Image centre; the release resizes the image so that its
        height becomes 0.8 * 368 px, which is the person scale TARGET_DIST * H / (0.8 * 368).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cpm_lightning.data.augment import TARGET_DIST
from cpm_lightning.data.skeletons import LSP14
from data_prep.common import (
    PAPER_INPUT_SIZE,
    ErrorPolicy,
    Person,
    SourceDataError,
    UnusableEntry,
    add_common_arguments,
    image_size,
    load_mat,
    reports_source_errors,
    require_finite,
    validation_split,
    write_splits,
)

# The order both joints.mat files use (their READMEs).
NATIVE_ORDER = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
    "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
    "neck", "head_top",
)  # fmt: skip
NATIVE_TO_LSP14 = [NATIVE_ORDER.index(name) for name in LSP14.joint_names]
LSP_TRAIN_IMAGES = 1000  # LSP images 1-1000 train, 1001-2000 test
LSP_IMAGES = 2000
TEST_IMAGE_HEIGHT = 0.8 * PAPER_INPUT_SIZE  # release test rule: the image height becomes this
FIT_EXTENT = 304.0  # release: visible joints fit in the central 304 px of the 368 input
LIMB_QUANTILE = 0.75
# Limbs that stack into a standing height: head, torso, thigh, shin (each side averaged).
STANDING_CHAIN = (
    (("head_top", "neck"),),
    (("r_shoulder", "r_hip"), ("l_shoulder", "l_hip")),
    (("r_hip", "r_knee"), ("l_hip", "l_knee")),
    (("r_knee", "r_ankle"), ("l_knee", "l_ankle")),
)


def read_joints(path: Path) -> np.ndarray:
    """`joints` of an LSP or LSPET joints.mat as (N, 14, 3) in the file's joint order.

    LSP ships 3 x 14 x N and LSPET 14 x 3 x N; some re-distributions use N x 14 x 3.
    """
    mat = load_mat(path, "Joint file")
    if "joints" not in mat:
        raise SourceDataError(f"Joint file {path} has no variable 'joints' (it has {sorted(mat)}).")
    joints = np.asarray(mat["joints"], np.float64)
    if joints.ndim == 3 and joints.shape[:2] == (3, 14):
        return joints.transpose(2, 1, 0)
    if joints.ndim == 3 and joints.shape[:2] == (14, 3):
        return joints.transpose(2, 0, 1)
    if joints.ndim == 3 and joints.shape[1:] == (14, 3):
        return joints
    raise SourceDataError(
        f"Joint file {path}: 'joints' has shape {joints.shape}; expected 3 x 14 x N (LSP), "
        f"14 x 3 x N (LSPET) or N x 14 x 3."
    )


def annotations(path: Path, images: Path, name_format: str, visible_flag: int, invisible_state: int) -> list[Person]:
    """Every entry of a joints.mat as a Person without centre and scale yet.

    Coordinates are MATLAB 1-based; they become 0-based here, once. LSP's flag is 0 on visible
    joints (the release's visibility is 1 - flag) and LSP places occluded joints too, so they
    are 1 (annotated, occluded). LSPET's flag is 1 on visible joints; its other joints are
    placeholders (every one in the sample lies at x <= 0 or y <= 0, off the image), so they
    are 0 (not annotated): labelled, they would teach the network joints in the padding.
    """
    raw = read_joints(path)
    people = []
    for i, entry in enumerate(raw, start=1):
        joints = entry[NATIVE_TO_LSP14, :2] - 1.0
        visible = entry[NATIVE_TO_LSP14, 2] == visible_flag
        people.append(
            Person(
                image_path=images / (name_format % i),
                entry=f"{path} entry {i}",
                joints=joints,
                states=np.where(visible, 2, invisible_state).astype(np.uint8),
                centre=np.full(2, np.nan),
                scale=float("nan"),
                source_index=(i, 1),
            )
        )
    return people


def limb_medians(people: list[Person]) -> dict[tuple[str, str], float]:
    """Median length of each limb over the people on whom both its ends are visible."""
    medians = {}
    for a, b in _limb_names():
        ia, ib = LSP14.index(a), LSP14.index(b)
        lengths = [
            np.linalg.norm(p.joints[ia] - p.joints[ib]) for p in people if p.states[ia] == 2 and p.states[ib] == 2
        ]
        medians[(a, b)] = float(np.median(lengths)) if lengths else float("nan")
    return medians


def _limb_names() -> list[tuple[str, str]]:
    return [(LSP14.joint_names[a], LSP14.joint_names[b]) for a, b in LSP14.limbs]


def standing_height(medians: dict[tuple[str, str], float]) -> float:
    """Head top to ankle of a person whose every limb has its dataset-median length."""
    return float(sum(np.nanmean([medians[limb] for limb in segment]) for segment in STANDING_CHAIN))


def limb_scale(person: Person, medians: dict[tuple[str, str], float], height: float) -> float:
    """The release's scale estimate: how much longer than median this person's limbs are
    (0.75-quantile over visible limbs: robust to foreshortened ones) times a median height,
    raised where needed so that the visible joints fit in FIT_EXTENT px around the centre."""
    ratios = []
    for (a, b), median in medians.items():
        ia, ib = LSP14.index(a), LSP14.index(b)
        if person.states[ia] == 2 and person.states[ib] == 2 and median > 0:
            ratios.append(np.linalg.norm(person.joints[ia] - person.joints[ib]) / median)
    if not ratios:
        raise UnusableEntry(f"{person.entry} has no visible limbs, so no scale can be estimated.")
    scale = float(np.quantile(ratios, LIMB_QUANTILE)) * height / 200.0
    visible = person.joints[person.states == 2]
    half_extent = float(np.abs(visible - person.centre).max())
    # At scale s a source pixel becomes TARGET_DIST / s input pixels (augment.py).
    return max(scale, TARGET_DIST * half_extent / (FIT_EXTENT / 2))


def image_centre(person: Person) -> np.ndarray:
    """The middle of the image, in 0-based pixel centres."""
    height, width = image_size(person.image_path, person.entry)
    return np.array([(width - 1) / 2.0, (height - 1) / 2.0])


def visible_box_centre(person: Person) -> np.ndarray:
    visible = person.joints[person.states == 2]
    if len(visible) == 0:
        raise UnusableEntry(f"{person.entry} has no visible joints, so no centre can be estimated.")
    return (visible.min(axis=0) + visible.max(axis=0)) / 2.0


def with_training_geometry(
    person: Person, centre_rule: Callable[[Person], np.ndarray], medians: dict, height: float
) -> Person:
    require_finite(person.joints, "joint coordinate", person.entry, person.image_path)
    person.centre = centre_rule(person)
    person.scale = limb_scale(person, medians, height)
    return person


def with_test_geometry(person: Person) -> Person:
    """Image centre and image-height scale: nothing from the ground-truth joints."""
    require_finite(person.joints, "joint coordinate", person.entry, person.image_path)
    person.centre = image_centre(person)
    image_height = 2.0 * person.centre[1] + 1.0
    person.scale = TARGET_DIST * image_height / TEST_IMAGE_HEIGHT
    return person


def lsp_splits(
    lsp_root: Path, lspet_root: Path | None, seed: int, val_fraction: float, policy: ErrorPolicy
) -> dict[str, list[Person]]:
    """People of each split with the protocol's centre and scale, in annotation order."""
    lsp = annotations(lsp_root / "joints.mat", lsp_root / "images", "im%04d.jpg", visible_flag=0, invisible_state=1)
    if len(lsp) != LSP_IMAGES:
        raise SourceDataError(
            f"{lsp_root / 'joints.mat'} has {len(lsp)} entries; LSP has {LSP_IMAGES} (1-1000 train, 1001-2000 test)."
        )
    lspet = []
    if lspet_root is not None:
        lspet = annotations(
            lspet_root / "joints.mat", lspet_root / "images", "im%05d.jpg", visible_flag=1, invisible_state=0
        )
    train_lsp, test_lsp = lsp[:LSP_TRAIN_IMAGES], lsp[LSP_TRAIN_IMAGES:]
    training = train_lsp + lspet
    finite = [p for p in training if np.isfinite(p.joints).all()]
    medians = limb_medians(finite)
    height = standing_height(medians)
    centre_rules = [image_centre] * len(train_lsp) + [visible_box_centre] * len(lspet)
    # The split is drawn over all training entries before any is skipped, so it does not
    # depend on which images happen to be present.
    held_out = validation_split(len(training), val_fraction, seed)
    splits: dict[str, list[Person]] = {"train": [], "val": []}
    for person, rule, is_val in zip(training, centre_rules, held_out):
        ready = policy.attempt(person.entry, lambda p=person, r=rule: with_training_geometry(p, r, medians, height))
        if ready is not None:
            splits["val" if is_val else "train"].append(ready)
    splits["test"] = [p for p in (policy.attempt(p.entry, lambda p=p: with_test_geometry(p)) for p in test_lsp) if p]
    return splits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lsp-root", type=Path, required=True, help="LSP folder: joints.mat and images/")
    parser.add_argument("--lspet-root", type=Path, help="LSPET folder: joints.mat and images/ (training only)")
    add_common_arguments(parser)


@reports_source_errors
def run(args: argparse.Namespace) -> int:
    policy = ErrorPolicy(args.on_error)
    splits = lsp_splits(args.lsp_root, args.lspet_root, args.seed, args.val_fraction, policy)
    sources = [args.lsp_root / "joints.mat"] + ([args.lspet_root / "joints.mat"] if args.lspet_root else [])
    options = {"seed": args.seed, "val_fraction": args.val_fraction, "lspet": args.lspet_root is not None}
    write_splits(args.out, "lsp", LSP14, splits, policy, options, sources, args.workers)
    return 0
