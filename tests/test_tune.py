"""digit-recognizer tune: a tiny Optuna search end to end, its outputs, resuming, pruning, the space file."""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("optuna")

from digit_recognizer.cli import main
from digit_recognizer.config import TrainConfig, method_config
from digit_recognizer.data import Digits, read_train
from digit_recognizer.errors import TrainingDiverged
from digit_recognizer.jobs import InProcess, Job, JobResult
from digit_recognizer.rundir import (
    BEST_COMMAND,
    BEST_CONFIG,
    SEARCH_HISTORY_FIGURE,
    SEARCH_IMPORTANCES_FIGURE,
    STUDY_FILE,
    TRIALS_TABLE,
)
from digit_recognizer.tune import best_possible, default_space, make_space, parse_space, tune

SPACE = "[lr]\nlow = 0.01\nhigh = 0.3\nlog = true\n\n[label_smoothing]\nlow = 0.0\nhigh = 0.2\n"
# Tiny networks, one epoch: the search's settings, fixed by flags, are not searched.
TINY = ["--epochs", "1", "--filters", "4,8,8", "--dense", "16", "--batch-size", "32", "--quiet"]


def tune_args(data_dir: Path, out: Path, space: Path, trials: int = 2, model: str = "fast") -> list[str]:
    return ["tune", "--model", model, "--trials", str(trials), "--folds", "2", *TINY, "--data-dir", str(data_dir),
            "--out", str(out), "--space", str(space)]


def tiny_config() -> TrainConfig:
    return dataclasses.replace(method_config("fast"), epochs=1, filters=(4, 8, 8), dense=16, batch_size=32)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, small_data_dir) -> tuple[Path, Path]:
    """A finished search of 2 trials x 2 folds on 200 digits: its output folder and its space file."""
    folder = tmp_path_factory.mktemp("tune")
    space = folder / "space.toml"
    space.write_text(SPACE)
    assert main(tune_args(small_data_dir, folder / "out", space)) == 0
    return folder / "out", space


def test_a_tiny_search_writes_every_output(searched):
    out, _ = searched
    for name in (STUDY_FILE, TRIALS_TABLE, BEST_CONFIG, BEST_COMMAND, SEARCH_HISTORY_FIGURE,
                 SEARCH_IMPORTANCES_FIGURE):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / TRIALS_TABLE)
    assert list(table.columns) == ["number", "recipe", "state", "accuracy", "seconds", "folds_done", "lr",
                                   "label_smoothing", "error"]
    assert list(table.number) == [0, 1]
    recipe = method_config("fast")  # trial 0 is the recipe itself: the baseline every other trial must beat
    assert list(table.recipe) == [True, False]
    assert (table.lr[0], table.label_smoothing[0]) == pytest.approx((recipe.lr, recipe.label_smoothing))
    assert set(table.state) <= {"complete", "pruned"} and table.state[0] == "complete"
    assert table.lr.between(0.01, 0.3).all() and table.label_smoothing.between(0, 0.2).all()
    best = TrainConfig.from_dict(tomllib.loads((out / BEST_CONFIG).read_text()))  # as `run --config` reads it
    best.validate()
    assert (best.epochs, best.filters, best.dense) == (1, (4, 8, 8), 16)  # fixed by flags
    finished = table[table.state == "complete"]
    winner = finished.loc[finished.accuracy.idxmax()]  # the first of equals, as Optuna picks
    assert (best.lr, best.label_smoothing) == pytest.approx((winner.lr, winner.label_smoothing), rel=1e-12)
    assert json.loads((out / "run.json").read_text())["kind"] == "tune"
    assert not (out / "jobs").exists()  # no checkpoint left behind


def test_best_toml_trains_with_the_written_command(searched, tmp_path):
    out, _ = searched
    command = shlex.split((out / BEST_COMMAND).read_text())
    assert command[:6] == ["digit-recognizer", "run", "--model", "fast", "--config", str(out / BEST_CONFIG)]
    assert main([*command[1:], "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "submission.csv").is_file()
    trained = json.loads((tmp_path / "run" / "run.json").read_text())["train"]
    assert trained["lr"] == tomllib.loads((out / BEST_CONFIG).read_text())["lr"]


def test_running_again_grows_the_study_and_another_model_is_refused(searched, small_data_dir, tmp_path, capsys):
    out, space = searched
    again = tmp_path / "out"
    shutil.copytree(out, again)
    before = pd.read_csv(again / TRIALS_TABLE)
    assert main(tune_args(small_data_dir, again, space, trials=1)) == 0
    after = pd.read_csv(again / TRIALS_TABLE)
    assert list(after.number) == [0, 1, 2]
    assert after.lr[:2].tolist() == before.lr.tolist()
    assert capsys.readouterr().out.strip() == (again / BEST_COMMAND).read_text().strip()

    assert main(tune_args(small_data_dir, again, space, trials=1, model="cnn")) == 2
    assert "holds a run made with other settings" in capsys.readouterr().err
    assert len(pd.read_csv(again / TRIALS_TABLE)) == 3


@pytest.mark.parametrize(("space", "fault"), [
    ("[learning_rate]\nlow = 0.01\nhigh = 0.1\n", "unknown setting 'learning_rate'"),
    ("[lr]\nlow = 0.3\nhigh = 0.01\n", "lr: low (0.3) must be below high (0.01)"),
    ("[lr]\nlow = 0.0\nhigh = 0.1\nlog = true\n", "lr: log = true needs low above 0"),
    ("[lr]\nlow = 0.01\n", "lr: give both low and high"),
    ("[lr]\nlow = 0.01\nhigh = 0.1\nstep = 0.01\n", "lr: unknown key 'step'"),
    ("[epochs]\nlow = 0\nhigh = 3\n", "epochs: 0 cannot work: epochs must be in 1 .. 10000"),
    ("[epochs]\nlow = 1.5\nhigh = 3\n", "epochs: low must be a whole number"),
    ("[batch_size]\nchoices = []\n", "batch_size: choices must be a non-empty list"),
    ("[filters]\nchoices = [[4, 8]]\n", "filters: 4,8 cannot work"),
    ("[dropout]\nchoices = [[0.1, 0.1, 0.1, 0.1]]\n", "dropout: the fast network does not use this setting"),
    ("[seed]\nlow = 1\nhigh = 5\n", "seed: cannot be searched"),
    ("[lr\n", "cannot read the search space"),
])
def test_an_invalid_space_file_exits_2_naming_the_setting(space, fault, tmp_path, capsys):
    path = tmp_path / "space.toml"
    path.write_text(space)
    assert main(["tune", "--space", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"digit-recognizer: error: {path}: ") and fault in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_space_file_narrows_and_flags_fix_settings(tmp_path):
    base = method_config("fast")
    space = parse_space({"filters": {"choices": [[16, 32, 64], [8, 16, 32]]}, "lr": {}, "epochs": {"low": 2,
                                                                                                    "high": 6}},
                        "fast", base)
    assert space["filters"].choices == ((16, 32, 64), (8, 16, 32))
    assert space["lr"] == default_space("fast", base)["lr"]  # an empty table: the default range
    assert (space["epochs"].low, space["epochs"].high) == (2, 6) and isinstance(space["epochs"].low, int)
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    assert list(make_space("fast", base, path, fixed={"lr"})) == ["label_smoothing"]  # a flag wins
    for method in ("fast", "cnn", "mlp"):  # every default space can train at its extremes
        assert {"lr", "weight_decay", "label_smoothing", "epochs", "batch_size"} <= set(make_space(method,
                                                                                                  method_config(method)))
    assert "filters" in make_space("cnn", method_config("cnn")) and "filters" not in make_space("mlp",
                                                                                              method_config("mlp"))
    assert "rotation" not in make_space("fast", dataclasses.replace(base, augment=False), fixed={"augment"})


def test_without_optuna_tune_exits_2_with_the_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna fails
    assert main(["tune", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'digit-recognizer[tune]'" in err and err.count("\n") == 1


class Scripted:
    """An executor that trains nothing: each job scores the next accuracy of a script (or raises it)."""

    def __init__(self, script: list) -> None:
        self.script, self.ran = iter(script), []

    def __call__(self, jobs: list[Job], digits: Digits, test: Digits | None, run_dir, progress: bool):
        for job in jobs:
            self.ran.append(job.name)
            outcome = next(self.script)
            if isinstance(outcome, Exception):
                raise outcome
            yield JobResult(job, None, None, outcome, np.full((len(job.scored_rows), 10), 0.1), None, None, 1.0,
                            0.0, "here", "cpu")

    def describe(self) -> dict:
        return {"engine": "scripted"}


def test_a_trial_that_cannot_beat_the_best_is_pruned_and_a_diverged_one_fails(small_data_dir, tmp_path):
    assert best_possible(0.5, 1, 2) == 0.75
    train = read_train(small_data_dir / "train.csv")
    base = tiny_config()
    executor = Scripted([0.9, 0.9, 0.5, TrainingDiverged("loss is nan"), 0.95, 0.97])
    summary = tune(train, tmp_path / "out", "fast", base, make_space("fast", base), trials=4, folds=2,
                   executor=executor, progress=False)
    # trial 1 stops after its first fold: (0.5 + 1) / 2 cannot beat 0.9; trial 3 could, and does
    assert executor.ran == ["trial0-fold0", "trial0-fold1", "trial1-fold0", "trial2-fold0", "trial3-fold0",
                            "trial3-fold1"]
    table = pd.read_csv(tmp_path / "out" / TRIALS_TABLE)
    assert list(table.state) == ["complete", "pruned", "fail", "complete"]
    assert table.accuracy.round(4).tolist()[:2] == [0.9, 0.5] and table.accuracy[3] == pytest.approx(0.96)
    assert table.error[2] == "loss is nan"
    assert (summary["best_trial"], summary["complete"], summary["pruned"], summary["fail"]) == (3, 2, 1, 1)
    assert tomllib.loads((tmp_path / "out" / BEST_CONFIG).read_text())["lr"] == pytest.approx(table.lr[3], rel=1e-12)


class ScriptedCluster:
    """Like a Ray cluster of 4 slots to :func:`tune` (two trials of two folds at once), training nothing: each
    job scores 0.9 unless ``diverging`` names it."""

    class ray:  # stands for the ray module
        @staticmethod
        def cluster_resources() -> dict:
            return {"CPU": 4.0}

    cpus_per_job, gpus_per_job = 1, 0

    def __init__(self, diverging: str) -> None:
        self.diverging = diverging

    def __call__(self, jobs: list[Job], digits: Digits, test: Digits | None, run_dir, progress: bool):
        for job in jobs:
            if job.name == self.diverging:
                raise TrainingDiverged("loss is nan")
            yield JobResult(job, None, None, 0.9, np.full((len(job.scored_rows), 10), 0.1), None, None, 1.0, 0.0,
                            "here", "cpu")

    def describe(self) -> dict:
        return {"engine": "scripted cluster"}


def test_trials_at_once_each_told_as_its_folds_finish(small_data_dir, tmp_path):
    train = read_train(small_data_dir / "train.csv")
    base = tiny_config()
    summary = tune(train, tmp_path / "out", "fast", base, make_space("fast", base), trials=4, folds=2,
                   executor=ScriptedCluster(diverging="trial2-fold0"), progress=False)
    table = pd.read_csv(tmp_path / "out" / TRIALS_TABLE)
    assert list(table.state) == ["complete", "complete", "fail", "complete"]
    assert (summary["complete"], summary["fail"]) == (3, 1)


def test_an_interrupted_trial_is_tried_again_keeping_its_finished_folds(small_data_dir, tmp_path):
    train = read_train(small_data_dir / "train.csv")
    base = tiny_config()
    space = make_space("fast", base, fixed={"epochs", "filters", "dense", "batch_size"})

    class StopsAfterOneFold(InProcess):
        def __call__(self, jobs, digits, test, run_dir, progress):
            yield next(iter(super().__call__(jobs, digits, test, run_dir, progress)))
            raise KeyboardInterrupt

    class Recording(InProcess):
        def __init__(self, device: str) -> None:
            super().__init__(device)
            self.ran: list[str] = []

        def __call__(self, jobs, digits, test, run_dir, progress):
            self.ran += [job.name for job in jobs]
            yield from super().__call__(jobs, digits, test, run_dir, progress)

    with pytest.raises(KeyboardInterrupt):
        tune(train, tmp_path / "out", "fast", base, space, trials=1, folds=2, executor=StopsAfterOneFold("cpu"),
             progress=False)
    executor = Recording("cpu")
    tune(train, tmp_path / "out", "fast", base, space, trials=1, folds=2, executor=executor, progress=False)
    assert executor.ran == ["trial0-fold1"]  # fold 0 finished before the interruption
    table = pd.read_csv(tmp_path / "out" / TRIALS_TABLE)
    assert list(table.state) == ["fail", "complete"] and table.error[0] == "interrupted"
    assert table.lr[0] == pytest.approx(table.lr[1], rel=1e-12) and table.folds_done.tolist() == [1, 2]


def test_a_tiny_search_on_a_ray_cluster(small_data_dir, tmp_path):
    ray = pytest.importorskip("ray")
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    # Half a core per job: two trials' folds at once on two cores.
    args = [*tune_args(small_data_dir, tmp_path / "out", space), "--cluster", "auto", "--cpus-per-job", "0.5"]
    assert main(args) == 0
    assert not ray.is_initialized()
    table = pd.read_csv(tmp_path / "out" / TRIALS_TABLE)
    assert list(table.number) == [0, 1] and (table.folds_done[table.state == "complete"] == 2).all()
    assert (tmp_path / "out" / BEST_CONFIG).is_file()
