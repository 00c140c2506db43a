"""PCK / PCKh: the protocols, `pck`, per-group summaries and a torchmetrics wrapper exact under DDP.

A protocol names the per-sample normaliser, the comparison, the reported thresholds and the
joints that count, so that every number we report is traceable to one definition
(docs/evaluation.md defines each exactly and says which peer codebase uses which variant):

    mpii_pckh                 d <  thr x 0.6 x gt head-box diagonal; annotated joints; @0.5, @0.1
    lsp_pck                   d <= 0.2 x |gt l_shoulder - gt r_hip|; all annotated joints
    flic_pck                  d <= thr x |gt l_shoulder - gt r_hip|; elbows and wrists
    flic_pck_predicted_torso  as flic_pck, torso from the PREDICTED l_shoulder, r_hip (the release)
    bbox_pck                  d <= 0.2 x max(width, height) of the annotated gt joints' box

`d` is the Euclidean error in source-image pixels when evaluate.py reports; the ratio is the same
in any frame related by a similarity transform (input crops are such a frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics import Metric

from cpm_lightning.errors import ConfigError

# Joint groups of the MPII table, found by name so that LSP14, FLIC9 and any order work.
GROUPS = ("head", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")
HEAD_JOINTS = ("head_top", "neck", "head")


@dataclass(frozen=True)
class Protocol:
    name: str
    # "head_size" and "torso_size" are batch keys (per-sample, from the data file); "bbox_size"
    # and "predicted_torso_size" are computed from the joints (see `normalizer_of`).
    normalizer: str
    threshold: float  # the headline threshold (logged as val/pck)
    strict: bool  # correct if d / normaliser < thr (strict) or <= thr
    description: str
    report_thresholds: tuple[float, ...]  # thresholds of the evaluation table
    curve_thresholds: tuple[float, ...]  # x axis of the PCK-vs-threshold figure
    joint_groups: tuple[str, ...] | None = None  # only joints of these groups count (None: all)

    def normalizer_of(
        self, batch: dict[str, torch.Tensor], pred: torch.Tensor, joint_names: Sequence[str]
    ) -> torch.Tensor:
        """(N,) normaliser of a batch (keys joints, visible and the protocol's key); pred (N, J, 2)
        is the prediction the predicted-torso variant uses. Units are those of batch["joints"]."""
        if self.normalizer == "bbox_size":
            return bbox_size(batch["joints"], batch["visible"])
        if self.normalizer == "predicted_torso_size":
            return torso_size_of(pred, joint_names)
        return batch[self.normalizer]

    def counted_joints(self, joint_names: Sequence[str]) -> np.ndarray:
        """(J,) bool: the joints this protocol scores."""
        if self.joint_groups is None:
            return np.ones(len(joint_names), bool)
        return np.array([joint_group(n) in self.joint_groups for n in joint_names])


def _curve(stop: float, start: float = 0.0, steps: int = 21) -> tuple[float, ...]:
    return tuple(round(float(t), 4) for t in np.linspace(start, stop, steps))


PROTOCOLS = {
    p.name: p
    for p in (
        Protocol("lsp_pck", "torso_size", 0.2, False,
                 "PCK@0.2: d <= 0.2 x gt |l_shoulder - r_hip|, all annotated joints",
                 (0.2,), _curve(0.2)),
        Protocol("mpii_pckh", "head_size", 0.5, True,
                 "PCKh@0.5: d < 0.5 x 0.6 x gt head-box diagonal, annotated joints, 14 joints",
                 (0.5, 0.1), _curve(0.5)),
        Protocol("flic_pck", "torso_size", 0.2, False,
                 "PCK@0.2 (FLIC): d <= 0.2 x gt |l_shoulder - r_hip|, elbows and wrists",
                 (0.2, 0.1, 0.05), _curve(0.2, 0.05, 16), ("elbow", "wrist")),
        Protocol("flic_pck_predicted_torso", "predicted_torso_size", 0.2, False,
                 "PCK@0.2 (FLIC, the release): d <= 0.2 x PREDICTED |l_shoulder - r_hip|, elbows and wrists",
                 (0.2, 0.1, 0.05), _curve(0.2, 0.05, 16), ("elbow", "wrist")),
        Protocol("bbox_pck", "bbox_size", 0.2, False,
                 "PCK@0.2 (box): d <= 0.2 x max(w, h) of the annotated gt joints' bounding box",
                 (0.2, 0.1), _curve(0.2)),
    )
}  # fmt: skip


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(f"unknown protocol {name!r}: choose one of {sorted(PROTOCOLS)}") from None


def joint_group(joint_name: str) -> str:
    """'l_elbow' -> 'elbow', 'neck' -> 'head'; a name outside the table is its own group."""
    if joint_name in HEAD_JOINTS:
        return "head"
    return joint_name.removeprefix("l_").removeprefix("r_")


# -- normalisers (torch or numpy in, same type out) ----------------------------------------------
def head_size_from_box(head_box: np.ndarray) -> np.ndarray:
    """MPII: 0.6 x the head box diagonal; head_box (N, 4) x1, y1, x2, y2."""
    head_box = np.asarray(head_box, np.float64)
    return 0.6 * np.hypot(head_box[:, 2] - head_box[:, 0], head_box[:, 3] - head_box[:, 1])


def torso_size_of(joints: torch.Tensor, joint_names: Sequence[str]) -> torch.Tensor:
    """|l_shoulder - r_hip| per sample, (N,); joints (N, J, 2)."""
    names = list(joint_names)
    if "l_shoulder" not in names or "r_hip" not in names:
        raise ConfigError(f"a torso protocol needs joints l_shoulder and r_hip; this data has {names}")
    return (joints[:, names.index("l_shoulder")] - joints[:, names.index("r_hip")]).norm(dim=-1)


def bbox_size(joints: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """max(width, height) of the tight box around the annotated joints, (N,); NaN if none."""
    inf = torch.tensor(float("inf"), dtype=joints.dtype, device=joints.device)
    mask = visible[..., None]
    low = torch.where(mask, joints, inf).amin(dim=1)
    high = torch.where(mask, joints, -inf).amax(dim=1)
    size = (high - low).amax(dim=-1)
    return torch.where(visible.any(dim=1), size, torch.full_like(size, float("nan")))


# -- the rates ----------------------------------------------------------------------------------
def pck(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    visible: np.ndarray | torch.Tensor,
    normalizer: np.ndarray | torch.Tensor,
    thresholds: Sequence[float],
    strict: bool = False,
) -> np.ndarray:
    """Per-threshold, per-joint detection rate, shape (len(thresholds), J), values in [0, 1].

    pred, gt: (N, J, 2); visible: (N, J) bool, the joints that count; normalizer: (N,), a
    sample with a non-finite or non-positive normaliser counts no joint. A joint is correct if
    distance / normalizer <= thr (< thr with `strict`, as MPII's PCKh). Joints counted by no
    sample get NaN.
    """
    correct, total = pck_counts(pred, gt, visible, normalizer, thresholds, strict)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / total


def pck_counts(pred, gt, visible, normalizer, thresholds, strict=False) -> tuple[np.ndarray, np.ndarray]:
    """(correct (T, J), total (J,)) counts behind `pck`: sums of these are exact across shards."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    normalizer = np.asarray(normalizer, np.float64)
    valid = np.asarray(visible, bool) & (np.isfinite(normalizer) & (normalizer > 0))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.linalg.norm(pred - gt, axis=-1) / normalizer[:, None]
    thresholds = np.asarray(thresholds, np.float64)[:, None, None]
    hit = ratio[None] < thresholds if strict else ratio[None] <= thresholds
    correct = (hit & valid[None]).sum(axis=1).astype(np.float64)
    return correct, valid.sum(axis=0).astype(np.float64)


def summarize(correct: np.ndarray, total: np.ndarray, joint_names: Sequence[str], counted: np.ndarray) -> dict:
    """One threshold's table row from counts (J,): per joint, per group and both means.

    mean_weighted = all correct / all counted joints (MPII's official "Mean": joints weighted by
    how often they are annotated); mean_unweighted = the plain mean of the per-joint rates
    (bearpaw/pytorch-pose). A group is the unweighted mean of its joints' rates, as MPII's table.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(total > 0, correct / np.maximum(total, 1), np.nan)
    per_joint = {n: float(r) for n, r, c in zip(joint_names, rate, counted) if c}
    groups = {}
    for group in dict.fromkeys(joint_group(n) for n in per_joint):
        members = [per_joint[n] for n in per_joint if joint_group(n) == group]
        groups[group] = float(np.nanmean(members)) if not np.all(np.isnan(members)) else float("nan")
    ordered = {g: groups[g] for g in GROUPS if g in groups} | {g: v for g, v in groups.items() if g not in GROUPS}
    used = counted & (total > 0)
    return {
        "per_joint": per_joint,
        "groups": ordered,
        "mean_weighted": float(correct[used].sum() / total[used].sum()) if used.any() else float("nan"),
        "mean_unweighted": float(rate[used].mean()) if used.any() else float("nan"),
        "num_joints_counted": int(total[counted].sum()),
    }


class StagePCK(Metric):
    """Correct / counted joints per stage and joint at one protocol threshold.

    States are integer sums with dist_reduce_fx="sum", so 2 DDP processes that see disjoint
    halves of a split give exactly the 1-process numbers (our eval sampler never pads).
    """

    full_state_update = False

    def __init__(self, num_stages: int, num_joints: int, protocol: str = "lsp_pck"):
        super().__init__()
        self.protocol = get_protocol(protocol)
        self.add_state("correct", torch.zeros(num_stages, num_joints, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_joints, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, normalizer: torch.Tensor) -> None:
        """pred (N, T, J, 2), gt (N, J, 2), visible (N, J) bool, normalizer (N,)."""
        valid = visible & (torch.isfinite(normalizer) & (normalizer > 0))[:, None]
        ratio = (pred - gt[:, None]).norm(dim=-1) / normalizer[:, None, None]
        thr = self.protocol.threshold
        hit = ratio < thr if self.protocol.strict else ratio <= thr
        self.correct += (hit & valid[:, None]).sum(dim=0)
        self.total += valid.sum(dim=0)

    def compute(self) -> dict[str, torch.Tensor]:
        """per_joint (T, J) rates; mean (T,) over all counted joints (weighted by count)."""
        per_joint = self.correct.double() / self.total.double().clamp(min=1)
        mean = self.correct.sum(dim=1).double() / self.total.sum().double().clamp(min=1)
        return {"per_joint": per_joint, "mean": mean}


class StageLoss(Metric):
    """Per-stage loss averaged over samples, not over batches or ranks.

    Lightning's `self.log(..., sync_dist=True)` averages the per-rank means, which differs from
    the 1-process number when the ranks hold different sample counts (an odd split). Summing
    loss x samples and samples, with dist_reduce_fx="sum", gives the 1-process mean exactly.
    """

    full_state_update = False

    def __init__(self, num_stages: int):
        super().__init__()
        self.add_state("loss_sum", torch.zeros(num_stages, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, stage_losses: torch.Tensor, batch_size: int) -> None:
        """stage_losses (T,): this batch's per-sample mean loss of every stage."""
        self.loss_sum += stage_losses.detach().double() * batch_size
        self.num_samples += batch_size

    def compute(self) -> torch.Tensor:
        """(T,) mean loss per sample of every stage."""
        return self.loss_sum / self.num_samples.clamp(min=1)
