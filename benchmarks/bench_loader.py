"""Loader throughput at 368x368: our HDF5 crops vs decoding the source JPEG per sample.

    python benchmarks/bench_loader.py [--samples 300]

Both paths produce the same thing, one augmented training sample with its targets (random
scale / rotation / flip, belief maps of the subject and of everyone), in one process on one
core, from the real LSP+LSPET and MPII samples in ../shared/data/real-samples:
    hdf5   PoseCrops: decode the stored JPEG crop, one fused affine warp to the input, targets
    naive  decode the source image, the same fused warp straight from the source, same targets
For the hdf5 path it also records where a sample's time goes (read, decode, warp, targets,
other) and the storage options it was chosen from: bytes per crop and read + decode + warp
time for raw, compressed and JPEG-encoded crops and for several JPEG decoders
(docs/hdf5-format.md, "Storage choice, measured", is the table of a run of this).
Writes benchmarks/results/loader_<date>.json with samples/s per core and the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import simplejpeg  # noqa: E402

import cpm_lightning.data.dataset as dataset_module  # noqa: E402
from cpm_lightning.data.augment import AugmentConfig, compose_affine, invert_affine, random_affine, warp_to_input  # noqa: E402
from cpm_lightning.data.dataset import PoseCrops  # noqa: E402
from cpm_lightning.data.h5format import JPEG_CHROMA_420, verify  # noqa: E402
from cpm_lightning.data.targets import render_belief_maps  # noqa: E402
from data_prep.__main__ import main as data_prep  # noqa: E402
from data_prep.common import DEFAULT_JPEG_QUALITY  # noqa: E402

SAMPLES = REPO.parent / "shared" / "data" / "real-samples"
INPUT_SIZE, STRIDE = 368, 8

STORAGE_CHOICE = {
    "image_encoding": "jpeg",
    "jpeg_quality": DEFAULT_JPEG_QUALITY,
    "chroma_subsampling": "4:2:0",
    "decoder": "simplejpeg (libjpeg-turbo) to RGBX, warped with 4 channels",
}
JPEG_SETTINGS = {  # name: (quality, OpenCV sampling-factor flags)
    "jpeg q95 4:2:0": (95, JPEG_CHROMA_420),
    "jpeg q90 4:2:0": (90, JPEG_CHROMA_420),
    "jpeg q85 4:2:0": (85, JPEG_CHROMA_420),
    "jpeg q75 4:2:0": (75, JPEG_CHROMA_420),
    "jpeg q90 4:4:4": (90, (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)),
}
JPEG_DECODERS = {  # name: stored bytes -> crop ready for warp_to_input (RGB or RGBX)
    "cv2 BGR + [..., ::-1] view (before)": lambda data: cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1],
    "cv2 IMREAD_COLOR_RGB": lambda data: cv2.imdecode(data, cv2.IMREAD_COLOR_RGB),
    "simplejpeg RGB": lambda data: simplejpeg.decode_jpeg(data, "RGB"),
    "simplejpeg RGBX (kept)": lambda data: simplejpeg.decode_jpeg(data, "RGBX"),
    "simplejpeg RGBX fastdct+fastupsample": lambda data: simplejpeg.decode_jpeg(data, "RGBX", True, True),
}
KEPT_DECODER = "simplejpeg RGBX (kept)"


def naive_sample(dataset: PoseCrops, index: int, source: Path, rng: np.random.Generator) -> dict:
    """What a loader without stored crops does: decode the source JPEG, warp it, label it."""
    f = dataset.file
    image = cv2.imread(str(source))[..., ::-1]
    crop_matrix, _ = random_affine(rng, f.centre[index], f.scale[index], INPUT_SIZE, AugmentConfig())
    source_to_input = compose_affine(crop_matrix, invert_affine(f.crop_to_source[index]))
    warped = warp_to_input(image, source_to_input, INPUT_SIZE)
    joints = f.joints[index] @ crop_matrix[:, :2].T + crop_matrix[:, 2]
    maps = render_belief_maps(joints, f.visibility[index] > 0, INPUT_SIZE // STRIDE, STRIDE, dataset.sigma)
    return {"image": warped, "belief_maps": maps}


def rate(make, count: int) -> float:
    """Samples per second of this process's CPU time: one core's throughput, and far less
    disturbed than wall-clock time when other jobs share the machine."""
    make(0)  # warm-up (file handles, caches)
    start = time.process_time()
    for i in range(count):
        make(i)
    return count / (time.process_time() - start)


def ms_per_call(call, count: int) -> float:
    return 1000.0 / rate(call, count)


def breakdown(dataset: PoseCrops, count: int) -> dict:
    """Where one training sample's CPU time goes, in ms: the real __getitem__ with its image
    decode, warp and target rendering timed from inside; 'other' is the rest (random draw,
    label transforms, tensors). The HDF5 read is timed on its own and taken out of the decode."""
    spent = dict.fromkeys(("decode", "warp", "targets"), 0.0)

    def timed(part: str, function):
        def call(*args, **kwargs):
            start = time.process_time()
            result = function(*args, **kwargs)
            spent[part] += time.process_time() - start
            return result

        return call

    n = len(dataset)
    crops = dataset.file
    dataset[(0, 0)]  # warm-up, untimed
    originals = dataset_module.warp_to_input, dataset_module.render_belief_maps
    crops.image = timed("decode", crops.image)  # shadows the method on this instance only
    dataset_module.warp_to_input = timed("warp", dataset_module.warp_to_input)
    dataset_module.render_belief_maps = timed("targets", dataset_module.render_belief_maps)
    try:
        start = time.process_time()
        for i in range(count):
            dataset[(0, i % n)]
        total = time.process_time() - start
    finally:
        del crops.image
        dataset_module.warp_to_input, dataset_module.render_belief_maps = originals
    images = crops._handle()["images"]
    read = ms_per_call(lambda i: images[i % n], count)
    parts = {"read": read, **{part: 1000.0 * seconds / count for part, seconds in spent.items()}}
    parts["decode"] -= read
    parts["other"] = 1000.0 * total / count - sum(parts.values())
    return {part: round(ms, 3) for part, ms in parts.items()}


def storage_options(path: Path, count: int, scratch: Path) -> list[dict]:
    """Bytes per crop and ms of read + decode + warp per sample for each way of storing the
    crops of `path` (re-encoded from its stored JPEGs, so JPEG sizes are a slight underestimate)
    and, for the chosen JPEG setting, each decoder. Raw files are read without HDF5's chunk
    cache, as in training, where a random sample's chunk is never still cached."""
    with h5py.File(path) as h5:
        crops = [simplejpeg.decode_jpeg(data, "RGB") for data in h5["images"]]
        centre, scale = h5["centre"][()], h5["scale"][()]
    n = len(crops)
    rng = np.random.default_rng(0)
    matrices = [random_affine(rng, centre[i % n], scale[i % n], INPUT_SIZE, AugmentConfig())[0] for i in range(count)]
    chosen = f"jpeg q{DEFAULT_JPEG_QUALITY} 4:2:0"
    options = [(storage, KEPT_DECODER) for storage in JPEG_SETTINGS]
    options += [(chosen, decoder) for decoder in JPEG_DECODERS if decoder != KEPT_DECODER]
    options += [("raw", "none"), ("raw, gzip (HDF5 level 4)", "none")]
    results = []
    for storage, decoder in options:
        file = scratch / f"{storage}.h5"
        if not file.exists():
            write_option(file, storage, crops)
        with h5py.File(file, "r", rdcc_nbytes=0) as h5:
            decode = JPEG_DECODERS.get(decoder, lambda data: data)

            def read_decode_warp(i: int, images=h5["images"], decode=decode) -> np.ndarray:
                return warp_to_input(decode(images[i % n]), matrices[i], INPUT_SIZE)

            ms = ms_per_call(read_decode_warp, count)
        row = {"storage": storage, "decoder": decoder, "bytes_per_crop": round(file.stat().st_size / n)}
        results.append({**row, "ms_read_decode_warp": round(ms, 3)})
    return results


def write_option(file: Path, storage: str, crops: list[np.ndarray]) -> None:
    with h5py.File(file, "w") as h5:
        if storage.startswith("raw"):
            images = np.stack(crops)
            compression = "gzip" if "gzip" in storage else None
            h5.create_dataset("images", data=images, chunks=(1, *images.shape[1:]), compression=compression)
            return
        quality, sampling = JPEG_SETTINGS[storage]
        flags = [cv2.IMWRITE_JPEG_QUALITY, quality, *sampling]
        images = h5.create_dataset("images", (len(crops),), dtype=h5py.vlen_dtype(np.uint8))
        for i, crop in enumerate(crops):
            images[i] = cv2.imencode(".jpg", np.ascontiguousarray(crop[..., ::-1]), flags)[1].reshape(-1)


def bench(name: str, out: Path, source_dir, count: int) -> dict:
    """source_dir(file name) -> the folder holding that source image."""
    path = out / "train.h5" if verify(out / "train.h5")["num_samples"] else out / "val.h5"
    dataset = PoseCrops(path, INPUT_SIZE, STRIDE, augment=AugmentConfig(), seed=0)
    with h5py.File(path) as h5:
        names = [n.decode() if isinstance(n, bytes) else n for n in h5["source_image"][()]]
    n = len(dataset)
    rng = np.random.default_rng(0)
    hdf5 = rate(lambda i: dataset[(0, i % n)], count)
    naive = rate(lambda i: naive_sample(dataset, i % n, source_dir(names[i % n]) / names[i % n], rng), count)
    with tempfile.TemporaryDirectory() as scratch:
        options = storage_options(path, count, Path(scratch))
    return {
        "dataset": name,
        "crops": n,
        "crop_size": int(dataset.file.attrs["crop_size"][0]),
        "hdf5_samples_per_s_per_core": round(hdf5, 1),
        "naive_samples_per_s_per_core": round(naive, 1),
        "ratio_hdf5_over_naive": round(hdf5 / naive, 2),
        "hdf5_bytes_per_crop": round(path.stat().st_size / n),
        "hdf5_ms_per_sample": breakdown(dataset, count),
        "storage_options": options,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one worker core
    if not SAMPLES.exists():
        print(f"{SAMPLES} is absent: the benchmark reads the real samples", file=sys.stderr)
        return 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        lsp_out, mpii_out = Path(tmp) / "lsp", Path(tmp) / "mpii"
        lsp_args = ["lsp", "--lsp-root", str(SAMPLES / "lsp"), "--lspet-root", str(SAMPLES / "lspet")]
        data_prep([*lsp_args, "--out", str(lsp_out), "--on-error", "skip", "--workers", "1"])
        mpii_args = ["mpii", "--annotations", str(SAMPLES / "mpii" / "mpii_val_sample5.json")]
        data_prep([*mpii_args, "--images", str(SAMPLES / "mpii" / "images"), "--out", str(mpii_out), "--workers", "1"])

        def lsp_source(name: str) -> Path:
            return SAMPLES / ("lspet" if len(name) == len("im00001.jpg") else "lsp") / "images"

        results.append(bench("lsp+lspet (sources ~150 px people)", lsp_out, lsp_source, args.samples))
        results.append(
            bench("mpii (sources 1280x720)", mpii_out, lambda name: SAMPLES / "mpii" / "images", args.samples)
        )
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "clock": "process CPU time, one thread (cv2.setNumThreads(1))",
        "input_size": INPUT_SIZE,
        "sigma_at_368": 7.0,
        "storage": STORAGE_CHOICE,
        "results": results,
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"loader_{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
