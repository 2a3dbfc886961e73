"""digit-recognizer tune: a tiny Optuna search end to end, its outputs, resuming, pruning, the space file, trials
run at once on a cluster, the time budget, and the refusal to continue a study made otherwise."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import socket
import sys
import threading
import tomllib
from pathlib import Path
from unittest.mock import create_autospec

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("optuna")

import optuna
from conftest import TINY_FLAGS, tiny

import digit_recognizer.train as train_module
import digit_recognizer.tune as tune_module
from digit_recognizer.cli import main
from digit_recognizer.cluster import RayCluster
from digit_recognizer.config import TrainConfig, method_config
from digit_recognizer.data import Digits, read_train, write_csv
from digit_recognizer.errors import TrainingDiverged
from digit_recognizer.execute import Executor, InProcess
from digit_recognizer.jobs import JobResult
from digit_recognizer.rundir import (
    BEST_COMMAND,
    BEST_CONFIG,
    SEARCH_HISTORY_FIGURE,
    SEARCH_IMPORTANCES_FIGURE,
    STUDY_FILE,
    TRIALS_TABLE,
)
from digit_recognizer.tune import STUDY_NAME, best_possible, tune
from digit_recognizer.tune_space import default_space, make_space, parse_space

SPACE = "[lr]\nlow = 0.01\nhigh = 0.3\nlog = true\n\n[label_smoothing]\nlow = 0.0\nhigh = 0.2\n"
# Tiny networks, one epoch: the search's settings, fixed by flags, are not searched.
TINY = [*TINY_FLAGS, "--batch-size", "32", "--quiet"]


def tune_args(data_dir: Path, out: Path, space: Path, trials: int = 2, model: str = "fast", folds: int = 2,
              tiny_flags: list[str] = TINY) -> list[str]:
    return ["tune", "--model", model, "--trials", str(trials), "--folds", str(folds), *tiny_flags,
            "--data-dir", str(data_dir), "--out", str(out), "--space", str(space)]


def study_trials(out: Path) -> list:
    """The trials of the study a search left in ``out``, as Optuna reads them back."""
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / STUDY_FILE}")
    return study.get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, small_data_dir) -> tuple[Path, Path]:
    """A finished search of 2 trials x 2 folds on 200 digits: its output folder and its space file."""
    folder = tmp_path_factory.mktemp("tune")
    space = folder / "space.toml"
    space.write_text(SPACE)
    assert main(tune_args(small_data_dir, folder / "out", space)) == 0
    return folder / "out", space


@pytest.fixture
def searched_copy(searched, tmp_path) -> tuple[Path, Path]:
    """A copy of the finished search, for a test to continue, overwrite or be refused on."""
    out, space = searched
    shutil.copytree(out, tmp_path / "out")
    return tmp_path / "out", space


def test_a_tiny_search_writes_every_output(searched):
    """Every output is written; trials.csv has one row per trial, trial 0 being the recipe itself; best.toml
    holds the flags' fixed settings and the best finished trial's searched ones, as `run --config` reads it."""
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
    """best_command.txt, run as written (with another --out), trains with best.toml's settings."""
    out, _ = searched
    command = shlex.split((out / BEST_COMMAND).read_text())
    assert command[:6] == ["digit-recognizer", "run", "--model", "fast", "--config", str(out / BEST_CONFIG)]
    assert main([*command[1:], "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "submission.csv").is_file()
    trained = json.loads((tmp_path / "run" / "run.json").read_text())["train"]
    assert trained["lr"] == tomllib.loads((out / BEST_CONFIG).read_text())["lr"]


def test_running_again_grows_the_study(searched_copy, small_data_dir, capsys):
    """The same command run again adds its trials to the study, keeping the earlier ones, and prints the command
    that trains the best settings."""
    again, space = searched_copy
    before = pd.read_csv(again / TRIALS_TABLE)
    assert main(tune_args(small_data_dir, again, space, trials=1)) == 0
    after = pd.read_csv(again / TRIALS_TABLE)
    assert list(after.number) == [0, 1, 2]
    assert after.lr[:2].tolist() == before.lr.tolist()
    assert capsys.readouterr().out.strip() == (again / BEST_COMMAND).read_text().strip()


# How a continued search differs from the one in the folder, and the difference the refusal names.
CHANGED = {
    "another model": ({"model": "cnn"}, "method 'fast' -> 'cnn'"),
    "another space": ({"space": "[lr]\nlow = 0.001\nhigh = 0.3\nlog = true\n"}, "lr {'low': 0.01"),
    "more folds": ({"folds": 3}, "folds 2 -> 3"),
    "other data": ({"data": "the next 200 embedded digits"}, "other data"),
    "another fixed setting": ({"tiny_flags": [*TINY, "--dense", "32"]}, "dense 16 -> 32"),
}


@pytest.mark.parametrize("change", list(CHANGED))
def test_a_study_is_not_continued_with_other_settings(change, searched_copy, small_data_dir, embedded, tmp_path,
                                                      capsys):
    """Continuing a search with another model, space, number of folds, data or fixed setting exits 2 naming the
    difference, and leaves the study as it was: its trials would not be comparable."""
    out, space = searched_copy
    changes, named = CHANGED[change]
    data_dir = small_data_dir
    if "data" in changes:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        write_csv(Digits(embedded[0].images[200:400], embedded[0].labels[200:400]), data_dir / "train.csv")
    if "space" in changes:
        space = tmp_path / "other-space.toml"
        space.write_text(changes["space"])
    args = {key: value for key, value in changes.items() if key in ("model", "folds", "tiny_flags")}
    before = (out / STUDY_FILE).read_bytes()
    assert main(tune_args(data_dir, out, space, trials=1, **args)) == 2
    err = capsys.readouterr().err
    assert "holds a run made with other settings" in err and named in err and err.count("\n") == 1, err
    assert (out / STUDY_FILE).read_bytes() == before and len(pd.read_csv(out / TRIALS_TABLE)) == 2


def test_overwrite_starts_a_new_study(searched_copy, small_data_dir, tmp_path):
    """With --overwrite, a search with another space clears the folder's study and starts a new one."""
    out, _ = searched_copy
    space = tmp_path / "other-space.toml"
    space.write_text("[lr]\nlow = 0.02\nhigh = 0.2\n")
    assert main([*tune_args(small_data_dir, out, space, trials=1), "--overwrite"]) == 0
    table = pd.read_csv(out / TRIALS_TABLE)
    assert list(table.number) == [0] and "label_smoothing" not in table.columns
    assert len(study_trials(out)) == 1
    assert json.loads((out / "run.json").read_text())["space"] == {"lr": {"low": 0.02, "high": 0.2, "log": False}}


class FakeClock:
    """Stands for the time module in tune.py: an hour passes with each network trained, and at no other time."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_the_time_budget_stops_starting_trials(small_data_dir, tmp_path, monkeypatch, capsys):
    """--timeout 3h, each fold taking an hour (on a fake clock): trial 0's two folds end at 2h, so trial 1
    starts; it ends at 3h or later, so no third trial starts of the 5 asked for, and stderr says why."""
    clock = FakeClock()
    real_fit = train_module.fit

    def one_hour(*args, **kwargs):
        clock.now += 3600
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(tune_module, "time", clock)
    monkeypatch.setattr(train_module, "fit", one_hour)
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    args = tune_args(small_data_dir, tmp_path / "out", space, trials=5, tiny_flags=TINY[:-1])  # not --quiet
    assert main([*args, "--timeout", "3h"]) == 0
    assert list(pd.read_csv(tmp_path / "out" / TRIALS_TABLE).number) == [0, 1]
    assert "time budget spent after 2 of 5 trials" in capsys.readouterr().err


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
    """A space file that cannot be searched exits 2 with one line naming the file, the setting and the fault,
    before anything is written."""
    path = tmp_path / "space.toml"
    path.write_text(space)
    assert main(["tune", "--space", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"digit-recognizer: error: {path}: ") and fault in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_space_file_narrows_and_flags_fix_settings(tmp_path):
    """A space file's table narrows a setting, an empty table takes the default range, a whole-number setting
    stays whole, and a setting fixed by a flag is not searched."""
    base = method_config("fast")
    space = parse_space({"filters": {"choices": [[16, 32, 64], [8, 16, 32]]}, "lr": {},
                         "epochs": {"low": 2, "high": 6}}, "fast", base)
    assert space["filters"].choices == ((16, 32, 64), (8, 16, 32))
    assert space["lr"] == default_space("fast", base)["lr"]  # an empty table: the default range
    assert (space["epochs"].low, space["epochs"].high) == (2, 6) and isinstance(space["epochs"].low, int)
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    assert list(make_space("fast", base, path, fixed={"lr"})) == ["label_smoothing"]  # a flag wins
    assert "rotation" not in make_space("fast", dataclasses.replace(base, augment=False), fixed={"augment"})


@pytest.mark.parametrize(("method", "widths"), [("fast", True), ("cnn", True), ("mlp", False)])
def test_every_default_space_can_train_at_its_extremes(method, widths):
    """Each network's default space holds the optimisation settings, its widths where it has any, and passes
    make_space's check that every extreme of every range can train."""
    space = make_space(method, method_config(method))
    assert {"lr", "weight_decay", "label_smoothing", "epochs", "batch_size"} <= set(space)
    assert ("filters" in space) == widths


def test_without_optuna_tune_exits_2_with_the_install_hint(monkeypatch, tmp_path, capsys):
    """Without Optuna installed, tune exits 2 with one line saying what to install."""
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna fails
    assert main(["tune", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'digit-recognizer[tune]'" in err and err.count("\n") == 1


def fake_executor(spec: type, scores: dict[str, float | Exception], before: dict | None = None,
                  after: dict | None = None):
    """An executor that trains nothing, made from ``spec``'s own interface (``create_autospec``: it breaks when
    the real one's changes, and has ``slots`` only if ``spec`` has). Each job scores ``scores[name]``, or raises
    it; ``before[name]()`` runs before that job's result is given, ``after[name]()`` once the caller has taken it
    and asked for the next. Returns the fake and the names of the jobs it gave a result for (or raised)."""
    executor = create_autospec(spec, instance=True)
    ran: list[str] = []

    def run(jobs, digits, test, run_dir, progress):
        for job in jobs:
            (before or {}).get(job.name, lambda: None)()
            ran.append(job.name)
            if isinstance(scores[job.name], Exception):
                raise scores[job.name]
            yield JobResult(job=job, estimator=None, history=None, accuracy=scores[job.name],
                            proba=np.full((len(job.scored_rows), 10), 0.1), proba_tta=None, test_proba=None,
                            seconds=1.0, predict_seconds=0.0, where="here", device="cpu")
            (after or {}).get(job.name, lambda: None)()

    executor.side_effect = run
    return executor, ran


def test_a_trial_that_cannot_beat_the_best_is_pruned_and_a_diverged_one_fails(small_data_dir, tmp_path):
    """In this process (one trial at a time): a trial whose mean could not beat the best even with perfect
    remaining folds stops after its first fold; a diverged one fails with its message; the best is the best
    finished trial."""
    assert best_possible(0.5, 1, 2) == 0.75
    train = read_train(small_data_dir / "train.csv")
    base = tiny(batch_size=32)
    executor, ran = fake_executor(Executor, {
        "trial0-fold0": 0.9, "trial0-fold1": 0.9, "trial1-fold0": 0.5, "trial1-fold1": 1.0,
        "trial2-fold0": TrainingDiverged("loss is nan"), "trial3-fold0": 0.95, "trial3-fold1": 0.97})
    summary = tune(train, tmp_path / "out", "fast", base, make_space("fast", base), trials=4, folds=2,
                   executor=executor, progress=False)
    # trial 1 stops after its first fold: (0.5 + 1) / 2 cannot beat 0.9; trial 3 could, and does
    assert ran == ["trial0-fold0", "trial0-fold1", "trial1-fold0", "trial2-fold0", "trial3-fold0", "trial3-fold1"]
    assert executor.call_count == 4  # one call per trial, its folds in turn
    table = pd.read_csv(tmp_path / "out" / TRIALS_TABLE)
    assert list(table.state) == ["complete", "pruned", "fail", "complete"]
    assert table.accuracy.round(4).tolist()[:2] == [0.9, 0.5] and table.accuracy[3] == pytest.approx(0.96)
    assert table.error[2] == "loss is nan"
    assert (summary["best_trial"], summary["complete"], summary["pruned"], summary["fail"]) == (3, 2, 1, 1)
    assert tomllib.loads((tmp_path / "out" / BEST_CONFIG).read_text())["lr"] == pytest.approx(table.lr[3], rel=1e-12)


def test_a_cluster_runs_trials_at_once_and_drops_a_pruned_trials_late_fold(small_data_dir, tmp_path, monkeypatch):
    """On a cluster of 4 slots (a fake RayCluster), 2 trials of 2 folds run at once: trial 1's folds run before
    trial 0 is finished. Trial 1 is pruned by its first fold (0.5: it cannot beat trial 0's 0.9), and its second
    fold, already given by the cluster, no longer counts; trial 2 diverges; trial 3 finishes at 0.96."""
    trial0_told, trial1_given = threading.Event(), threading.Event()
    real_tell = optuna.Study.tell

    def tell(study, trial, *args, **kwargs):
        frozen = real_tell(study, trial, *args, **kwargs)
        if getattr(trial, "number", trial) == 0:
            trial0_told.set()
            # One trial at a time, trial 1 could not have started yet: this would wait in vain.
            assert trial1_given.wait(10), "trial 1's folds did not run while trial 0 was under way"
        return frozen

    monkeypatch.setattr(optuna.Study, "tell", tell)
    executor, ran = fake_executor(
        RayCluster,
        {"trial0-fold0": 0.9, "trial0-fold1": 0.9, "trial1-fold0": 0.5, "trial1-fold1": 0.99,
         "trial2-fold0": TrainingDiverged("loss is nan"), "trial3-fold0": 0.95, "trial3-fold1": 0.97},
        # Trial 1's folds wait until trial 0 is the best finished trial, so that its first one is pruned; both
        # are given before the driver reads the first, so that the second arrives after the pruning.
        before={"trial1-fold0": lambda: trial0_told.wait(10)}, after={"trial1-fold1": trial1_given.set})
    executor.slots.return_value = 4
    train = read_train(small_data_dir / "train.csv")
    base = tiny(batch_size=32)
    summary = tune(train, tmp_path / "out", "fast", base, make_space("fast", base), trials=4, folds=2,
                   executor=executor, progress=False)
    assert sorted(ran) == ["trial0-fold0", "trial0-fold1", "trial1-fold0", "trial1-fold1", "trial2-fold0",
                           "trial3-fold0", "trial3-fold1"]
    table = pd.read_csv(tmp_path / "out" / TRIALS_TABLE)
    assert list(table.state) == ["complete", "pruned", "fail", "complete"]
    assert table.folds_done.tolist() == [2, 1, 0, 2] and table.accuracy[1] == 0.5  # trial 1's 0.99 dropped
    assert table.accuracy[3] == pytest.approx(0.96) and table.error[2] == "loss is nan"
    assert (summary["best_trial"], summary["complete"], summary["pruned"], summary["fail"]) == (3, 2, 1, 1)


def test_an_interrupted_trial_is_tried_again_keeping_its_finished_folds(small_data_dir, tmp_path):
    """A search interrupted after a trial's first fold marks that trial failed ("interrupted"); run again, it
    tries the same settings again and trains only the fold that had not finished."""
    train = read_train(small_data_dir / "train.csv")
    base = tiny(batch_size=32)
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
    summary = tune(train, tmp_path / "out", "fast", base, space, trials=1, folds=2, executor=executor,
                   progress=False)
    assert executor.ran == ["trial0-fold1"]  # fold 0 finished before the interruption
    table = pd.read_csv(tmp_path / "out" / TRIALS_TABLE)
    assert list(table.state) == ["fail", "complete"] and table.error[0] == "interrupted"
    assert table.lr[0] == pytest.approx(table.lr[1], rel=1e-12) and table.folds_done.tolist() == [1, 2]
    # The interrupted trial was the recipe itself: its retry keeps the mark, so the search can still say whether
    # anything beat the recipe.
    assert table.recipe.tolist() == [True, True]
    assert summary["recipe_accuracy"] == pytest.approx(table.accuracy[1])


@pytest.mark.slow
@pytest.mark.cluster
def test_a_tiny_search_on_a_ray_cluster(small_data_dir, tmp_path):
    """tune --cluster auto runs every fold as a Ray task (each fold's recorded place is a Ray node, not this
    process's host) and shuts Ray down at the end."""
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
    places = [fold["where"] for trial in study_trials(tmp_path / "out")
              for fold in trial.user_attrs["folds"].values()]
    assert len(places) == table.folds_done.sum() >= 3
    # A Ray task records its node ("<node id>@<ip>"); a job run in this process records the host name.
    assert all(re.fullmatch(r"[0-9a-f]{8}@[0-9.]+", place) for place in places), places
    assert socket.gethostname() not in places
