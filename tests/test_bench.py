"""Smoke run of ``nearwatch bench`` on a tiny generated dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from bench.memory import PeakMemory
from bench.quality import bench_command
from bench.readme_table import table
from bench.report import fpr_lower_bound

ROOT = Path(__file__).resolve().parents[1]


def _write_dataset(path: Path, n_normal: int, n_anomaly: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(size=(n_normal, 3)), rng.normal(5.0, 1.0, size=(n_anomaly, 3))])
    y = np.r_[np.zeros(n_normal), np.ones(n_anomaly)].astype(np.int8)
    np.savez_compressed(path, X=x.astype(np.float32), y=y)


def test_bench_smoke(tmp_path: Path) -> None:
    _write_dataset(tmp_path / "blobs.npz", 400, 20, 0)
    _write_dataset(tmp_path / "small.npz", 40, 6, 1)  # too few normals to certify
    out = tmp_path / "report"
    result = CliRunner().invoke(bench_command, [
        "--data-dir", str(tmp_path), "--seeds", "2", "--labelled-anomalies", "4",
        "--alpha", "0.05", "--delta", "0.1", "--exact", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["datasets"]) == {"blobs", "small"}
    blobs = report["datasets"]["blobs"]
    for method in ("nearwatch", "raw_knn", "iforest"):
        assert 90 <= blobs[method]["auroc"]["mean"] <= 100
        assert set(blobs[method]["auprc"]) == {"mean", "std"}
    calibration = blobs["calibration"]
    assert calibration["certified_seeds"] == 2
    # pooled over both seeds: 200 test normals each, realised FPR = FP / n, and its lower bound
    runs = [run["nearwatch"] for run in report["runs"]["blobs"]]
    assert calibration["n_test_normal"] == sum(r["n_test_normal"] for r in runs) == 400
    assert calibration["false_positives"] == sum(r["false_positives"] for r in runs)
    assert calibration["realised_fpr"] == calibration["false_positives"] / 400
    assert calibration["fpr_lower_bound_95"] == fpr_lower_bound(calibration["false_positives"], 400)
    assert calibration["holds"] is (calibration["fpr_lower_bound_95"] <= 0.05)
    assert calibration["realised_fpr"] <= 0.05  # well-separated blobs: no excess FPR
    assert calibration["fpr_bound"] <= 0.05
    assert blobs["n_labelled"] == 4 and blobs["train_s"]["mean"] > 0
    small = report["datasets"]["small"]
    assert small["n_labelled"] == 3  # at most half of the 6 anomalies
    assert "not_certifiable" in small["calibration"]
    assert "small" in report["overall"]["checks"]["not certifiable"]
    assert report["runs"]["blobs"][0]["nearwatch"]["training_mode"] == "self_supervised"
    for name in ("report.md", "auroc.png", "calibration.png"):
        assert (out / name).stat().st_size > 0
    assert "| blobs |" in result.output
    exact = blobs["nearwatch_exact"]
    assert 90 <= exact["auroc"]["mean"] <= 100 and exact["calibration"]["certified_seeds"] == 2
    assert blobs["calibration_index"] == "flat" and blobs["duplicate_factor"] >= 1.0
    assert "Default index vs exact (flat) index" in result.output


def test_fpr_lower_bound() -> None:
    assert fpr_lower_bound(0, 50) == 0.0
    assert 0.0 < fpr_lower_bound(3, 100) < 0.03 < fpr_lower_bound(10, 100)
    # Clopper-Pearson: the rate p at which seeing >= x false positives has probability 5 %
    for x, n in ((1, 50), (3, 100), (10, 100), (40, 400)):
        p = fpr_lower_bound(x, n)
        assert stats.binom.sf(x - 1, n, p) == pytest.approx(0.05, rel=1e-6)
        assert p < x / n
    assert fpr_lower_bound(5, 100, confidence=0.99) < fpr_lower_bound(5, 100)


def test_bench_runs_pyod_peers_on_the_same_splits(tmp_path: Path) -> None:
    pytest.importorskip("pyod")
    _write_dataset(tmp_path / "blobs.npz", 700, 20, 3)
    out = tmp_path / "report"
    result = CliRunner().invoke(bench_command, [
        "--data-dir", str(tmp_path), "--seeds", "1", "--alpha", "0.05", "--delta", "0.1",
        "--peers", "knn,ecod", "--out", str(out)])
    assert result.exit_code == 0, result.output
    blobs = json.loads((out / "report.json").read_text())["datasets"]["blobs"]
    for peer in ("pyod_knn", "pyod_ecod"):
        assert 90 <= blobs[peer]["auroc"]["mean"] <= 100
        assert blobs[peer]["records_per_s"]["mean"] > 0
        if sys.platform == "linux":
            assert blobs[peer]["peak_mb"] >= 0
    if sys.platform == "linux":  # torch training allocates: a peak above the loaded data
        assert blobs["peak_mb"] > 0
    assert "Best peer:" in result.output and "| knn AUROC |" in result.output
    assert "| knn peak MB |" in result.output
    assert "Scoring time over all test records" in result.output
    assert "Time cap per peer run" in result.output
    checks = json.loads((out / "report.json").read_text())["overall"]["checks"]
    assert any(name.startswith("mean AUROC >= best PyOD peer + 1") for name in checks)
    bad = CliRunner().invoke(bench_command, ["--data-dir", str(tmp_path), "--peers", "svm",
                                             "--out", str(out)])
    assert bad.exit_code != 0 and "unknown peers ['svm']" in bad.output


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM and clear_refs are Linux's")
def test_peak_memory_counts_what_the_block_allocates_not_what_came_before() -> None:
    resident_before = np.ones(25_000_000)  # 200 MB already resident: not the block's
    with PeakMemory() as idle:
        pass
    with PeakMemory() as allocating:
        block = np.ones(12_500_000)  # 100 MB, touched, then freed inside the block
        del block
    del resident_before
    assert idle.mb is not None and idle.mb < 20
    assert allocating.mb is not None and 90 < allocating.mb < 150


def test_readme_quality_table_is_the_generated_one() -> None:
    """README.md's quality table is `python -m bench.readme_table` of the committed reports."""
    folders = [ROOT / "bench/results/adbench29", ROOT / "bench/results/adbench29-labelled10"]
    generated = table(folders)
    assert "| unlabelled default | 29 × 5 |" in generated
    assert generated in (ROOT / "README.md").read_text()
