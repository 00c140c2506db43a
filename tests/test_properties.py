"""Property tests (hypothesis): transforms, label encode/decode and the synthetic annotations."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpm_lightning.data.augment import apply_affine, compose_affine, crop_to_input_affine, invert_affine
from cpm_lightning.data.targets import decode_belief_maps, render_belief_maps, scaled_sigma
from data_prep.synthetic import CROP_SIZE, draw_person

coordinate = st.floats(-500, 500, allow_nan=False)


@given(
    centre=st.tuples(st.floats(0, 800), st.floats(0, 800)),
    scale=st.floats(0.2, 5.0),
    factor=st.floats(0.7, 1.3),
    rotation=st.floats(-40, 40),
    flip=st.booleans(),
    points=st.lists(st.tuples(coordinate, coordinate), min_size=1, max_size=14),
)
def test_crop_input_source_round_trip(centre, scale, factor, rotation, flip, points):
    to_input = crop_to_input_affine(np.array(centre), scale, 368, factor, rotation, flip)
    crop_to_source = np.array([[1.7, 0.0, -12.5], [0.0, 1.7, 30.25]])
    points = np.array(points)
    back = apply_affine(invert_affine(to_input), apply_affine(to_input, points))
    np.testing.assert_allclose(back, points, atol=1e-6)
    input_to_source = compose_affine(crop_to_source, invert_affine(to_input))
    np.testing.assert_allclose(
        apply_affine(input_to_source, apply_affine(to_input, points)), apply_affine(crop_to_source, points), atol=1e-6
    )


@settings(max_examples=200, deadline=None)
@given(
    setting=st.sampled_from([(368, 8, 7.0), (128, 4, 7.0), (128, 4, 14.0), (256, 8, 14.0)]),
    u=st.floats(0, 1),
    v=st.floats(0, 1),
)
def test_decoded_peak_is_within_one_pixel_of_the_encoded_joint(setting, u, v):
    """Any joint at least 2 sigma inside the map decodes (sub-pixel) within 1 input pixel."""
    input_size, stride, sigma_at_368 = setting
    sigma = scaled_sigma(input_size, sigma_at_368)
    low, high = 2 * sigma, input_size - 1 - 2 * sigma
    joint = np.array([[low + u * (high - low), low + v * (high - low)]], np.float32)
    maps = render_belief_maps(joint, np.ones(1, bool), input_size // stride, stride, sigma)
    decoded = decode_belief_maps(torch.from_numpy(maps)[None], stride)[0, 0].numpy()
    assert np.linalg.norm(decoded - joint[0]) <= 1.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bystanders=st.sampled_from([0, 2]))
def test_synthetic_annotations_are_consistent(seed, bystanders):
    image, joints, visibility, centre, scale = draw_person(np.random.default_rng(seed), bystanders=bystanders)
    assert image.shape == (CROP_SIZE, CROP_SIZE, 3) and image.dtype == np.uint8
    assert joints.shape == (14, 2) and np.isfinite(joints).all()
    assert set(np.unique(visibility)) <= {0, 1, 2}
    outside = ((joints < -0.5) | (joints > CROP_SIZE - 0.5)).any(axis=1)
    assert (visibility[outside] == 0).all() and (visibility[~outside] >= 1).all()
    assert scale > 0 and np.isfinite(centre).all()
    # Deterministic from the seed.
    again = draw_person(np.random.default_rng(seed), bystanders=bystanders)
    assert np.array_equal(again[0], image) and np.array_equal(again[1], joints)
