"""What every real-dataset converter shares: reading sources, cutting crops, writing the splits.

A converter turns its annotation file into `Person` records (source-image pixels, 0-based, in
the output skeleton's joint order, centre and scale already chosen by its protocol) and hands
them to `write_splits`, which reads the images on all cores, cuts one crop per person and
writes one HDF5 file per split through `CropWriter` (atomic: nothing half-written at the path).

Crop geometry (docs/datasets.md has the derivation)
    Every person is resampled so that the person height (scale * 200 source px) becomes
    STORED_PERSON_HEIGHT = TARGET_DIST * 200 = 234.2 crop px: one crop pixel is one network
    input pixel at 368x368 without augmentation, so the stored crop holds exactly the detail
    the network sees at scale factor 1. The crop is a square of side CROP_SIZE centred on the
    person centre, large enough that the 368x368 input window at the smallest augmentation
    scale (0.7) rotated by up to 40 degrees still falls inside it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import math
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from cpm_lightning.data.augment import BORDER_VALUE, TARGET_DIST, compose_affine, invert_affine
from cpm_lightning.data.h5format import CropSample, CropWriter
from cpm_lightning.data.skeletons import Skeleton
from cpm_lightning.errors import UserFacingError

PAPER_INPUT_SIZE = 368
MIN_SCALE_FACTOR = 0.7  # smallest augmentation zoom (release: U(0.7, 1.3))
MAX_ROTATION_DEG = 40.0  # release: U(-40, 40)
STORED_PERSON_HEIGHT = TARGET_DIST * 200.0  # crop px per person height (scale * 200)
STORED_SCALE = STORED_PERSON_HEIGHT / 200.0  # = TARGET_DIST: the scale every stored crop has


def _crop_size() -> int:
    """Side of the square crop that contains every augmented 368x368 input window.

    At scale factor 0.7 the input window covers 368 / 0.7 = 525.7 crop px; rotated by 40
    degrees its bounding box grows by cos 40 + sin 40 = 1.409, to 740.7 px. Rounded up to even.
    """
    window = PAPER_INPUT_SIZE / MIN_SCALE_FACTOR
    theta = math.radians(MAX_ROTATION_DEG)
    side = window * (math.cos(theta) + math.sin(theta))
    return 2 * math.ceil(side / 2)


CROP_SIZE = _crop_size()  # 742
DEFAULT_JPEG_QUALITY = 90  # measured: docs/datasets.md (bytes), docs/hdf5-format.md (decode time)
DEFAULT_VAL_FRACTION = 0.05


class SourceDataError(UserFacingError, ValueError):
    """A source file or entry is missing, malformed or undecodable; the message names both."""


class UnusableEntry(SourceDataError):
    """A well-formed entry the protocol cannot use (e.g. no visible joints): always skipped."""


# ---------------------------------------------------------------------------------------------
# Reading sources


def load_mat(path: Path, what: str) -> dict:
    """A MATLAB v5 file as nested Python objects (structs as attribute objects, squeezed)."""
    path = Path(path)
    if not path.is_file():
        raise SourceDataError(f"{what} {path} does not exist. Check the path (docs/datasets.md shows the layout).")
    try:
        return scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except NotImplementedError:
        raise SourceDataError(
            f"{what} {path} is a MATLAB v7.3 (HDF5) file; re-save it in MATLAB with "
            f"save(..., '-v7') or use the file as the dataset ships it."
        ) from None
    except (ValueError, TypeError, OSError) as err:
        raise SourceDataError(f"{what} {path} cannot be read as a MATLAB file ({err}).") from None


def image_size(path: Path, entry: str) -> tuple[int, int]:
    """(height, width) from the image header alone (no decode)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise SourceDataError(f"Image {path} for {entry} does not exist.") from None
    except OSError as err:
        raise SourceDataError(f"Image {path} for {entry} cannot be read ({err}).") from None
    return height, width


def read_image(path: Path, entry: str) -> np.ndarray:
    """RGB uint8 image, or SourceDataError naming the file and the annotation entry."""
    if not Path(path).is_file():
        raise SourceDataError(f"Image {path} for {entry} does not exist.")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceDataError(f"Image {path} for {entry} does not decode (truncated or not an image).")
    return image[..., ::-1]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_finite(values: np.ndarray, what: str, entry: str, source: Path) -> None:
    if not np.all(np.isfinite(values)):
        raise SourceDataError(f"{source}: {entry} has a NaN or infinite {what} ({np.asarray(values).tolist()}).")


# ---------------------------------------------------------------------------------------------
# People and crops


@dataclass
class Person:
    """One annotated person in source-image pixels (0-based pixel centres).

    `states` uses the format's three values: 2 visible, 1 annotated but occluded, 0 not
    annotated. `others_*` are the other people near this one (stage-1 labels).
    """

    image_path: Path
    entry: str  # how the annotation names this person, for messages ("joints.mat entry 17")
    joints: np.ndarray  # (J, 2)
    states: np.ndarray  # (J,) uint8
    centre: np.ndarray  # (2,)
    scale: float  # person height / 200 source px
    source_index: tuple[int, int]
    head_box: np.ndarray | None = None  # (4,) x1, y1, x2, y2
    others_joints: np.ndarray | None = None  # (P, J, 2)
    others_states: np.ndarray | None = None  # (P, J)


def crop_to_source_affine(centre: np.ndarray, scale: float) -> np.ndarray:
    """2x3 matrix from crop pixels to source pixels: the person centre lands on the crop centre
    and the person height (scale * 200) becomes STORED_PERSON_HEIGHT."""
    source_per_crop = scale * 200.0 / STORED_PERSON_HEIGHT
    middle = (CROP_SIZE - 1) / 2.0
    cx, cy = np.asarray(centre, np.float64)
    return np.array(
        [[source_per_crop, 0.0, cx - source_per_crop * middle], [0.0, source_per_crop, cy - source_per_crop * middle]]
    )


def to_crop(points: np.ndarray, crop_to_source: np.ndarray) -> np.ndarray:
    """Source pixels -> crop pixels (the inverse of the stored crop_to_source)."""
    source_to_crop = cv2.invertAffineTransform(crop_to_source)
    points = np.asarray(points, np.float64)
    return points @ source_to_crop[:, :2].T + source_to_crop[:, 2]


def cut_crop(image: np.ndarray, crop_to_source: np.ndarray) -> np.ndarray:
    """The CROP_SIZE^2 crop, outside the image filled with the release's border value 128.

    Shrinking by more than 2x with a bilinear warp would alias (it samples, it does not
    average), so large reductions first area-average the whole image, then warp the rest.
    """
    source_to_crop = cv2.invertAffineTransform(crop_to_source)
    zoom = source_to_crop[0, 0]
    if zoom < 0.5:
        height, width = image.shape[:2]
        small = cv2.resize(
            image, (max(1, round(width * zoom)), max(1, round(height * zoom))), interpolation=cv2.INTER_AREA
        )
        # cv2.resize maps pixel centres as x_small = f x + (f - 1) / 2, per axis f = size ratio.
        fx, fy = small.shape[1] / width, small.shape[0] / height
        source_to_small = np.array([[fx, 0.0, (fx - 1) / 2], [0.0, fy, (fy - 1) / 2]])
        source_to_crop = compose_affine(source_to_crop, invert_affine(source_to_small))
        image = small
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        source_to_crop,
        (CROP_SIZE, CROP_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(BORDER_VALUE,) * 3,
    )


def person_to_sample(person: Person) -> CropSample:
    """Read the person's image and cut its crop; all coordinates move into crop pixels."""
    image = read_image(person.image_path, person.entry)
    crop_to_source = crop_to_source_affine(person.centre, person.scale)
    head_box = None
    if person.head_box is not None:
        corners = to_crop(np.reshape(person.head_box, (2, 2)), crop_to_source)
        head_box = corners.reshape(4)
    others_joints = None
    if person.others_joints is not None and len(person.others_joints):
        others_joints = to_crop(person.others_joints.reshape(-1, 2), crop_to_source).reshape(person.others_joints.shape)
    return CropSample(
        image=cut_crop(image, crop_to_source),
        joints=to_crop(person.joints, crop_to_source),
        visibility=person.states,
        centre=np.full(2, (CROP_SIZE - 1) / 2.0),
        scale=STORED_SCALE,
        crop_to_source=crop_to_source,
        source_image=person.image_path.name,
        source_index=person.source_index,
        head_box=head_box,
        others_joints=others_joints,
        others_visibility=person.others_states,
    )


def others_inside_crop(subject: Person, candidates: list[Person]) -> list[Person]:
    """The people with at least one annotated joint inside the subject's stored crop."""
    crop_to_source = crop_to_source_affine(subject.centre, subject.scale)
    near = []
    for other in candidates:
        joints = to_crop(other.joints, crop_to_source)
        inside = (joints >= -0.5).all(-1) & (joints <= CROP_SIZE - 0.5).all(-1) & (other.states > 0)
        if inside.any():
            near.append(other)
    return near


def attach_others(people: list[Person]) -> None:
    """Give every person the other annotated people of the same image that reach into its crop."""
    by_image: dict[Path, list[Person]] = {}
    for person in people:
        by_image.setdefault(person.image_path, []).append(person)
    for group in by_image.values():
        for subject in group:
            near = others_inside_crop(subject, [p for p in group if p is not subject])
            if near:
                subject.others_joints = np.stack([p.joints for p in near])
                subject.others_states = np.stack([p.states for p in near])


# ---------------------------------------------------------------------------------------------
# Splits, errors and writing


def validation_split(count: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the `fraction` of `count` training people held out for validation,
    the same for a given (count, fraction, seed) on any machine."""
    mask = np.zeros(count, bool)
    chosen = np.random.default_rng(seed).permutation(count)[: round(count * fraction)]
    mask[chosen] = True
    return mask


@dataclass
class ErrorPolicy:
    """What to do with a bad entry: 'stop' (the default) raises its message, 'skip' records
    it (file provenance and the summary list every skipped entry and why) and goes on.
    Entries the protocol cannot use (UnusableEntry) are recorded and skipped in both modes."""

    mode: str = "stop"
    skipped: dict[str, str] = field(default_factory=dict)

    def handle(self, error: SourceDataError, entry: str) -> None:
        if self.mode == "stop" and not isinstance(error, UnusableEntry):
            raise SourceDataError(f"{error} Fix the entry, or pass --on-error skip to leave it out.") from None
        self.skipped[entry] = str(error)

    def attempt(self, entry: str, make: Callable[[], Person]) -> Person | None:
        try:
            return make()
        except SourceDataError as error:
            self.handle(error, entry)
            return None


def _convert(person: Person) -> CropSample | SourceDataError:
    try:
        return person_to_sample(person)
    except SourceDataError as error:  # returned, not raised: the parent applies the policy
        return error


def _worker_pool(workers: int) -> ProcessPoolExecutor | None:
    """Crop processes from a fork server: a plain fork of a process that already runs threads
    (torch, OpenMP, a test runner) can deadlock, and forked workers would hold the output
    HDF5 file open (HDF5 locks it)."""
    if workers <= 1:
        return None
    context = multiprocessing.get_context("forkserver")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=cv2.setNumThreads, initargs=(1,))


def _converted(
    people: list[Person], pool: ProcessPoolExecutor | None, workers: int
) -> Iterator[CropSample | SourceDataError]:
    """Converted people in order. At most a few crops per worker are in flight, so fast
    workers cannot pile up gigabytes of crops while the writer encodes."""
    if pool is None:
        yield from map(_convert, people)
        return
    pending: deque = deque()
    for person in people:
        pending.append(pool.submit(_convert, person))
        if len(pending) >= 4 * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass
class SplitSummary:
    split: str
    path: Path
    written: int
    skipped: int
    size_bytes: int


def write_split(
    path: Path,
    dataset: str,
    split: str,
    skeleton: Skeleton,
    people: list[Person],
    policy: ErrorPolicy,
    provenance: dict,
    workers: int,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> SplitSummary:
    """Crop every person (all cores) and write the split's file atomically."""
    skipped_before = len(policy.skipped)
    pool = _worker_pool(workers)
    try:
        with CropWriter(
            path,
            dataset=dataset,
            split=split,
            joint_names=list(skeleton.joint_names),
            flip_pairs=list(skeleton.flip_pairs),
            crop_size=(CROP_SIZE, CROP_SIZE),
            image_encoding="jpeg",
            jpeg_quality=jpeg_quality,
            provenance=provenance,
        ) as writer:
            results = _converted(people, pool, workers)
            for person in tqdm(people, desc=f"{dataset} {split}", unit="crop"):
                result = next(results)
                if isinstance(result, SourceDataError):
                    policy.handle(result, person.entry)
                else:
                    writer.add(result)
            writer.provenance["skipped"] = dict(policy.skipped)
            written = len(writer)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return SplitSummary(split, path, written, len(policy.skipped) - skipped_before, path.stat().st_size)


def write_splits(
    out: Path,
    dataset: str,
    skeleton: Skeleton,
    splits: dict[str, list[Person]],
    policy: ErrorPolicy,
    options: dict,
    sources: list[Path],
    workers: int,
) -> list[SplitSummary]:
    """Write out/<split>.h5 for each split and print the summary."""
    start = time.time()
    provenance = {
        "converter": f"data_prep.{dataset}",
        "converter_version": 1,
        "options": {**options, "crop_size": CROP_SIZE, "stored_scale": STORED_SCALE},
        "source_checksums": {str(p): sha256(p) for p in sources},
    }
    summaries = [
        write_split(out / f"{split}.h5", dataset, split, skeleton, people, policy, dict(provenance), workers)
        for split, people in splits.items()
    ]
    print(f"{dataset}: done in {time.time() - start:.0f} s")
    for s in summaries:
        print(f"  {s.split:5s} {s.written:6d} samples  {s.size_bytes / 2**20:8.1f} MiB  {s.path}")
    if policy.skipped:
        reasons = Counter(_reason_kind(r) for r in policy.skipped.values())
        print(f"  skipped {len(policy.skipped)} entries: " + "; ".join(f"{n} x {k}" for k, n in reasons.items()))
        for reason in list(policy.skipped.values())[:3]:
            print(f"    e.g. {reason}")
    return summaries


def _reason_kind(reason: str) -> str:
    for kind in ("does not exist", "does not decode", "NaN", "cannot be read", "no visible joints"):
        if kind in reason:
            return kind
    return "other"


# ---------------------------------------------------------------------------------------------
# Command line


def add_common_arguments(parser: argparse.ArgumentParser, seeded_split: bool = True) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory for train/val/test .h5")
    if seeded_split:
        parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
        parser.add_argument(
            "--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, help="training people held out for validation"
        )
    parser.add_argument(
        "--on-error",
        choices=("stop", "skip"),
        default="stop",
        help="a bad entry (missing/undecodable image, NaN coordinates) stops the run, or is skipped and recorded",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="crop processes (default: all cores)")


def reports_source_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print a SourceDataError as its one paragraph (no traceback) and exit with status 2."""

    @functools.wraps(run)
    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except SourceDataError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return guarded
