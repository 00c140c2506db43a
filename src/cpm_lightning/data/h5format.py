"""HDF5 crop format, version 1: the one place that writes and reads it.

A file holds the person crops of one split of one dataset (docs/hdf5-format.md has the table).

File attributes
    format_version   1
    dataset          dataset name ("synthetic", "lsp", "mpii", "flic", ...)
    split            "train", "val" or "test"
    joint_names      the joint order of every per-joint array
    flip_pairs       (K, 2) int: left/right joint index pairs swapped by a horizontal flip
    crop_size        (2,) int: stored crop height, width (independent of the network input size)
    image_encoding   "raw" (uint8 H x W x 3 RGB per sample) or "jpeg" (encoded bytes per sample,
                     4:2:0 chroma; docs/hdf5-format.md has the measurement behind the choice)
    provenance       JSON: converter, converter version, options, source file checksums,
                     skipped entries and their reasons

Per-sample datasets (N samples, J joints)
    images           raw: (N, H, W, 3) uint8 RGB; jpeg: (N,) variable-length uint8
    joints           (N, J, 2) float32, crop pixels, 0-based pixel centres
    visibility       (N, J) uint8: 2 visible, 1 annotated but occluded, 0 not annotated
    centre           (N, 2) float32, person centre in crop pixels (at test time never from joints)
    scale            (N,) float32, person height / 200 in crop pixels (MPII's convention)
    crop_to_source   (N, 2, 3) float64 affine: source_xy = A @ [x, y, 1] for crop pixel (x, y)
    head_size        (N,) float32, 0.6 x head-box diagonal in crop pixels (PCKh), NaN if unknown
    head_box         (N, 4) float32, x1, y1, x2, y2 in crop pixels, NaN if unknown
    torso_size       (N,) float32, |l_shoulder - r_hip| in crop pixels (PCK), NaN if unknown
    source_image     (N,) str, image file name in the source dataset
    source_index     (N, 2) int64, (image index, person index) in the source annotation
    others_offset    (N, 2) int64, (first row, count) of this sample's other people below
    others_joints    (M, J, 2) float32 and others_visibility (M, J) uint8: the people near
                     the subject (MPII), in the same crop pixels; stage 1 is supervised with them
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import h5py
import numpy as np
import simplejpeg

from cpm_lightning.errors import DataFileError

FORMAT_VERSION = 1
IMAGE_ENCODINGS = ("raw", "jpeg")
JPEG_CHROMA_420 = (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)


@dataclass
class CropSample:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    joints: np.ndarray  # (J, 2) crop pixels
    visibility: np.ndarray  # (J,) 0/1/2
    centre: np.ndarray  # (2,)
    scale: float
    crop_to_source: np.ndarray  # (2, 3)
    source_image: str = ""
    source_index: tuple[int, int] = (-1, -1)
    head_box: np.ndarray | None = None  # (4,) crop pixels
    others_joints: np.ndarray | None = None  # (P, J, 2)
    others_visibility: np.ndarray | None = None  # (P, J)


@dataclass
class CropWriter:
    """Writes one split; the file appears at `path` only when complete and verified.

    Use as a context manager: on an exception (or Ctrl-C) the temporary file is deleted and
    nothing is left at `path`; an existing file at `path` stays untouched until the rename.
    """

    path: Path
    dataset: str
    split: str
    joint_names: list[str]
    flip_pairs: list[tuple[int, int]]
    crop_size: tuple[int, int]
    image_encoding: str = "raw"
    jpeg_quality: int = 95
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_encoding not in IMAGE_ENCODINGS:
            raise ValueError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {self.image_encoding!r}")
        self.path = Path(self.path)
        self._columns: dict[str, list] = {
            k: []
            for k in (
                "joints",
                "visibility",
                "centre",
                "scale",
                "crop_to_source",
                "head_box",
                "source_image",
                "source_index",
                "others_offset",
            )
        }
        self._others_joints: list[np.ndarray] = []
        self._others_visibility: list[np.ndarray] = []
        self._num_others = 0
        self._count = 0

    def __enter__(self) -> CropWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._file = h5py.File(self._tmp, "w")
        h, w = self.crop_size
        if self.image_encoding == "raw":
            self._images = self._file.create_dataset(
                "images", (0, h, w, 3), maxshape=(None, h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3)
            )
        else:
            self._images = self._file.create_dataset(
                "images", (0,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8), chunks=(256,)
            )
        return self

    def add(self, sample: CropSample) -> None:
        num_joints = len(self.joint_names)
        if sample.image.shape != (*self.crop_size, 3) or sample.image.dtype != np.uint8:
            raise ValueError(
                f"crop image must be uint8 {(*self.crop_size, 3)}, got {sample.image.dtype} {sample.image.shape}"
            )
        if np.shape(sample.joints) != (num_joints, 2) or np.shape(sample.visibility) != (num_joints,):
            raise ValueError(f"joints must be ({num_joints}, 2) and visibility ({num_joints},)")
        if self.image_encoding == "raw":
            encoded = sample.image
        else:
            # 4:2:0 chroma, named rather than left to OpenCV's default: 4:4:4 is 25% larger and
            # 20-35% slower to decode (docs/hdf5-format.md).
            options = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality, *JPEG_CHROMA_420]
            ok, buf = cv2.imencode(".jpg", sample.image[..., ::-1], options)
            if not ok:
                raise ValueError(f"could not JPEG-encode the crop of {sample.source_image}")
            encoded = buf.reshape(-1)
        self._images.resize(self._count + 1, axis=0)
        self._images[self._count] = encoded
        c = self._columns
        c["joints"].append(np.asarray(sample.joints, np.float32))
        c["visibility"].append(np.asarray(sample.visibility, np.uint8))
        c["centre"].append(np.asarray(sample.centre, np.float32))
        c["scale"].append(np.float32(sample.scale))
        c["crop_to_source"].append(np.asarray(sample.crop_to_source, np.float64))
        c["head_box"].append(
            np.full(4, np.nan, np.float32) if sample.head_box is None else np.asarray(sample.head_box, np.float32)
        )
        c["source_image"].append(sample.source_image)
        c["source_index"].append(np.asarray(sample.source_index, np.int64))
        others = 0 if sample.others_joints is None else len(sample.others_joints)
        c["others_offset"].append(np.array([self._num_others, others], np.int64))
        if others:
            self._others_joints.append(np.asarray(sample.others_joints, np.float32).reshape(others, num_joints, 2))
            self._others_visibility.append(np.asarray(sample.others_visibility, np.uint8).reshape(others, num_joints))
        self._num_others += others
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._file.id.valid:
                self._file.close()
            if exc_type is not None and self._tmp.exists():
                self._tmp.unlink()
        if exc_type is None:
            try:
                verify(self._tmp)
            except DataFileError:
                self._tmp.unlink()
                raise
            os.replace(self._tmp, self.path)

    def _finish(self) -> None:
        f, c = self._file, self._columns
        num_joints = len(self.joint_names)
        n = self._count
        joints = np.stack(c["joints"]) if n else np.zeros((0, num_joints, 2), np.float32)
        f["joints"] = joints
        f["visibility"] = np.stack(c["visibility"]) if n else np.zeros((0, num_joints), np.uint8)
        f["centre"] = np.stack(c["centre"]) if n else np.zeros((0, 2), np.float32)
        f["scale"] = np.asarray(c["scale"], np.float32)
        f["crop_to_source"] = np.stack(c["crop_to_source"]) if n else np.zeros((0, 2, 3))
        head_box = np.stack(c["head_box"]) if n else np.zeros((0, 4), np.float32)
        f["head_box"] = head_box
        f["head_size"] = 0.6 * np.hypot(head_box[:, 2] - head_box[:, 0], head_box[:, 3] - head_box[:, 1])
        f["torso_size"] = torso_size(joints, f["visibility"][()], self.joint_names)
        f.create_dataset("source_image", data=np.asarray(c["source_image"], dtype=object), dtype=h5py.string_dtype())
        f["source_index"] = np.stack(c["source_index"]) if n else np.zeros((0, 2), np.int64)
        f["others_offset"] = np.stack(c["others_offset"]) if n else np.zeros((0, 2), np.int64)
        f["others_joints"] = (
            np.concatenate(self._others_joints) if self._others_joints else np.zeros((0, num_joints, 2), np.float32)
        )
        f["others_visibility"] = (
            np.concatenate(self._others_visibility) if self._others_visibility else np.zeros((0, num_joints), np.uint8)
        )
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["dataset"] = self.dataset
        f.attrs["split"] = self.split
        f.attrs["joint_names"] = list(self.joint_names)
        f.attrs["flip_pairs"] = np.asarray(self.flip_pairs, np.int64).reshape(-1, 2)
        f.attrs["crop_size"] = np.asarray(self.crop_size, np.int64)
        f.attrs["image_encoding"] = self.image_encoding
        f.attrs["provenance"] = json.dumps(self.provenance, sort_keys=True)
        f.attrs["complete"] = True


def torso_size(joints: np.ndarray, visibility: np.ndarray, joint_names: list[str]) -> np.ndarray:
    """|l_shoulder - r_hip| per sample (the LSP PCK normaliser), NaN where not both annotated."""
    names = list(joint_names)
    if "l_shoulder" not in names or "r_hip" not in names or len(joints) == 0:
        return np.full(len(joints), np.nan, np.float32)
    ls, rh = names.index("l_shoulder"), names.index("r_hip")
    size = np.linalg.norm(joints[:, ls] - joints[:, rh], axis=-1).astype(np.float32)
    size[(visibility[:, ls] == 0) | (visibility[:, rh] == 0)] = np.nan
    return size


REQUIRED_DATASETS = (
    "images",
    "joints",
    "visibility",
    "centre",
    "scale",
    "crop_to_source",
    "head_size",
    "head_box",
    "torso_size",
    "source_image",
    "source_index",
    "others_offset",
    "others_joints",
    "others_visibility",
)
REQUIRED_ATTRS = (
    "format_version",
    "dataset",
    "split",
    "joint_names",
    "flip_pairs",
    "crop_size",
    "image_encoding",
    "provenance",
)


def verify(path: str | Path, make_command: str | None = None) -> dict:
    """Check that `path` is a complete format-v1 crop file; returns its attributes.

    Raises DataFileError with one paragraph naming the file, what is wrong and the fix.
    """
    path = Path(path)
    fix = f" Make it with: {make_command}" if make_command else " Re-run the data_prep command that made it."
    if not path.exists():
        raise DataFileError(f"Data file {path} does not exist.{fix}")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs[k] for k in f.attrs}
            version = attrs.get("format_version")
            if version != FORMAT_VERSION:
                raise DataFileError(
                    f"Data file {path} has format version {version}, this code reads version {FORMAT_VERSION}.{fix}"
                )
            missing = [k for k in REQUIRED_ATTRS if k not in attrs] + [k for k in REQUIRED_DATASETS if k not in f]
            if missing or not attrs.get("complete", False):
                raise DataFileError(
                    f"Data file {path} is incomplete (missing: {', '.join(missing) or 'the completion mark'}).{fix}"
                )
            n = len(f["joints"])
            for key in REQUIRED_DATASETS:
                if key.startswith("others_") and key != "others_offset":
                    continue
                if len(f[key]) != n:
                    raise DataFileError(
                        f"Data file {path} is inconsistent: '{key}' has {len(f[key])} entries, 'joints' has {n}.{fix}"
                    )
            if n:
                # Touch the last image: a truncated file fails here rather than in a worker.
                _ = f["images"][n - 1]
            attrs["num_samples"] = n
    except DataFileError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise DataFileError(
            f"Data file {path} cannot be read as HDF5 ({err}); it is probably truncated.{fix}"
        ) from None
    attrs["joint_names"] = [str(n) for n in attrs["joint_names"]]
    attrs["provenance"] = json.loads(attrs["provenance"])
    return attrs


class CropFile:
    """Read access to one crop file, opened lazily so that each worker process gets its own handle.

    h5py handles must not cross a fork or a spawn: the handle is created on first use in the
    process that uses it and dropped when pickled.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        with h5py.File(self.path, "r") as f:
            self.attrs = {k: f.attrs[k] for k in f.attrs}
            self.num_samples = len(f["joints"])
            # Small per-sample arrays are read once; images stay on disk.
            self.joints = f["joints"][()]
            self.visibility = f["visibility"][()]
            self.centre = f["centre"][()]
            self.scale = f["scale"][()]
            self.crop_to_source = f["crop_to_source"][()]
            self.head_size = f["head_size"][()]
            self.torso_size = f["torso_size"][()]
            self.others_offset = f["others_offset"][()]
            self.others_joints = f["others_joints"][()]
            self.others_visibility = f["others_visibility"][()]
        self.joint_names = [str(n) for n in self.attrs["joint_names"]]
        self.flip_pairs = [tuple(int(i) for i in p) for p in np.asarray(self.attrs["flip_pairs"]).reshape(-1, 2)]
        self.image_encoding = str(self.attrs["image_encoding"])

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def image(self, index: int, channels: int = 3) -> np.ndarray:
        """The stored crop, (H, W, 3) uint8 RGB, or with channels=4 (H, W, 4) RGBX (X = 255).

        The loader asks for RGBX: OpenCV's warpAffine is vectorised for 4 channels and runs
        twice as fast as for 3, while libjpeg-turbo writes the padding at no cost. Both are
        contiguous: OpenCV silently copies a channel-reversed view (BGR[..., ::-1]) of a whole
        crop before warping it, which once cost more than the decode itself.
        """
        if channels not in (3, 4):
            raise ValueError(f"channels must be 3 (RGB) or 4 (RGBX), got {channels}")
        data = self._handle()["images"][index]
        if self.image_encoding == "raw":
            return data if channels == 3 else cv2.cvtColor(data, cv2.COLOR_RGB2RGBA)
        try:
            return simplejpeg.decode_jpeg(data, "RGB" if channels == 3 else "RGBX")
        except ValueError as err:
            raise DataFileError(f"Data file {self.path}: the JPEG of sample {index} does not decode ({err}).") from None

    def others(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        first, count = self.others_offset[index]
        return self.others_joints[first : first + count], self.others_visibility[first : first + count]
