"""CPMModule: the CPM, its per-stage losses, the training scheme, the optimiser and per-stage PCK."""

from __future__ import annotations

import lightning as L
import torch

from cpm_lightning.data.targets import decode_belief_maps
from cpm_lightning.errors import ConfigError
from cpm_lightning.losses import stage_losses
from cpm_lightning.metrics import StageLoss, StagePCK, get_protocol
from cpm_lightning.models.cpm import CPM
from cpm_lightning.models.receptive_field import receptive_fields
from cpm_lightning.schemes import build_scheme

OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("none", "step", "cosine", "onecycle")


def normalise_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB -> the release's (x - 128) / 256 (it fed BGR; our first conv takes RGB)."""
    return (image.float() - 128.0) / 256.0


class CPMModule(L.LightningModule):
    """Wires a T-stage CPM to data: loss = sum over stages of weighted L2 belief-map losses.

    model: CPM keyword arguments (conf/model); scheme: name, stage_weights, phase_epochs,
    init_checkpoint (conf/scheme); optim: optimiser, learning-rate multipliers, loss reduction
    and schedule (conf/optim); protocol: the PCK protocol logged per stage on validation;
    input_size: the network input it is trained at (data.input_size), saved in the checkpoint so
    that evaluate, predict and export use it without being told.
    """

    def __init__(
        self,
        model: dict,
        scheme: dict,
        optim: dict,
        max_epochs: int,
        protocol: str = "lsp_pck",
        joint_names: list[str] | None = None,
        input_size: int | None = None,
        channels_last: bool = False,
        compile: bool = False,
        compile_mode: str = "default",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = CPM(**model)
        self.scheme = build_scheme(num_stages=self.model.num_stages, max_epochs=max_epochs, **scheme)
        self.init_checkpoint = scheme.get("init_checkpoint")
        self.optim = dict(optim)
        if self.optim.get("name") not in OPTIMIZERS:
            raise ConfigError(f"optim.name={self.optim.get('name')!r} is invalid: choose one of {OPTIMIZERS}.")
        self.protocol = get_protocol(protocol)
        self.joint_names = joint_names or [f"joint_{j}" for j in range(self.model.config.num_parts)]
        self.receptive_fields = receptive_fields(self.model.config)
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._forward = torch.compile(self.model, mode=compile_mode) if compile else self.model
        num_stages, num_joints = self.model.num_stages, self.model.config.num_parts
        self.val_pck = StagePCK(num_stages, num_joints, protocol)
        self.test_pck = StagePCK(num_stages, num_joints, protocol)
        self.val_loss = StageLoss(num_stages)
        self.test_loss = StageLoss(num_stages)

    # -- the scheme: which stages train in the current phase --------------------------------
    @property
    def phase(self):
        return self.scheme.phase(self.current_epoch)

    def _stage_is_trained(self, stage: int) -> bool:
        return stage in self.phase.trainable_stages

    def apply_phase(self) -> None:
        """Freeze the stages outside the current phase (no grad, dropout off)."""
        for stage in range(1, self.model.num_stages + 1):
            trained = self._stage_is_trained(stage)
            for module in self.model.stage_modules(stage):
                module.requires_grad_(trained)
                module.train(self.training and trained)

    def train(self, mode: bool = True) -> CPMModule:
        # Lightning switches the whole module to train mode after each validation; keep the
        # frozen stages in eval mode so their dropout stays off.
        super().train(mode)
        if mode:
            self.apply_phase()
        return self

    def on_train_start(self) -> None:
        # A run resumed mid-epoch skips on_train_epoch_start for that epoch: set its phase here.
        self.apply_phase()

    def setup(self, stage: str) -> None:
        # Runs before Lightning restores a checkpoint given as ckpt_path, so a resumed run keeps
        # its own weights; a fresh finetune run starts from exactly the stage-wise weights.
        if stage == "fit" and self.init_checkpoint:
            state = torch.load(self.init_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
            weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
            self.model.load_state_dict(weights)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["scheme"] = {
            "name": self.scheme.name,
            "phase_index": self.scheme.phase_index(self.current_epoch),
            "phases": [phase.name for phase in self.scheme.phases],
        }

    # -- steps --------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor, num_stages: int | None = None) -> torch.Tensor:
        """uint8 or normalised float images (N, 3, H, W) -> belief maps (N, T, P + 1, h, w)."""
        if self.channels_last:  # before normalising: the uint8 copy is 4x smaller, the float op keeps the layout
            image = image.contiguous(memory_format=torch.channels_last)
        if image.dtype == torch.uint8:
            image = normalise_image(image)
        return self._forward(image, num_stages=num_stages)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        weights = self.phase.loss_weights
        # Stages after the last supervised one (stage-wise training) need not be computed.
        last_stage = max(t for t, w in enumerate(weights, start=1) if w != 0)
        belief_maps = self(batch["image"], num_stages=last_stage)
        losses = stage_losses(
            belief_maps, batch["belief_maps"], batch["belief_maps_all"], self.optim.get("loss_reduction", "paper")
        )
        # Stages with weight 0 are left out of the sum (not multiplied by 0), so they send no
        # gradient at all: this is what "no intermediate supervision" means.
        loss = sum(w * losses[t] for t, w in enumerate(weights) if w != 0)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        for t, value in enumerate(losses.detach()):
            self.log(f"train/loss_stage{t + 1}", value, batch_size=batch_size)
        return loss

    def _evaluation_step(self, batch: dict[str, torch.Tensor], pck: StagePCK, loss: StageLoss) -> None:
        belief_maps = self(batch["image"])
        losses = stage_losses(
            belief_maps, batch["belief_maps"], batch["belief_maps_all"], self.optim.get("loss_reduction", "paper")
        )
        loss.update(losses, batch["image"].shape[0])
        predictions = decode_belief_maps(belief_maps.float(), self.model.stride)
        normalizer = self.protocol.normalizer_of(batch, predictions[:, -1], self.joint_names)
        pck.update(predictions, batch["joints"], batch["visible"], normalizer)

    def _log_epoch(self, prefix: str, pck: StagePCK, loss: StageLoss) -> None:
        # Both metrics sum their states over DDP ranks: the 1-process numbers exactly.
        per_stage_pck = pck.compute()["mean"].reshape(-1)  # torchmetrics squeezes a 1-stage result to 0-d
        per_stage_loss = loss.compute().reshape(-1)
        for t, (pck_value, loss_value) in enumerate(zip(per_stage_pck, per_stage_loss)):
            self.log(f"{prefix}/pck_stage{t + 1}", pck_value.float())
            self.log(f"{prefix}/loss_stage{t + 1}", loss_value.float())
        self.log(f"{prefix}/pck", per_stage_pck[-1].float(), prog_bar=True)
        self.log(f"{prefix}/loss", per_stage_loss.sum().float())
        pck.reset()
        loss.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, self.val_pck, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_pck, self.val_loss)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_pck, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_pck, self.test_loss)

    # -- optimiser ------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """The release's learning-rate multipliers: stage 1 x5 (biases x10), others x1 (biases
        x2); no weight decay on biases. Multipliers default to 1 (e.g. for Adam)."""
        o = self.optim
        lr, decay = float(o["lr"]), float(o.get("weight_decay", 0.0))
        stage1 = {id(p) for p in self.model.stage1.parameters()}
        groups: dict[tuple[str, bool], dict] = {}
        for name, param in self.model.named_parameters():
            is_bias = name.endswith("bias")
            in_stage1 = id(param) in stage1
            if in_stage1:
                mult = o.get("stage1_bias_lr_mult", 1.0) if is_bias else o.get("stage1_lr_mult", 1.0)
            else:
                mult = o.get("bias_lr_mult", 1.0) if is_bias else 1.0
            key = ("stage1" if in_stage1 else "other", is_bias)
            group = groups.setdefault(
                key, {"params": [], "lr": lr * float(mult), "weight_decay": 0.0 if is_bias else decay}
            )
            group["params"].append(param)
        return list(groups.values())

    def configure_optimizers(self):
        o = self.optim
        groups = self.parameter_groups()
        # fused: one kernel for the whole update instead of a few per parameter tensor; None is
        # torch's default (the multi-tensor "foreach" path), the same update to float tolerance.
        fused = True if o.get("fused", False) else None
        if o["name"] == "sgd":
            optimizer = torch.optim.SGD(groups, lr=float(o["lr"]), momentum=float(o.get("momentum", 0.9)), fused=fused)
        else:
            optimizer = torch.optim.AdamW(groups, lr=float(o["lr"]), fused=fused)
        scheduler = self.phase_scheduler(optimizer, self.scheme.phases[0])
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def phase_steps(self, phase) -> int:
        """Optimiser steps of one phase (the last phase also gets any remainder)."""
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = total // max(1, int(self.trainer.max_epochs))
        if phase is self.scheme.phases[-1]:
            return max(1, total - per_epoch * phase.first_epoch)
        return max(1, per_epoch * phase.num_epochs)

    def phase_scheduler(self, optimizer: torch.optim.Optimizer, phase):
        """The learning-rate schedule of one phase, from its first step to its last (None: constant).

        Every phase runs the whole schedule, as the release trained each stage-wise phase as a
        run of its own: one schedule over all phases would leave the last stages only its tail.
        """
        schedule = dict(self.optim.get("scheduler") or {"name": "none"})
        name = schedule.pop("name", "none")
        if name not in SCHEDULERS:
            raise ConfigError(f"optim.scheduler.name={name!r} is invalid: choose one of {SCHEDULERS}.")
        if name == "none":
            return None
        # Start from the configured rates, as a fresh run would (a scheduler built on an
        # optimiser that another one has driven would start from where that one left off).
        for group, configured in zip(optimizer.param_groups, self.parameter_groups()):
            group["lr"] = configured["lr"]
            group.pop("initial_lr", None)
        steps = self.phase_steps(phase)
        if name == "step":  # the release: x gamma every step_size iterations
            return torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=int(schedule["step_size"]), gamma=float(schedule["gamma"])
            )
        if name == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=max(2, steps),
            pct_start=float(schedule.get("pct_start", 0.15)),
        )

    def on_train_epoch_start(self) -> None:
        self.apply_phase()
        phase = self.phase
        if self.current_epoch == phase.first_epoch and phase is not self.scheme.phases[0]:
            # A new phase: restart its schedule. (A run resumed mid-phase restores the phase's
            # schedule from the checkpoint instead: this epoch is not the phase's first.)
            for config in self.trainer.lr_scheduler_configs:
                config.scheduler = self.phase_scheduler(config.scheduler.optimizer, phase)

    def describe(self) -> dict:
        """What a reader of the logs needs to know about this model."""
        return {
            "receptive_field_px": self.receptive_fields,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "scheme_phases": [(p.name, p.first_epoch, p.num_epochs) for p in self.scheme.phases],
            "protocol": self.protocol.name,
        }
