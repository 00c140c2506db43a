"""PoseCrops: HDF5 crops -> (image, belief-map targets, protocol metadata), one sample at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cpm_lightning.data.augment import (
    AugmentConfig,
    apply_affine,
    compose_affine,
    crop_to_input_affine,
    invert_affine,
    random_affine,
    random_photometric,
    warp_to_input,
)
from cpm_lightning.data.h5format import CropFile
from cpm_lightning.data.targets import render_belief_maps, scaled_sigma


class PoseCrops(Dataset):
    """Samples of one crop file, warped to `input_size` and labelled on the stride grid.

    Each item is a dict of tensors:
        image           (3, H, W) uint8 RGB (normalised on the device by the LightningModule)
        belief_maps     (J + 1, h, w) ideal maps of the subject (stages >= 2)
        belief_maps_all (J + 1, h, w) ideal maps of everyone near the subject (stage 1)
        joints          (J, 2) input pixels;  visible (J,) bool: annotated (state >= 1)
        torso_size, head_size   protocol normalisers in input pixels (NaN when unknown)
        input_to_source (2, 3) affine from input pixels to source-image pixels
        index           sample index in the file
    With `augment` (training) a random scale / rotation / flip (and, if asked for, colour jitter)
    is drawn per sample; without it the transform is the deterministic centre-and-scale crop
    used for validation and test.
    """

    def __init__(
        self,
        path: str | Path,
        input_size: int,
        stride: int,
        sigma: float = 7.0,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ):
        self.file = CropFile(path)
        self.input_size = input_size
        self.stride = stride
        self.map_size = input_size // stride
        self.sigma = scaled_sigma(input_size, sigma)
        self.augment = augment
        self.seed = seed
        self.flip_permutation = np.arange(len(self.file.joint_names))
        for left, right in self.file.flip_pairs:
            self.flip_permutation[left], self.flip_permutation[right] = right, left

    def __len__(self) -> int:
        return len(self.file)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """`key` is an index, or (epoch, index) from EpochSampler: the augmentation is drawn
        from (seed, epoch, index) alone, so it is the same in any worker, on any rank, and after
        a resume."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        f = self.file
        flip = False
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, epoch, index))
            matrix, flip = random_affine(rng, f.centre[index], f.scale[index], self.input_size, self.augment)
        else:
            matrix = crop_to_input_affine(f.centre[index], f.scale[index], self.input_size)
        # Warped as RGBX, twice as fast as RGB (CropFile.image); the padding channel is dropped here.
        image = warp_to_input(f.image(index, channels=4), matrix, self.input_size)[..., :3]
        if self.augment is not None and self.augment.photometric:
            # After the geometry, from the same generator: colours too depend on (seed, epoch, index) only.
            image = random_photometric(rng, image)

        joints = apply_affine(matrix, f.joints[index]).astype(np.float32)
        annotated = f.visibility[index] >= 1
        others_joints, others_visibility = f.others(index)
        others_joints = apply_affine(matrix, others_joints.reshape(-1, 2)).reshape(others_joints.shape)
        if flip:
            # A mirrored left arm is a right arm: swap labels through the flip pairs.
            joints, annotated = joints[self.flip_permutation], annotated[self.flip_permutation]
            others_joints = others_joints[:, self.flip_permutation]
            others_visibility = others_visibility[:, self.flip_permutation]

        limit = self.input_size - 0.5
        inside = (joints >= -0.5).all(-1) & (joints <= limit).all(-1)
        subject_maps = render_belief_maps(joints, annotated & inside, self.map_size, self.stride, self.sigma)
        if len(others_joints):
            everyone = np.concatenate([joints[None], others_joints.astype(np.float32)])
            others_inside = (others_joints >= -0.5).all(-1) & (others_joints <= limit).all(-1)
            everyone_visible = np.concatenate([(annotated & inside)[None], (others_visibility >= 1) & others_inside])
            all_maps = render_belief_maps(everyone, everyone_visible, self.map_size, self.stride, self.sigma)
        else:
            all_maps = subject_maps

        zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        input_to_source = compose_affine(f.crop_to_source[index], invert_affine(matrix))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "belief_maps": torch.from_numpy(subject_maps),
            "belief_maps_all": torch.from_numpy(all_maps),
            "joints": torch.from_numpy(joints),
            "visible": torch.from_numpy(annotated),
            "torso_size": torch.tensor(f.torso_size[index] * zoom, dtype=torch.float32),
            "head_size": torch.tensor(f.head_size[index] * zoom, dtype=torch.float32),
            "input_to_source": torch.from_numpy(input_to_source),
            "index": torch.tensor(index),
        }
