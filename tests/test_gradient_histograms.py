"""Gradient-magnitude histograms at depth (paper Fig. 5): real Trainer runs, real W&B offline files."""

from __future__ import annotations

import csv
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from cpm_lightning.callbacks.gradient_histograms import (
    FIGURE_NAME,
    FILE_NAME,
    GradientHistogramRecord,
    GradientHistograms,
    belief_path_convs,
    default_depths,
    main,
    plot_histogram_grid,
)
from cpm_lightning.errors import ConfigError, DataFileError
from cpm_lightning.models.cpm import CPM
from cpm_lightning.train import build

STEPS_PER_EPOCH = 3  # TINY's limit_train_batches
EPOCHS = 2


def fit(config):
    module, datamodule, trainer = build(config)
    trainer.fit(module, datamodule=datamodule)
    return module, trainer


def gradient_run(tiny_config, *overrides: str):
    """A real 2-epoch, 3-stage run recording gradients at every step."""
    config = tiny_config(
        "callbacks=gradients",
        f"trainer.max_epochs={EPOCHS}",
        "model.num_stages=3",
        "callbacks.gradient_histograms.every_n_steps=1",
        *overrides,
    )
    module, trainer = fit(config)
    return config, module, GradientHistogramRecord.load(f"{config.paths.output_dir}/gradients/{FILE_NAME}")


def expected_depths(model_config) -> list[int]:
    """First conv of each stage and the last conv, by depth from the output, from the config alone."""
    c = model_config
    per_later_stage = c.stage_layers + 2  # large-kernel layers, then 1x1, then 1x1 to P + 1
    total = c.num_pools + 4 + (c.num_stages - 1) * per_later_stage
    return [total] + [per_later_stage * (c.num_stages - t) for t in range(1, c.num_stages)] + [1]


def test_default_depths_are_first_conv_of_each_stage_and_last_conv():
    model = CPM(num_stages=3, num_pools=2, trunk_channels=8, stage1_channels=8, stage_channels=8)
    convs = belief_path_convs(model)
    assert convs[0][0] == "stage1.trunk.0" and convs[-1][0] == "stages.1.refine.8"
    assert default_depths(model) == expected_depths(model.config) == [16, 10, 5, 1]


def test_local_files_have_expected_depths_and_epochs(tiny_config):
    config, module, record = gradient_run(tiny_config)  # the default CSV logger
    depths = expected_depths(module.model.config)
    assert record.depths.tolist() == depths
    assert record.layer_names[0] == "stage1.trunk.0"
    assert record.epochs.tolist() == list(range(EPOCHS))
    assert record.global_steps.tolist() == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    assert record.label == "joint"
    # every weight of every recorded layer, once per step: nothing lost to the range or to zeros
    weights = dict(belief_path_convs(module.model))
    numel = np.array([weights[name].weight.numel() for name in record.layer_names])
    recorded = record.counts.sum(-1) + record.num_zeros
    np.testing.assert_array_equal(recorded, np.broadcast_to(numel * STEPS_PER_EPOCH, recorded.shape))
    np.testing.assert_array_equal(record.num_values, recorded)
    assert np.all(np.isfinite(record.rms)) and np.all(record.rms > 0)

    figure = record_dir = config.paths.output_dir + "/gradients"
    figure = f"{record_dir}/{FIGURE_NAME}"
    with open(figure, "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(f"{config.paths.output_dir}/csv/version_0/metrics.csv") as table:
        rows = [r for r in csv.DictReader(table) if r.get(f"gradients/rms_depth_{depths[0]:02d}")]
    assert len(rows) == EPOCHS
    assert float(rows[-1][f"gradients/rms_depth_{depths[0]:02d}"]) == pytest.approx(record.rms[-1, 0], rel=1e-5)


def wandb_history(run_file: Path) -> list[dict[str, object]]:
    """The history rows of an offline W&B run's transaction log (.wandb: a LevelDB-style log of
    protobuf records: 7-byte file header, 32 KiB blocks, 7-byte record headers)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    rows, position, pending = [], 7, b""
    while position + 7 <= len(data):
        left_in_block = 32768 - position % 32768
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left_in_block < 7 or (length == 0 and kind == 0):  # block padding
            position += left_in_block
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_run_contains_histogram_entries(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    import wandb

    try:
        _, _, record = gradient_run(tiny_config, "logger=wandb")
    finally:
        wandb.finish()
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb.finish() can return before W&B's service process has written the last records (seen
    # on a heavily loaded machine): read the file until both epochs are there, or a minute passed.
    deadline = time.monotonic() + 60
    while True:
        rows = [r for r in wandb_history(run_file) if f"gradients/depth_{record.depths[0]:02d}/_type" in r]
        if len(rows) >= EPOCHS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    assert [r["trainer/global_step"] for r in rows] == record.global_steps.tolist()
    for row, counts in zip(rows, record.counts):
        for depth, depth_counts in zip(record.depths, counts):
            key = f"gradients/depth_{depth:02d}"
            assert row[f"{key}/_type"] == "histogram"
            assert row[f"{key}/values"] == depth_counts.tolist()
            np.testing.assert_allclose(row[f"{key}/bins"], record.bin_edges)


def record_of(label: str, depths: list[int], spread: float) -> GradientHistogramRecord:
    """A two-epoch record of normal gradients with the given RMS, made as the callback makes it."""
    callback = GradientHistograms()
    edges = callback.bin_edges
    rng = np.random.default_rng(0)
    counts = np.stack([
        np.stack([np.histogram(np.log10(np.abs(rng.normal(0, spread, 1000))), edges)[0] for _ in depths])
        for _ in range(2)
    ])  # fmt: skip
    return GradientHistogramRecord(
        depths=np.array(depths), layer_names=np.array([f"layer{d}" for d in depths]), bin_edges=edges,
        epochs=np.arange(2), global_steps=np.array([10, 20]), counts=counts, num_zeros=np.zeros((2, len(depths)), int),
        sum_squares=np.full((2, len(depths)), 1000 * spread**2), num_values=np.full((2, len(depths)), 1000),
        label=label,
    )  # fmt: skip


def test_overlay_of_two_runs_and_its_command_line(tmp_path):
    joint, plain = record_of("joint", [16, 1], 1e-2), record_of("no_intermediate", [16, 1], 1e-5)
    joint.save(tmp_path / "joint.npz")
    plain.save(tmp_path / "plain.npz")
    assert GradientHistogramRecord.load(tmp_path / "joint.npz").rms[0, 0] == pytest.approx(1e-2)
    main([str(tmp_path / "joint.npz"), str(tmp_path / "plain.npz"), "--out", str(tmp_path / "fig5.png")])
    assert (tmp_path / "fig5.png").stat().st_size > 10_000

    with pytest.raises(ConfigError, match="same depths"):
        plot_histogram_grid({"a": joint, "b": record_of("b", [31, 1], 1.0)}, tmp_path / "bad.png")


def test_bad_inputs_get_clear_errors(tmp_path, tiny_config):
    not_npz = tmp_path / "notes.npz"
    not_npz.write_text("not a histogram file")
    with pytest.raises(DataFileError, match="notes.npz"):
        GradientHistogramRecord.load(not_npz)
    with pytest.raises(ConfigError, match="every_n_steps"):
        GradientHistograms(every_n_steps=0)
    config = tiny_config("callbacks=gradients", "callbacks.gradient_histograms.depths=[99]")
    with pytest.raises(ConfigError, match=r"depths \[99\] do not exist"):
        fit(config)


@pytest.mark.slow
def test_without_intermediate_supervision_far_layer_gradients_are_much_narrower(tiny_config):
    """The paper's Fig. 5 effect in the first steps, with the paper's N(0, 0.01) initialisation.

    (With He initialisation, the cpm_small default, the effect is much weaker in a few steps: the
    init itself keeps gradient magnitudes through depth.)
    """
    paper_init = ("trainer.max_epochs=1", "model.init=paper", "model.norm=none")
    _, _, joint = gradient_run(tiny_config, "scheme=joint", *paper_init)
    _, _, plain = gradient_run(tiny_config, "scheme=no_intermediate", *paper_init)
    assert joint.depths[0] == plain.depths[0] == 17  # the first conv of the network (3 trunk convs + 14)
    assert joint.rms[0, 0] > 10 * plain.rms[0, 0], (joint.rms[0], plain.rms[0])
