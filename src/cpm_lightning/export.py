"""`python -m cpm_lightning.export ckpt=PATH out=model.onnx [+experiment=NAME]`: ONNX export.

The ONNX graph takes `image`, float32 (N, 3, S, S) RGB pixel values 0..255 (S = the training
input size, N free) and returns `belief_maps`, float32 (N, T, P + 1, S / stride, S / stride):
every stage's maps, background last, exactly as CPM.forward. The (x - 128) / 256 normalisation
and the centre map (a constant of the input size) are inside the graph. With `check`, the file
is run in onnxruntime and compared with PyTorch before the command reports success.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from cpm_lightning.config_schema import check_config
from cpm_lightning.errors import ConfigError, UserFacingError, report_user_errors
from cpm_lightning.inference import input_size_of, load_module
from cpm_lightning.models.cpm import CPM
from cpm_lightning.module import normalise_image
from cpm_lightning.train import CONFIG_DIR

TOLERANCE = 1e-4  # max abs difference of belief maps, onnxruntime vs PyTorch


class PixelInputCPM(torch.nn.Module):
    """CPM on 0..255 RGB floats: what a deployment feeds without knowing our normalisation."""

    def __init__(self, model: CPM):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(normalise_image(image))


def export_onnx(model: CPM, path: Path, input_size: int, opset: int = 17) -> None:
    """Write `model` as ONNX with a dynamic batch dimension."""
    wrapper = PixelInputCPM(model).eval()
    example = torch.zeros(2, 3, input_size, input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The legacy exporter announces itself and warns that the (constant) centre map is traced.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["belief_maps"],
            dynamic_axes={"image": {0: "batch"}, "belief_maps": {0: "batch"}},
            opset_version=opset,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, dynamic_axes supported
        )


def max_difference(model: CPM, path: Path, images: torch.Tensor) -> float:
    """Max abs difference of the belief maps, onnxruntime vs PyTorch, on `images` (0..255)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_maps,) = session.run(["belief_maps"], {"image": images.numpy()})
    with torch.no_grad():
        torch_maps = PixelInputCPM(model).eval()(images).numpy()
    if onnx_maps.shape != torch_maps.shape:
        return float("inf")
    return float(np.abs(onnx_maps - torch_maps).max())


def export(cfg: DictConfig) -> Path:
    check_config(cfg, "export")  # unknown keys and wrong types stop here, before any loading
    out = Path(cfg.out)
    if out.suffix != ".onnx":
        raise ConfigError(f"out={cfg.out} must name a .onnx file.")
    module = load_module(cfg.ckpt)
    input_size = input_size_of(module, cfg.data.input_size)
    tmp = out.with_name(f".{out.name}.partial")
    export_onnx(module.model, tmp, input_size, cfg.opset)
    if cfg.check:
        images = torch.rand(3, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)) * 255
        difference = max_difference(module.model, tmp, images)
        if not difference <= TOLERANCE:
            tmp.unlink()
            raise UserFacingError(
                f"the ONNX export differs from PyTorch by {difference:.3g} (> {TOLERANCE}); not written."
            )
        print(f"onnxruntime vs PyTorch, batch of 3: max abs difference {difference:.2e}")
    tmp.replace(out)  # only a checked, complete file appears at `out`
    print(f"exported: {out} (input image (N, 3, {input_size}, {input_size}) RGB 0..255)")
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    report_user_errors(lambda: export(cfg))


if __name__ == "__main__":
    main()
