"""`python -m cpm_lightning.evaluate ckpt=PATH [+experiment=NAME] split=val|test [key=value ...]`.

Runs a checkpoint over one split with the configured test-time procedures (inference.py),
measures every stage's errors in source-image pixels (the crop transform inverted) and scores
them under the data's protocol (metrics.py). Writes into the run directory:

    metrics.json       every stage: per joint, per group, weighted and unweighted means, at the
                       protocol's thresholds, plus the PCK-vs-threshold curves
    pck_table.csv      the same table flat (stage, threshold, groups..., means)
    pck_curves.png     PCK vs normalised distance: the mean of each stage, and each group of the
                       last stage (as the paper's Figures 8, 9 and 12)
    belief_maps.png    the belief maps of every stage for `figure_samples` (as Figure 7)
    predictions.npz    predicted joints (source pixels) and scores of every stage, to re-score
    pred_keypoints_mpii.mat   with export=mpii_test: the MPII test-server submission
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import hydra
import matplotlib
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from cpm_lightning.config_schema import check_config
from cpm_lightning.data.augment import compose_affine, crop_to_input_affine, invert_affine
from cpm_lightning.data.h5format import CropFile
from cpm_lightning.errors import ConfigError, report_user_errors
from cpm_lightning.inference import (
    InferenceOptions,
    affine_scale,
    decode,
    fused_belief_maps,
    input_size_of,
    load_module,
    skeleton_of,
    to_source,
    warp_images,
)
from cpm_lightning.metrics import Protocol, get_protocol, pck_counts, summarize
from cpm_lightning.train import CONFIG_DIR

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

SPLITS = {"val": "validate", "test": "test"}
# Our 14 joints (LSP14 names) -> MPII's joint ids; pelvis (6) and thorax (7) are not predicted.
MPII_IDS = {
    "r_ankle": 0, "r_knee": 1, "r_hip": 2, "l_hip": 3, "l_knee": 4, "l_ankle": 5,
    "neck": 8, "head_top": 9, "r_wrist": 10, "r_elbow": 11, "r_shoulder": 12,
    "l_shoulder": 13, "l_elbow": 14, "l_wrist": 15,
}  # fmt: skip


def crop_file_of(cfg: DictConfig, stride: int) -> tuple[CropFile, int]:
    """The split's crop file (verified, with the make command in any error) and the input size."""
    if cfg.split not in SPLITS:
        raise ConfigError(f"split={cfg.split!r} is invalid: choose one of {sorted(SPLITS)}.")
    datamodule = hydra.utils.instantiate(cfg.data, stride=stride)
    datamodule.check_files(SPLITS[cfg.split])
    return CropFile(datamodule.val_file if cfg.split == "val" else datamodule.test_file), datamodule.input_size


def collect(module, crops: CropFile, input_size: int, test_time: InferenceOptions, batch_size: int) -> dict:
    """Every stage's predictions and the ground truth of a split, in source-image pixels."""
    flip_permutation = skeleton_of(module).flip_permutation
    c2s = crops.crop_to_source
    crop_to_input = np.stack(
        [crop_to_input_affine(crops.centre[i], crops.scale[i], input_size) for i in range(len(crops))]
    ).reshape(-1, 2, 3)
    input_to_source = np.stack([compose_affine(c2s[i], invert_affine(a)) for i, a in enumerate(crop_to_input)])
    joints, scores = [], []
    for start in range(0, len(crops), batch_size):
        index = range(start, min(start + batch_size, len(crops)))
        maps = fused_belief_maps(
            module, [crops.image(i) for i in index], crop_to_input[index], input_size, test_time, flip_permutation
        )
        batch_joints, batch_scores = decode(maps, module.model.stride, test_time)
        joints.append(batch_joints.cpu().numpy())
        scores.append(batch_scores.cpu().numpy())
    num_stages, num_joints = module.model.num_stages, module.model.config.num_parts
    pred = np.concatenate(joints) if joints else np.zeros((0, num_stages, num_joints, 2))
    source_scale = affine_scale(c2s)
    return {
        "pred": to_source(pred, input_to_source),
        "scores": np.concatenate(scores) if scores else np.zeros((0, num_stages, num_joints)),
        "gt": to_source(crops.joints, c2s),
        "visible": crops.visibility >= 1,
        "head_size": crops.head_size * source_scale,
        "torso_size": crops.torso_size * source_scale,
        "input_to_source": input_to_source,
    }


def score(collected: dict, protocol: Protocol, joint_names: list[str]) -> dict:
    """Per stage: the protocol's table at each report threshold and the mean PCK curves."""
    truth = {k: torch.as_tensor(collected[k]) for k in ("gt", "visible", "head_size", "torso_size")}
    truth["joints"] = truth.pop("gt")
    counted = protocol.counted_joints(joint_names)
    visible = collected["visible"] & counted
    stages = []
    for t in range(collected["pred"].shape[1]):
        pred = collected["pred"][:, t]
        normalizer = protocol.normalizer_of(truth, torch.as_tensor(pred), joint_names).numpy()
        args = (pred, collected["gt"], visible, normalizer)
        correct, total = pck_counts(*args, protocol.report_thresholds, protocol.strict)
        curve_correct, _ = pck_counts(*args, protocol.curve_thresholds, protocol.strict)
        stages.append(
            {
                "stage": t + 1,
                "thresholds": {
                    str(thr): summarize(correct[k], total, joint_names, counted)
                    for k, thr in enumerate(protocol.report_thresholds)
                },
                "curves": [summarize(c, total, joint_names, counted) for c in curve_correct],
            }
        )
    return {
        "protocol": protocol.name,
        "protocol_definition": protocol.description,
        "strict": protocol.strict,
        "curve_thresholds": list(protocol.curve_thresholds),
        "stages": stages,
    }


def write_csv(path: Path, result: dict) -> None:
    rows = []
    for stage in result["stages"]:
        for thr, row in stage["thresholds"].items():
            rows.append({"stage": stage["stage"], "threshold": thr, **row["groups"],
                         "mean_weighted": row["mean_weighted"], "mean_unweighted": row["mean_unweighted"],
                         "num_joints_counted": row["num_joints_counted"]})  # fmt: skip
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def print_tables(result: dict, title: str) -> None:
    first = result["stages"][0]["thresholds"]
    for thr in first:
        groups = list(first[thr]["groups"])
        table = Table(title=f"{title}: {result['protocol']} @ {thr} ({result['protocol_definition']})")
        for column in ("stage", *groups, "mean", "mean (unweighted)"):
            table.add_column(column, justify="right")
        for stage in result["stages"]:
            row = stage["thresholds"][thr]
            values = [*row["groups"].values(), row["mean_weighted"], row["mean_unweighted"]]
            table.add_row(str(stage["stage"]), *(f"{100 * v:.2f}" for v in values))
        Console().print(table)


def plot_curves(path: Path, result: dict) -> None:
    """Left: mean PCK of every stage vs threshold; right: each group of the last stage."""
    x = result["curve_thresholds"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for stage in result["stages"]:
        left.plot(x, [100 * c["mean_weighted"] for c in stage["curves"]], label=f"stage {stage['stage']}")
    last = result["stages"][-1]
    for group in last["curves"][0]["groups"]:
        right.plot(x, [100 * c["groups"][group] for c in last["curves"]], label=group)
    right.plot(x, [100 * c["mean_weighted"] for c in last["curves"]], "k--", label="mean")
    left.set_title("mean PCK per stage")
    right.set_title(f"stage {last['stage']} per joint group")
    left.set_ylabel(f"detection rate (%), {result['protocol']}")
    for axis in (left, right):
        axis.set_xlabel("normalised distance")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_belief_maps(path: Path, module, crops: CropFile, input_size: int, samples: list[int]) -> None:
    """Per sample: the input with the last stage's skeleton, then each stage's part maps (max
    over parts) over the image: how context sharpens the maps stage by stage (paper Fig. 7)."""
    samples = [i for i in samples if 0 <= i < len(crops)]
    if not samples:
        return
    skeleton = skeleton_of(module)
    affines = np.stack([crop_to_input_affine(crops.centre[i], crops.scale[i], input_size) for i in samples])
    images = [crops.image(i) for i in samples]
    test_time = InferenceOptions(upsample=module.model.stride)  # maps at input resolution
    maps = fused_belief_maps(module, images, affines, input_size, test_time, skeleton.flip_permutation)
    joints, _ = decode(maps, module.model.stride, test_time)
    inputs = warp_images(images, affines, input_size).numpy().transpose(0, 2, 3, 1)
    num_stages = maps.shape[1]
    fig, axes = plt.subplots(len(samples), num_stages + 1, figsize=(1.8 * (num_stages + 1), 1.8 * len(samples)))
    axes = np.atleast_2d(axes)
    for row, (image, sample_maps, sample_joints) in enumerate(zip(inputs, maps, joints)):
        axes[row, 0].imshow(image)
        final = sample_joints[-1].numpy()
        for a, b in skeleton.limbs:
            axes[row, 0].plot(final[[a, b], 0], final[[a, b], 1], "-", color="lime", linewidth=1)
        axes[row, 0].set_title(f"sample {samples[row]}", fontsize=7)
        for t in range(num_stages):
            axes[row, t + 1].imshow(image, alpha=0.5)
            axes[row, t + 1].imshow(sample_maps[t, :-1].amax(dim=0).clamp(min=0).numpy(), cmap="jet", alpha=0.5)
            axes[row, t + 1].set_title(f"stage {t + 1}", fontsize=7)
    for axis in axes.flat:
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _struct_array(records: list[dict], fields: tuple[str, ...]) -> np.ndarray:
    """A MATLAB 1 x n struct array for scipy.io.savemat."""
    array = np.empty((1, len(records)), dtype=[(f, object) for f in fields])
    for k, record in enumerate(records):
        for f in fields:
            array[0, k][f] = record[f]
    return array


def write_mpii_submission(
    path: Path,
    source_index: np.ndarray,
    joints: np.ndarray,
    joint_names: list[str],
    num_images: int | None = None,
) -> None:
    """The MPII test-server layout: annolist(i).annorect(r).annopoints.point(k) with x, y, id.

    source_index (N, 2): (image, person) 0-based indices into the release's annolist, which the
    MPII converter stores per sample; joints (N, J, 2) source pixels, 0-based. Coordinates are
    written 1-based (MATLAB). Pelvis and thorax, which the release does not predict, are written
    as the mid-hip and mid-shoulder points (PCKh does not score them).
    """
    from scipy.io import savemat

    missing = sorted(set(MPII_IDS) - set(joint_names))
    if missing:
        raise ConfigError(f"export=mpii_test needs the 14 MPII joints; this model lacks {missing}.")
    num_images = int(source_index[:, 0].max()) + 1 if num_images is None else num_images
    people: dict[int, dict[int, np.ndarray]] = {}
    for (image, person), person_joints in zip(source_index, joints):
        people.setdefault(int(image), {})[int(person)] = person_joints
    name_index = {n: j for j, n in enumerate(joint_names)}

    def points(person_joints: np.ndarray) -> np.ndarray:
        xy = {mpii: person_joints[name_index[name]] for name, mpii in MPII_IDS.items()}
        xy[6] = 0.5 * (xy[2] + xy[3])
        xy[7] = 0.5 * (xy[12] + xy[13])
        rows = [{"x": float(p[0]) + 1.0, "y": float(p[1]) + 1.0, "id": mpii} for mpii, p in sorted(xy.items())]
        return _struct_array(rows, ("x", "y", "id"))

    annolist = []
    for image in range(num_images):
        persons = people.get(image, {})
        empty = np.zeros((0, 0))  # a person of this image that the split does not hold
        rects = [
            {"annopoints": _struct_array([{"point": points(persons[r])}], ("point",)) if r in persons else empty}
            for r in range(max(persons, default=-1) + 1)
        ]
        annolist.append({"annorect": _struct_array(rects, ("annopoints",))})
    savemat(path, {"annolist": _struct_array(annolist, ("annorect",))}, do_compression=True)


def evaluate(cfg: DictConfig) -> dict:
    check_config(cfg, "evaluate")  # unknown keys and wrong types stop here, before any loading
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.export not in (None, "mpii_test"):
        raise ConfigError(f"export={cfg.export!r} is invalid: the only export is mpii_test (or null).")
    module = load_module(cfg.ckpt, cfg.device)
    protocol = get_protocol(cfg.protocol or cfg.data.protocol)
    test_time = InferenceOptions.from_options(OmegaConf.to_container(cfg.test_time, resolve=True))
    crops, configured_size = crop_file_of(cfg, module.model.stride)
    input_size = input_size_of(module, configured_size)
    joint_names = crops.joint_names
    if len(joint_names) != module.model.config.num_parts:
        raise ConfigError(
            f"the checkpoint predicts {module.model.config.num_parts} parts but {crops.path} has "
            f"{len(joint_names)} joints: pass the +experiment (or data=) the model was trained with."
        )
    collected = collect(module, crops, input_size, test_time, cfg.batch_size)
    result = score(collected, protocol, joint_names)
    last = result["stages"][-1]["thresholds"][str(protocol.threshold)]
    metrics = {
        "experiment": cfg.name,
        "checkpoint": str(cfg.ckpt),
        "split": cfg.split,
        "data_file": str(crops.path),
        "num_samples": len(crops),
        "test_time": OmegaConf.to_container(cfg.test_time, resolve=True),
        "pck_final_stage": last["mean_weighted"],
        **result,
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_csv(output_dir / "pck_table.csv", result)
    plot_curves(output_dir / "pck_curves.png", result)
    plot_belief_maps(output_dir / "belief_maps.png", module, crops, input_size, list(cfg.figure_samples))
    np.savez_compressed(
        output_dir / "predictions.npz", joints=collected["pred"], scores=collected["scores"], joint_names=joint_names
    )
    if cfg.export == "mpii_test":
        with h5py.File(crops.path, "r") as f:
            source_index = f["source_index"][()]
        write_mpii_submission(
            output_dir / "pred_keypoints_mpii.mat", source_index, collected["pred"][:, -1], joint_names,
            cfg.mpii_num_images,
        )  # fmt: skip
    print_tables(result, f"{cfg.name}, {cfg.split} split ({len(crops)} samples)")
    print(f"results: {output_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    report_user_errors(lambda: evaluate(cfg))


if __name__ == "__main__":
    main()
