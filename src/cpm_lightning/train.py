"""`python -m cpm_lightning.train [+experiment=NAME] [key=value ...]`: fit, then report.

Thin on purpose: compose the config, build the parts, fit, validate the best checkpoint, and
write metrics.json into the run's output directory. Everything else lives in the library.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cpm_lightning.callbacks.fault_tolerance import resolve_ckpt_path
from cpm_lightning.config_schema import CONFIG_DIR, check_config
from cpm_lightning.errors import report_user_errors
from cpm_lightning.module import CPMModule
from cpm_lightning.reporting import left_right_convention, print_stage_table, stage_metrics


def build(cfg: DictConfig) -> tuple[CPMModule, L.LightningDataModule, L.Trainer]:
    """The module, datamodule and trainer of a composed config (used by train and tests)."""
    module = CPMModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        scheme=OmegaConf.to_container(cfg.scheme, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        max_epochs=cfg.trainer.max_epochs,
        protocol=cfg.data.protocol,
        input_size=cfg.data.input_size,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
        compile_mode=cfg.compile_mode,
    )
    datamodule = hydra.utils.instantiate(cfg.data, stride=module.model.stride)
    datamodule.check_files("fit")  # a missing or stale file stops here, before any training
    module.joint_names = datamodule.joint_names
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return module, datamodule, trainer


def _is_multirun() -> bool:
    """In a sweep the sibling folders are other jobs, so ckpt_path=last must not look there."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def training_progress(trainer: L.Trainer, output_dir: Path) -> dict:
    """Epochs and steps trained, from last.ckpt when there is one: under a spawning strategy
    (ddp_spawn) the trainer in this process never sees the workers' loop counters."""
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        state = torch.load(last, map_location="cpu", mmap=True, weights_only=False)  # mmap: no weights read
        return {"epochs": state["epoch"] + 1, "global_step": state["global_step"]}
    return {"epochs": trainer.current_epoch, "global_step": trainer.global_step}


def train(cfg: DictConfig) -> dict:
    check_config(cfg, "train")  # an unknown key or a wrong type stops here, before anything is built
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    module, datamodule, trainer = build(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "model_info": module.describe()})
    print(f"receptive field per stage (input px): {module.receptive_fields}")
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir, search_siblings=not _is_multirun())
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    # Report the checkpoint chosen on validation (never on test), on the validation split.
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]
    metrics = {
        "experiment": cfg.name,
        "split": "val",
        "checkpoint": best,
        "left_right": left_right_convention(datamodule.val_file),
        **stage_metrics(results, "val", module),
        **training_progress(trainer, output_dir),
    }
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print_stage_table(metrics)
        print(f"metrics: {output_dir / 'metrics.json'}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        metrics = report_user_errors(lambda: train(cfg))
    except SIGTERMException as stop:
        # Lightning ends a SIGTERM-ed run (checkpoint saved, no metrics.json) with a bare SystemExit,
        # status 0 as if it had finished; exit as a shell reports a SIGTERM-ed process instead, so
        # schedulers and scripts see that it was stopped.
        raise SystemExit(128 + signal.SIGTERM) from stop
    return metrics["pck_final_stage"]  # for Hydra sweepers that optimise


if __name__ == "__main__":
    main()
