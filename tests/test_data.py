"""HDF5 v1 crops, the Dataset (fused warp, flips through flip pairs) and the DataModule."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from cpm_lightning.data.augment import AugmentConfig, apply_affine, crop_to_input_affine, warp_to_input
from cpm_lightning.data.datamodule import EpochSampler, PoseDataModule
from cpm_lightning.data.dataset import PoseCrops
from cpm_lightning.data.h5format import FORMAT_VERSION, CropFile, CropSample, CropWriter, verify
from cpm_lightning.data.skeletons import FLIC9, LSP14
from cpm_lightning.errors import ConfigError, DataFileError


def test_skeletons_carry_names_and_flip_pairs():
    assert LSP14.num_joints == 14 and FLIC9.num_joints == 9
    names = LSP14.joint_names
    assert {(names[a], names[b]) for a, b in LSP14.flip_pairs} == {
        ("l_shoulder", "r_shoulder"), ("l_elbow", "r_elbow"), ("l_wrist", "r_wrist"),
        ("l_hip", "r_hip"), ("l_knee", "r_knee"), ("l_ankle", "r_ankle"),
    }  # fmt: skip
    assert FLIC9.flip_permutation == [3, 4, 5, 0, 1, 2, 7, 6, 8]


def write_file(path, samples: int = 3, encoding: str = "raw", crop: int = 32) -> None:
    rng = np.random.default_rng(0)
    with CropWriter(path, "unit", "val", list(LSP14.joint_names), list(LSP14.flip_pairs), (crop, crop),
                    image_encoding=encoding, provenance={"converter": "test"}) as writer:  # fmt: skip
        for i in range(samples):
            others = rng.uniform(0, crop, (i, 14, 2)) if i else None
            writer.add(
                CropSample(
                    image=rng.integers(0, 255, (crop, crop, 3), dtype=np.uint8),
                    joints=rng.uniform(0, crop, (14, 2)),
                    visibility=np.full(14, 2, np.uint8),
                    centre=np.array([crop / 2, crop / 2]),
                    scale=0.1,
                    crop_to_source=np.array([[2.0, 0, 10], [0, 2.0, 20]]),
                    source_image=f"im{i}.jpg",
                    source_index=(i, 0),
                    head_box=np.array([0, 0, 3, 4.0]),
                    others_joints=others,
                    others_visibility=None if others is None else np.ones((i, 14), np.uint8),
                )
            )


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_crop_file_round_trip(tmp_path, encoding):
    path = tmp_path / "val.h5"
    write_file(path, encoding=encoding)
    attrs = verify(path)
    assert attrs["format_version"] == FORMAT_VERSION and attrs["num_samples"] == 3
    assert attrs["joint_names"] == list(LSP14.joint_names)
    assert attrs["provenance"] == {"converter": "test"}
    crops = CropFile(path)
    assert crops.image(1).shape == (32, 32, 3) and crops.image(1).dtype == np.uint8
    assert crops.head_size[0] == pytest.approx(0.6 * 5.0)  # 0.6 x diagonal of a 3x4 box
    assert [len(crops.others(i)[0]) for i in range(3)] == [0, 1, 2]
    assert crops.flip_pairs == list(LSP14.flip_pairs)


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_crops_stay_rgb_through_storage_the_rgbx_decode_and_the_warp(tmp_path, encoding):
    path = tmp_path / "val.h5"
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (200, 30, 10)  # red left half, blue right half: a swapped channel shows
    image[:, 32:] = (10, 60, 220)
    with CropWriter(path, "unit", "val", list(LSP14.joint_names), list(LSP14.flip_pairs), (64, 64),
                    image_encoding=encoding) as writer:  # fmt: skip
        writer.add(CropSample(image, np.full((14, 2), 31.5), np.full(14, 2), np.full(2, 31.5), 0.2, np.eye(2, 3)))
    crops = CropFile(path)
    rgb, rgbx = crops.image(0), crops.image(0, channels=4)
    away_from_edge = np.r_[0:24, 40:64]  # JPEG rings and 4:2:0 chroma blurs at the colour edge
    error = np.abs(rgb.astype(int) - image)[:, away_from_edge]
    assert error.max() <= (0 if encoding == "raw" else 3)
    assert np.array_equal(rgbx[..., :3], rgb) and (rgbx[..., 3] == 255).all()
    # The loader warps RGBX and drops the padding: the same image as a 3-channel warp of RGB.
    sample = PoseCrops(path, 64, 4)[0]["image"].numpy().transpose(1, 2, 0)
    expected = warp_to_input(rgb, crop_to_input_affine(crops.centre[0], crops.scale[0], 64), 64)
    assert np.abs(sample.astype(int) - expected).max() <= 1


def test_a_jpeg_that_does_not_decode_is_reported_with_file_and_sample(tmp_path):
    path = tmp_path / "val.h5"
    write_file(path, encoding="jpeg")
    with h5py.File(path, "a") as f:
        f["images"][1] = np.frombuffer(b"not a jpeg", np.uint8)
    with pytest.raises(DataFileError, match=r"val\.h5: the JPEG of sample 1 does not decode"):
        CropFile(path).image(1)


def test_an_interrupted_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "val.h5"
    write_file(path)
    before = path.read_bytes()
    with (
        pytest.raises(KeyboardInterrupt),
        CropWriter(path, "unit", "val", list(LSP14.joint_names), list(LSP14.flip_pairs), (32, 32)) as writer,
    ):
        writer.add(CropSample(np.zeros((32, 32, 3), np.uint8), np.zeros((14, 2)), np.zeros(14), np.zeros(2), 1.0,
                              np.eye(2, 3)))  # fmt: skip
        raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["val.h5"]


def test_verify_reports_missing_stale_and_truncated_files(tmp_path):
    with pytest.raises(DataFileError, match=r"does not exist\. Make it with: python -m data_prep x"):
        verify(tmp_path / "missing.h5", "python -m data_prep x")
    path = tmp_path / "val.h5"
    write_file(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 0
    with pytest.raises(DataFileError, match="format version 0, this code reads version 1"):
        verify(path)
    write_file(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataFileError, match="truncated"):
        verify(path)


def test_validation_transform_puts_the_person_centre_at_the_input_centre():
    matrix = crop_to_input_affine(np.array([80.0, 70.0]), scale=0.5, input_size=128)
    assert apply_affine(matrix, np.array([[80.0, 70.0]])) == pytest.approx(np.array([[63.5, 63.5]]))
    # A person of scale * 200 = 100 crop px becomes 1.171 * 200 * 128 / 368 input px.
    assert np.linalg.det(matrix[:, :2]) ** 0.5 * 100 == pytest.approx(1.171 * 200 * 128 / 368)


def test_flip_mirrors_the_image_and_swaps_left_and_right(data_dir):
    path = data_dir / "synthetic" / "train.h5"
    plain = PoseCrops(path, 128, 4, augment=None)
    flip_only = PoseCrops(path, 128, 4, augment=AugmentConfig(1.0, 1.0, 0.0, 1.0))
    a, b = plain[0], flip_only[(0, 0)]
    # The image is mirrored about the input centre (bilinear warp of the same pixels).
    assert (a["image"].flip(-1).float() - b["image"].float()).abs().mean() < 2.0
    # A mirrored left wrist is the right wrist: coordinates mirror AND labels swap.
    mirrored = a["joints"].clone()
    mirrored[:, 0] = 127 - mirrored[:, 0]
    perm = LSP14.flip_permutation
    assert torch.allclose(b["joints"], mirrored[perm], atol=1e-3)
    # The belief maps follow: flipped maps with swapped channels.
    parts = a["belief_maps"][:-1].flip(-1)[perm]
    assert torch.allclose(b["belief_maps"][:-1], parts, atol=1e-4)


def test_sample_shapes_and_input_to_source(data_dir):
    dataset = PoseCrops(data_dir / "synthetic" / "val.h5", 128, 4, augment=None)
    sample = dataset[3]
    assert sample["image"].shape == (3, 128, 128) and sample["image"].dtype == torch.uint8
    assert sample["belief_maps"].shape == (15, 32, 32)
    assert sample["joints"].shape == (14, 2) and sample["visible"].dtype == torch.bool
    # input pixel -> source pixel: the synthetic crop is the source image.
    source = apply_affine(sample["input_to_source"].numpy(), sample["joints"].numpy())
    assert source == pytest.approx(dataset.file.joints[3], abs=1e-3)


def test_augmentation_is_a_function_of_seed_epoch_and_index(data_dir):
    path = data_dir / "synthetic" / "train.h5"
    dataset = PoseCrops(path, 128, 4, augment=AugmentConfig(), seed=1)
    assert torch.equal(
        dataset[(2, 5)]["image"], PoseCrops(path, 128, 4, augment=AugmentConfig(), seed=1)[(2, 5)]["image"]
    )
    assert not torch.equal(dataset[(2, 5)]["image"], dataset[(3, 5)]["image"])


def test_epoch_sampler_shuffles_per_epoch_and_never_pads_evaluation():
    train = EpochSampler(10, shuffle=True, seed=0)
    first = list(train)
    train.set_epoch(1)
    second = list(train)
    assert sorted(i for _, i in first) == list(range(10)) and {e for e, _ in second} == {1}
    assert [i for _, i in first] != [i for _, i in second]
    assert [i for _, i in EpochSampler(7, shuffle=False, pad=False)] == list(range(7))


def test_datamodule_rejects_bad_sizes_and_reports_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="data.input_size=100 is not divisible by the model's stride 8"):
        PoseDataModule(["a.h5"], "b.h5", input_size=100, stride=8)
    with pytest.raises(ConfigError, match="data.sigma"):
        PoseDataModule(["a.h5"], "b.h5", sigma=-1.0)
    module = PoseDataModule([str(tmp_path / "train.h5")], str(tmp_path / "val.h5"), make_command="make data")
    with pytest.raises(DataFileError, match=f"{tmp_path / 'train.h5'} does not exist. Make it with: make data"):
        module.setup("fit")
