"""The receptive-field sweeps (paper Fig. 4): equal parameter counts, growing, correctly labelled fields."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cpm_lightning.models.cpm import CPM, count_parameters
from cpm_lightning.models.receptive_field import receptive_fields

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
# sweep experiment -> the model its parameter budget is measured against (the base, 2 stages)
SWEEPS = {"synthetic_rf_sweep": "cpm_small", "flic_rf_sweep": "cpm_flic"}


def composed(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    return OmegaConf.to_container(cfg, resolve=False)


def model_of(overrides: list[str]) -> dict:
    model = composed(overrides)["model"]
    model.pop("checkpoint_stages", None)
    return model


def parameters(model: dict) -> int:
    with torch.device("meta"):  # no memory or init cost, even for the release-sized FLIC models
        return count_parameters(CPM(**model))


def sweep_models(experiment: str) -> list[str]:
    params = composed([f"+experiment={experiment}"])["hydra"]["sweeper"]["params"]
    return params["model"].split(",")


@pytest.mark.parametrize("experiment", SWEEPS)
def test_sweep_keeps_parameters_within_10_percent_and_grows_the_field(experiment):
    reference = parameters({**model_of([f"model={SWEEPS[experiment]}"]), "num_stages": 2})
    names = sweep_models(experiment)
    assert len(names) >= 5
    fields = []
    for name in names:
        model = model_of([f"+experiment={experiment}", f"model={name}"])
        ratio = parameters(model) / reference
        assert 0.9 <= ratio <= 1.1, f"{name}: {ratio:.3f} x the parameters of 2-stage {SWEEPS[experiment]}"
        field = receptive_fields(model)[-1]
        label = int(re.search(r"_(\d+)$", name).group(1))
        assert field == label, f"{name} is labelled {label} px but its analytic field is {field} px"
        fields.append(field)
    assert fields == sorted(fields) and len(set(fields)) == len(fields), fields


def test_every_rf_config_is_in_a_sweep():
    on_disk = {p.stem for p in (CONFIG_DIR / "model").glob("rf_*.yaml")}
    in_sweeps = {name for experiment in SWEEPS for name in sweep_models(experiment)}
    assert on_disk == in_sweeps


def test_flic_sweep_runs_at_304_pixels_as_the_paper():
    cfg = composed(["+experiment=flic_rf_sweep"])
    assert cfg["data"]["input_size"] == 304
    assert cfg["data"]["train_files"] == ["${paths.data_dir}/flic/train.h5"]
