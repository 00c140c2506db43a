"""Configs are schema-checked at start: an unknown key or a wrong type is a ConfigError naming the
key and the nearest valid keys, and every shipped config passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cpm_lightning.config_schema import check_config
from cpm_lightning.errors import ConfigError
from cpm_lightning.evaluate import evaluate
from cpm_lightning.export import export
from cpm_lightning.predict import predict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def composed(config_name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def check_error(config_name: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as error:
        check_config(composed(config_name, *overrides), config_name)
    return str(error.value)


@pytest.mark.parametrize(
    ("override", "suggestion", "valid_keys_of"),
    [
        ("+model.num_stage=3", "'model.num_stages'", "Valid keys of model:"),
        ("+data.batch_sise=8", "'data.batch_size'", "Valid keys of data:"),
        ("+data.augment.flip_prob=0.3", "'data.augment.flip_probability'", "Valid keys of data.augment:"),
        ("+trainer.max_epoch=3", "'trainer.max_epochs'", "Valid keys of trainer:"),
        ("+optim.scheduler.gama=0.1", "'optim.scheduler.gamma'", "Valid keys of optim.scheduler:"),
        ("+scheme.phase_epoch=[1,1,1]", "'scheme.phase_epochs'", "Valid keys of scheme:"),
        ("+chanels_last=true", "'channels_last'", "Valid top-level keys:"),
    ],
)
def test_unknown_key_names_the_nearest_valid_key(override, suggestion, valid_keys_of):
    message = check_error("train", "+experiment=lsp_3stage_joint", override)
    key = override.lstrip("+").split("=")[0]
    assert f"Unknown config key '{key}'" in message
    assert f"Did you mean {suggestion}" in message
    assert valid_keys_of in message


def test_unknown_key_with_no_near_match_still_lists_the_valid_keys():
    message = check_error("train", "+model.colour=red")
    assert "Did you mean" not in message
    assert "Valid keys of model: centre_map, checkpoint_stages, dropout," in message


def test_a_group_key_belongs_to_the_primary_configs_that_define_it():
    # test_time is evaluate's and predict's, not train's.
    assert "Unknown config key 'test_time'" in check_error("train", "+test_time.flip=true")
    assert "Did you mean 'test_time.flip'" in check_error("evaluate", "+test_time.flp=true")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.num_stages=three", "'model.num_stages' has the wrong type: expected int, got 'three' (str)"),
        ("data.batch_size=1.5", "'data.batch_size' has the wrong type: expected int, got 1.5 (float)"),
        ("model.num_stages=true", "'model.num_stages' has the wrong type: expected int, got True (bool)"),
        ("data.sigma=wide", "'data.sigma' has the wrong type: expected float, got 'wide' (str)"),
        ("model.centre_map=1", "'model.centre_map' has the wrong type: expected bool, got 1 (int)"),
        ("data.train_files=[1]", "'data.train_files' has the wrong type: expected a list of str or str, got [1]"),
        ("data.test_file=[a.h5]", "'data.test_file' has the wrong type: expected str or null"),
        ("data.augment.scale_min=big", "'data.augment.scale_min' has the wrong type: expected float"),
        ("optim.lr=fast", "'optim.lr' has the wrong type: expected float, got 'fast' (str)"),
        ("scheme.stage_weights=[1,x,1]", "'scheme.stage_weights' has the wrong type: expected a list of float or"),
        ("trainer.max_epochs=2.5", "'trainer.max_epochs' has the wrong type: expected int, got 2.5 (float)"),
        ("compile=ture", "'compile' has the wrong type: expected bool, got 'ture' (str)"),
        ("seed=zero", "'data.seed' has the wrong type: expected int, got 'zero' (str)"),  # data.seed is ${seed}
    ],
)
def test_wrong_type_names_the_key_the_value_and_the_expected_type(override, expected):
    assert expected in check_error("train", override)


def test_every_problem_is_reported_at_once():
    message = check_error("train", "+model.num_stage=3", "data.batch_size=1.5", "+trainer.max_epoch=3")
    assert "'model.num_stages'" in message and "'data.batch_size'" in message and "'trainer.max_epochs'" in message


def test_values_the_consumers_accept_pass():
    check_config(
        composed(
            "train", "data.sigma=7", "data.test_file=null", "optim.scheduler=null", "+trainer.limit_train_batches=0.5",
            "+trainer.accumulate_grad_batches=2", "trainer=ddp_sim", "model.checkpoint_stages=true",
        ),
        "train",
    )  # fmt: skip
    check_config(composed("evaluate", "test_time.scales=[1,2]", "test_time.upsample=2"), "evaluate")


def shipped_configs() -> list[tuple[str, list[str]]]:
    experiments = [("train", [f"+experiment={f.stem}"]) for f in sorted((CONF / "experiment").glob("*.yaml"))]
    options = [
        ("train", [f"{group}={f.stem}"])
        for group in ("model", "data", "scheme", "optim", "trainer", "logger", "callbacks")
        for f in sorted((CONF / group).glob("*.yaml"))
    ]
    primaries = [(name, []) for name in ("train", "evaluate", "predict", "export")]
    return [*primaries, *experiments, *options]


SHIPPED = shipped_configs()


@pytest.mark.parametrize(("config_name", "overrides"), SHIPPED, ids=[f"{name}:{' '.join(o)}" for name, o in SHIPPED])
def test_every_shipped_config_passes(config_name, overrides):
    check_config(composed(config_name, *overrides), config_name)


@pytest.mark.parametrize(
    ("entry_point", "config_name", "required"),
    [(evaluate, "evaluate", []), (predict, "predict", ["input=/no/such/dir"]), (export, "export", [])],
)
def test_entry_points_check_before_loading_anything(entry_point, config_name, required):
    # Without the check, the missing checkpoint (or input) would be the first error.
    cfg = composed(config_name, "ckpt=/no/such.ckpt", *required, "+model.num_stage=3")
    with pytest.raises(ConfigError, match="Did you mean 'model.num_stages'"):
        entry_point(cfg)


def test_train_cli_reports_an_unknown_key_with_the_suggestion_and_exit_status_2(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "cpm_lightning.train", "+model.num_stage=3", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Unknown config key 'model.num_stage' (set on the command line by '+model.num_stage=3')" in run.stderr
    assert "Did you mean 'model.num_stages'?" in run.stderr
    assert "Traceback" not in run.stderr
