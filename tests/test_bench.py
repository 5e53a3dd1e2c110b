"""The benchmark runs and reports what the performance issue asks for (the figures themselves
are checked by reading its output, not by timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcgan.speed import auto_precision
from tests.helpers import REPO, cpu_only

ENVIRONMENT_KEYS = {
    "device", "torch", "threads", "precision", "compile", "channels_last", "fused_optimizer", "peak_rss_mb"
}  # fmt: skip
TINY = ["model.g_width=8", "model.d_width=8"]


def bench(*args: str, data_dir: Path, fid_weights: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"DCGAN_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}
    env |= {"DCGAN_FID_WEIGHTS": str(fid_weights)} if fid_weights else {}
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=cpu_only(env),
    )


@pytest.mark.slow
def test_bench_records(tmp_path: Path, data_dir: Path, fid_weights: Path) -> None:
    out = tmp_path / "bench.jsonl"
    result = bench(
        "--sizes", "28", "--warmup", "1", "--batches", "2", "--rounds", "2", "--data-batches", "5",
        "--fid-images", "4", "--fid-eval-samples", "8", "--out", str(out), *TINY, "eval.classifier_num_samples=200",
        data_dir=data_dir, fid_weights=fid_weights,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    train, data, fid = records
    assert (train["bench"], data["bench"], fid["bench"]) == ("train", "data", "fid")
    for record in records:
        assert record.keys() >= ENVIRONMENT_KEYS and record["size"] == 28 and record["batch_size"] == 128
        assert record["device"].startswith("cpu") and record["compile"] is False
        assert record["precision"] == auto_precision("cpu")[0]  # the default, auto, as resolved here
        assert record["channels_last"] is True and record["fused_optimizer"] is False  # the defaults on a CPU
    assert (train["g_width"], train["rounds"], len(train["project_rounds"]), len(train["plain_rounds"])) == (8, 2, 2, 2)
    assert (train["experiment"], train["overrides"]) == ("mnist28_dcgan", [*TINY, "eval.classifier_num_samples=200"])
    assert train["project_images_per_s"] > 0 and train["plain_images_per_s"] > 0
    assert train["ratio"] == pytest.approx(train["project_images_per_s"] / train["plain_images_per_s"], abs=1e-3)
    # D at width 8: 1 -> 8 channels at 14x14, 8 -> 16 at 7x7 (4x4 kernels), 16 -> 1 (7x7 kernel)
    macs = 14 * 14 * 8 * 1 * 16 + 7 * 7 * 16 * 8 * 16 + 16 * 49
    assert train["d_gflop_per_image"] == pytest.approx(2 * macs / 1e9, rel=1e-3) and train["g_gflop_per_image"] > 0
    assert data["images_per_s"] > 0
    assert fid["fid_features_images_per_s"] > 0 and fid["fid_features_torchmetrics_default_images_per_s"] > 0
    assert fid["fid_eval_num_samples"] == 8 and fid["fid_eval_s"] > 0 and fid["precision_recall_s"] >= 0
    assert fid["classifier_eval_num_samples"] == 200 and fid["classifier_eval_s"] > 0
    assert "| 28 | 128 | 8/8 |" in result.stderr  # the README table
    assert "speed-up" not in result.stderr and "speedup" not in train


@pytest.mark.slow
def test_bench_baseline_and_switches(data_dir: Path) -> None:
    """--baseline times the float32 NCHW plain loop too; the records name the experiment and the
    switches used."""
    result = bench(
        "--sizes", "28", "--warmup", "1", "--batches", "2", "--rounds", "1", "--data-batches", "2", "--no-fid",
        "--baseline", "experiment=fashion28", "trainer.precision=bf16-mixed", "speed.fused_optimizer=true", *TINY,
        data_dir=data_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    train, data = (json.loads(line) for line in result.stdout.splitlines())
    assert (train["experiment"], train["batch_size"], train["fc_width"]) == ("fashion28", 128, 1024)  # the one asked
    assert (train["precision"], train["fused_optimizer"], train["channels_last"]) == ("bf16-mixed", True, True)
    assert data["bench"] == "data" and data["precision"] == "bf16-mixed"
    assert len(train["baseline_rounds"]) == 1 and train["baseline_images_per_s"] > 0
    assert train["speedup"] == pytest.approx(train["project_images_per_s"] / train["baseline_images_per_s"], abs=1e-3)
    assert "| speed-up |" in result.stderr and "x |" in result.stderr


@pytest.mark.slow
def test_bench_refuses_bad_arguments(data_dir: Path) -> None:
    result = bench("--batches", "0", data_dir=data_dir)
    assert result.returncode == 2 and "--batches must be positive" in result.stderr
    result = bench("--sizes", "28", "--no-fid", "trainer.precision=64-true", *TINY, data_dir=data_dir)
    assert result.returncode != 0
    assert (
        "error: the benchmark's plain loop mirrors trainer.precision 32-true or bf16-mixed, not 64-true"
        in result.stderr
    )


def test_overrides_may_follow_sizes() -> None:
    """Hydra overrides right after --sizes' list are overrides, not more sizes (the commands in
    docs/performance.md and docs/quality.md are written that way)."""
    from tools.bench import parse_args

    args = parse_args(["--no-fid", "--sizes", "64", "experiment=fashion64", "model.start_grid=8", "--quick"])
    assert args.sizes == [64] and args.overrides == ["experiment=fashion64", "model.start_grid=8"]
    assert args.no_fid and args.quick
    args = parse_args(["--sizes", "28", "128", "--out=x.jsonl", "dataset.batch_size=64"])
    assert args.sizes == [28, 128] and args.overrides == ["dataset.batch_size=64"] and args.out == Path("x.jsonl")
