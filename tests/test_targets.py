"""Belief-map labels and decoding: the release's grid, sigma, floor, clipping and background."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpm_lightning.data.targets import (
    LABEL_FLOOR,
    decode_belief_maps,
    grid_coordinates,
    render_belief_maps,
    render_centre_map,
    scaled_sigma,
)
from cpm_lightning.errors import ConfigError


def test_grid_is_the_release_grid():
    assert grid_coordinates(46, 8)[:3].tolist() == [3.5, 11.5, 19.5]
    assert grid_coordinates(32, 4)[:2].tolist() == [1.5, 5.5]


def test_sigma_is_7_px_at_368_and_scales_with_input():
    assert scaled_sigma(368) == 7.0
    assert scaled_sigma(184) == 3.5
    with pytest.raises(ConfigError, match="sigma"):
        scaled_sigma(368, 0.0)


def test_peak_values_are_sampled_gaussians_with_floor():
    joint = np.array([[[3.5 + 8 * 10, 3.5 + 8 * 20]]], np.float32)  # exactly on cell (x=10, y=20)
    maps = render_belief_maps(joint, np.ones((1, 1), bool), 46, 8, 7.0)
    assert maps.shape == (2, 46, 46)
    assert maps[0, 20, 10] == pytest.approx(1.0)
    assert maps[0, 20, 11] == pytest.approx(np.exp(-64 / 98), rel=1e-5)  # one cell = 8 px away
    assert maps[0, 20, 13] == 0.0  # exp(-24^2 / 98) < 0.01: zeroed
    nonzero = maps[0][maps[0] > 0]
    assert nonzero.min() >= LABEL_FLOOR
    # Background = max(1 - max over parts, 0).
    np.testing.assert_allclose(maps[1], np.maximum(1 - maps[0], 0))


def test_overlapping_people_sum_then_clip_at_one():
    joints = np.array([[[100.0, 100.0]], [[104.0, 100.0]]], np.float32)
    maps = render_belief_maps(joints, np.ones((2, 1), bool), 46, 8, 7.0)
    single = render_belief_maps(joints[:1], np.ones((1, 1), bool), 46, 8, 7.0)
    assert maps[0].max() == 1.0
    assert (maps[0] >= single[0]).all()
    assert maps[0].sum() > single[0].sum()


def test_maps_of_several_people_match_a_peak_by_peak_rendering():
    rng = np.random.default_rng(0)
    joints = rng.uniform(-20, 388, (3, 14, 2)).astype(np.float32)
    visible = rng.random((3, 14)) < 0.8
    maps = render_belief_maps(joints, visible, 46, 8, 7.0)
    grid = grid_coordinates(46, 8)
    expected = np.zeros((15, 46, 46), np.float32)
    for (person, joint), (x, y) in zip(np.ndindex(3, 14), joints.reshape(-1, 2)):
        if visible[person, joint]:
            peak = np.exp(-((grid[None, :] - x) ** 2 + (grid[:, None] - y) ** 2) / (2 * 7.0**2))
            expected[joint] += np.where(peak < LABEL_FLOOR, 0.0, peak)
    expected[:14] = np.minimum(expected[:14], 1.0)
    expected[14] = np.maximum(1.0 - expected[:14].max(axis=0), 0.0)
    np.testing.assert_allclose(maps, expected, atol=1e-6)


def test_invisible_joints_get_no_peak():
    joints = np.array([[50.0, 50.0], [100.0, 100.0]], np.float32)
    maps = render_belief_maps(joints, np.array([True, False]), 46, 8, 7.0)
    assert maps[0].max() > 0.9 and maps[1].max() == 0.0


@pytest.mark.parametrize(("input_size", "stride"), [(368, 8), (128, 4), (128, 8)])
def test_decode_inverts_render_on_the_same_grid(input_size, stride):
    rng = np.random.default_rng(0)
    sigma = scaled_sigma(input_size)
    margin = 3 * sigma + stride
    joints = rng.uniform(margin, input_size - margin, (14, 2)).astype(np.float32)
    maps = render_belief_maps(joints, np.ones(14, bool), input_size // stride, stride, sigma)
    decoded = decode_belief_maps(torch.from_numpy(maps)[None], stride)[0].numpy()
    coarse = decode_belief_maps(torch.from_numpy(maps)[None], stride, subpixel=False)[0].numpy()
    error, coarse_error = np.linalg.norm(decoded - joints, axis=1), np.linalg.norm(coarse - joints, axis=1)
    assert coarse_error.max() <= stride / np.sqrt(2) + 1e-4  # argmax: within half a cell per axis
    assert error.mean() < coarse_error.mean()  # sub-pixel refinement helps


def test_centre_map_is_a_centred_gaussian():
    centre = render_centre_map(368)
    assert centre.shape == (1, 1, 368, 368)
    assert centre[0, 0, 183:185, 183:185].min() > 0.99
    # The centre is pixel 183.5; sigma 21 px.
    assert centre[0, 0, 183, 204] == pytest.approx(np.exp(-(20.5**2 + 0.5**2) / (2 * 21**2)), rel=1e-5)
