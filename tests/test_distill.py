"""Distillation: the soft-target loss, a tiny ensemble distilled through the command line into a run that predict
and export take, the student agreeing with its teachers, the honesty of the fold students (their rows and their
teachers), bad input refused with nothing written, and a rerun that resumes instead of training again."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DAMAGED_RUNS, TINY_FLAGS, one_error_line, snapshot, tiny

import digit_recognizer.distill as distill_module
import digit_recognizer.train as training_loop
from digit_recognizer.cli import main
from digit_recognizer.data import Digits, load_embedded, write_csv
from digit_recognizer.distill import TeacherProba, plan_students, student_targets
from digit_recognizer.loading import load_model
from digit_recognizer.methods import estimator_proba
from digit_recognizer.rundir import read_trained_records, read_trained_run

# Tiny networks on small batches without augmentation: two epochs reach about 90 % (as the audit's tests measure).
SETTINGS = [*TINY_FLAGS, "--epochs", "2", "--batch-size", "32", "--no-augment"]  # the last --epochs wins
TEACHER_FLAGS = ["--preset", "fast", *SETTINGS, "--members", "2", "--folds", "2", "--quiet"]
STUDENT_FLAGS = [*SETTINGS, "--quiet"]




@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A finished ensemble of 2 tiny networks x 2 folds on the embedded digits, through the command line."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", "--out", str(out), *TEACHER_FLAGS]) == 0
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory, teacher) -> Path:
    out = tmp_path_factory.mktemp("student") / "run"
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), *STUDENT_FLAGS]) == 0
    return out


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("test") / "test.csv"
    write_csv(load_embedded()[1], path)
    return path


# --- (a) the soft-target loss ----------------------------------------------------------------------------------

def test_soft_targets_at_temperature_1_are_the_hard_label_loss():
    torch.manual_seed(0)
    logits, labels = torch.randn(64, 10) * 3, torch.randint(0, 10, (64,))
    onehot = F.one_hot(labels, 10).float()
    hard = training_loop.batch_loss(logits, labels)
    assert torch.allclose(training_loop.batch_loss(logits, onehot, temperature=1.0), hard, atol=1e-6)
    assert torch.allclose(hard, F.cross_entropy(logits, labels))


@pytest.mark.parametrize("temperature", [0.5, 2.0, 4.0])
def test_the_soft_loss_is_hintons_formula(temperature):
    """T^2 times the cross-entropy of softmax(z / T) against the targets, averaged over the batch."""
    torch.manual_seed(1)
    logits = torch.randn(32, 10) * 4
    targets = torch.softmax(torch.randn(32, 10), 1)
    expected = -(targets * torch.log_softmax(logits / temperature, 1)).sum(1).mean() * temperature ** 2
    assert torch.allclose(training_loop.batch_loss(logits, targets, temperature=temperature), expected, atol=1e-5)
    # Label smoothing is for hard labels; soft targets are taken as they are.
    assert torch.allclose(training_loop.batch_loss(logits, targets, 0.1, temperature), expected, atol=1e-5)


def test_soften_is_p_to_the_1_over_t_renormalised():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(10), size=50).astype(np.float32)
    proba[0] = np.eye(10)[3]  # zeros stay zeros, a certain row stays certain
    for temperature in (0.5, 1.0, 2.0, 5.0):
        powered = proba.astype(np.float64) ** (1 / temperature)
        np.testing.assert_allclose(training_loop.soften(proba, temperature), powered / powered.sum(1, keepdims=True),
                                   atol=1e-6)
    assert (training_loop.soften(proba, 4.0)[1:].max(1) < proba[1:].max(1)).all()  # T > 1 flattens
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            training_loop.soften(proba, bad)


def test_one_hot_soft_targets_train_as_the_labels_do(embedded):
    """The loop with one-hot soft targets at T = 1 is the loop with labels: the same losses, accuracies, weights."""
    train, val = Digits(embedded[0].images[:300], embedded[0].labels[:300]), Digits(embedded[0].images[300:400],
                                                                                   embedded[0].labels[300:400])
    cfg = tiny(epochs=2, label_smoothing=0.0, device="cpu", precision="fp32")
    device = torch.device("cpu")
    net_hard, hard = training_loop.fit("fast", cfg, train, val, device, progress=False)
    soft = training_loop.SoftTargets(np.eye(10, dtype=np.float32)[train.labels], 1.0)
    net_soft, history = training_loop.fit("fast", cfg, Digits(train.images), val, device, progress=False, soft=soft)
    for a, b in zip(hard, history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    for p, q in zip(net_hard.parameters(), net_soft.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-4)
    with pytest.raises(ValueError, match="soft targets"):
        training_loop.fit("fast", cfg, Digits(train.images), val, device, progress=False,
                          soft=training_loop.SoftTargets(soft.proba[:10], 1.0))


# --- (b) through the command line: distill, then predict and export --------------------------------------------

def test_the_student_is_a_single_run_that_predict_and_export_take(student, test_csv, tmp_path):
    what = json.loads((student / "run.json").read_text())
    assert what["kind"] == "distill" and what["temperature"] == 1.0 and what["method"] == "fast"
    recorded = set(what["files"])
    present = {str(p.relative_to(student)) for p in student.rglob("*") if p.is_file()}
    assert present <= recorded  # run.json records every file the run wrote
    for name in ("config.json", "model.safetensors", "history.csv", "metrics.json", "report.html", "submission.csv"):
        assert name in present, name
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["test_images"] == 1000 and metrics["temperature"] == 1.0
    assert metrics["estimate"] == "out-of-fold" and metrics["rows_scored"] == 4000
    assert metrics["errors"] == round((1 - metrics["val_accuracy"]) * 4000)
    assert metrics["errors_tta"] == round((1 - metrics["val_accuracy_tta"]) * 4000)
    labels, wrong_tta, rows = load_embedded()[0].labels, 0, 0
    for path in sorted(student.glob("jobs/*/heldout.npz")):  # each scoring student's rows, also with TTA
        with np.load(path) as saved:
            wrong_tta += int((saved["proba_tta"].argmax(1) != labels[saved["scored_rows"]]).sum())
            rows += len(saved["scored_rows"])
    assert (rows, wrong_tta) == (4000, metrics["errors_tta"])
    assert metrics["val_accuracy"] > 0.5  # it learned (tiny networks: about 0.9)
    page = (student / "report.html").read_text()
    assert "one network distilled from 2 x 2 teacher networks" in page and "one training run" not in page
    assert "students&#x27; out-of-fold accuracy" in page or "students' out-of-fold accuracy" in page

    sub = tmp_path / "sub.csv"
    assert main(["predict", "--model", str(student), "--test", str(test_csv), "--out", str(sub)]) == 0
    assert sub.read_text() == (student / "submission.csv").read_text()
    labels = np.loadtxt(sub, delimiter=",", skiprows=1, dtype=np.int64)[:, 1]
    model = load_model(student)
    np.testing.assert_array_equal(labels, estimator_proba(model, load_embedded()[1].images).argmax(1))
    assert main(["export", "--model", str(student), "--onnx", str(tmp_path / "s.onnx")]) == 0
    assert (tmp_path / "s.onnx").stat().st_size > 1000
    assert main(["predict", "--onnx", str(tmp_path / "s.onnx"), "--test", str(test_csv), "--out",
                 str(tmp_path / "onnx.csv")]) == 0
    onnx = np.loadtxt(tmp_path / "onnx.csv", delimiter=",", skiprows=1, dtype=np.int64)[:, 1]
    assert (onnx == labels).mean() > 0.99


# --- (c) the student predicts like its teachers ----------------------------------------------------------------

def test_the_student_agrees_with_its_teachers_on_the_digits_they_are_sure_of(student, teacher):
    """On the test images the teachers are most confident about (a quarter of them), the served student, which
    never saw a label, gives the teachers' digit nearly always."""
    images = load_embedded()[1].images
    taught = estimator_proba(load_model(teacher), images)
    learned = estimator_proba(load_model(student), images).argmax(1)
    sure = np.argsort(-taught.max(1))[:250]
    assert (learned[sure] == taught[sure].argmax(1)).mean() >= 0.95
    assert len(np.unique(taught[sure].argmax(1))) >= 5  # not one easy digit only


# --- (d) honesty: the fold students' rows and teachers ----------------------------------------------------------

def test_a_fold_student_never_trains_on_its_fold_and_learns_from_its_folds_teachers_only(teacher, student, embedded):
    run = read_trained_run(teacher, "")
    records = read_trained_records(run, embedded[0])
    jobs = [job for job, _ in records]
    cfg = tiny(device="cpu")
    students = plan_students(run, jobs, embedded[0].labels, "fast", cfg)
    assert [s.job.name for s in students] == ["member0-fold0", "member0-fold1", ""]
    for k, s in enumerate(students[:2]):
        fold = records[k][1].scored_rows  # the rows the teachers of fold k were scored on: never trained on
        assert s.scored and np.array_equal(np.sort(s.job.scored_rows), np.sort(fold))
        assert not np.isin(s.job.train_rows, fold).any()
        assert len(s.job.train_rows) + len(fold) == len(embedded[0])
        for name in s.teachers:  # every teacher of the student was scored on the same fold: it never saw it
            record = dict((job.name, rec) for job, rec in records)[name]
            assert np.array_equal(record.scored_rows, fold)
        assert set(s.teachers) == {f"member0-fold{k}", f"member1-fold{k}"}
    served = students[-1]
    assert not served.scored and len(served.job.train_rows) == len(embedded[0]) and len(served.teachers) == 4

    # Targets: a teacher of fold k that answers "k" for every image makes student k's targets all "k".
    n, t = len(embedded[0]), len(embedded[1])
    fake = TeacherProba({job.name: np.tile(np.eye(10, dtype=np.float32)[int(job.name[-1])], (n, 1)) for job in jobs},
                        {job.name: np.tile(np.eye(10, dtype=np.float32)[int(job.name[-1])], (t, 1)) for job in jobs})
    for k, s in enumerate(students[:2]):
        targets = student_targets(s, fake, 2.0)
        assert targets.shape == (len(s.job.train_rows) + t, 10) and (targets.argmax(1) == k).all()
    mixed = student_targets(served, fake, 1.0)
    np.testing.assert_allclose(mixed[:, :2], 0.5)  # the served student: every teacher alike

    # The records the distillation wrote say the same.
    metrics = json.loads((student / "metrics.json").read_text())
    for k, entry in enumerate(metrics["students"]):
        assert entry["teachers"] == [f"member0-fold{k}", f"member1-fold{k}"]
        with np.load(student / "jobs" / entry["name"] / "heldout.npz") as saved:
            assert np.array_equal(saved["scored_rows"], records[k][1].scored_rows)
        summary = json.loads((student / "jobs" / entry["name"] / "job.json").read_text())
        assert summary["train_rows"] == n - len(records[k][1].scored_rows)


# --- (e) bad input: exit code 2, one line naming the file, nothing written --------------------------------------

@pytest.mark.parametrize("case", DAMAGED_RUNS)
def test_a_bad_teacher_is_named_and_nothing_is_written(case, teacher, tmp_path, capsys):
    name, fault, damage = DAMAGED_RUNS[case]
    run = Path(shutil.copytree(teacher, tmp_path / "teacher"))
    damage(run)
    before = snapshot(run)
    out = tmp_path / "out"
    assert main(["distill", "--teacher", str(run), "--out", str(out), *STUDENT_FLAGS]) == 2
    one_error_line(capsys, str(run / name) if name else str(run), fault)
    assert not out.exists() and snapshot(run) == before


def test_other_training_data_is_refused(teacher, small_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["distill", "--teacher", str(teacher), "--data-dir", str(small_data_dir), "--out", str(out),
                 *STUDENT_FLAGS]) == 2
    one_error_line(capsys, str(small_data_dir / "train.csv"), "not the training data")
    assert not out.exists()


@pytest.mark.parametrize("temperature", ["0", "-1", "nan", "inf", "1e308", "1e-300", "0.09", "101"])
def test_a_bad_temperature_is_refused(temperature, teacher, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), "--temperature", temperature,
                 *STUDENT_FLAGS]) == 2
    one_error_line(capsys, "--temperature", "above 0")
    assert not out.exists()


def test_a_directory_without_run_json_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["distill", "--teacher", str(empty), "--out", str(tmp_path / "out"), *STUDENT_FLAGS]) == 2
    one_error_line(capsys, str(empty / "run.json"), "not found")
    assert not (tmp_path / "out").exists()


# --- (f) resume: the same command trains nothing again; other settings are refused -------------------------------

def test_the_same_command_resumes_and_other_settings_are_refused(student, teacher, tmp_path, capsys, monkeypatch):
    out = Path(shutil.copytree(student, tmp_path / "student"))
    weights = {p: p.read_bytes() for p in out.rglob("model.safetensors")}
    assert len(weights) == 3

    def no_training(*args, **kwargs):
        raise AssertionError("a finished student was trained again")

    monkeypatch.setattr(training_loop, "fit", no_training)
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), *STUDENT_FLAGS]) == 0
    assert {p: p.read_bytes() for p in out.rglob("model.safetensors")} == weights
    capsys.readouterr()
    before = snapshot(out)
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), "--temperature", "3",
                 *STUDENT_FLAGS]) == 2
    one_error_line(capsys, str(out), "other settings", "temperature 1.0 -> 3.0")
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), "--no-score", *STUDENT_FLAGS]) == 2
    one_error_line(capsys, str(out), "other settings", "score")
    assert snapshot(out) == before


def test_a_resumed_distillation_asks_only_the_unfinished_students_teachers(student, teacher, tmp_path, monkeypatch):
    """Run again, a finished distillation has no teacher predict; one whose fold-1 student did not finish has
    that student trained again, from the targets of fold 1's teachers only."""
    out = Path(shutil.copytree(student, tmp_path / "student"))
    asked = []

    def spy(run, jobs, *images, device="cpu"):
        asked.append(sorted(job.name for job in jobs))
        return real(run, jobs, *images, device=device)

    real = distill_module.network_probabilities
    monkeypatch.setattr(distill_module, "network_probabilities", spy)
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), *STUDENT_FLAGS]) == 0
    assert asked == [[]]
    (out / "jobs" / "member0-fold1" / "job.json").unlink()
    trained = []
    real_fit = training_loop.fit
    monkeypatch.setattr(training_loop, "fit", lambda *a, **k: trained.append(a[6]) or real_fit(*a, **k))
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), *STUDENT_FLAGS]) == 0
    assert asked[1] == ["member0-fold1", "member1-fold1"] and trained == ["member0-fold1: "]
    assert (out / "jobs" / "member0-fold1" / "job.json").is_file()


def test_a_single_run_teaches_too_and_no_score_trains_the_served_student_only(tmp_path, capsys):
    single, out = tmp_path / "single", tmp_path / "out"
    assert main(["train", "--preset", "fast", *TINY_FLAGS, "--out", str(single), "--quiet"]) == 0
    assert main(["distill", "--teacher", str(single), "--out", str(out), "--no-score", *TINY_FLAGS, "--quiet"]) == 0
    assert "not scored" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "estimate" not in metrics and metrics["teacher_members"] == 1 and metrics["teacher_folds"] == 1
    assert not (out / "jobs").exists() and (out / "model.safetensors").is_file()
    assert len(load_model(out).predict(load_embedded()[1].images[:5])) == 5
