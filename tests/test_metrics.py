"""PCK / PCKh: the official MPII evaluation reproduced, and hand-made cases for each rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpm_lightning.data.skeletons import FLIC9, LSP14
from cpm_lightning.errors import ConfigError
from cpm_lightning.metrics import (
    PROTOCOLS,
    StagePCK,
    bbox_size,
    get_protocol,
    head_size_from_box,
    joint_group,
    pck,
    pck_counts,
    summarize,
)

# MPII's 16 joints (official order) -> our 14 (LSP14 order): pelvis (6) and thorax (7) dropped.
MPII_TO_LSP14 = [9, 8, 12, 11, 10, 13, 14, 15, 2, 1, 0, 3, 4, 5]


def official_mpii_pckh(preds, pos_gt_src, jnt_missing, headboxes_src, threshold):
    """The MATLAB evaluation as transcribed in the common Python ports (eval_PCKh.py), verbatim
    in its array layout: pos_gt_src (16, 2, N), jnt_missing (16, N), headboxes_src (2, 2, N),
    preds (N, 16, 2); comparison "<" as in the MATLAB code. Returns (PCKh per joint in %,
    the weighted mean over the 14 joints without pelvis and thorax in %)."""
    SC_BIAS = 0.6
    pos_pred_src = np.transpose(preds, [1, 2, 0])
    jnt_visible = 1 - jnt_missing
    uv_error = pos_pred_src - pos_gt_src
    uv_err = np.linalg.norm(uv_error, axis=1)
    headsizes = headboxes_src[1, :, :] - headboxes_src[0, :, :]
    headsizes = np.linalg.norm(headsizes, axis=0)
    headsizes *= SC_BIAS
    scale = np.multiply(headsizes, np.ones((len(uv_err), 1)))
    scaled_uv_err = np.divide(uv_err, scale)
    scaled_uv_err = np.multiply(scaled_uv_err, jnt_visible)
    jnt_count = np.sum(jnt_visible, axis=1)
    less_than_threshold = np.multiply((scaled_uv_err < threshold), jnt_visible)
    PCKh = np.divide(100.0 * np.sum(less_than_threshold, axis=1), jnt_count)
    PCKh = np.ma.array(PCKh, mask=False)
    PCKh.mask[6:8] = True
    jnt_count = np.ma.array(jnt_count, mask=False)
    jnt_count.mask[6:8] = True
    jnt_ratio = jnt_count / np.sum(jnt_count).astype(np.float64)
    return PCKh.data, float(np.sum(PCKh * jnt_ratio))


def random_mpii(n: int, seed: int):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(0, 1000, (n, 16, 2))
    corner = rng.uniform(0, 900, (n, 2))
    headbox = np.stack([corner, corner + rng.uniform(20, 80, (n, 2))], axis=1)  # (N, 2 corners, 2)
    head_size = 0.6 * np.linalg.norm(headbox[:, 1] - headbox[:, 0], axis=-1)
    # Errors spread around the thresholds, so that both are informative.
    pred = gt + rng.normal(size=(n, 16, 2)) * head_size[:, None, None] * rng.uniform(0.05, 0.6, (n, 16, 1))
    missing = rng.random((n, 16)) < 0.2
    return pred, gt, missing, headbox, head_size


@pytest.mark.parametrize("threshold", [0.5, 0.1])
def test_reproduces_the_official_mpii_evaluation(threshold):
    pred, gt, missing, headbox, _ = random_mpii(500, seed=int(threshold * 10))
    official_joints, official_mean = official_mpii_pckh(
        pred, gt.transpose(1, 2, 0), missing.T.astype(int), headbox.transpose(1, 2, 0), threshold
    )
    ours_pred, ours_gt, ours_visible = pred[:, MPII_TO_LSP14], gt[:, MPII_TO_LSP14], ~missing[:, MPII_TO_LSP14]
    normalizer = head_size_from_box(headbox.reshape(-1, 4))
    protocol = get_protocol("mpii_pckh")
    rates = pck(ours_pred, ours_gt, ours_visible, normalizer, [threshold], strict=protocol.strict)[0]
    np.testing.assert_allclose(100 * rates, official_joints[MPII_TO_LSP14], atol=1e-4)
    correct, total = pck_counts(ours_pred, ours_gt, ours_visible, normalizer, [threshold], strict=True)
    row = summarize(correct[0], total, LSP14.joint_names, np.ones(14, bool))
    assert 100 * row["mean_weighted"] == pytest.approx(official_mean, abs=1e-4)


def test_pck_shape_and_range():
    rng = np.random.default_rng(0)
    pred, gt = rng.normal(size=(30, 14, 2)), rng.normal(size=(30, 14, 2))
    rates = pck(pred, gt, np.ones((30, 14), bool), np.ones(30), [0.5, 1.0, 2.0])
    assert rates.shape == (3, 14)
    assert np.all((rates >= 0) & (rates <= 1))
    assert np.all(np.diff(rates, axis=0) >= 0)  # a larger threshold never detects fewer joints
    torch_rates = pck(*(torch.as_tensor(a) for a in (pred, gt, np.ones((30, 14), bool), np.ones(30))), [0.5, 1, 2])
    np.testing.assert_array_equal(rates, torch_rates)


def test_strict_and_non_strict_differ_exactly_at_the_threshold():
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[3.0, 4.0], [0.0, 4.9]]])  # distances 5 and 4.9 with normaliser 10
    visible = np.ones((1, 2), bool)
    assert pck(pred, gt, visible, np.array([10.0]), [0.5]).tolist() == [[1.0, 1.0]]  # <=  (LSP)
    assert pck(pred, gt, visible, np.array([10.0]), [0.5], strict=True).tolist() == [[0.0, 1.0]]  # < (MPII)


def test_missing_joints_and_bad_normalisers_count_nowhere():
    gt = np.zeros((3, 2, 2))
    pred = np.array([[[0, 0], [100, 0]], [[100, 0], [0, 0]], [[0, 0], [0, 0]]], float)
    visible = np.array([[True, False], [False, True], [True, True]])
    normalizer = np.array([1.0, 1.0, np.nan])  # sample 2 has no head box: it counts no joint
    correct, total = pck_counts(pred, gt, visible, normalizer, [0.5])
    assert total.tolist() == [1, 1] and correct.tolist() == [[1, 1]]  # the wrong guesses were missing joints
    assert np.isnan(pck(pred, gt, np.zeros((3, 2), bool), normalizer, [0.5])).all()  # counted by none: NaN


def test_weighted_and_unweighted_means_differ_when_counts_differ():
    # joint 0: annotated in 4 samples, all correct; joint 1: annotated in 1 sample, wrong.
    gt = np.zeros((4, 2, 2))
    pred = np.zeros((4, 2, 2))
    pred[0, 1] = [10, 0]
    visible = np.array([[True, True], [True, False], [True, False], [True, False]])
    correct, total = pck_counts(pred, gt, visible, np.ones(4), [0.5])
    row = summarize(correct[0], total, ["l_elbow", "r_elbow"], np.ones(2, bool))
    assert row["mean_weighted"] == pytest.approx(4 / 5)  # MPII's official "Mean"
    assert row["mean_unweighted"] == pytest.approx((1.0 + 0.0) / 2)  # bearpaw/pytorch-pose
    assert row["groups"] == {"elbow": pytest.approx(0.5)}
    assert row["num_joints_counted"] == 5


def test_groups_follow_the_mpii_table():
    assert [joint_group(n) for n in LSP14.joint_names] == [
        "head", "head", "shoulder", "elbow", "wrist", "shoulder", "elbow", "wrist",
        "hip", "knee", "ankle", "hip", "knee", "ankle",
    ]  # fmt: skip
    flic = get_protocol("flic_pck").counted_joints(FLIC9.joint_names)
    assert [n for n, c in zip(FLIC9.joint_names, flic) if c] == ["l_elbow", "l_wrist", "r_elbow", "r_wrist"]


def test_normalisers_of_each_protocol():
    names = LSP14.joint_names
    joints = torch.zeros(1, 14, 2)
    joints[0, names.index("l_shoulder")] = torch.tensor([0.0, 0.0])
    joints[0, names.index("r_hip")] = torch.tensor([30.0, 40.0])
    joints[0, names.index("head_top")] = torch.tensor([-10.0, -60.0])
    visible = torch.zeros(1, 14, dtype=torch.bool)
    visible[0, [names.index("l_shoulder"), names.index("r_hip"), names.index("head_top")]] = True
    batch = {"joints": joints, "visible": visible, "torso_size": torch.tensor([50.0]), "head_size": torch.tensor([7.0])}
    pred = joints.clone()
    pred[0, names.index("r_hip")] = torch.tensor([60.0, 80.0])  # predicted torso twice as long
    sizes = {name: float(p.normalizer_of(batch, pred, names)[0]) for name, p in PROTOCOLS.items()}
    assert sizes["lsp_pck"] == sizes["flic_pck"] == 50.0
    assert sizes["flic_pck_predicted_torso"] == pytest.approx(100.0)  # the release's FLIC variant
    assert sizes["mpii_pckh"] == 7.0
    assert sizes["bbox_pck"] == pytest.approx(100.0)  # height of the annotated joints' box: -60 .. 40
    assert torch.isnan(bbox_size(joints, torch.zeros_like(visible))).all()
    with pytest.raises(ConfigError, match="unknown protocol"):
        get_protocol("pckh")


def test_stage_pck_equals_pck_per_stage():
    rng = np.random.default_rng(1)
    pred = torch.as_tensor(rng.normal(size=(40, 3, 14, 2)) * 3)
    gt = torch.as_tensor(rng.normal(size=(40, 14, 2)))
    visible = torch.as_tensor(rng.random((40, 14)) < 0.8)
    normalizer = torch.as_tensor(rng.uniform(5, 20, 40))
    metric = StagePCK(3, 14, "mpii_pckh")
    metric.update(pred[:20], gt[:20], visible[:20], normalizer[:20])
    metric.update(pred[20:], gt[20:], visible[20:], normalizer[20:])
    result = metric.compute()
    for t in range(3):
        expected = pck(pred[:, t], gt, visible, normalizer, [0.5], strict=True)[0]
        np.testing.assert_allclose(result["per_joint"][t].numpy(), expected)
        correct, total = pck_counts(pred[:, t], gt, visible, normalizer, [0.5], strict=True)
        assert float(result["mean"][t]) == pytest.approx(correct.sum() / total.sum())
