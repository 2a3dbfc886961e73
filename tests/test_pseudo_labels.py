"""Pseudo-labels: a second stage of 'run' / 'train' that also learns from the test images a finished first-stage run
is sure of. Through the command line: each job fits its training rows plus the test images its fold's teachers
label with confidence (their digit as label); the job of fold k learns only from the teacher's fold-k networks;
bad input is refused with one line and nothing written; the same command resumes and another threshold is other
settings; a threshold above every confidence uses no test image and still trains."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import DAMAGED_RUNS, TINY_FLAGS, one_error_line, snapshot

import digit_recognizer.execute as execute
import digit_recognizer.runs as runs
import digit_recognizer.train as training_loop
from digit_recognizer.cli import main
from digit_recognizer.data import Digits, write_csv
from digit_recognizer.jobs import Job
from digit_recognizer.loading import load_model
from digit_recognizer.methods import estimator_proba
from digit_recognizer.rundir import read_trained_records, read_trained_run

# Tiny networks on small batches without augmentation: two epochs reach about 94 % out of fold, with the most
# probable digit's probability spread below about 0.9 (label smoothing), so that a threshold of 0.6 takes most
# test images but not all.
SETTINGS = ["--preset", "fast", *TINY_FLAGS, "--epochs", "2", "--batch-size", "32", "--no-augment", "--quiet"]
FOLDS = ["--members", "1", "--folds", "2"]
THRESHOLD = 0.6




@dataclass
class Stage:
    """A second stage run through the command line: its directory, the jobs handed to train_job (in order) and
    the (training, monitored) digits the training loop fitted for each."""

    out: Path
    jobs: list[Job]
    fitted: list[tuple[Digits, Digits]]


def second_stage(out: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Stage:
    stage = Stage(out, [], [])
    real_train_job, real_fit = execute.train_job, training_loop.fit

    def spy_job(job, *args, **kwargs):
        stage.jobs.append(job)
        return real_train_job(job, *args, **kwargs)

    def spy_fit(method, cfg, train, val, *args, **kwargs):
        stage.fitted.append((train, val))
        return real_fit(method, cfg, train, val, *args, **kwargs)

    monkeypatch.setattr(execute, "train_job", spy_job)
    monkeypatch.setattr(training_loop, "fit", spy_fit)
    assert main([*argv, "--out", str(out)]) == 0
    return stage


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """The first stage: 1 tiny network x 2 folds on the embedded digits."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", "--out", str(out), *SETTINGS, *FOLDS]) == 0
    return out


@pytest.fixture(scope="module")
def stage(tmp_path_factory, teacher) -> Stage:
    """The second stage: 'run' with --pseudo-labels at THRESHOLD, the same folds."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        return second_stage(tmp_path_factory.mktemp("stage") / "run", [
            "run", *SETTINGS, *FOLDS, "--pseudo-labels", str(teacher), "--pseudo-threshold", str(THRESHOLD)],
            monkeypatch)


@pytest.fixture(scope="module")
def teacher_folds(teacher, embedded) -> list[np.ndarray]:
    """The rows each fold of the teacher was scored on (never trained on), fold by fold."""
    return [record.scored_rows for _, record in read_trained_records(read_trained_run(teacher, ""), embedded[0])]


def fold_proba(teacher: Path, k: int, images: np.ndarray) -> np.ndarray:
    """The probabilities of the teacher's fold-k network (its only member), loaded on its own."""
    return estimator_proba(load_model(teacher / "jobs" / f"member0-fold{k}"), images)


# --- (a) through the command line: the rows plus the chosen test images -----------------------------------------

def test_each_job_fits_its_rows_plus_the_test_images_its_teachers_are_sure_of(stage, teacher, teacher_folds,
                                                                              embedded):
    train, test = embedded
    metrics = json.loads((stage.out / "metrics.json").read_text())
    assert [job.name for job in stage.jobs] == ["member0-fold0", "member0-fold1"] and len(stage.fitted) == 2
    assert {key: metrics["pseudo_labels"][key] for key in ("threshold", "test_images")} == {
        "threshold": THRESHOLD, "test_images": len(test)}
    for k, (job, (fitted, _)) in enumerate(zip(stage.jobs, stage.fitted, strict=True)):
        proba = fold_proba(teacher, k, test.images)
        chosen = np.flatnonzero(proba.max(1) >= THRESHOLD)
        assert 0 < len(chosen) < len(test)  # the threshold chooses: neither none nor all
        np.testing.assert_array_equal(job.pseudo_labels.rows, chosen)
        np.testing.assert_array_equal(job.pseudo_labels.labels, proba[chosen].argmax(1))
        # What the training loop fitted: the job's training rows, then those test images with the teachers' digits.
        n = len(job.train_rows)
        assert len(fitted) == n + len(chosen)
        np.testing.assert_array_equal(fitted.images[:n].reshape(n, -1), train.images[job.train_rows].reshape(n, -1))
        np.testing.assert_array_equal(fitted.labels[:n], train.labels[job.train_rows])
        np.testing.assert_array_equal(fitted.images[n:].reshape(len(chosen), -1),
                                      test.images[chosen].reshape(len(chosen), -1))
        np.testing.assert_array_equal(fitted.labels[n:], proba[chosen].argmax(1))
        # The scored rows are the teacher's fold k, as without pseudo-labels; the records say what it learned from.
        np.testing.assert_array_equal(job.scored_rows, teacher_folds[k])
        summary = json.loads((stage.out / "jobs" / job.name / "job.json").read_text())
        assert summary["pseudo_labels"] == len(chosen) and summary["train_rows"] == n
        assert metrics["pseudo_labels"]["folds"][k] == {"fold": k, "used": len(chosen),
                                                        "teachers": [f"member0-fold{k}"]}
    what = json.loads((stage.out / "run.json").read_text())
    assert what["pseudo_labels"] == {"teacher": str(teacher.resolve()), "data": what["data"],
                                     "test_data": what["pseudo_labels"]["test_data"], "threshold": THRESHOLD}
    report = (stage.out / "report.html").read_text()
    assert "Pseudo-labelled test images" in report and f"{metrics['pseudo_labels']['folds'][1]['used']:,}" in report
    assert (stage.out / "submission.csv").is_file()


# --- (b) honesty: fold k's pseudo-labels come from fold k's teachers only ---------------------------------------

def test_the_job_of_fold_k_learns_only_from_the_teachers_of_fold_k(teacher, teacher_folds, embedded, tmp_path,
                                                                  monkeypatch):
    """Teachers of fold k that answer digit k for every image, sure of it: every member of fold k must learn every
    test image as a k (the mean over all teachers would be 0.5 and choose none; another fold's, the wrong digit)."""
    def fold_k_says_k(run, jobs, *images, device="cpu"):
        return [{job.name: np.tile(np.eye(10, dtype=np.float32)[int(job.name[-1])], (len(x), 1)) for job in jobs}
                for x in images]

    monkeypatch.setattr(runs, "network_probabilities", fold_k_says_k)
    stage = second_stage(tmp_path / "run", ["run", *SETTINGS, "--epochs", "1", "--members", "2", "--folds", "2",
                                            "--pseudo-labels", str(teacher), "--pseudo-threshold", "0.9"],
                         monkeypatch)
    assert [job.name for job in stage.jobs] == ["member0-fold0", "member0-fold1", "member1-fold0", "member1-fold1"]
    for job in stage.jobs:
        k = int(job.name[-1])
        assert job.pseudo_labels.teachers == (f"member0-fold{k}",)
        assert len(job.pseudo_labels) == len(embedded[1]) and (job.pseudo_labels.labels == k).all()
        np.testing.assert_array_equal(job.scored_rows, teacher_folds[k])
        assert not np.isin(job.train_rows, teacher_folds[k]).any()  # its training rows never include fold k
    for fitted, _ in stage.fitted:
        assert (fitted.labels[-len(embedded[1]):] == fitted.labels[-1]).all()


# --- (c) bad input: exit code 2, one line naming the file or flag, nothing written -------------------------------

@pytest.mark.parametrize("case", DAMAGED_RUNS)
def test_a_bad_teacher_is_named_and_nothing_is_written(case, teacher, tmp_path, capsys):
    name, fault, damage = DAMAGED_RUNS[case]
    run = Path(shutil.copytree(teacher, tmp_path / "teacher"))
    damage(run)
    before = snapshot(run)
    out = tmp_path / "out"
    assert main(["run", *SETTINGS, *FOLDS, "--pseudo-labels", str(run), "--out", str(out)]) == 2
    one_error_line(capsys, str(run / name) if name else str(run), fault)
    assert not out.exists() and snapshot(run) == before


REFUSED = {
    "other folds": (["--members", "1", "--folds", "3"], ["--pseudo-labels", "2 folds drawn with seed 2",
                                                         "3 folds", "--folds 2 --seed 2"]),
    "another seed": ([*FOLDS, "--seed", "7"], ["--pseudo-labels", "seed 7", "--folds 2 --seed 2"]),
    "threshold 0": ([*FOLDS, "--pseudo-threshold", "0"], ["--pseudo-threshold", "above 0 and below 1"]),
    "threshold 1": ([*FOLDS, "--pseudo-threshold", "1"], ["--pseudo-threshold", "above 0 and below 1"]),
    "threshold -0.5": ([*FOLDS, "--pseudo-threshold", "-0.5"], ["--pseudo-threshold"]),
    "threshold 1.5": ([*FOLDS, "--pseudo-threshold", "1.5"], ["--pseudo-threshold"]),
    "threshold nan": ([*FOLDS, "--pseudo-threshold", "nan"], ["--pseudo-threshold"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_teacher_of_other_folds_and_a_bad_threshold_are_refused(case, teacher, tmp_path, capsys):
    flags, fragments = REFUSED[case]
    before, out = snapshot(teacher), tmp_path / "out"
    assert main(["run", *SETTINGS, *flags, "--pseudo-labels", str(teacher), "--out", str(out)]) == 2
    one_error_line(capsys, *fragments)
    assert not out.exists() and snapshot(teacher) == before


def test_a_teacher_on_other_training_data_is_refused(teacher, small_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", *SETTINGS, *FOLDS, "--data-dir", str(small_data_dir), "--pseudo-labels", str(teacher),
                 "--out", str(out)]) == 2
    one_error_line(capsys, str(small_data_dir / "train.csv"), "not the training data", str(teacher))
    assert not out.exists()


def test_flags_that_cannot_work_together_are_refused(teacher, small_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    before = snapshot(teacher)
    assert main(["run", *SETTINGS, *FOLDS, "--pseudo-threshold", "0.9", "--out", str(out)]) == 2
    one_error_line(capsys, "--pseudo-threshold", "needs --pseudo-labels")
    assert main(["train", *SETTINGS, *FOLDS, "--train", str(small_data_dir / "train.csv"), "--pseudo-labels",
                 str(teacher), "--out", str(out)]) == 2
    one_error_line(capsys, "--pseudo-labels", "--test FILE")
    assert main(["train", *SETTINGS, *FOLDS, "--test", str(small_data_dir / "test.csv"), "--out", str(out)]) == 2
    one_error_line(capsys, "--test", "only with --pseudo-labels")
    assert main(["run", *SETTINGS, *FOLDS, "--pseudo-labels", str(teacher), "--out", str(teacher)]) == 2
    one_error_line(capsys, str(teacher), "the --pseudo-labels run itself")
    assert not out.exists() and snapshot(teacher) == before


# --- (d) resume: the same command trains nothing; other settings are refused -------------------------------------

def test_the_same_command_resumes_and_another_threshold_is_other_settings(stage, teacher, tmp_path, capsys,
                                                                          monkeypatch):
    out = Path(shutil.copytree(stage.out, tmp_path / "stage"))
    weights = {p: p.read_bytes() for p in out.rglob("model.safetensors")}
    assert len(weights) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a finished job was trained again")

    monkeypatch.setattr(training_loop, "fit", no_training)
    argv = ["run", *SETTINGS, *FOLDS, "--pseudo-labels", str(teacher), "--out", str(out)]
    assert main([*argv, "--pseudo-threshold", str(THRESHOLD)]) == 0
    assert {p: p.read_bytes() for p in out.rglob("model.safetensors")} == weights
    capsys.readouterr()
    before = snapshot(out)
    assert main([*argv, "--pseudo-threshold", "0.7"]) == 2
    one_error_line(capsys, str(out), "other settings", f"threshold {THRESHOLD} -> 0.7")
    # Without the flag, the threshold is 0.99 less 0.9 x the teacher's label smoothing (0.1): 0.9, not 0.99, which
    # a network trained with label smoothing never reaches.
    assert read_trained_run(teacher, "").cfg.label_smoothing == 0.1
    assert main(argv) == 2
    assert "-> 0.99" not in one_error_line(capsys, str(out), "other settings", f"threshold {THRESHOLD} -> 0.9")
    assert main(["run", *SETTINGS, *FOLDS, "--out", str(out)]) == 2  # the same run without --pseudo-labels
    one_error_line(capsys, str(out), "other settings", "other pseudo_labels")
    assert snapshot(out) == before

    # A finished job whose job.json counts other test images than the job now has is named, not taken as it is.
    summary = out / "jobs" / "member0-fold1" / "job.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "pseudo_labels": 1}))
    assert main([*argv, "--pseudo-threshold", str(THRESHOLD)]) == 2
    one_error_line(capsys, str(summary), "'pseudo_labels' is 1")


def test_a_second_stage_is_a_finished_run_to_its_readers_and_a_first_stage_records_nothing_new(stage, teacher,
                                                                                               embedded):
    """audit and distill read a second stage back like any run (its jobs planned without the test images); a run
    without pseudo-labels writes run.json and job.json as before, so that older runs still resume."""
    records = read_trained_records(read_trained_run(stage.out, ""), embedded[0])
    assert [job.name for job, _ in records] == ["member0-fold0", "member0-fold1"]
    assert "pseudo_labels" not in json.loads((teacher / "run.json").read_text())
    assert "pseudo_labels" not in json.loads((teacher / "jobs" / "member0-fold0" / "job.json").read_text())


# --- (e) a threshold above every confidence: no test image, and the run still trains ------------------------------

def test_a_threshold_above_every_confidence_uses_no_test_image_and_still_trains(teacher, embedded, tmp_path,
                                                                               capsys):
    test_csv = tmp_path / "test.csv"
    write_csv(embedded[1], test_csv)
    threshold = 0.999
    assert max(fold_proba(teacher, k, embedded[1].images).max() for k in (0, 1)) < threshold  # the premise
    out = tmp_path / "run"
    assert main(["train", *SETTINGS, "--epochs", "1", *FOLDS, "--pseudo-labels", str(teacher), "--pseudo-threshold",
                 str(threshold), "--test", str(test_csv), "--out", str(out)]) == 0
    assert "warning: no test image reached --pseudo-threshold 0.999" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [entry["used"] for entry in metrics["pseudo_labels"]["folds"]] == [0, 0]
    for k in (0, 1):
        assert json.loads((out / "jobs" / f"member0-fold{k}" / "job.json").read_text())["pseudo_labels"] == 0
    assert metrics["ensemble_accuracy"] > 0.5  # it trained on its rows
