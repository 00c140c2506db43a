"""PoseDataModule: train / val / test crop files -> DataLoaders."""

from __future__ import annotations

import bisect
import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cpm_lightning.callbacks.fault_tolerance import resume_position
from cpm_lightning.data.augment import AugmentConfig
from cpm_lightning.data.dataset import PoseCrops
from cpm_lightning.data.h5format import verify
from cpm_lightning.errors import ConfigError, DataFileError


class MixedCrops(Dataset):
    """Several crop files with the same joints served as one (e.g. LSP + MPII)."""

    def __init__(self, parts: list[PoseCrops]):
        names = {tuple(p.file.joint_names) for p in parts}
        if len(names) != 1:
            raise DataFileError(f"cannot mix crop files with different joints: {sorted(names)}")
        self.parts = parts
        self.ends = list(np.cumsum([len(p) for p in parts]))
        self.file = parts[0].file  # joint names, flip pairs

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        part = bisect.bisect_right(self.ends, index)
        local = index - (self.ends[part - 1] if part else 0)
        return self.parts[part][(epoch, local)]


class EpochSampler(Sampler):
    """Yields (epoch, index) so that augmentation depends on (seed, epoch, index) only.

    It also does the rank split under DDP itself (Trainer(use_distributed_sampler=False)):
    training pads to a multiple of the world size, as DistributedSampler does; evaluation
    never pads, so every sample is counted exactly once and metrics equal a 1-process run.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, pad: bool = True):
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        self.epoch = 0
        self.skip = 0  # samples of the next pass already trained on (a run resumed mid-epoch)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at each epoch start
        self.epoch = epoch

    @staticmethod
    def _world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        rank, world = self._world()
        if self.pad and world > 1:
            total = math.ceil(self.num_samples / world) * world
            order += order[: total - len(order)]
        return order[rank::world]

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Make the next pass continue epoch `epoch` after its first `samples_done` samples."""
        self.epoch, self.skip = epoch, samples_done

    def __iter__(self):
        indices, self.skip = self._indices()[self.skip :], 0
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        rank, world = self._world()
        if self.pad:
            return math.ceil(self.num_samples / world)
        return len(range(rank, self.num_samples, world))


class PoseDataModule(L.LightningDataModule):
    """Crop files of one dataset (or several mixed) for a CPM of a given input size and stride.

    `make_command` is quoted in the error when a file is missing, so the fix is one copy-paste.
    """

    def __init__(
        self,
        train_files: list[str] | str,
        val_file: str,
        test_file: str | None = None,
        input_size: int = 368,
        stride: int = 8,
        sigma: float = 7.0,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        augment: dict | None = None,
        seed: int = 0,
        make_command: str | None = None,
        protocol: str = "lsp_pck",
    ):
        super().__init__()
        if input_size % stride:
            raise ConfigError(
                f"data.input_size={input_size} is not divisible by the model's stride {stride}: "
                f"use a multiple of {stride} (e.g. {stride * max(1, round(input_size / stride))})."
            )
        if sigma <= 0:
            raise ConfigError(f"data.sigma={sigma} is invalid: it must be a positive number of pixels.")
        self.train_files = [str(p) for p in ([train_files] if isinstance(train_files, str) else train_files)]
        self.val_file = str(val_file)
        self.test_file = None if test_file is None else str(test_file)
        self.input_size, self.stride, self.sigma = input_size, stride, sigma
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pin_memory = pin_memory
        self.augment = AugmentConfig(**(augment or {}))
        self.seed = seed
        self.make_command = make_command
        self.protocol = protocol  # the PCK protocol reported on this data (cpm_lightning.metrics)
        self.train_set: Dataset | None = None
        self.val_set: PoseCrops | None = None
        self.test_set: PoseCrops | None = None

    def check_files(self, stage: str | None = None) -> dict:
        """Verify every file this stage needs up front: a clear error here, not in a worker."""
        files = {"fit": [*self.train_files, self.val_file], "validate": [self.val_file]}.get(
            stage or "fit", [self.test_file] if self.test_file else []
        )
        if stage in ("test", "predict") and not self.test_file:
            raise DataFileError("this data config has no test_file; evaluate on split=val instead.")
        attrs = {}
        for path in files:
            attrs[path] = verify(path, self.make_command)
        return attrs

    def _crops(self, path: str, augment: bool) -> PoseCrops:
        return PoseCrops(
            path,
            self.input_size,
            self.stride,
            self.sigma,
            augment=self.augment if augment else None,
            seed=self.seed,
        )

    def setup(self, stage: str | None = None) -> None:
        self.check_files(stage)
        if stage in (None, "fit"):
            parts = [self._crops(p, augment=True) for p in self.train_files]
            self.train_set = parts[0] if len(parts) == 1 else MixedCrops(parts)
        if stage in (None, "fit", "validate"):
            self.val_set = self._crops(self.val_file, augment=False)
        if stage in ("test", "predict") and self.test_file:
            self.test_set = self._crops(self.test_file, augment=False)

    @property
    def joint_names(self) -> list[str]:
        return list(verify(self.val_file, self.make_command)["joint_names"])

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        sampler = EpochSampler(len(dataset), shuffle=train, seed=self.seed, pad=train)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            pin_memory=self.pin_memory,
            drop_last=train,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_set, train=True)
        if self.trainer is not None:
            # Lightning iterates this loader before it calls set_epoch: a resumed run must start
            # at the restored epoch, past the batches it has already trained on.
            epoch, batches_done = resume_position(self.trainer)
            loader.sampler.resume_at(epoch, batches_done * self.batch_size)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
