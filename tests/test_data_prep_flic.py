"""FLIC converter on the real examples.mat (the sample has no images: blank ones are made)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from conftest import TINY, compose_config

from cpm_lightning.data.augment import apply_affine
from cpm_lightning.data.h5format import CropFile, verify
from cpm_lightning.data.skeletons import FLIC9
from cpm_lightning.reporting import left_right_convention
from data_prep import common, flic
from data_prep.__main__ import main
from tests.real_samples import real_samples

# examples.mat entries (0-based) with one plain and one swapped person per split at seed 0 and
# the default validation fraction, each alone in its image: the swapped ones have the right
# shoulder right of the left.
PLAIN = {"train": 0, "val": 4, "test": 142}
SWAPPED = {"train": 5, "val": 509, "test": 395}


@pytest.fixture(scope="module")
def examples() -> list:
    return flic.read_examples(real_samples("flic", "examples.mat"))


def raw_joints(example) -> np.ndarray:
    """The example's 9 joints exactly as examples.mat labels them, 0-based."""
    return example.coords[:, flic.COORD_COLUMNS].T - 1.0


@pytest.fixture(scope="module")
def conventions(tmp_path_factory) -> dict[str, dict]:
    """The people of every split under each --left-right choice."""
    root = tmp_path_factory.mktemp("flic")
    (root / "examples.mat").symlink_to(real_samples("flic", "examples.mat"))
    return {
        left_right: flic.flic_splits(root, 0, 0.05, common.ErrorPolicy("stop"), left_right)
        for left_right in flic.LEFT_RIGHT_CONVENTIONS
    }


@pytest.fixture(scope="module")
def splits(conventions) -> dict:
    return conventions["release"]


def test_split_counts(splits):
    assert len(splits["train"]) + len(splits["val"]) == 3987
    assert len(splits["val"]) == round(0.05 * 3987)
    assert len(splits["test"]) == 1016


def test_joints_zero_based_release_swap_and_torso_geometry(splits, examples):
    r_sho, l_sho = FLIC9.index("r_shoulder"), FLIC9.index("l_shoulder")
    for person in splits["train"] + splits["val"] + splits["test"]:
        example = examples[person.source_index[0] - 1]
        raw = raw_joints(example)
        assert person.joints[r_sho, 0] <= person.joints[l_sho, 0]  # everyone as if facing the camera
        expected = raw[FLIC9.flip_permutation] if raw[r_sho, 0] > raw[l_sho, 0] else raw
        np.testing.assert_allclose(person.joints, expected)
        x1, y1, x2, y2 = np.asarray(example.torsobox, float) - 1
        np.testing.assert_allclose(person.centre, [(x1 + x2) / 2, 0.7 * y1 + 0.3 * y2], rtol=1e-6)
        assert person.scale == pytest.approx(0.011 * (y2 - y1))
    head = FLIC9.index("head")
    first = splits["train"][0]
    nose = examples[first.source_index[0] - 1].coords[:, 16] - 1
    np.testing.assert_allclose(first.joints[head], nose)  # the nose is the head joint
    assert all((p.states == 2).all() for p in splits["test"])


def test_release_swaps_247_of_5003_people_48_of_them_in_test(conventions, examples):
    """The count docs/datasets.md gives; as_annotated keeps every label of examples.mat."""
    swapped = {}
    for split in ("train", "val", "test"):
        release, as_annotated = conventions["release"][split], conventions["as_annotated"][split]
        assert [p.source_index for p in release] == [p.source_index for p in as_annotated]
        for person in as_annotated:
            np.testing.assert_array_equal(person.joints, raw_joints(examples[person.source_index[0] - 1]))
        swapped[split] = sum(not np.array_equal(r.joints, a.joints) for r, a in zip(release, as_annotated))
    assert swapped["train"] + swapped["val"] == 199 and swapped["test"] == 48
    assert sum(swapped.values()) == 247 and len(examples) == 5003


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_each_convention_on_a_swapped_and_a_plain_person(conventions, examples, split):
    people = {
        left_right: {p.source_index[0] - 1: p.joints for p in conventions[left_right][split]}
        for left_right in flic.LEFT_RIGHT_CONVENTIONS
    }
    swapped, plain = raw_joints(examples[SWAPPED[split]]), raw_joints(examples[PLAIN[split]])
    assert swapped[FLIC9.index("r_shoulder"), 0] > swapped[FLIC9.index("l_shoulder"), 0]
    assert plain[FLIC9.index("r_shoulder"), 0] < plain[FLIC9.index("l_shoulder"), 0]
    # release: the swapped person's l_shoulder is the point annotated as the right shoulder, ...
    released = people["release"][SWAPPED[split]]
    for name, partner in (("l_shoulder", "r_shoulder"), ("r_wrist", "l_wrist"), ("l_hip", "r_hip"), ("head", "head")):
        np.testing.assert_array_equal(released[FLIC9.index(name)], swapped[FLIC9.index(partner)])
    np.testing.assert_array_equal(people["as_annotated"][SWAPPED[split]], swapped)
    # ... and a person already facing the camera keeps its labels under both.
    np.testing.assert_array_equal(people["release"][PLAIN[split]], plain)
    np.testing.assert_array_equal(people["as_annotated"][PLAIN[split]], plain)


def test_unknown_convention_is_refused(tmp_path):
    with pytest.raises(ValueError, match="left_right must be one of"):
        flic.flic_splits(tmp_path, 0, 0.05, common.ErrorPolicy("stop"), "as-annotated")


@pytest.fixture(scope="module", params=flic.LEFT_RIGHT_CONVENTIONS)
def converted(request, tmp_path_factory, examples) -> tuple[str, Path]:
    """`python -m data_prep flic --left-right ...` on blank images for one plain and one swapped
    person per split; the other entries have no image and are skipped."""
    left_right = request.param
    root = tmp_path_factory.mktemp("flic_images")
    (root / "images").mkdir()
    (root / "examples.mat").symlink_to(real_samples("flic", "examples.mat"))
    for n in [*PLAIN.values(), *SWAPPED.values()]:
        height, width = (int(v) for v in examples[n].imgdims[:2])
        cv2.imwrite(str(root / "images" / examples[n].filepath), np.full((height, width, 3), 70, np.uint8))
    out = root / "out" / "flic"
    argv = ["flic", "--root", str(root), "--out", str(out), "--on-error", "skip", "--workers", "1"]
    assert main([*argv, "--left-right", left_right]) == 0
    return left_right, out


def test_convert_with_blank_images(converted, examples):
    left_right, out = converted
    for split in ("train", "val", "test"):
        crops = CropFile(out / f"{split}.h5")
        assert crops.joint_names == list(FLIC9.joint_names) and crops.flip_pairs == list(FLIC9.flip_pairs)
        with h5py.File(crops.path, "r") as f:
            entries = [int(n) - 1 for n in f["source_index"][:, 0]]
        assert sorted(entries) == sorted([PLAIN[split], SWAPPED[split]])
        for i, n in enumerate(entries):
            raw = raw_joints(examples[n])
            expected = raw[FLIC9.flip_permutation] if left_right == "release" and n == SWAPPED[split] else raw
            # The stored crop joints map back onto the annotation, in the chosen convention.
            np.testing.assert_allclose(apply_affine(crops.crop_to_source[i], crops.joints[i]), expected, atol=1e-3)
        # PCK's torso size is the l_shoulder - r_hip distance, known for every FLIC sample.
        assert np.isfinite(crops.torso_size).all()


def test_provenance_names_the_convention(converted):
    left_right, out = converted
    for split in ("train", "val", "test"):
        assert verify(out / f"{split}.h5")["provenance"]["options"]["left_right"] == left_right
        assert left_right_convention(str(out / f"{split}.h5")) == left_right


@pytest.mark.parametrize("converted", ["as_annotated"], indirect=True)  # not the default: read, not assumed
def test_training_metrics_name_the_convention(converted):
    """A real (seconds-long) FLIC training run carries the data's convention into metrics.json."""
    from cpm_lightning.train import train

    left_right, out = converted
    run = out.parent / f"run_{left_right}"
    small = ["trainer=cpu", "data.input_size=64", "data.batch_size=2", "model.num_stages=2"]
    train(compose_config([*TINY, "+experiment=flic_4stage_joint", *small], run, data_dir=out.parent))
    assert json.loads((run / "metrics.json").read_text())["left_right"] == left_right


def test_missing_image_stops_with_its_name(tmp_path: Path, capsys):
    root = tmp_path / "flic"
    root.mkdir()
    (root / "examples.mat").symlink_to(real_samples("flic", "examples.mat"))
    assert main(["flic", "--root", str(root), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    message = capsys.readouterr().err
    assert "12-oclock-high-special-edition-00006361.jpg" in message and "examples(1)" in message
    assert not (tmp_path / "out" / "train.h5").exists()
