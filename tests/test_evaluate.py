"""evaluate: a model of the default experiment scored per stage in source pixels; test-time
geometry; the MPII submission layout."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, compose_config
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image
from scipy.io import loadmat

from cpm_lightning.data.targets import render_belief_maps
from cpm_lightning.evaluate import evaluate, write_mpii_submission
from cpm_lightning.inference import InferenceOptions, decode, to_common_frame
from cpm_lightning.train import CONFIG_DIR, build


def evaluate_config(tmp_path, data_dir, ckpt, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[f"ckpt={ckpt}", "batch_size=16", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
        cfg.paths.data_dir = str(data_dir)
    return cfg


def test_single_scale_evaluation_equals_the_lightning_validation_metric(tmp_path, data_dir, trained_checkpoint):
    metrics = evaluate(evaluate_config(tmp_path, data_dir, trained_checkpoint))
    # The same checkpoint through Lightning's validate: PCK in input pixels, evaluate's in source
    # pixels; the crop transform is a similarity, so the rates must agree exactly.
    module, datamodule, trainer = build(compose_config([*TINY, "~logger"], tmp_path / "val", data_dir))
    logged = trainer.validate(module, datamodule=datamodule, ckpt_path=str(trained_checkpoint), verbose=False)[0]
    stage_means = [s["thresholds"]["0.2"]["mean_weighted"] for s in metrics["stages"]]
    assert metrics["num_samples"] == 25  # all of them seen by validate too (eval batches of 64)
    for t, mean in enumerate(stage_means):
        assert mean == pytest.approx(logged[f"val/pck_stage{t + 1}"], abs=1e-6)
    assert len(stage_means) == 3 and metrics["pck_final_stage"] == stage_means[-1]


def test_evaluate_writes_every_output(tmp_path, data_dir, trained_checkpoint):
    cfg = evaluate_config(
        tmp_path, data_dir, trained_checkpoint, "split=test", "protocol=bbox_pck", "test_time.multiscale=true",
        "test_time.scales=[0.8,1.0,1.2]", "test_time.flip=true", "export=mpii_test", "figure_samples=[0,3]",
    )  # fmt: skip
    metrics = evaluate(cfg)
    out = tmp_path / "eval"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["protocol"] == "bbox_pck" and saved["num_samples"] == 25
    assert [s["stage"] for s in saved["stages"]] == [1, 2, 3]
    row = saved["stages"][-1]["thresholds"]["0.2"]
    assert list(row["groups"]) == ["head", "shoulder", "elbow", "wrist", "hip", "knee", "ankle"]
    assert set(saved["stages"][0]["thresholds"]) == {"0.2", "0.1"}
    curve = [c["mean_weighted"] for c in saved["stages"][-1]["curves"]]
    assert curve == sorted(curve) and curve[0] == 0.0  # non-decreasing, nothing within distance 0
    assert metrics["pck_final_stage"] == row["mean_weighted"]
    lines = (out / "pck_table.csv").read_text().splitlines()
    assert lines[0].startswith("stage,threshold,head,") and len(lines) == 1 + 3 * 2
    for figure in ("pck_curves.png", "belief_maps.png"):
        assert Image.open(out / figure).size[0] > 300
    # The submission: annolist(i).annorect(r).annopoints.point with 16 MPII ids, 1-based x, y.
    mat = loadmat(out / "pred_keypoints_mpii.mat")
    annolist = mat["annolist"]
    predictions = np.load(out / "predictions.npz")["joints"][:, -1]
    assert annolist.shape == (1, 25)  # the synthetic file stores (sample, 0) as source index
    points = annolist[0, 4]["annorect"][0, 0]["annopoints"][0, 0]["point"]
    ids = [int(p["id"].item()) for p in points[0]]
    assert sorted(ids) == list(range(16))
    head_top = points[0, ids.index(9)]
    assert float(head_top["x"].item()) == pytest.approx(predictions[4, 0, 0] + 1)
    assert float(head_top["y"].item()) == pytest.approx(predictions[4, 0, 1] + 1)


def test_mpii_submission_keeps_the_release_indices(tmp_path):
    joints = np.arange(3 * 14 * 2, dtype=float).reshape(3, 14, 2)
    from cpm_lightning.data.skeletons import LSP14

    source_index = np.array([[0, 1], [2, 0], [2, 2]])
    write_mpii_submission(tmp_path / "pred.mat", source_index, joints, list(LSP14.joint_names), num_images=4)
    annolist = loadmat(tmp_path / "pred.mat")["annolist"]
    assert annolist.shape == (1, 4)
    assert annolist[0, 0]["annorect"].shape == (1, 2)  # person 1 of image 0 (person 0 not in the split)
    assert annolist[0, 0]["annorect"][0, 0]["annopoints"].size == 0
    assert annolist[0, 1]["annorect"].size == 0 and annolist[0, 3]["annorect"].size == 0
    points = annolist[0, 2]["annorect"][0, 2]["annopoints"][0, 0]["point"][0]
    by_id = {int(p["id"].item()): (float(p["x"].item()), float(p["y"].item())) for p in points}
    r_ankle = joints[2, LSP14.index("r_ankle")]
    assert by_id[0] == (r_ankle[0] + 1, r_ankle[1] + 1)  # MPII id 0 = right ankle, 1-based
    hips = joints[2, [LSP14.index("r_hip"), LSP14.index("l_hip")]].mean(0)
    assert by_id[6] == pytest.approx(tuple(hips + 1))  # pelvis: mid-hip


@pytest.mark.parametrize("scale", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("upsample", [1, 4])
def test_maps_of_a_zoomed_input_come_back_to_the_scale_one_frame(scale, upsample):
    stride, size = 4, 128
    joints = np.array([[40.3, 70.8], [90.0, 33.6], [64.0, 64.0]])  # scale-1 input pixels
    middle = (size - 1) / 2
    zoomed = middle + scale * (joints - middle)  # where they are in the zoomed input
    maps = render_belief_maps(zoomed, np.ones(3, bool), size // stride, stride, sigma=2.4 * 1.5)
    common = to_common_frame(torch.from_numpy(maps)[None, None], scale, stride, upsample)
    assert common.shape[-1] == size // stride * upsample
    decoded, scores = decode(common[0, 0], stride, InferenceOptions(upsample=upsample))
    np.testing.assert_allclose(decoded.numpy(), joints, atol=1.0 + 0.5 * stride / upsample * (scale != 1))
    assert (scores > 0.5).all()


def test_bad_checkpoint_and_split_are_one_paragraph_errors(tmp_path, data_dir):
    result = subprocess.run(
        [sys.executable, "-m", "cpm_lightning.evaluate", f"ckpt={tmp_path}/missing.ckpt",
         f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}/run"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "missing.ckpt does not exist" in result.stderr and "Traceback" not in result.stderr
