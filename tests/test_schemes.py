"""The four training schemes (Fig. 6b), each proven on a real Trainer run."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from cpm_lightning.errors import ConfigError
from cpm_lightning.losses import stage_losses
from cpm_lightning.schemes import build_scheme
from cpm_lightning.train import build


def test_phases_of_each_scheme():
    joint = build_scheme("joint", 3, 6)
    assert [(p.trainable_stages, p.loss_weights) for p in joint.phases] == [((1, 2, 3), (1.0, 1.0, 1.0))]
    no_is = build_scheme("no_intermediate", 3, 6)
    assert no_is.phases[0].loss_weights == (0.0, 0.0, 1.0)
    stagewise = build_scheme("stagewise", 3, 7)
    assert [p.trainable_stages for p in stagewise.phases] == [(1,), (2,), (3,)]
    assert [p.num_epochs for p in stagewise.phases] == [3, 2, 2]  # equal split of 7 epochs
    assert [stagewise.phase_index(e) for e in range(8)] == [0, 0, 0, 1, 1, 2, 2, 2]
    finetune = build_scheme("finetune", 3, 8)
    assert [p.name for p in finetune.phases] == ["stagewise_1", "stagewise_2", "stagewise_3", "joint"]
    from_checkpoint = build_scheme("finetune", 3, 8, init_checkpoint="stagewise.ckpt")
    assert [p.name for p in from_checkpoint.phases] == ["joint"]
    weighted = build_scheme("joint", 2, 1, stage_weights=[0.5, 2.0], phase_epochs=[1])
    assert weighted.phases[0].loss_weights == (0.5, 2.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("unknown", 3, 3), "scheme='unknown' is unknown: choose one of joint, stagewise"),
        (("stagewise", 3, 2), "give at least 3 epochs"),
        (("joint", 3, 3, [1.0]), "stage_weights has 1 entries for 3 stages"),
    ],
)
def test_bad_scheme_configs(args, message):
    with pytest.raises(ConfigError, match=message):
        build_scheme(*args)


class WeightSnapshots(L.Callback):
    """Copies of every stage's parameters at the end of each epoch, and the train/eval modes."""

    def __init__(self):
        self.snapshots: list[dict[int, list[torch.Tensor]]] = []
        self.stage1_training_flags: list[bool] = []

    def take(self, module) -> dict[int, list[torch.Tensor]]:
        model = module.model
        return {
            t: [p.detach().clone() for m in model.stage_modules(t) for p in m.parameters()]
            for t in range(1, model.num_stages + 1)
        }

    def on_train_start(self, trainer, module):
        self.snapshots.append(self.take(module))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.stage1_training_flags.append(module.model.stage1.training)

    def on_train_epoch_end(self, trainer, module):
        self.snapshots.append(self.take(module))


class LearningRates(L.Callback):
    """The learning rate of the first parameter group at every training step."""

    def __init__(self):
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit(cfg, *callbacks):
    module, datamodule, trainer = build(cfg)
    trainer.callbacks.extend(callbacks)
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_stagewise_trains_one_stage_per_phase_and_keeps_earlier_ones_bit_identical(tiny_config):
    snapshots, rates = WeightSnapshots(), LearningRates()
    fit(tiny_config("scheme=stagewise", "trainer.max_epochs=3", "+trainer.num_sanity_val_steps=0"), snapshots, rates)
    # Every phase runs the whole one-cycle schedule (3 steps each), as a run of its own.
    phase1, phase2, phase3 = rates.rates[0:3], rates.rates[3:6], rates.rates[6:9]
    assert len(rates.rates) == 9 and phase1 == phase2 == phase3 and len(set(phase1)) == 3
    init, after1, after2, after3 = snapshots.snapshots
    # Phase 1: stage 1 alone.
    assert not same(init[1], after1[1]) and same(init[2], after1[2]) and same(init[3], after1[3])
    # Phase 2: stage 2 and the trunk it brings; stage 1 frozen bit for bit.
    assert same(after1[1], after2[1]) and not same(after1[2], after2[2]) and same(after1[3], after2[3])
    # Phase 3: stage 3 alone; stage 1, stage 2 and the shared trunk frozen.
    assert same(after2[1], after3[1]) and same(after2[2], after3[2]) and not same(after2[3], after3[3])
    # A frozen stage also has its dropout off.
    batches = len(snapshots.stage1_training_flags) // 3
    assert all(snapshots.stage1_training_flags[:batches])
    assert not any(snapshots.stage1_training_flags[batches:])


def test_no_intermediate_sends_gradient_from_the_last_stage_loss_only(tiny_config):
    module, datamodule, _ = build(tiny_config("scheme=no_intermediate", "model.dropout=0.0"))
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    module.apply_phase()

    def gradients(loss: torch.Tensor) -> list[torch.Tensor]:
        module.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in module.model.parameters()]

    torch.manual_seed(0)
    scheme_grads = gradients(module.training_step(batch, 0))

    def losses() -> torch.Tensor:
        return stage_losses(module(batch["image"]), batch["belief_maps"], batch["belief_maps_all"])

    assert all(torch.allclose(a, b) for a, b in zip(scheme_grads, gradients(losses()[-1])))
    # ... while under the joint scheme the stage-1 loss does reach stage 1.
    assert not torch.allclose(gradients(losses().sum())[0], scheme_grads[0])


def test_finetune_starts_from_exactly_the_stagewise_weights(tiny_config, tmp_path):
    _, trainer = fit(tiny_config("scheme=stagewise", "trainer.max_epochs=3", "+trainer.num_sanity_val_steps=0"))
    stagewise_ckpt = str(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")
    stagewise = torch.load(stagewise_ckpt, weights_only=False)
    assert stagewise["scheme"] == {
        "name": "stagewise",
        "phase_index": 2,
        "phases": ["stagewise_1", "stagewise_2", "stagewise_3"],
    }

    snapshots = WeightSnapshots()
    cfg = tiny_config("scheme=finetune", f"scheme.init_checkpoint={stagewise_ckpt}")
    cfg.paths.output_dir = str(tmp_path / "finetune")
    module, _ = fit(cfg, snapshots)
    start = sum(snapshots.snapshots[0].values(), [])  # at on_train_start, before any step
    expected = [stagewise["state_dict"][key] for key in _qualified(module)]
    assert len(start) == len(expected) == len(list(module.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(start, expected))
    assert [p.name for p in module.scheme.phases] == ["joint"]


def _qualified(module) -> list[str]:
    """State-dict keys of the parameters in snapshot order (stage by stage)."""
    by_id = {id(p): f"model.{n}" for n, p in module.model.named_parameters()}
    return [by_id[id(p)] for t in range(1, 4) for m in module.model.stage_modules(t) for p in m.parameters()]


def test_finetune_without_checkpoint_runs_the_stagewise_phases_first(tiny_config):
    module, trainer = fit(tiny_config("scheme=finetune", "trainer.max_epochs=4", "+trainer.num_sanity_val_steps=0"))
    assert [p.name for p in module.scheme.phases] == ["stagewise_1", "stagewise_2", "stagewise_3", "joint"]
    assert trainer.current_epoch == 4
    assert all(p.requires_grad for p in module.model.parameters())  # the joint phase trains everything
