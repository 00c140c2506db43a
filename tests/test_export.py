"""export: the ONNX file of a trained default model gives PyTorch's belief maps in onnxruntime."""

from __future__ import annotations

import onnx
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from cpm_lightning.errors import ConfigError
from cpm_lightning.export import TOLERANCE, export, max_difference
from cpm_lightning.inference import load_module
from cpm_lightning.train import CONFIG_DIR


def export_config(tmp_path, ckpt, out):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="export", overrides=[f"ckpt={ckpt}", f"out={out}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


def test_onnx_matches_pytorch_at_any_batch_size(tmp_path, trained_checkpoint):
    out = export(export_config(tmp_path, trained_checkpoint, tmp_path / "model.onnx"))
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    model = load_module(trained_checkpoint).model
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 5):
        images = torch.rand(batch, 3, 128, 128, generator=generator) * 255
        assert max_difference(model, out, images) <= TOLERANCE
    assert not list(tmp_path.glob(".*.partial"))


def test_input_size_comes_from_the_checkpoint(tmp_path, trained_checkpoint):
    """A model trained at 128 px exports at 128 px even when the config names another size."""
    cfg = export_config(tmp_path, trained_checkpoint, tmp_path / "model.onnx")
    cfg.data.input_size = 368
    graph = onnx.load(str(export(cfg))).graph
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 128, 128]


def test_bad_output_name_is_refused(tmp_path, trained_checkpoint):
    with pytest.raises(ConfigError, match=r"\.onnx"):
        export(export_config(tmp_path, trained_checkpoint, tmp_path / "model.bin"))
