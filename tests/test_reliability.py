"""Reliability: bad data files get clear errors, writes are atomic, checkpoints resolve as documented."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from cpm_lightning.callbacks.fault_tolerance import resolve_ckpt_path
from cpm_lightning.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synthetic"
    result = run_cli("-m", "data_prep", "synthetic", "--out", str(out), "--train", "16", "--val", "8", "--test", "8")
    assert result.returncode == 0, result.stderr
    return out


def test_verify_prints_provenance_and_counts(synthetic):
    result = run_cli("-m", "data_prep", "verify", str(synthetic / "train.h5"), str(synthetic / "val.h5"))
    assert result.returncode == 0, result.stderr
    assert f"{synthetic / 'train.h5'}: OK (format version 1)" in result.stdout
    assert "split train: 16 samples, 14 joints" in result.stdout
    assert "split val: 8 samples" in result.stdout
    assert "made by data_prep.synthetic version 1" in result.stdout


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.mark.parametrize("fault", ["missing", "wrong_version", "truncated"])
def test_verify_reports_bad_files_in_one_paragraph(synthetic, tmp_path, fault):
    path = tmp_path / "train.h5"
    if fault != "missing":
        _copy(synthetic / "train.h5", path)
    if fault == "wrong_version":
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = 0
    if fault == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    result = run_cli("-m", "data_prep", "verify", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    expected = {"missing": "does not exist", "wrong_version": "format version 0", "truncated": "truncated"}[fault]
    assert str(path) in result.stderr and expected in result.stderr
    assert "Re-run the data_prep command" in result.stderr


@pytest.mark.slow
def test_training_reports_bad_data_at_setup_without_traceback(synthetic, tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "synthetic").mkdir(parents=True)
    _copy(synthetic / "train.h5", data_dir / "synthetic" / "train.h5")
    val = _copy(synthetic / "val.h5", data_dir / "synthetic" / "val.h5")
    val.write_bytes(val.read_bytes()[:4096])  # truncated
    result = run_cli(
        "-m",
        "cpm_lightning.train",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.max_epochs=1",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(val) in result.stderr and "python -m data_prep synthetic --out" in result.stderr


def _checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.h5"))}


def test_killed_data_prep_leaves_nothing_and_rerun_is_idempotent(tmp_path):
    out = tmp_path / "synthetic"
    command = [sys.executable, "-m", "data_prep", "synthetic", "--out", str(out), "--train", "3000", "--val", "8"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(out.glob(".train.h5.*.partial")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(out.glob(".train.h5.*.partial")), "the converter never started writing"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "train.h5").exists()  # nothing half-written at the final path

    small = ["-m", "data_prep", "synthetic", "--out", str(out), "--train", "16", "--val", "8", "--test", "8"]
    assert run_cli(*small).returncode == 0
    first = _checksums(out)
    assert run_cli(*small).returncode == 0
    assert _checksums(out) == first and set(first) == {"train.h5", "val.h5", "test.h5"}


def test_ckpt_path_rules(tmp_path):
    experiment = tmp_path / "outputs" / "exp"
    old, new = experiment / "2026-01-01_00-00-00", experiment / "2026-01-02_00-00-00"
    (old / "checkpoints").mkdir(parents=True)
    new.mkdir()
    last = old / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")

    assert resolve_ckpt_path(None, new) is None
    assert resolve_ckpt_path("last", new) == str(last)  # the newest sibling run of the experiment
    assert resolve_ckpt_path("last", new, search_siblings=False) is None  # sweeps: own folder only
    assert resolve_ckpt_path(str(old), new) == str(last)  # a run folder
    assert resolve_ckpt_path(str(last), new) == str(last)  # a file
    own = new / "checkpoints" / "last.ckpt"
    own.parent.mkdir()
    own.write_bytes(b"y")
    os.utime(last, (time.time() + 10, time.time() + 10))
    assert resolve_ckpt_path("last", new) == str(own)  # resumed in its own folder: that one first
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), new)
    with pytest.raises(ConfigError, match="without checkpoints/last.ckpt"):
        resolve_ckpt_path(str(tmp_path), new)
