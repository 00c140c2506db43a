"""`python -m cpm_lightning.convert_caffe --prototxt F --caffemodel F --out model.ckpt`.

Loads the original release's Caffe weights (which users download themselves) into our CPM,
layer by layer by name, checking every shape, and writes a checkpoint that evaluate, predict and
export read like any other. No Caffe install: a .caffemodel is a serialised `caffe.NetParameter`
protobuf; we declare the few messages and fields we read (numbers as in Caffe's caffe.proto) with
descriptor_pb2 and parse with the `protobuf` package. The deploy .prototxt (text format of the
same message) gives the layer sizes, from which the model config is derived.

Layer names of the release (pose_deploy_centerMap.prototxt; our module in brackets):
    conv1_stage1 .. conv3_stage1 (9x9 + pool)       [stage1.trunk]
    conv4_stage1 5x5x32, conv5_stage1 9x9x512,
    conv6_stage1 1x1x512, conv7_stage1 1x1x(P+1)    [stage1.head]
    conv1_stage2 .. conv3_stage2 (9x9 + pool)       [trunks.0, shared by stages >= 2]
    conv4_stage2 5x5x32                             [stages.0.features]
    conv1_stage{t} 5x5x32 for t >= 3                [stages.{t-2}.features]
    Mconv1_stage{t} .. Mconv5_stage{t}              [stages.{t-2}.refine]
    pool_center_lower (centre map pooling, no weights)
Caffe's first convs read BGR, ours read RGB: the input channels of conv1_stage1 and
conv1_stage2 (the two layers that see the image) are reversed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning
import numpy as np
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError

from cpm_lightning.data.skeletons import FLIC9, LSP14
from cpm_lightning.errors import ConfigError, DataFileError, UserFacingError
from cpm_lightning.models.cpm import CPM
from cpm_lightning.module import CPMModule

IMAGE_LAYERS = ("conv1_stage1", "conv1_stage2")  # BGR in Caffe, RGB here
F = descriptor_pb2.FieldDescriptorProto

# (message, [(field, number, type, label, message type or None, packed)]) -- a subset of caffe.proto.
CAFFE_MESSAGES = (
    ("BlobShape", [("dim", 1, F.TYPE_INT64, F.LABEL_REPEATED, None, True)]),
    ("BlobProto", [
        ("num", 1, F.TYPE_INT32, F.LABEL_OPTIONAL, None, False),
        ("channels", 2, F.TYPE_INT32, F.LABEL_OPTIONAL, None, False),
        ("height", 3, F.TYPE_INT32, F.LABEL_OPTIONAL, None, False),
        ("width", 4, F.TYPE_INT32, F.LABEL_OPTIONAL, None, False),
        ("data", 5, F.TYPE_FLOAT, F.LABEL_REPEATED, None, True),
        ("shape", 7, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "BlobShape", False),
        ("double_data", 8, F.TYPE_DOUBLE, F.LABEL_REPEATED, None, True),
    ]),
    ("ConvolutionParameter", [
        ("num_output", 1, F.TYPE_UINT32, F.LABEL_OPTIONAL, None, False),
        ("pad", 3, F.TYPE_UINT32, F.LABEL_REPEATED, None, False),
        ("kernel_size", 4, F.TYPE_UINT32, F.LABEL_REPEATED, None, False),
        ("stride", 6, F.TYPE_UINT32, F.LABEL_REPEATED, None, False),
    ]),
    ("PoolingParameter", [
        ("kernel_size", 2, F.TYPE_UINT32, F.LABEL_OPTIONAL, None, False),
        ("stride", 3, F.TYPE_UINT32, F.LABEL_OPTIONAL, None, False),
    ]),
    ("LayerParameter", [
        ("name", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None, False),
        ("type", 2, F.TYPE_STRING, F.LABEL_OPTIONAL, None, False),
        ("bottom", 3, F.TYPE_STRING, F.LABEL_REPEATED, None, False),
        ("top", 4, F.TYPE_STRING, F.LABEL_REPEATED, None, False),
        ("blobs", 7, F.TYPE_MESSAGE, F.LABEL_REPEATED, "BlobProto", False),
        ("convolution_param", 106, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "ConvolutionParameter", False),
        ("pooling_param", 121, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "PoolingParameter", False),
    ]),
    # Old-style (V1) layers, as some 2015-16 snapshots were saved; `type` (an enum) is not needed.
    ("V1LayerParameter", [
        ("bottom", 2, F.TYPE_STRING, F.LABEL_REPEATED, None, False),
        ("top", 3, F.TYPE_STRING, F.LABEL_REPEATED, None, False),
        ("name", 4, F.TYPE_STRING, F.LABEL_OPTIONAL, None, False),
        ("blobs", 6, F.TYPE_MESSAGE, F.LABEL_REPEATED, "BlobProto", False),
        ("convolution_param", 10, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, "ConvolutionParameter", False),
    ]),
    ("NetParameter", [
        ("name", 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None, False),
        ("layers", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED, "V1LayerParameter", False),
        ("input", 3, F.TYPE_STRING, F.LABEL_REPEATED, None, False),
        ("input_dim", 4, F.TYPE_INT32, F.LABEL_REPEATED, None, False),
        ("layer", 100, F.TYPE_MESSAGE, F.LABEL_REPEATED, "LayerParameter", False),
    ]),
)  # fmt: skip


def caffe_message_classes() -> dict[str, type]:
    """Message classes for the subset of caffe.proto above, built without protoc."""
    file = descriptor_pb2.FileDescriptorProto(name="cpm_caffe_subset.proto", package="caffe", syntax="proto2")
    for message_name, fields in CAFFE_MESSAGES:
        message = file.message_type.add(name=message_name)
        for name, number, kind, label, type_name, packed in fields:
            field = message.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".caffe.{type_name}"
            if packed:
                field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}")) for name, _ in CAFFE_MESSAGES
    }


def release_layer_names(num_stages: int) -> dict[str, str]:
    """Caffe layer name -> our conv's module path, for the release's architecture."""
    names = {f"conv{k + 1}_stage1": f"stage1.trunk.{3 * k}" for k in range(3)}
    names |= {f"conv{k + 4}_stage1": f"stage1.head.{i}" for k, i in enumerate((0, 2, 5, 8))}
    if num_stages > 1:
        names |= {f"conv{k + 1}_stage2": f"trunks.0.{3 * k}" for k in range(3)}
    for t in range(2, num_stages + 1):
        names["conv4_stage2" if t == 2 else f"conv1_stage{t}"] = f"stages.{t - 2}.features.0"
        names |= {f"Mconv{k + 1}_stage{t}": f"stages.{t - 2}.refine.{2 * k}" for k in range(5)}
    return names


def read_prototxt(path: Path):
    """The deploy prototxt as a NetParameter (fields we do not declare are skipped)."""
    net = caffe_message_classes()["NetParameter"]()
    try:
        text_format.Parse(path.read_text(), net, allow_unknown_field=True)
    except (OSError, text_format.ParseError, UnicodeDecodeError) as error:
        raise DataFileError(f"--prototxt {path} cannot be read as a Caffe prototxt ({error}).") from None
    return net


def read_caffemodel(path: Path):
    net = caffe_message_classes()["NetParameter"]()
    try:
        net.ParseFromString(path.read_bytes())
    except (OSError, DecodeError) as error:
        raise DataFileError(f"--caffemodel {path} is not a Caffe NetParameter ({error}); is it truncated?") from None
    return net


def model_config_from_prototxt(net, path: Path) -> dict:
    """CPM keyword arguments of the network a release prototxt describes."""
    layers = {layer.name: layer for layer in [*net.layer, *net.layers]}
    stages = sorted(
        {int(n.rsplit("_stage", 1)[1]) for n in layers if "_stage" in n and n.rsplit("_stage", 1)[1].isdigit()}
    )
    required = ["conv1_stage1", "conv4_stage1", "conv5_stage1", "conv7_stage1", "pool1_stage1"]
    required += ["Mconv1_stage2"] if len(stages) > 1 else []
    missing = [n for n in required if n not in layers]
    if missing or not stages:
        raise DataFileError(
            f"--prototxt {path} lacks the release's layers {missing or required}: this converter reads the CPM "
            "release's pose_deploy*.prototxt (conv1_stage1 ... Mconv5_stageT), not the VGG variant."
        )

    def conv(name: str) -> tuple[int, int]:
        param = layers[name].convolution_param
        return int(param.num_output), int(param.kernel_size[0]) if param.kernel_size else 1

    trunk_channels, trunk_kernel = conv("conv1_stage1")
    feature_channels, feature_kernel = conv("conv4_stage1")
    stage1_channels, stage1_kernel = conv("conv5_stage1")
    config = {
        "num_parts": conv("conv7_stage1")[0] - 1,
        "num_stages": len(stages),
        "trunk_channels": trunk_channels,
        "trunk_kernel": trunk_kernel,
        "num_pools": 3,
        "pool_kernel": int(layers["pool1_stage1"].pooling_param.kernel_size),
        "feature_channels": feature_channels,
        "feature_kernel": feature_kernel,
        "stage1_channels": stage1_channels,
        "stage1_kernel": stage1_kernel,
        "centre_map": "pool_center_lower" in layers,
        "share_trunk": True,
        "stage_layers": 3,
    }
    if len(stages) > 1:
        config["stage_channels"], config["stage_kernel"] = conv("Mconv1_stage2")
    return config


def blob_array(blob) -> np.ndarray:
    shape = tuple(blob.shape.dim) if blob.HasField("shape") else (blob.num, blob.channels, blob.height, blob.width)
    data = np.asarray(blob.data if len(blob.data) else blob.double_data, np.float32)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"blob holds {data.size} values but its shape {shape} needs {int(np.prod(shape))}")
    return data.reshape(shape)


def load_caffe_weights(model: CPM, net, path: Path) -> None:
    """Copy every release layer's weight and bias into `model`, checking each shape."""
    layers = {layer.name: layer for layer in [*net.layers, *net.layer] if len(layer.blobs)}
    modules = dict(model.named_modules())
    for caffe_name, module_path in release_layer_names(model.num_stages).items():
        conv = modules[module_path]
        if caffe_name not in layers:
            raise DataFileError(
                f"--caffemodel {path} has no weights for layer {caffe_name}: is it the model of this prototxt?"
            )
        blobs = layers[caffe_name].blobs
        if len(blobs) != 2:
            raise DataFileError(
                f"--caffemodel {path}: layer {caffe_name} has {len(blobs)} blobs, expected weight and bias."
            )
        for blob, param, what in ((blobs[0], conv.weight, "weight"), (blobs[1], conv.bias, "bias")):
            try:
                value = blob_array(blob)
            except ValueError as error:
                raise DataFileError(f"--caffemodel {path}: layer {caffe_name} {what}: {error}.") from None
            value = value.reshape(-1) if what == "bias" else value  # old Caffe stored biases as 1x1x1xN
            if tuple(value.shape) != tuple(param.shape):
                raise DataFileError(
                    f"--caffemodel {path}: layer {caffe_name} {what} has shape {tuple(value.shape)}, the model "
                    f"from the prototxt needs {tuple(param.shape)}: the two files are of different models."
                )
            if what == "weight" and caffe_name in IMAGE_LAYERS:
                value = value[:, ::-1]
            with torch.no_grad():
                param.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def convert(prototxt: Path, caffemodel: Path, out: Path) -> Path:
    """Write a checkpoint of the release model in `caffemodel` (sizes from `prototxt`)."""
    config = model_config_from_prototxt(read_prototxt(prototxt), prototxt)
    skeleton = {14: LSP14, 9: FLIC9}.get(config["num_parts"])
    if skeleton is None:
        raise ConfigError(f"--prototxt {prototxt} predicts {config['num_parts']} parts; the release has 14 or 9.")
    module = CPMModule(
        model=config,
        scheme={"name": "joint"},
        optim={"name": "sgd", "lr": 8e-5},
        max_epochs=1,
        protocol="mpii_pckh" if skeleton is LSP14 else "flic_pck",
        joint_names=list(skeleton.joint_names),
    )
    load_caffe_weights(module.model, read_caffemodel(caffemodel), caffemodel)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
            "converted_from": {"prototxt": str(prototxt), "caffemodel": str(caffemodel)},
        },
        tmp,
    )
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prototxt", type=Path, required=True, help="the release's pose_deploy*.prototxt")
    parser.add_argument("--caffemodel", type=Path, required=True, help="the matching .caffemodel")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (.ckpt)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.prototxt, args.caffemodel, args.out)
    except UserFacingError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2
    print(f"converted: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
