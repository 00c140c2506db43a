"""predict: any image works or gets a one-line reason, the rest of a directory is still done,
and the joints land where evaluate puts them."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import REPO
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from cpm_lightning.data.h5format import CropFile
from cpm_lightning.predict import ImageReadError, predict, read_image
from cpm_lightning.train import CONFIG_DIR


def predict_config(tmp_path, ckpt, input_path, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[f"ckpt={ckpt}", f"input={input_path}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "out")
    return cfg


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (a decoder would need width*height*3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


@pytest.fixture
def odd_images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(folder / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (120, 250), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (100, 100, 4), dtype=np.uint8)).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (100, 140, 3), dtype=np.uint8)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (90, 80), dtype=np.uint16)).save(folder / "deep16.png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    (folder / "truncated.jpg").write_bytes((folder / "rgb.jpg").read_bytes()[:400])
    png_header_only(folder / "huge.png", 20000, 20000)
    return folder


def test_a_directory_of_odd_files(tmp_path, trained_checkpoint, odd_images):
    summary = predict(predict_config(tmp_path, trained_checkpoint, odd_images, "test_time.flip=true"))
    done = {p["file"].rsplit("/", 1)[1]: p for p in summary["images"]}
    assert sorted(done) == ["cmyk.jpg", "deep16.png", "gray.png", "rgb.jpg", "rgba.png"]
    failed = {f["file"].rsplit("/", 1)[1]: f["error"] for f in summary["failed"]}
    assert "empty (0 bytes)" in failed["empty.jpg"]
    assert "not an image" in failed["notes.txt"]
    assert "truncated" in failed["truncated.jpg"]
    assert "20000 x 20000" in failed["huge.png"] and "max_megapixels" in failed["huge.png"]
    assert all(str(odd_images) in message for message in failed.values())  # each names its file
    rgb = done["rgb.jpg"]
    assert (rgb["width"], rgb["height"]) == (200, 300) and len(rgb["keypoints"]) == 14
    for keypoint in rgb["keypoints"]:  # whole image: the input square spans the longer side, 300 px
        assert -51 <= keypoint["x"] <= 250 and -0.5 <= keypoint["y"] <= 299.5
    overlays = sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir())
    assert overlays == ["cmyk.png", "deep16.png", "gray.png", "rgb.png", "rgba.png"]
    assert Image.open(tmp_path / "out" / "overlays" / "rgb.png").size == (200, 300)
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["failed"] == summary["failed"]


def test_image_modes_become_rgb8(odd_images):
    for name in ("gray.png", "rgba.png", "cmyk.jpg", "deep16.png"):
        image, pixel_scale, size = read_image(odd_images / name, max_megapixels=100)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and pixel_scale == 1.0
    deep, _, _ = read_image(odd_images / "deep16.png", 100)
    source = np.asarray(Image.open(odd_images / "deep16.png"), dtype=np.float64)
    np.testing.assert_allclose(deep[..., 0], np.rint(source / 257), atol=1)  # scaled, not clipped


def test_a_large_jpeg_is_decoded_reduced_and_mapped_back(tmp_path, trained_checkpoint):
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.full((1200, 1600, 3), 90, np.uint8)).save(big / "photo.jpg")
    image, pixel_scale, size = read_image(big / "photo.jpg", max_megapixels=0.5)
    assert size == (1600, 1200) and image.shape[0] * image.shape[1] <= 0.5e6 and pixel_scale < 1
    summary = predict(predict_config(tmp_path, trained_checkpoint, big / "photo.jpg", "max_megapixels=0.5"))
    (result,) = summary["images"]
    assert (result["width"], result["height"]) == (1600, 1200)  # keypoints in the original's pixels
    for keypoint in result["keypoints"]:  # the input square spans the longer side: all of x
        assert -0.5 <= keypoint["x"] <= 1599.5 and -201 <= keypoint["y"] <= 1400


def test_huge_png_is_refused_before_decoding(tmp_path):
    png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ImageReadError, match="400 MP"):
        read_image(tmp_path / "huge.png", max_megapixels=100)


def test_predict_agrees_with_evaluate_on_a_crop(tmp_path, data_dir, trained_checkpoint):
    from test_evaluate import evaluate_config

    from cpm_lightning.evaluate import evaluate

    crops = CropFile(data_dir / "synthetic" / "val.h5")
    folder = tmp_path / "crops"
    folder.mkdir()
    people = {}
    for i in (0, 7):
        Image.fromarray(crops.image(i)).save(folder / f"crop{i}.png")
        people[f"crop{i}.png"] = {"centre": crops.centre[i].tolist(), "scale": float(crops.scale[i])}
    (tmp_path / "people.json").write_text(json.dumps(people))
    summary = predict(predict_config(tmp_path, trained_checkpoint, folder, f"people={tmp_path / 'people.json'}"))
    evaluate(evaluate_config(tmp_path, data_dir, trained_checkpoint, "figure_samples=[]"))
    evaluated = np.load(tmp_path / "eval" / "predictions.npz")["joints"][:, -1]
    for result in summary["images"]:
        i = int(result["file"].rsplit("crop", 1)[1].split(".")[0])
        crop_joints = np.array([[k["x"], k["y"]] for k in result["keypoints"]])
        a = crops.crop_to_source[i]
        np.testing.assert_allclose(crop_joints @ a[:, :2].T + a[:, 2], evaluated[i], atol=1e-3)


def test_cli_exit_status_and_missing_input(tmp_path, trained_checkpoint, odd_images):
    run = [sys.executable, "-m", "cpm_lightning.predict", f"ckpt={trained_checkpoint}", f"hydra.run.dir={tmp_path}/run"]
    result = subprocess.run([*run, f"input={odd_images}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "skipped:" in result.stderr and "Traceback" not in result.stderr
    assert len(json.loads((tmp_path / "run" / "predictions.json").read_text())["images"]) == 5
    result = subprocess.run([*run, f"input={tmp_path}/nowhere"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
