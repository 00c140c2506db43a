"""The embedded synthetic set: frozen by default (documented numbers depend on it), and its
crowd variant (bystanders behind the target, `conf/data/synthetic_crowd.yaml`)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_config

from cpm_lightning.data.h5format import verify
from data_prep.synthetic import CROP_SIZE, _bystander, _pose, draw_person, write_split

# Sample 0 of the default training split. Every README/report number was measured on this set:
# a change to the generator that moves it must be a new, documented set, not a silent edit.
SAMPLE_0_JOINTS = [
    [82.25, 47.95], [81.61, 61.73], [70.99, 63.87], [61.37, 52.52], [49.98, 59.07], [91.99, 64.84],
    [103.34, 55.21], [108.43, 43.10], [73.40, 87.66], [79.61, 107.74], [96.72, 118.37], [87.40, 88.30],
    [99.07, 105.79], [111.67, 121.50],
]  # fmt: skip


def test_the_default_set_is_unchanged():
    image, joints, visibility, centre, scale = draw_person(np.random.default_rng((0, 0, 0)))
    np.testing.assert_allclose(joints, SAMPLE_0_JOINTS, atol=0.006)
    assert (visibility == 2).all()
    np.testing.assert_allclose(centre, [81.01, 74.86], atol=0.006)
    assert scale == pytest.approx(0.457, abs=5e-4)
    assert image.shape == (CROP_SIZE, CROP_SIZE, 3)


def test_bystanders_stand_beside_the_target_at_its_size():
    rng = np.random.default_rng(0)
    for _ in range(50):
        target = _pose(rng, CROP_SIZE)
        other = _bystander(rng, target, CROP_SIZE)
        offset = np.linalg.norm(other.centre - CROP_SIZE / 2)
        assert 0.35 * target.height - 1e-9 <= offset <= 0.7 * target.height + 1e-9
        assert 0.85 * target.height <= other.height <= 1.15 * target.height


def test_bystanders_change_the_image_not_who_is_annotated():
    """With bystanders the annotation is still the centred target's 14 joints, and the images hold
    more person-like strokes than the same draws without them (compared over many samples)."""
    differs = 0
    for i in range(20):
        crowd = draw_person(np.random.default_rng((0, 0, i)), bystanders=2)
        alone = draw_person(np.random.default_rng((0, 0, i)))
        assert crowd[1].shape == (14, 2) and np.linalg.norm(crowd[3] - CROP_SIZE / 2) < 0.3 * CROP_SIZE
        differs += not np.array_equal(crowd[0], alone[0])
    assert differs >= 10  # 0, 1 or 2 bystanders per image: most images gain someone


def test_crowd_set_records_its_option_and_has_its_data_config(tmp_path):
    path = write_split(tmp_path / "synthetic_crowd", "val", count=4, seed=0, encoding="raw", bystanders=2)
    assert verify(path)["provenance"]["options"]["bystanders"] == 2
    cfg = compose_config(["data=synthetic_crowd"], tmp_path / "run", tmp_path)
    assert cfg.data.val_file == str(path)
    assert "--bystanders 2" in cfg.data.make_command
