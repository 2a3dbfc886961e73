"""The label audit: a K-fold run's out-of-fold probabilities find a planted wrong label (cleanlab), bad input is one
line and exit code 2 with nothing written, --exclude-rows keeps rows out of training but scores them, and the
audit's files belong to the run (--overwrite removes them)."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DAMAGED_RUNS, TINY_FLAGS, one_error_line, snapshot, tiny

import digit_recognizer.execute as execute_module
from digit_recognizer.audit import TABLE_COLUMNS, LabelIssues, find_label_issues, out_of_fold_proba, read_run
from digit_recognizer.cli import main
from digit_recognizer.data import Digits, read_train, split_indices, write_csv
from digit_recognizer.jobs import plan_jobs

needs_cleanlab = pytest.mark.skipif(importlib.util.find_spec("cleanlab") is None,
                                    reason='cleanlab is not installed (the audit extra: pip install -e ".[audit]")')

# The fast network shrunk (TINY_FLAGS) and trained on small batches without augmentation: on 2,000 rows, two
# epochs reach about 90 % out of fold, enough to tell a prototypical digit from the label planted on it.
KFOLD_FLAGS = ["--preset", "fast", *TINY_FLAGS, "--epochs", "2", "--batch-size", "32", "--no-augment",  # last wins
               "--folds", "2", "--quiet"]
SMALL_FLAGS = ["--preset", "fast", *TINY_FLAGS, "--quiet"]
PLANTED_LABEL = 6  # written over a clear 0


@dataclasses.dataclass
class Planted:
    data_dir: Path
    row: int
    original: int


@pytest.fixture(scope="module")
def planted(tmp_path_factory, embedded) -> Planted:
    """2,000 real digits in a Kaggle-style folder, one label wrong: the 0 nearest the mean 0 (the most typical
    one, which any network that learned something reads as a 0) is labelled 6."""
    train, test = embedded
    images, labels = train.images[:2000], train.labels[:2000].copy()
    zeros = np.flatnonzero(labels == 0)
    row = int(zeros[np.argmin(((images[zeros] - images[zeros].mean(0)) ** 2).sum(1))])
    labels[row] = PLANTED_LABEL
    folder = tmp_path_factory.mktemp("planted")
    write_csv(Digits(images, labels), folder / "train.csv")
    write_csv(Digits(test.images[:10]), folder / "test.csv")
    return Planted(folder, row, 0)


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory, planted) -> Path:
    """A finished 2-fold run on the planted data, through the command line; tests audit copies of it."""
    out = tmp_path_factory.mktemp("kfold") / "run"
    assert main(["run", "--data-dir", str(planted.data_dir), "--out", str(out), *KFOLD_FLAGS]) == 0
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run", symlinks=True))




def audit(run: Path, data_dir: Path) -> int:
    return main(["audit", "--run", str(run), "--data-dir", str(data_dir)])


# --- finding wrong labels ------------------------------------------------------------------------------------

@needs_cleanlab
def test_a_planted_wrong_label_is_found_end_to_end(kfold_run, planted, tmp_path, capsys):
    """run --folds 2, then audit: the planted row is in label_issues.csv with its real digit suggested; the table
    is sorted by the given label's quality score, which is the given label's out-of-fold probability; the run
    records the audit's files, and report.html shows the gallery."""
    run = copy_run(kfold_run, tmp_path)
    capsys.readouterr()
    assert audit(run, planted.data_dir) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training rows flagged" in err and str(run / "label_issues.csv") in err, err

    table = pd.read_csv(run / "label_issues.csv")
    assert tuple(table.columns) == TABLE_COLUMNS
    assert planted.row in table.row.tolist(), table.head(20)
    found = table.set_index("row").loc[planted.row]
    assert (found.given_label, found.suggested_label) == (PLANTED_LABEL, planted.original)
    assert table.given_label_quality.is_monotonic_increasing
    assert (table.given_label != table.suggested_label).all()
    assert f"{len(table):,} of 2,000 training rows" in err

    digits = read_train(planted.data_dir / "train.csv")
    proba = out_of_fold_proba(read_run(run), digits)
    assert digits.labels[table.row].tolist() == table.given_label.tolist()
    np.testing.assert_allclose(table.given_label_quality, proba[table.row, table.given_label], atol=1e-6)
    np.testing.assert_array_equal(table.suggested_label, proba[table.row].argmax(1))

    files = json.loads((run / "run.json").read_text())["files"]
    assert "label_issues.csv" in files and "label_issues.png" in files
    gallery = base64.b64encode((run / "label_issues.png").read_bytes()).decode("ascii")
    report = (run / "report.html").read_text()
    assert 'id="label-issues"' in report and gallery in report


@needs_cleanlab
def test_cleanlab_finds_wrong_labels_in_given_probabilities():
    """On probabilities built by hand, exactly the rows whose label contradicts a confident prediction are
    flagged, the more contradicted first, each with the predicted digit suggested and the given label's
    probability as its quality score."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    proba = rng.uniform(0.0, 0.02, size=(300, 10))
    proba[np.arange(300), labels] = rng.uniform(0.85, 0.95, size=300)
    proba[7, :] = 0.01
    proba[7, 4] = 0.91     # labelled 0, clearly a 4
    proba[100, :] = 0.002
    proba[100, 8] = 0.982  # labelled 3, even more clearly an 8
    proba /= proba.sum(1, keepdims=True)
    issues = find_label_issues(labels, proba)
    assert isinstance(issues, LabelIssues) and issues.rows_audited == 300
    assert issues.rows.tolist() == [100, 7]
    assert issues.given.tolist() == [3, 0] and issues.suggested.tolist() == [8, 4]
    np.testing.assert_allclose(issues.quality, proba[[100, 7], [3, 0]])

    clean = proba.copy()
    clean[[7, 100]] = np.eye(10)[labels[[7, 100]]] * 0.9 + 0.01
    assert len(find_label_issues(labels, clean)) == 0


# --- bad input: one line, exit code 2, nothing written --------------------------------------------------------

@pytest.fixture(scope="module")
def single_run(tmp_path_factory, small_data_dir) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(["run", "--data-dir", str(small_data_dir), "--out", str(out), *SMALL_FLAGS]) == 0
    return out


@pytest.fixture(scope="module")
def split_ensemble(tmp_path_factory, small_data_dir) -> Path:
    out = tmp_path_factory.mktemp("members") / "run"
    assert main(["run", "--data-dir", str(small_data_dir), "--out", str(out), *SMALL_FLAGS, "--members", "2"]) == 0
    return out


@needs_cleanlab
def test_a_folder_without_run_json_is_refused(planted, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert audit(folder, planted.data_dir) == 2
    one_error_line(capsys, str(folder / "run.json"), "not found")
    assert snapshot(folder) == {"notes.txt": b"mine"}


@needs_cleanlab
@pytest.mark.parametrize("made", ["single_run", "split_ensemble"])
def test_a_run_without_folds_is_refused(made, small_data_dir, tmp_path, capsys, request):
    """A single run and an ensemble on one validation split scored only part of the rows out of fold."""
    run = copy_run(request.getfixturevalue(made), tmp_path)
    before = snapshot(run)
    capsys.readouterr()  # the training's own lines
    assert audit(run, small_data_dir) == 2
    one_error_line(capsys, str(run / "run.json"), "--folds K")
    assert snapshot(run) == before


def _scale_tta(path: Path) -> None:
    with np.load(path) as saved:
        arrays = {key: saved[key] for key in saved.files}
    arrays["proba_tta"] = arrays["proba_tta"] * 0.5  # still finite and within 0-1: only the sums tell
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _edit(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


MANGLED = {  # the audit reads the held-out probabilities, not the networks
    **{case: DAMAGED_RUNS[case] for case in ("no run.json", "unfinished", "a comparison", "heldout garbage")},
    "heldout of other rows": ("jobs/member0-fold0/heldout.npz", "'scored_rows' are not the rows",
                              lambda run: shutil.copy(run / "jobs/member0-fold1/heldout.npz",
                                                      run / "jobs/member0-fold0/heldout.npz")),
    "probabilities that do not sum to 1": ("jobs/member0-fold0/heldout.npz", "sum to 1",
                                           lambda run: _scale_tta(run / "jobs/member0-fold0/heldout.npz")),
    "damaged metrics": ("metrics.json", "not valid JSON", lambda run: (run / "metrics.json").write_text("{")),
    **{f"metrics with {key} {value!r}": ("metrics.json", f"'{key}' must be", lambda run, key=key, value=value: _edit(
        run / "metrics.json", **{key: value})) for key, value in (
        ("rows_scored", "abc"), ("per_class", [5]), ("per_class", [{"digit": 1}]), ("table", "xy"),
        ("execution", "x"), ("execution", {"jobs": [1]}), ("pseudo_labels", {"folds": [{"teachers": 5}]}))},
    "settings not a table": ("run.json", "'train' must be", lambda run: _edit(run / "run.json", train="x")),
    "a file of the user's in the way": ("label_issues.csv", "not a file this run wrote",
                                        lambda run: (run / "label_issues.csv").write_text("row\n7\n")),
    "a folder of the user's in the way": ("label_issues.png", "not a file this run wrote",
                                          lambda run: (run / "label_issues.png").mkdir()),
    "excluded rows out of range": ("run.json", "out of range", lambda run: (run / "run.json").write_text(json.dumps(
        {**json.loads((run / "run.json").read_text()), "exclude_rows": [5, 10**6]}))),
}


@needs_cleanlab
@pytest.mark.parametrize("case", MANGLED)
def test_a_damaged_run_is_named(case, kfold_run, planted, tmp_path, capsys):
    name, fault, damage = MANGLED[case]
    run = copy_run(kfold_run, tmp_path)
    damage(run)
    before = snapshot(run)
    assert audit(run, planted.data_dir) == 2
    one_error_line(capsys, str(run / name) if name else str(run), fault)
    assert snapshot(run) == before


@needs_cleanlab
def test_other_training_data_is_refused(kfold_run, planted, tmp_path, capsys):
    """Training data other than the run's (one label changed) is named, and so is the default embedded data."""
    run = copy_run(kfold_run, tmp_path)
    before = snapshot(run)
    other = tmp_path / "other"
    other.mkdir()
    lines = (planted.data_dir / "train.csv").read_text().splitlines()
    first = lines[1].split(",")
    lines[1] = ",".join([str((int(first[0]) + 1) % 10), *first[1:]])
    (other / "train.csv").write_text("\n".join(lines) + "\n")
    assert audit(run, other) == 2
    one_error_line(capsys, str(other / "train.csv"), "not the training data")
    assert main(["audit", "--run", str(run)]) == 2
    one_error_line(capsys, "the embedded digits", "not the training data")
    assert snapshot(run) == before


def test_without_cleanlab_the_audit_says_how_to_install_it(kfold_run, planted, tmp_path, capsys, monkeypatch):
    run = copy_run(kfold_run, tmp_path)
    before = snapshot(run)
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # import cleanlab now fails, as where it is not installed
    assert audit(run, planted.data_dir) == 2
    one_error_line(capsys, 'pip install "digit-recognizer[audit]"')
    assert snapshot(run) == before


# --- --exclude-rows ------------------------------------------------------------------------------------------

EXCLUDED = [3, 50, 120, 199]


def exclusion_file(folder: Path, rows: list[int]) -> Path:
    """A list of rows as the audit writes one (other columns beside 'row', which are ignored)."""
    path = folder / "exclude.csv"
    pd.DataFrame({"row": rows, "given_label": 0, "suggested_label": 1, "given_label_quality": 0.01}).to_csv(
        path, index=False)
    return path


def test_excluded_rows_are_never_trained_on_but_scored(small_data_dir, tmp_path, monkeypatch, capsys):
    """run --folds 2 --exclude-rows: no job trains on an excluded row, every row (the excluded ones too) is scored
    out of fold, the folds are those of the run without exclusion, and run.json records the list. The same
    command again resumes; another list, or none, is other settings."""
    trained = []
    real = execute_module.train_job
    monkeypatch.setattr(execute_module, "train_job", lambda job, *a, **k: trained.append(job) or real(job, *a, **k))
    out = tmp_path / "out"
    listed = exclusion_file(tmp_path, [199, 3, 120, 50])  # in any order
    command = ["run", "--data-dir", str(small_data_dir), "--out", str(out), *SMALL_FLAGS, "--folds", "2",
               "--exclude-rows", str(listed)]
    assert main(command) == 0
    assert [job.name for job in trained] == ["member0-fold0", "member0-fold1"]
    for job in trained:
        assert not np.isin(EXCLUDED, job.train_rows).any()
        record = json.loads((out / "jobs" / job.name / "job.json").read_text())
        assert record["train_rows"] == len(job.train_rows)
    labels = read_train(small_data_dir / "train.csv").labels
    folds = split_indices(labels, 2, tiny().val_fraction, tiny().seed)
    scored = []
    for job, (train_rows, held_out) in zip(trained, folds, strict=True):
        with np.load(out / "jobs" / job.name / "heldout.npz") as saved:
            np.testing.assert_array_equal(saved["scored_rows"], held_out)  # the same folds, scored whole
            scored += saved["scored_rows"].tolist()
        np.testing.assert_array_equal(job.train_rows, train_rows[~np.isin(train_rows, EXCLUDED)])
    assert sorted(scored) == list(range(200))
    assert sum(len(job.train_rows) for job in trained) == 200 - len(EXCLUDED)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows_scored"] == 200 and metrics["excluded_rows"] == len(EXCLUDED)
    assert json.loads((out / "run.json").read_text())["exclude_rows"] == EXCLUDED

    trained.clear()
    assert main(command) == 0 and trained == []  # resumed: every job had finished
    capsys.readouterr()
    before = snapshot(out)
    (tmp_path / "other").mkdir()
    other = exclusion_file(tmp_path / "other", [3, 50])
    for rerun in (command[:-2], [*command[:-1], str(other)]):
        assert main(rerun) == 2
        one_error_line(capsys, "other settings", "other exclude_rows")
        assert snapshot(out) == before and trained == []


def test_a_single_run_trains_without_the_excluded_rows_and_validates_on_them(embedded):
    """The plan of a single run: the same validation split as without exclusion, the training part without the
    excluded rows (in its order)."""
    labels = embedded[0].labels[:500]
    plain, = plan_jobs("fast", tiny(), labels)
    val_excluded = plain.scored_rows[:3].tolist()
    train_excluded = plain.train_rows[:5].tolist()
    job, = plan_jobs("fast", tiny(), labels, exclude_rows=val_excluded + train_excluded)
    np.testing.assert_array_equal(job.scored_rows, plain.scored_rows)
    np.testing.assert_array_equal(job.train_rows, plain.train_rows[5:])


BAD_EXCLUSIONS = {
    "not a CSV": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a CSV file"),
    "empty": (b"", "file is empty"),
    "no row column": (b"label,given_label\n1,2\n", "no 'row' column"),
    "not an integer": (b"row\n3\n1.5\n", "line 3, column row: '1.5' is not a row number"),
    "negative": (b"row,x\n-1,2\n", "line 2, column row: '-1' is not a row number"),
    "missing value": (b"row,x\n,2\n", "line 2, column row: missing value"),
    "out of range": (b"row\n3\n200\n", "line 3, column row: row 200 is out of range"),
    "a huge number": (b"row\n" + b"9" * 5000 + b"\n", "is out of range"),
    "a duplicate": (b"row\n3\n4\n3\n", "line 4, column row: row 3 is listed twice (first on line 2)"),
}


@pytest.mark.parametrize("case", BAD_EXCLUSIONS)
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_bad_exclusion_list_is_refused_before_training(case, command, small_data_dir, tmp_path, capsys,
                                                         monkeypatch):
    content, fault = BAD_EXCLUSIONS[case]
    path = tmp_path / "exclude.csv"
    path.write_bytes(content)
    monkeypatch.setattr(execute_module, "train_job", lambda *a, **k: pytest.fail("trained"))
    data = (["--data-dir", str(small_data_dir)] if command == "run" else
            ["--train", str(small_data_dir / "train.csv")])
    out = tmp_path / "out"
    assert main([command, *data, "--out", str(out), *SMALL_FLAGS, "--exclude-rows", str(path)]) == 2
    one_error_line(capsys, f"{path}: ", fault)
    assert not out.exists()


def test_an_exclusion_that_leaves_a_digit_untrained_is_refused(small_data_dir, tmp_path, capsys, monkeypatch):
    labels = read_train(small_data_dir / "train.csv").labels
    threes = np.flatnonzero(labels == 3).tolist()
    monkeypatch.setattr(execute_module, "train_job", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "out"
    assert main(["run", "--data-dir", str(small_data_dir), "--out", str(out), *SMALL_FLAGS, "--folds", "2",
                 "--exclude-rows", str(exclusion_file(tmp_path, threes))]) == 2
    one_error_line(capsys, "leave no row of digit 3 to train on")
    assert not (out / "jobs").exists()


# --- the audit's files are the run's ---------------------------------------------------------------------------

@needs_cleanlab
def test_overwrite_never_removes_the_commands_own_input(kfold_run, planted, tmp_path, capsys, monkeypatch):
    """The audit's list, pruned in place and given back to --exclude-rows of the run it belongs to, is an input
    that --overwrite would remove before training: refused, and nothing removed."""
    run = copy_run(kfold_run, tmp_path)
    assert audit(run, planted.data_dir) == 0
    capsys.readouterr()
    listed = run / "label_issues.csv"
    listed.write_text("row\n3\n")  # pruned by hand
    before = snapshot(run)
    monkeypatch.setattr(execute_module, "train_job", lambda *a, **k: pytest.fail("trained"))
    assert main(["run", "--data-dir", str(planted.data_dir), "--out", str(run), *SMALL_FLAGS, "--overwrite",
                 "--exclude-rows", str(listed)]) == 2
    one_error_line(capsys, str(listed), "--overwrite removes", "copy it out")
    assert snapshot(run) == before


@needs_cleanlab
def test_overwrite_removes_the_audits_files(kfold_run, planted, tmp_path):
    """The audit's table and figure are recorded as the run's own: --overwrite removes them with the run, and a
    file of someone else's beside them stays."""
    run = copy_run(kfold_run, tmp_path)
    assert audit(run, planted.data_dir) == 0
    assert (run / "label_issues.csv").is_file() and (run / "label_issues.png").is_file()
    (run / "notes.txt").write_text("mine")
    assert main(["run", "--data-dir", str(planted.data_dir), "--out", str(run), *SMALL_FLAGS, "--overwrite"]) == 0
    assert not (run / "label_issues.csv").exists() and not (run / "label_issues.png").exists()
    assert (run / "notes.txt").read_text() == "mine"
    assert 'id="label-issues"' not in (run / "report.html").read_text()
    assert json.loads((run / "run.json").read_text())["kind"] == "single"
