"""convert_caffe: the release's layer names and a .caffemodel written in Caffe's own layout
load back bit-exactly (BGR first convs flipped to RGB), with every shape checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpm_lightning.convert_caffe import caffe_message_classes, convert, main, read_prototxt
from cpm_lightning.errors import DataFileError
from cpm_lightning.inference import load_module
from cpm_lightning.models.cpm import CPM

# A release-shaped but small net: the release's layer structure with fewer channels (fast).
SMALL_RELEASE = dict(num_parts=14, num_stages=3, trunk_channels=8, trunk_kernel=9, feature_channels=4,
                     stage1_channels=16, stage1_kernel=9, stage_channels=8, stage_kernel=11)  # fmt: skip


def conv_layer(name: str, bottom: str, out: int, kernel: int) -> str:
    return (
        f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
        f"  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}\n"
        f"  convolution_param {{ num_output: {out} pad: {kernel // 2} kernel_size: {kernel}\n"
        f'    weight_filler {{ type: "gaussian" std: 0.01 }} bias_filler {{ type: "constant" }} }} }}\n'
        f'layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
    )


def release_prototxt(c: dict) -> str:
    """The deploy prototxt of the release (pose_deploy_centerMap.prototxt), written from its
    layer naming: conv1..7_stage1, conv1..4_stage2, conv1_stageT, Mconv1..5_stageT."""
    p = c["num_parts"] + 1
    text = 'input: "data"\ninput_dim: 1\ninput_dim: 4\ninput_dim: 368\ninput_dim: 368\n'
    text += 'layer { name: "slice" type: "Slice" bottom: "data" top: "image" top: "center_map" }\n'
    text += 'layer { name: "pool_center_lower" type: "Pooling" bottom: "center_map" top: "pool_center_lower"\n'
    text += "  pooling_param { pool: AVE kernel_size: 9 stride: 8 } }\n"
    for stage in (1, 2)[: min(2, c["num_stages"])]:
        bottom = "image"
        for k in range(1, 4):
            text += conv_layer(f"conv{k}_stage{stage}", bottom, c["trunk_channels"], c["trunk_kernel"])
            text += f'layer {{ name: "pool{k}_stage{stage}" type: "Pooling" bottom: "conv{k}_stage{stage}"'
            text += f' top: "pool{k}_stage{stage}" pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}\n'
            bottom = f"pool{k}_stage{stage}"
    text += conv_layer("conv4_stage1", "pool3_stage1", c["feature_channels"], 5)
    text += conv_layer("conv5_stage1", "conv4_stage1", c["stage1_channels"], c["stage1_kernel"])
    text += conv_layer("conv6_stage1", "conv5_stage1", c["stage1_channels"], 1)
    text += conv_layer("conv7_stage1", "conv6_stage1", p, 1)
    for t in range(2, c["num_stages"] + 1):
        features = "conv4_stage2" if t == 2 else f"conv1_stage{t}"
        text += conv_layer(features, "pool3_stage2", c["feature_channels"], 5)
        previous = "conv7_stage1" if t == 2 else f"Mconv5_stage{t - 1}"
        text += f'layer {{ name: "concat_stage{t}" type: "Concat" bottom: "{features}" bottom: "{previous}"'
        text += f' bottom: "pool_center_lower" top: "concat_stage{t}" concat_param {{ axis: 1 }} }}\n'
        bottom = f"concat_stage{t}"
        for k, (out, kernel) in enumerate(
            [(c["stage_channels"], c["stage_kernel"])] * 3 + [(c["stage_channels"], 1), (p, 1)]
        ):
            text += conv_layer(f"Mconv{k + 1}_stage{t}", bottom, out, kernel)
            bottom = f"Mconv{k + 1}_stage{t}"
    return text


def release_convs(model: CPM) -> dict[str, torch.nn.Conv2d]:
    """The release's conv names -> our convs, written out independently of the converter."""

    def convs(module):
        return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]

    named = dict(zip([f"conv{k}_stage1" for k in range(1, 8)], convs(model.stage1)))
    named |= dict(zip([f"conv{k}_stage2" for k in range(1, 4)], convs(model.trunks[0])))
    for t, stage in enumerate(model.stages, start=2):
        names = ["conv4_stage2" if t == 2 else f"conv1_stage{t}"] + [f"Mconv{k}_stage{t}" for k in range(1, 6)]
        named |= dict(zip(names, convs(stage)))
    return named


def write_caffemodel(model: CPM, path, legacy_shapes: bool = False) -> None:
    """Caffe's layout: NetParameter.layer[name].blobs = [weight (BGR first convs), bias]."""
    messages = caffe_message_classes()
    net = messages["NetParameter"](name="CPM")
    for name, conv in release_convs(model).items():
        layer = net.layer.add(name=name, type="Convolution")
        weight = conv.weight.detach().numpy()
        if name in ("conv1_stage1", "conv1_stage2"):
            weight = weight[:, ::-1]  # Caffe's first convs read BGR
        for value in (weight, conv.bias.detach().numpy()):
            blob = layer.blobs.add()
            if legacy_shapes:
                shape = (1, 1, 1, value.shape[0]) if value.ndim == 1 else value.shape
                blob.num, blob.channels, blob.height, blob.width = shape
            else:
                blob.shape.dim.extend(value.shape)
            blob.data.extend(np.ascontiguousarray(value).reshape(-1).tolist())
    path.write_bytes(net.SerializeToString())


@pytest.mark.parametrize("legacy_shapes", [False, True])
def test_caffemodel_round_trip_is_bit_exact(tmp_path, legacy_shapes):
    torch.manual_seed(0)
    model = CPM(**SMALL_RELEASE)
    (tmp_path / "deploy.prototxt").write_text(release_prototxt(SMALL_RELEASE))
    write_caffemodel(model, tmp_path / "w.caffemodel", legacy_shapes)
    ckpt = convert(tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel", tmp_path / "converted.ckpt")
    loaded = load_module(ckpt).model
    assert loaded.config == model.config
    for (name, ours), theirs in zip(loaded.state_dict().items(), model.state_dict().values()):
        assert torch.equal(ours, theirs), name
    image = torch.randn(1, 3, 96, 96)
    assert torch.equal(loaded(image), model.eval()(image))


def test_the_parser_reads_the_release_layer_names(tmp_path):
    paper = dict(num_parts=14, num_stages=6, trunk_channels=128, trunk_kernel=9, feature_channels=32,
                 stage1_channels=512, stage1_kernel=9, stage_channels=128, stage_kernel=11)  # fmt: skip
    (tmp_path / "pose_deploy_centerMap.prototxt").write_text(release_prototxt(paper))
    net = read_prototxt(tmp_path / "pose_deploy_centerMap.prototxt")
    names = [layer.name for layer in net.layer]
    assert names[:3] == ["slice", "pool_center_lower", "conv1_stage1"]
    assert "Mconv5_stage6" in names and "conv1_stage6" in names and "conv4_stage2" in names
    conv = {layer.name: layer.convolution_param for layer in net.layer if layer.type == "Convolution"}
    assert (conv["Mconv1_stage3"].num_output, conv["Mconv1_stage3"].kernel_size[0]) == (128, 11)
    assert conv["conv7_stage1"].num_output == 15
    from cpm_lightning.convert_caffe import model_config_from_prototxt

    config = model_config_from_prototxt(net, tmp_path / "p")
    assert CPM(**config).config == CPM(**paper).config  # = model=cpm_paper


def test_mismatched_files_name_the_layer(tmp_path, capsys):
    model = CPM(**{**SMALL_RELEASE, "stage1_channels": 24})
    (tmp_path / "deploy.prototxt").write_text(release_prototxt(SMALL_RELEASE))
    write_caffemodel(model, tmp_path / "other.caffemodel")
    with pytest.raises(DataFileError, match="conv5_stage1 weight has shape"):
        convert(tmp_path / "deploy.prototxt", tmp_path / "other.caffemodel", tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()
    (tmp_path / "junk.caffemodel").write_bytes(b"\xff\xff\xff junk")
    code = main(["--prototxt", str(tmp_path / "deploy.prototxt"), "--caffemodel", str(tmp_path / "junk.caffemodel"),
                 "--out", str(tmp_path / "y.ckpt")])  # fmt: skip
    assert code == 2 and "junk.caffemodel" in capsys.readouterr().err
