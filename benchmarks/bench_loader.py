"""Loader throughput at 368x368: our HDF5 crops vs decoding the source JPEG per sample.

    python benchmarks/bench_loader.py [--samples 300]

Both paths produce the same thing, one augmented training sample with its targets (random
scale / rotation / flip, belief maps of the subject and of everyone), in one process on one
core, from the real LSP+LSPET and MPII samples in ../shared/data/real-samples:
    hdf5   PoseCrops: decode the stored JPEG crop, one fused affine warp to the input, targets
    naive  decode the source image, the same fused warp straight from the source, same targets
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

from cpm_lightning.data.augment import AugmentConfig, compose_affine, invert_affine, random_affine, warp_to_input  # noqa: E402
from cpm_lightning.data.dataset import PoseCrops  # noqa: E402
from cpm_lightning.data.h5format import verify  # noqa: E402
from cpm_lightning.data.targets import render_belief_maps  # noqa: E402
from data_prep.__main__ import main as data_prep  # noqa: E402

SAMPLES = REPO.parent / "shared" / "data" / "real-samples"
INPUT_SIZE, STRIDE = 368, 8


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
    return {
        "dataset": name,
        "crops": n,
        "crop_size": int(dataset.file.attrs["crop_size"][0]),
        "hdf5_samples_per_s_per_core": round(hdf5, 1),
        "naive_samples_per_s_per_core": round(naive, 1),
        "ratio_hdf5_over_naive": round(hdf5 / naive, 2),
        "hdf5_bytes_per_crop": round(path.stat().st_size / n),
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
