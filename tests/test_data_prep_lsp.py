"""LSP + LSPET converter on the real annotation samples, plus the shared crop geometry."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from cpm_lightning.data.augment import apply_affine
from cpm_lightning.data.dataset import PoseCrops
from cpm_lightning.data.h5format import CropFile, verify
from cpm_lightning.data.skeletons import LSP14
from data_prep import common, lsp
from data_prep.__main__ import main
from tests.real_samples import real_samples


def test_read_joints_detects_both_layouts():
    lsp_joints = lsp.read_joints(real_samples("lsp", "joints.mat"))
    lspet_joints = lsp.read_joints(real_samples("lspet", "joints.mat"))
    assert lsp_joints.shape == (2000, 14, 3)  # stored 3 x 14 x 2000
    assert lspet_joints.shape == (400, 14, 3)  # stored 14 x 3 x 400
    raw = scipy.io.loadmat(real_samples("lspet", "joints.mat"))["joints"]
    np.testing.assert_array_equal(lspet_joints[6], raw[:, :, 6])


def test_wrong_joint_array_shape_names_the_file(tmp_path: Path):
    path = tmp_path / "joints.mat"
    scipy.io.savemat(path, {"joints": np.zeros((2, 14, 5))})
    with pytest.raises(common.SourceDataError, match=r"joints\.mat.*shape \(2, 14, 5\)"):
        lsp.read_joints(path)
    with pytest.raises(common.SourceDataError, match="does not exist"):
        lsp.read_joints(tmp_path / "missing.mat")


def test_joint_order_zero_based_and_visibility():
    raw = lsp.read_joints(real_samples("lsp", "joints.mat"))
    people = lsp.annotations(real_samples("lsp", "joints.mat"), Path("images"), "im%04d.jpg", 0, 1)
    first = people[0]
    # Native order ends with neck, head top; LSP14 starts with them. MATLAB 1-based -> 0-based.
    np.testing.assert_allclose(first.joints[LSP14.index("head_top")], raw[0, 13, :2] - 1)
    np.testing.assert_allclose(first.joints[LSP14.index("r_ankle")], raw[0, 0, :2] - 1)
    np.testing.assert_allclose(first.joints[LSP14.index("l_wrist")], raw[0, 11, :2] - 1)
    assert first.image_path.name == "im0001.jpg" and people[1999].image_path.name == "im2000.jpg"
    # LSP: flag 0 = visible -> 2; flag 1 = occluded but placed -> 1.
    flags = raw[:, lsp.NATIVE_TO_LSP14, 2]
    states = np.stack([p.states for p in people])
    np.testing.assert_array_equal(states == 2, flags == 0)
    np.testing.assert_array_equal(states == 1, flags == 1)
    lspet_raw = lsp.read_joints(real_samples("lspet", "joints.mat"))
    lspet = lsp.annotations(real_samples("lspet", "joints.mat"), Path("images"), "im%05d.jpg", 1, 0)
    lspet_states = np.stack([p.states for p in lspet])
    np.testing.assert_array_equal(lspet_states == 2, lspet_raw[:, lsp.NATIVE_TO_LSP14, 2] == 1)
    # LSPET's invisible joints are off-image placeholders: not annotated.
    np.testing.assert_array_equal(lspet_states == 0, lspet_raw[:, lsp.NATIVE_TO_LSP14, 2] == 0)
    placeholders = lspet_raw[:, :, :2][lspet_raw[:, :, 2] == 0]
    assert (placeholders <= 0).any(axis=1).all()
    assert lspet[0].image_path.name == "im00001.jpg"


def _blank_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """The real joints.mat files with a blank image for every entry (the samples have 24)."""
    roots = []
    for name, count, pattern in (("lsp", 2000, "im%04d.jpg"), ("lspet", 400, "im%05d.jpg")):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "joints.mat").symlink_to(real_samples(name, "joints.mat"))
        blank = cv2.imencode(".jpg", np.full((180, 120, 3), 90, np.uint8))[1].tobytes()
        for i in range(1, count + 1):
            (root / "images" / (pattern % i)).write_bytes(blank)
        roots.append(root)
    return roots[0], roots[1]


def test_protocol_split_counts_and_test_geometry(tmp_path: Path):
    lsp_root, lspet_root = _blank_dataset(tmp_path)
    splits = lsp.lsp_splits(lsp_root, lspet_root, seed=0, val_fraction=0.05, policy=common.ErrorPolicy("stop"))
    # train = LSP 1-1000 + the 400 LSPET entries of the sample, 5% held out; test = LSP 1001-2000.
    assert len(splits["val"]) == 70
    assert len(splits["train"]) + len(splits["val"]) == 1400
    assert [p.source_index[0] for p in splits["test"]] == list(range(1001, 2001))
    assert all(p.image_path.parent.parent == lsp_root for p in splits["test"])
    # Test centre / scale come from the image alone: centre of 120 x 180, height 180 -> 0.8 * 368 px.
    for person in splits["test"]:
        np.testing.assert_allclose(person.centre, [59.5, 89.5])
        assert person.scale * 200 * (1 / lsp.TARGET_DIST) * (0.8 * 368) / 200 == pytest.approx(180)
    # Seeded: the same people are held out again, other ones with another seed.
    again = lsp.lsp_splits(lsp_root, lspet_root, 0, 0.05, common.ErrorPolicy("stop"))
    other = lsp.lsp_splits(lsp_root, lspet_root, 1, 0.05, common.ErrorPolicy("stop"))
    held_out = [p.entry for p in splits["val"]]
    assert held_out == [p.entry for p in again["val"]] != [p.entry for p in other["val"]]


def test_training_scale_fits_visible_joints(tmp_path: Path):
    lsp_root, lspet_root = _blank_dataset(tmp_path)
    splits = lsp.lsp_splits(lsp_root, lspet_root, 0, 0.05, common.ErrorPolicy("stop"))
    for person in splits["train"][:200] + splits["train"][-200:]:
        visible = person.joints[person.states == 2]
        # At scale factor 1 the visible joints lie within the central 304 px of the 368 input.
        zoom = lsp.TARGET_DIST / person.scale
        assert np.abs(visible - person.centre).max() * zoom <= 152 + 1e-6
    # A median person's scale is close to its standing height / 200 (LSP people ~150 px).
    median_scale = np.median([p.scale for p in splits["train"]])
    assert 0.5 < median_scale < 1.2


def test_convert_real_samples(tmp_path: Path):
    out = tmp_path / "out"
    argv = ["lsp", "--lsp-root", str(real_samples("lsp")), "--lspet-root", str(real_samples("lspet"))]
    assert main([*argv, "--out", str(out), "--on-error", "skip", "--workers", "1"]) == 0
    counts = {split: verify(out / f"{split}.h5")["num_samples"] for split in ("train", "val", "test")}
    # 10 LSP + 11 LSPET training images and LSP 1001, 1002, 2000 are in the sample.
    assert counts["train"] + counts["val"] == 21 and counts["test"] == 3
    test = CropFile(out / "test.h5")
    assert test.joint_names == list(LSP14.joint_names)
    assert test.flip_pairs == list(LSP14.flip_pairs)
    assert test.attrs["provenance"].count("does not exist") == 2376  # every absent image, named
    raw = lsp.read_joints(real_samples("lsp", "joints.mat"))
    with h5py.File(out / "test.h5") as f:
        indices = f["source_index"][:, 0]
    assert indices.tolist() == [1001, 1002, 2000]
    for i, index in enumerate(indices):
        # Crop -> source round trip: the stored transform gives back the annotation (0-based).
        back = apply_affine(test.crop_to_source[i], test.joints[i])
        np.testing.assert_allclose(back, raw[index - 1, lsp.NATIVE_TO_LSP14, :2] - 1, atol=1e-3)
        height, width = cv2.imread(str(real_samples("lsp", "images", f"im{index:04d}.jpg"))).shape[:2]
        centre_in_source = apply_affine(test.crop_to_source[i], test.centre[i])
        np.testing.assert_allclose(centre_in_source, [(width - 1) / 2, (height - 1) / 2], atol=1e-4)
    # The loader reads it: one fused warp to the 368 input.
    item = PoseCrops(out / "train.h5", input_size=368, stride=8)[0]
    assert item["image"].shape == (3, 368, 368) and item["belief_maps"].shape == (15, 46, 46)


def test_undecodable_image_names_file_and_entry_and_leaves_nothing(tmp_path: Path, capsys):
    root = tmp_path / "lsp"
    (root / "images").mkdir(parents=True)
    (root / "joints.mat").symlink_to(real_samples("lsp", "joints.mat"))
    (root / "images" / "im0001.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert main(["lsp", "--lsp-root", str(root), "--out", str(out), "--workers", "1"]) == 2
    message = capsys.readouterr().err
    assert "im0001.jpg" in message and "entry 1 " in message and "--on-error skip" in message
    assert not out.exists() or not any(out.iterdir())


def test_nan_coordinates_name_the_entry(tmp_path: Path):
    joints = scipy.io.loadmat(real_samples("lsp", "joints.mat"))["joints"].copy()
    joints[0, 4, 6] = np.nan  # x of LSP entry 7, joint 5
    root = tmp_path / "lsp"
    (root / "images").mkdir(parents=True)
    scipy.io.savemat(root / "joints.mat", {"joints": joints})
    policy = common.ErrorPolicy("skip")
    lsp.lsp_splits(root, None, 0, 0.05, policy)
    assert "NaN" in policy.skipped[f"{root / 'joints.mat'} entry 7"]
    with pytest.raises(common.SourceDataError, match=r"entry \d+ .*(NaN|does not exist)"):
        lsp.lsp_splits(root, None, 0, 0.05, common.ErrorPolicy("stop"))


@pytest.mark.parametrize("person_height", [60.0, 234.2, 1500.0])  # upsampled, 1:1, area-reduced
def test_crop_pixels_map_back_within_half_a_pixel(person_height: float):
    """A bright dot in the source is found in the crop where crop_to_source says it is."""
    blank = np.zeros((2000, 2400, 3), np.uint8)
    source = blank.copy()
    dot = np.array([1203.0, 851.0])
    # A single pixel for enlargements; a reduction averages a pixel away, so a 9x9 block.
    radius = 0 if person_height < 1000 else 4
    source[851 - radius : 852 + radius, 1203 - radius : 1204 + radius] = 255
    crop_to_source = common.crop_to_source_affine(np.array([1180.0, 880.0]), person_height / 200)
    # Subtract the crop of the blank image: what remains is the dot (no border fill).
    crop = common.cut_crop(source, crop_to_source)[..., 0].astype(np.float64)
    crop -= common.cut_crop(blank, crop_to_source)[..., 0]
    ys, xs = np.nonzero(crop > 0.2 * crop.max())
    weights = crop[ys, xs]
    peak = np.array([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    # Within half a crop pixel (at most half a source pixel wherever the crop enlarges).
    np.testing.assert_allclose(peak, common.to_crop(dot, crop_to_source), atol=0.5)
    if person_height <= common.STORED_PERSON_HEIGHT:
        np.testing.assert_allclose(apply_affine(crop_to_source, peak), dot, atol=0.5)


@pytest.mark.slow
def test_draw_joints_on_real_lsp_crops():
    """Converts the real LSP + LSPET samples and draws the stored joints on every crop whose
    image is real, into test-artifacts/lsp_crops.png for a person to look at."""
    out = Path(__file__).resolve().parents[1] / "test-artifacts"
    out.mkdir(exist_ok=True)
    data = out / "lsp_samples"
    argv = ["lsp", "--lsp-root", str(real_samples("lsp")), "--lspet-root", str(real_samples("lspet"))]
    assert main([*argv, "--out", str(data), "--on-error", "skip", "--workers", "2"]) == 0
    tiles = []
    for split in ("train", "val", "test"):
        crops = CropFile(data / f"{split}.h5")
        for i in range(len(crops)):
            tile = np.ascontiguousarray(crops.image(i)[..., ::-1])
            joints, states = crops.joints[i], crops.visibility[i]
            inside_image = [
                tile[int(round(y)), int(round(x))].tolist() for x, y in joints if 0 <= x < 742 and 0 <= y < 742
            ]
            assert inside_image, "no joint lands inside the crop"
            for a, b in LSP14.limbs:
                pa, pb = tuple(np.round(joints[a]).astype(int)), tuple(np.round(joints[b]).astype(int))
                colour = (0, 0, 255) if "l_" in LSP14.joint_names[b] else (255, 0, 0)
                cv2.line(tile, pa, pb, colour, 2, cv2.LINE_AA)
            for (x, y), state in zip(joints, states):
                cv2.circle(tile, (int(round(x)), int(round(y))), 5, (0, 255, 0) if state == 2 else (0, 255, 255), -1)
            cv2.putText(tile, f"{split} {crops.attrs['dataset']} {i}", (10, 30), 0, 1.0, (255, 255, 255), 2)
            tiles.append(cv2.resize(tile, (371, 371), interpolation=cv2.INTER_AREA))
    rows = [np.concatenate(tiles[i : i + 6] + [np.zeros_like(tiles[0])] * (6 - len(tiles[i : i + 6])), axis=1)
            for i in range(0, len(tiles), 6)]  # fmt: skip
    cv2.imwrite(str(out / "lsp_crops.png"), np.concatenate(rows, axis=0))
    assert len(tiles) == 24
