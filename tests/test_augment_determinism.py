"""Photometric augmentation is drawn from the sample's own seed: (seed, epoch, index) fixes the
image whatever the DataLoader workers and however often the dataset is re-created (a resume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cpm_lightning.data.augment import (
    AugmentConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    shift_hue,
    to_grey,
)
from cpm_lightning.data.datamodule import EpochSampler
from cpm_lightning.data.dataset import PoseCrops

PHOTOMETRIC = AugmentConfig(photometric=True)


@pytest.fixture
def train_file(data_dir):
    return data_dir / "synthetic" / "train.h5"


def crops(path, augment: AugmentConfig = PHOTOMETRIC) -> PoseCrops:
    return PoseCrops(path, 128, 4, augment=augment, seed=3)


def test_same_seed_epoch_and_index_give_the_same_image_in_a_fresh_dataset(train_file):
    first, second = crops(train_file), crops(train_file)
    for key in [(0, 0), (2, 5), (7, 40)]:
        assert torch.equal(first[key]["image"], second[key]["image"])
    assert not torch.equal(first[(2, 5)]["image"], first[(3, 5)]["image"])  # another epoch, other colours
    assert not torch.equal(first[(2, 5)]["image"], first[(2, 6)]["image"])


def test_photometric_changes_colours_but_not_geometry(train_file):
    coloured, geometric = crops(train_file), crops(train_file, AugmentConfig(photometric=False))
    changed = 0
    for index in range(10):
        with_colour, without = coloured[(1, index)], geometric[(1, index)]
        # Colours are drawn after the geometry, from the same generator: the warp is unchanged.
        assert torch.equal(with_colour["joints"], without["joints"])
        changed += not torch.equal(with_colour["image"], without["image"])
    assert changed >= 5  # jitter on 80% of samples


def epoch_images(dataset: PoseCrops, num_workers: int) -> torch.Tensor:
    sampler = EpochSampler(32, shuffle=True, seed=3)
    sampler.set_epoch(4)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=num_workers)
    return torch.cat([batch["image"] for batch in loader])


def test_images_do_not_depend_on_the_number_of_workers(train_file):
    assert torch.equal(epoch_images(crops(train_file), 0), epoch_images(crops(train_file), 2))


def test_colour_adjustments_are_identities_at_their_neutral_values():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(adjust_brightness(image, 1.0), image)
    assert np.array_equal(adjust_contrast(image, 1.0), image)
    assert np.array_equal(adjust_saturation(image, 1.0), image)
    assert np.array_equal(shift_hue(image, 0.0), image)
    assert np.array_equal(adjust_saturation(image, 0.0), to_grey(image))
    assert not np.array_equal(shift_hue(image, 0.05), image)
