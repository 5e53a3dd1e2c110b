"""tools/time_to_fid.py: a recipe's training time to a FID, as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dcgan.report import read_final_fid
from tools import time_to_fid
from tools.time_to_fid import main, score


@pytest.mark.slow
def test_records_a_run_from_training_to_the_fids_it_reached(
    tmp_path: Path,
    data_dir: Path,
    fid_weights: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scored: list[str] = []

    def counting_score(checkpoint: Path, *args: Any) -> dict[str, Any]:
        scored.append(checkpoint.name)
        return score(checkpoint, *args)

    monkeypatch.setattr(time_to_fid, "score", counting_score)
    out = tmp_path / "ttf.jsonl"
    argv = ["--run-dir", str(tmp_path / "run"), "--fid-epochs", "1", "--fid-samples", "16"]
    argv += ["--reference-samples", "64", "--targets", "1000,1", "--out", str(out)]
    settings = ["experiment=smoke", "trainer=cpu", "trainer.precision=32-true", f"paths.data_dir={data_dir}"]
    assert main([*argv, *settings]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert capsys.readouterr().out.splitlines() == out.read_text().splitlines()
    assert [r["record"] for r in records] == ["run", "epoch", "epoch", "fid", "fid", "reached", "reached"]
    run, first, second, fid_1, fid_2, loose, tight = records
    assert run["device"].startswith("cpu: ") and run["precision"] == "32-true" and run["dataset"] == "mnist"
    assert isinstance(run["threads"], int) and run["threads"] >= 1
    assert run["status"] == "completed" and "experiment=smoke" in run["overrides"]
    # experiment=smoke: 5 batches of 32 per epoch; the classifier's fid_lenet after each epoch
    assert (first["epoch"], first["images"], second["images"]) == (1, 160, 320)
    assert 0 < first["train_s"] < second["train_s"] and first["train_s"] <= first["wall_s"] < second["wall_s"]
    assert first["fid_lenet"] > 0 and second["fid_lenet"] > 0
    # epoch 1's kept checkpoint and the last one, each at the training time it had; the run
    # itself scored best.ckpt the same way (smoke: 16 generated vs 64 test images), so that
    # epoch is taken from its fid.jsonl, not scored again
    assert (fid_1["epoch"], fid_1["train_s"]) == (1, first["train_s"])
    assert (fid_2["epoch"], fid_2["train_s"]) == (2, second["train_s"])
    assert (fid_2["num_samples"], fid_2["num_reference"], fid_2["reference"]) == (16, 64, "test")
    assert fid_1["fid"] != fid_2["fid"]
    final = read_final_fid(tmp_path / "run")
    assert final is not None
    names = {1: "epoch_0001.ckpt", 2: "last.ckpt"} | {final["epoch"]: "best.ckpt"}
    assert [fid_1["checkpoint"], fid_2["checkpoint"]] == [names[1], names[2]]
    assert len(scored) == 1 and scored[0] == names[3 - final["epoch"]]
    by_epoch = {1: fid_1, 2: fid_2}
    rescored = score(tmp_path / "run" / "checkpoints" / "best.ckpt", 16, 64)
    assert by_epoch[final["epoch"]]["fid"] == round(rescored["fid"], 3) == round(final["fid"], 3)
    assert loose == {"record": "reached", "fid": 1000.0, "train_s": first["train_s"]}  # a smoke FID is < 1000
    assert tight == {"record": "reached", "fid": 1.0, "train_s": None}
    # the curves of the records, as docs/performance.md shows them
    assert main(["--plot", str(tmp_path / "ttf.png"), str(out)]) == 0
    with Image.open(tmp_path / "ttf.png") as picture:
        assert picture.format == "PNG" and picture.width > 500
    capsys.readouterr()
    # the run folder alone gives the same records (scored again: FID is deterministic)
    assert main(["--run", str(tmp_path / "run"), "--fid-samples", "16", "--reference-samples", "64"]) == 0
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r for r in again if r["record"] == "fid"] == [fid_1, fid_2]


def test_refuses_what_it_cannot_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--run", str(tmp_path)])
    assert info.value.code == 2
    assert (
        capsys.readouterr().err == f"error: --run {tmp_path} is not a run folder of train.py (no .hydra/config.yaml)\n"
    )
    with pytest.raises(SystemExit):
        main(["--run", str(tmp_path), "experiment=smoke"])
    assert "give no overrides or --fid-epochs with it" in capsys.readouterr().err


def test_overrides_may_stand_between_options() -> None:
    args = time_to_fid.parse_args(
        ["--out", "x.jsonl", "experiment=fashion28", "--run-dir", "outputs/f28", "eval.fid=false"]
    )
    assert args.overrides == ["experiment=fashion28", "eval.fid=false"]
    assert (args.out, args.run_dir) == (Path("x.jsonl"), Path("outputs/f28"))
