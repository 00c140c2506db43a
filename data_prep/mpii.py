"""MPII Human Pose -> train / val crops (LSP14 joints), the paper's MPII protocol.

    python -m data_prep mpii --annotations MPII_DIR/mpii_human_pose_v1_u12_1.mat \\
        --images MPII_DIR/images --out data/mpii

One sample per annotated person of the training images; centre and scale from the annotation
(objpos; scale = person height / 200 px). The 2958 people of Tompson's validation split
(cpm_lightning/resources/mpii_val_split.csv) go to val.h5, everyone else to train.h5; MPII's
test images have no public joints, so there is no test file. Other annotated people whose
joints reach into a subject's crop are stored with it (stage-1 labels).

Annotation forms read (all MATLAB 1-based; every coordinate becomes 0-based on read, once):
    official .mat   RELEASE.annolist(i).image.name, .annorect(j) with x1, y1, x2, y2 (head box),
                    scale, objpos.x/y, annopoints.point(k) with id, x, y, is_visible;
                    RELEASE.img_train(i). Head boxes included: PCKh works.
    genJSON .json   the release's mpii_annotations.json (a list, or {"root": [...]}): img_paths,
                    joint_self (16 x [x, y, visible]; [0, 0, 0] = not annotated), objpos,
                    scale_provided, annolist_index, people_index. No head boxes.
    mmpose .json    mpii_train.json / mpii_val.json: image, joints (16 x 2; -1 = missing),
                    joints_vis, center, scale; the split is the file's (its name says train or val).
                    No head boxes, no is_visible (annotated joints are stored as visible).
Head boxes for the JSON forms: --head-boxes with the official .mat, or mmpose's
mpii_gt_val.mat (headboxes_src, in the validation split's order). Without them head_size is
NaN and PCKh cannot be computed.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

import cpm_lightning
from cpm_lightning.data.skeletons import LSP14
from data_prep.common import (
    ErrorPolicy,
    Person,
    SourceDataError,
    UnusableEntry,
    add_common_arguments,
    attach_others,
    load_mat,
    reports_source_errors,
    require_finite,
    write_splits,
)

MPII_ORDER = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)  # fmt: skip
# LSP14's neck is MPII's upper neck; pelvis and thorax are dropped (the release's 14 parts).
MPII_TO_LSP14 = [MPII_ORDER.index("upper_neck" if name == "neck" else name) for name in LSP14.joint_names]
VAL_SPLIT_CSV = Path(cpm_lightning.__file__).parent / "resources" / "mpii_val_split.csv"
TOMPSON_VAL_PEOPLE = 2958

ReleaseIndex = tuple[int, int]  # (i of annolist(i), j of annorect(j)), 1-based as in the .mat


def validation_people() -> list[ReleaseIndex]:
    """Tompson's validation split in its published order."""
    rows = [line for line in VAL_SPLIT_CSV.read_text().splitlines() if line and not line.startswith("#")]
    return [(int(i), int(j)) for i, j in (row.split(",") for row in rows[1:])]


def _items(value) -> list:
    """A MATLAB struct array as a list, whatever squeeze_me made of it (one struct, an
    array of them, or an empty array)."""
    if isinstance(value, np.ndarray):
        return list(value.flat)
    return [] if value is None else [value]


def _field(struct, name: str):
    """A struct field, or None where it is absent or empty ([] in MATLAB)."""
    value = getattr(struct, name, None)
    if isinstance(value, np.ndarray) and value.size == 0:
        return None
    if isinstance(value, str) and value == "":
        return None
    return value


def _is_visible(value) -> bool:
    """MPII's is_visible is 0/1, '0'/'1' or empty; the release counts all but 0 as visible."""
    if value is None:
        return True
    return str(np.asarray(value).reshape(-1)[0]).strip() not in ("0", "0.0")


def _person(
    image_path: Path, entry: str, joints16: np.ndarray, states16: np.ndarray, centre, scale, index: ReleaseIndex
) -> Person:
    """A Person in LSP14 order from MPII's 16 joints, all still 1-based: they become 0-based here."""
    if centre is None or scale is None:
        raise UnusableEntry(f"{entry} has no objpos or scale.")
    centre = np.asarray(centre, np.float64) - 1.0
    require_finite(joints16[states16 > 0], "joint coordinate", entry, image_path)
    require_finite(np.append(centre, float(scale)), "objpos or scale", entry, image_path)
    joints = np.where(states16[:, None] > 0, joints16 - 1.0, 0.0)
    return Person(
        image_path=image_path,
        entry=entry,
        joints=joints[MPII_TO_LSP14],
        states=states16[MPII_TO_LSP14].astype(np.uint8),
        centre=centre,
        scale=float(scale),
        source_index=index,
    )


def _head_box(rect) -> np.ndarray | None:
    corners = [_field(rect, k) for k in ("x1", "y1", "x2", "y2")]
    if any(c is None for c in corners):
        return None
    return np.asarray(corners, np.float64) - 1.0


def read_annorect(rect, image_path: Path, entry: str, index: ReleaseIndex) -> Person | None:
    """One annorect of the official layout; None if it has no annotated joints."""
    annopoints = _field(rect, "annopoints")
    points = _items(_field(annopoints, "point")) if annopoints is not None else []
    if not points:
        return None
    joints16, states16 = np.zeros((16, 2)), np.zeros(16, np.uint8)
    for point in points:
        k = int(point.id)
        joints16[k] = float(point.x), float(point.y)
        states16[k] = 2 if _is_visible(_field(point, "is_visible")) else 1
    objpos = _field(rect, "objpos")
    centre = None if objpos is None else (float(objpos.x), float(objpos.y))
    person = _person(image_path, entry, joints16, states16, centre, _field(rect, "scale"), index)
    person.head_box = _head_box(rect)
    return person


def read_official(path: Path, images: Path, policy: ErrorPolicy) -> list[Person]:
    """People of the training images of mpii_human_pose_v1_u12_1.mat (RELEASE struct)."""
    mat = load_mat(path, "MPII annotation file")
    if "RELEASE" not in mat:
        raise SourceDataError(f"MPII annotation file {path} has no RELEASE struct (it has {sorted(mat)}).")
    release = mat["RELEASE"]
    annolist, img_train = _items(release.annolist), np.atleast_1d(release.img_train)
    if len(annolist) != len(img_train):
        raise SourceDataError(f"{path}: RELEASE.annolist has {len(annolist)} images, img_train {len(img_train)}.")
    people = []
    for i, (image, is_train) in enumerate(zip(annolist, img_train), start=1):
        if not is_train:  # test images: no public joints
            continue
        image_path = images / str(image.image.name)
        for j, rect in enumerate(_items(_field(image, "annorect")), start=1):
            entry = f"{path} annolist({i}).annorect({j})"
            person = policy.attempt(entry, lambda r=rect, p=image_path, e=entry, ij=(i, j): read_annorect(r, p, e, ij))
            if person is not None:
                people.append(person)
    return people


def read_genjson(path: Path, entries: list[dict], images: Path, policy: ErrorPolicy) -> list[Person]:
    """The release's mpii_annotations.json: joint_self [0, 0, 0] = not annotated."""
    people = []
    for n, item in enumerate(entries):
        entry = f"{path} entry {n} ({item.get('img_paths')})"

        def make(item=item, entry=entry) -> Person:
            joint_self = np.asarray(item["joint_self"], np.float64).reshape(16, 3)
            annotated = ~((joint_self[:, 0] == 0) & (joint_self[:, 1] == 0) & (joint_self[:, 2] == 0))
            states = np.where(annotated, np.where(joint_self[:, 2] > 0, 2, 1), 0)
            index = (int(item["annolist_index"]), int(item["people_index"]))
            image_path = images / item["img_paths"]
            return _person(image_path, entry, joint_self[:, :2], states, item["objpos"], item["scale_provided"], index)

        person = policy.attempt(entry, make)
        if person is not None:
            people.append(person)
    return people


def read_mmpose(path: Path, entries: list[dict], images: Path, policy: ErrorPolicy) -> tuple[list[Person], bool]:
    """mmpose's mpii_{train,val}.json (joints -1 = missing) and whether it is the val file.

    Despite the look, its coordinates are MATLAB 1-based like the official file's (they are
    equal number for number; mmpose's own loader subtracts 1). The val file lists Tompson's
    split in order, so its entry k is the k-th person of mpii_val_split.csv.
    """
    words = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    if ("val" in words) == ("train" in words):
        raise SourceDataError(
            f"{path}: the name of an mmpose-form MPII file must say its split, train or val (mmpose "
            f"ships mpii_train.json and mpii_val.json); its entries do not."
        )
    is_val = "val" in words
    val_people = validation_people()
    people = []
    for n, item in enumerate(entries):
        entry = f"{path} entry {n} ({item.get('image')})"

        def make(item=item, entry=entry, n=n) -> Person:
            joints = np.asarray(item["joints"], np.float64).reshape(16, 2)
            states = np.where(np.asarray(item["joints_vis"]).reshape(16) > 0, 2, 0)
            index = val_people[n] if is_val and n < len(val_people) else (-1, n)
            return _person(images / item["image"], entry, joints, states, item["center"], item["scale"], index)

        person = policy.attempt(entry, make)
        if person is not None:
            people.append(person)
    return people, is_val


def read_head_boxes(path: Path) -> dict[ReleaseIndex, np.ndarray]:
    """0-based head boxes by release index, from the official .mat or mmpose's mpii_gt_val.mat."""
    mat = load_mat(path, "Head-box file")
    if "RELEASE" in mat:
        boxes = {}
        for i, image in enumerate(_items(mat["RELEASE"].annolist), start=1):
            for j, rect in enumerate(_items(_field(image, "annorect")), start=1):
                box = _head_box(rect)
                if box is not None:
                    boxes[(i, j)] = box
        return boxes
    if "headboxes_src" in mat:
        corners = np.asarray(mat["headboxes_src"], np.float64)  # (corner, xy, person)
        if corners.ndim != 3 or corners.shape[:2] != (2, 2):
            raise SourceDataError(f"Head-box file {path}: headboxes_src has shape {corners.shape}, expected 2 x 2 x N.")
        people = validation_people()
        return {people[k]: corners[:, :, k].reshape(4) - 1.0 for k in range(min(len(people), corners.shape[2]))}
    raise SourceDataError(f"Head-box file {path} has neither a RELEASE struct nor headboxes_src.")


def read_annotations(paths: list[Path], images: Path, policy: ErrorPolicy) -> tuple[list[Person], list[Person]]:
    """(train people, val people) from any mix of the three forms."""
    train, val = [], []
    val_people = set(validation_people())
    for path in paths:
        if path.suffix == ".mat":
            people = read_official(path, images, policy)
            split_of = None
        else:
            people, split_of = _read_json(path, images, policy)
        for person in people:
            is_val = person.source_index in val_people if split_of is None else split_of
            (val if is_val else train).append(person)
    return train, val


def _read_json(path: Path, images: Path, policy: ErrorPolicy) -> tuple[list[Person], bool | None]:
    if not path.is_file():
        raise SourceDataError(f"MPII annotation file {path} does not exist.")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SourceDataError(f"MPII annotation file {path} is not valid JSON ({err}).") from None
    entries = data["root"] if isinstance(data, dict) and "root" in data else data
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise SourceDataError(f"MPII annotation file {path}: expected a list of per-person entries.")
    if "joint_self" in entries[0]:
        return read_genjson(path, entries, images, policy), None
    if "joints_vis" in entries[0]:
        return read_mmpose(path, entries, images, policy)
    raise SourceDataError(
        f"MPII annotation file {path}: entries have keys {sorted(entries[0])}; expected the release's "
        f"genJSON form (joint_self, objpos, ...) or mmpose's (joints, joints_vis, center, scale)."
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--annotations", type=Path, nargs="+", required=True,
        help="mpii_human_pose_v1_u12_1.mat, mpii_annotations.json, or mmpose's mpii_train.json mpii_val.json",
    )  # fmt: skip
    parser.add_argument("--images", type=Path, required=True, help="MPII images/ folder")
    parser.add_argument(
        "--head-boxes", type=Path, help="head-box source for the JSON forms (official .mat or mpii_gt_val.mat)"
    )
    add_common_arguments(parser, seeded_split=False)  # the split is Tompson's, fixed


@reports_source_errors
def run(args: argparse.Namespace) -> int:
    policy = ErrorPolicy(args.on_error)
    train, val = read_annotations(args.annotations, args.images, policy)
    if args.head_boxes is not None:
        boxes = read_head_boxes(args.head_boxes)
        for person in train + val:
            if person.head_box is None and person.source_index in boxes:
                person.head_box = boxes[person.source_index]
    attach_others(train + val)
    if len(val) != TOMPSON_VAL_PEOPLE:
        print(f"note: {len(val)} validation people found; the full dataset has {TOMPSON_VAL_PEOPLE}")
    sources = list(args.annotations) + ([args.head_boxes] if args.head_boxes else [])
    options = {"head_boxes": args.head_boxes is not None}
    write_splits(args.out, "mpii", LSP14, {"train": train, "val": val}, policy, options, sources, args.workers)
    return 0
