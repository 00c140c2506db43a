"""FLIC converter on the real examples.mat (the sample has no images: blank ones are made)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cpm_lightning.data.augment import apply_affine
from cpm_lightning.data.h5format import CropFile
from cpm_lightning.data.skeletons import FLIC9
from data_prep import common, flic
from data_prep.__main__ import main
from tests.real_samples import real_samples


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("flic")
    (root / "examples.mat").symlink_to(real_samples("flic", "examples.mat"))
    return flic.flic_splits(root, seed=0, val_fraction=0.05, policy=common.ErrorPolicy("stop"))


def test_split_counts(splits):
    assert len(splits["train"]) + len(splits["val"]) == 3987
    assert len(splits["val"]) == round(0.05 * 3987)
    assert len(splits["test"]) == 1016


def test_joints_person_centric_zero_based_and_torso_geometry(splits):
    examples = flic.read_examples(real_samples("flic", "examples.mat"))
    r_sho, l_sho = FLIC9.index("r_shoulder"), FLIC9.index("l_shoulder")
    swapped = 0
    for person in splits["train"] + splits["val"] + splits["test"]:
        example = examples[person.source_index[0] - 1]
        raw = example.coords[:, flic.COORD_COLUMNS].T - 1.0
        assert person.joints[r_sho, 0] <= person.joints[l_sho, 0]
        if raw[r_sho, 0] > raw[l_sho, 0]:
            swapped += 1
            np.testing.assert_allclose(person.joints, raw[FLIC9.flip_permutation])
        else:
            np.testing.assert_allclose(person.joints, raw)
        x1, y1, x2, y2 = np.asarray(example.torsobox, float) - 1
        np.testing.assert_allclose(person.centre, [(x1 + x2) / 2, 0.7 * y1 + 0.3 * y2], rtol=1e-6)
        assert person.scale == pytest.approx(0.011 * (y2 - y1))
    assert 0 < swapped < 5003  # both conventions occur in FLIC
    head = FLIC9.index("head")
    first = splits["train"][0]
    nose = examples[first.source_index[0] - 1].coords[:, 16] - 1
    np.testing.assert_allclose(first.joints[head], nose)  # the nose is the head joint
    assert all((p.states == 2).all() for p in splits["test"])


def test_convert_with_blank_images(tmp_path: Path):
    root = tmp_path / "flic"
    (root / "images").mkdir(parents=True)
    (root / "examples.mat").symlink_to(real_samples("flic", "examples.mat"))
    examples = flic.read_examples(root / "examples.mat")
    present = [0, 1, 2, 3] + [n for n, e in enumerate(examples) if e.istest][:2]
    for n in present:
        height, width = (int(v) for v in examples[n].imgdims[:2])
        cv2.imwrite(str(root / "images" / examples[n].filepath), np.full((height, width, 3), 70, np.uint8))
    out = tmp_path / "out"
    assert main(["flic", "--root", str(root), "--out", str(out), "--on-error", "skip", "--workers", "1"]) == 0
    files = {split: CropFile(out / f"{split}.h5") for split in ("train", "val", "test")}
    assert len(files["train"]) + len(files["val"]) == 4 and len(files["test"]) == 2
    test = files["test"]
    assert test.joint_names == list(FLIC9.joint_names) and test.flip_pairs == list(FLIC9.flip_pairs)
    for i in range(len(test)):
        example = examples[present[4 + i]]
        expected = example.coords[:, flic.COORD_COLUMNS].T - 1.0
        back = apply_affine(test.crop_to_source[i], test.joints[i])
        # Up to the person-centric swap, the stored joints map back onto the annotation.
        assert np.allclose(back, expected, atol=1e-3) or np.allclose(back, expected[FLIC9.flip_permutation], atol=1e-3)
    # PCK's torso size is the l_shoulder - r_hip distance, known for every FLIC sample.
    assert np.isfinite(test.torso_size).all()


def test_missing_image_stops_with_its_name(tmp_path: Path, capsys):
    root = tmp_path / "flic"
    root.mkdir()
    (root / "examples.mat").symlink_to(real_samples("flic", "examples.mat"))
    assert main(["flic", "--root", str(root), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    message = capsys.readouterr().err
    assert "12-oclock-high-special-edition-00006361.jpg" in message and "examples(1)" in message
    assert not (tmp_path / "out" / "train.h5").exists()
