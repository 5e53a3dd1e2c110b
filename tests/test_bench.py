"""The benchmark runs and reports what the performance issue asks for (the figures themselves
are checked by reading its output, not by timed tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

ENVIRONMENT_KEYS = {"device", "torch", "threads", "dtype", "compile", "peak_rss_mb"}


@pytest.mark.slow
def test_bench_records(tmp_path: Path, data_dir: Path, fid_weights: Path) -> None:
    out = tmp_path / "bench.jsonl"
    tiny = ["model.g_width=8", "model.d_width=8"]
    result = subprocess.run(
        [sys.executable, "-m", "dcgan.bench", "--sizes", "28", "--warmup", "1", "--batches", "2", "--rounds", "2",
         "--data-batches", "5", "--fid-images", "4", "--fid-eval-samples", "8", "--out", str(out), *tiny],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"DCGAN_DATA_DIR": str(data_dir), "DCGAN_FID_WEIGHTS": str(fid_weights), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    train, data, fid = records
    assert (train["bench"], data["bench"], fid["bench"]) == ("train", "data", "fid")
    for record in records:
        assert record.keys() >= ENVIRONMENT_KEYS and record["size"] == 28 and record["batch_size"] == 128
        assert record["device"].startswith("cpu") and record["dtype"] == "float32" and record["compile"] is False
    assert (train["g_width"], train["rounds"], len(train["project_rounds"]), len(train["plain_rounds"])) == (8, 2, 2, 2)
    assert train["project_images_per_s"] > 0 and train["plain_images_per_s"] > 0
    assert train["ratio"] == pytest.approx(train["project_images_per_s"] / train["plain_images_per_s"], abs=1e-3)
    assert data["images_per_s"] > 0
    assert fid["fid_features_images_per_s"] > 0 and fid["fid_features_torchmetrics_default_images_per_s"] > 0
    assert fid["fid_eval_num_samples"] == 8 and fid["fid_eval_s"] > 0
    assert "| 28 | 128 | 8/8 |" in result.stderr  # the README table


def test_bench_refuses_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dcgan.bench", "--batches", "0"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2 and "--batches must be positive" in result.stderr
