"""Hydra multirun sweeps: one folder and one metrics.json per job, failed jobs kept apart, and
the summary table sorted by FID."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dcgan.errors import UserInputError
from tests.helpers import CONF, REPO, check, run_script
from tools.sweep import COLUMNS, summarize
from tools.sweep import main as summary_main


@pytest.mark.slow
def test_two_job_sweep_with_fid(tmp_path: Path, data_dir: Path, fid_weights: Path) -> None:
    sweep = tmp_path / "sweep"
    result = check(
        run_script(
            "train.py", "-m", "experiment=smoke", "optimizer=adam,ttur", "eval.final_split=null",
            f"hydra.sweep.dir={sweep}",
            env={"DCGAN_DATA_DIR": str(data_dir)},
        )
    )  # fmt: skip
    assert "Launching 2 jobs locally" in result.stdout + result.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    # named by their overrides
    assert jobs == ["0_eval.final_split=null,optimizer=adam", "1_eval.final_split=null,optimizer=ttur"]
    for job, optimizer in zip(jobs, ("adam", "ttur"), strict=True):
        record = json.loads((sweep / job / "metrics.json").read_text())
        assert record["status"] == "completed" and record["experiment"] == "smoke"
        assert record["overrides"] == ["experiment=smoke", f"optimizer={optimizer}", "eval.final_split=null"]
        assert (record["epochs"], record["batches"]) == (2, 10)
        assert 0 < record["fid_best"] <= record["fid"]
        assert record["objective"] == pytest.approx(record["fid_best"])  # what a sweeper minimizes
        assert record["best_epoch"] in (1, 2) and record["fid_num_samples"] == 16
        assert any((sweep / job / "tensorboard").glob("events.out.tfevents.*"))
    rows = summarize(sweep)
    assert sorted(r["job"] for r in rows) == jobs
    assert [r["fid_best"] for r in rows] == sorted(r["fid_best"] for r in rows)
    assert all(1 <= r["classes_covered"] <= 10 and r["fid_lenet"] > 0 for r in rows)  # the classifier's columns
    assert all(0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 for r in rows)
    assert summary_main([str(sweep)]) == 0
    with (sweep / "summary.csv").open() as f:
        assert [r["job"] for r in csv.DictReader(f)] == [r["job"] for r in rows]
    assert (sweep / "summary.md").read_text().count("| completed |") == 2


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(tmp_path: Path, data_dir: Path) -> None:
    # The default sweep folder, multirun/<experiment>/<date>_<time>, under the working directory.
    check(
        run_script(
            "train.py", "-m", "experiment=smoke", "eval.fid=false", "optimizer.lr_d=-1,2e-4",
            env={"DCGAN_DATA_DIR": str(data_dir)}, cwd=tmp_path,
        )
    )  # fmt: skip
    [sweep] = (tmp_path / "multirun" / "smoke").iterdir()
    rows = summarize(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [
        ("1_eval.fid=False,optimizer.lr_d=0.0002", "completed"),
        ("0_eval.fid=False,optimizer.lr_d=-1", "failed"),  # failed jobs last
    ]
    assert "optimizer.discriminator.lr=-1 must be > 0" in rows[1]["error"]
    assert rows[0]["fid_best"] is None and rows[0]["epochs"] == 2


def test_summary_of_jobs_without_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Job 2's override has a path in it, which nests its folder.
    jobs = {"0_x": "model.g_width=8", "1_x": "model.g_width=16", "2_a=/b/c": "model.g_stem=dense"}
    for job, override in jobs.items():
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- {override}\n")
    record = {"status": "completed", "fid_best": 12.5, "fid": 13.0, "best_epoch": 4, "epochs": 5, "wall_s": 60.0}
    record["metrics"] = {"val/classes_covered": 9.0, "val/class_kl": 0.125, "val/fid_lenet": 3.5}
    (tmp_path / "1_x" / "metrics.json").write_text(json.dumps(record))
    failed = {"status": "failed", "error": "RuntimeError: CUDA error:\nan illegal | memory access", "wall_s": 3.0}
    (tmp_path / "2_a=" / "b" / "c" / "metrics.json").write_text(json.dumps(failed))
    rows = summarize(tmp_path)
    assert [(r["job"], r["status"], r["overrides"]) for r in rows] == [
        ("1_x", "completed", "model.g_width=16"),
        ("0_x", "no result", "model.g_width=8"),  # killed, or still running
        ("2_a=/b/c", "failed", "model.g_stem=dense"),
    ]
    assert summary_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        "| 1_x | completed | 12.50 | 4 | 13.00 |  |  | 9.00 | 0.12 |  | 3.50 | 5 | 60.00 | model.g_width=16 |  |" in out
    )
    error = "RuntimeError: CUDA error: an illegal \\| memory access"  # one line, | escaped
    assert f"| 2_a=/b/c | failed |  |  |  |  |  |  |  |  |  |  | 3.00 | model.g_stem=dense | {error} |" in out
    assert "3 jobs, 2 failed or unfinished" in out


@pytest.mark.slow
def test_summary_of_a_folder_that_is_not_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserInputError, match="holds no job folders"):
        summarize(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        summary_main([str(tmp_path / "nope")])
    assert exit_.value.code == 2
    assert "error: sweep folder" in capsys.readouterr().err
    # the command as the docs give it
    result = run_script("tools/sweep.py", str(tmp_path / "nope"))
    assert result.returncode == 2 and result.stderr == f"error: sweep folder {tmp_path / 'nope'} does not exist\n"


def test_ready_sweep_experiment_composes(compose_cfg: Callable[..., DictConfig]) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=sweep_mnist28"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert dict(cfg.hydra.sweeper.params) == {"optimizer": "adam,ttur", "dataset.batch_size": "64,128"}
    assert cfg.trainer.max_epochs == 5 and cfg.dataset.name == "mnist"


@pytest.mark.slow
def test_optuna_search_continues_from_its_database(tmp_path: Path, data_dir: Path, fid_weights: Path) -> None:
    """A 3-trial search whose driver stopped after trial 2 (a launch of 2 trials stands for it),
    started again with the 3-trial command, runs only the third."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the sweep extra")
    import optuna

    sweep = tmp_path / "optuna"

    def launch(n_trials: int) -> str:
        result = run_script(
            "train.py", "hparams_search=optuna_fid", "experiment=smoke", f"hydra.sweeper.n_trials={n_trials}",
            "trainer.max_epochs=1", "eval.classifier=false", "eval.final_split=null", f"hydra.sweep.dir={sweep}",
            env={"DCGAN_DATA_DIR": str(data_dir)},
        )  # fmt: skip
        return check(result).stdout + result.stderr

    first = launch(2)
    assert "existing study" not in first
    assert "Study 'dcgan_fid' holds 2 ended trials: running 1 more" in launch(3)
    study = optuna.load_study(study_name="dcgan_fid", storage=f"sqlite:///{sweep}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert len({str(t.params) for t in study.trials}) == 3  # the continued launch drew new parameters
    assert sorted(p.name.split("_")[0] for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    rows = summarize(sweep)
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == pytest.approx(rows[0]["fid_best"])  # the lowest of the trials
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(r["fid_best"] for r in rows))
    assert [r["status"] for r in rows] == ["completed"] * 3
    assert set(results.best_params) == {
        "optimizer.lr_g", "optimizer.lr_d", "optimizer.beta1", "optimizer.beta2", "model.real_label"
    }  # fmt: skip
    # The seeded sampler: the trial's parameters are the ones its job ran with.
    best_job = sweep / rows[0]["job"]
    assert (
        f"optimizer.lr_g={results.best_params['optimizer.lr_g']}"
        in (best_job / ".hydra" / "overrides.yaml").read_text()
    )


@pytest.mark.slow
def test_slurm_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra")
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    # One SLURM task per GPU on each node: what Lightning's SLURM environment expects.
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    result = check(run_script("train.py", *overrides, "--cfg", "hydra"))
    assert "SlurmLauncher" in result.stdout


def test_a_trial_left_running_by_a_stopped_driver_is_not_counted(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna", reason="needs the sweep extra")
    from dcgan.search import finished, stored_trials

    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert stored_trials(storage, "s") == [] and stored_trials(None, "s") == []
    study = optuna.create_study(study_name="s", storage=storage)
    for value in (1.0, float("inf")):
        trial = study.ask()
        study.tell(trial, value)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.ask()  # the trial a killed driver was running: it never ends
    trials = stored_trials(storage, "s")
    assert len(trials) == 4 and finished(trials) == 3


def test_the_docs_show_the_columns_the_summary_prints() -> None:
    headers = [
        line
        for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]
        for line in doc.read_text().splitlines()
        if line.startswith("| job | status |")
    ]
    assert headers, "no sweep table in the docs"
    assert all(line == "| " + " | ".join(COLUMNS) + " |" for line in headers), headers
