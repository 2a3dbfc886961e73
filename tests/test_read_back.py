"""Everything the project reads back from disk is input: a finished run's records, a checkpoint, a settings or
space file, a study. Each damaged or hostile file is refused with exit code 2 and one line naming it: never a
traceback, a hang or an invented result."""

from __future__ import annotations

import io
import json
import os
import sqlite3

import numpy as np
import pytest
import torch
from conftest import change_weights, one_error_line

import digit_recognizer.rundir as rundir_module
from digit_recognizer.cli import main

TINY = ["--preset", "fast", "--epochs", "2", "--filters", "4,8,8", "--dense", "16", "--quiet"]


def run(data_dir, out, *extra) -> int:
    return main(["run", "--data-dir", str(data_dir), "--out", str(out), *TINY, *extra])



@pytest.fixture
def finished(small_data_dir, tmp_path, capsys):
    """A finished tiny single run."""
    out = tmp_path / "out"
    assert run(small_data_dir, out) == 0
    capsys.readouterr()
    return out


def _npz(path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def _heldout(out) -> dict:
    with np.load(out / "heldout.npz") as saved:
        return {key: saved[key] for key in saved.files}


DAMAGE = {
    "job.json empty": ("job.json", lambda out: (out / "job.json").write_text("")),
    "job.json mistyped": ("job.json", lambda out: (out / "job.json").write_text(json.dumps(
        {**json.loads((out / "job.json").read_text()), "accuracy": "high"}))),
    "job.json of another job": ("job.json", lambda out: (out / "job.json").write_text(json.dumps(
        {**json.loads((out / "job.json").read_text()), "scored_rows": 7}))),
    "job.json a FIFO": ("job.json", lambda out: ((out / "job.json").unlink(), os.mkfifo(out / "job.json"))),
    "heldout rows out of range": ("heldout.npz", lambda out: _npz(out / "heldout.npz", **{
        **_heldout(out), "scored_rows": _heldout(out)["scored_rows"] + 10**6})),
    "heldout of the wrong shape": ("heldout.npz", lambda out: _npz(out / "heldout.npz", **{
        **_heldout(out), "proba": np.zeros((3, 7), dtype=np.float32)})),
    "heldout garbage": ("heldout.npz", lambda out: (out / "heldout.npz").write_bytes(b"PK\x03\x04garbage")),
    "history garbage": ("history.csv", lambda out: (out / "history.csv").write_bytes(b"\xff\xfe\x00garbage")),
    "history of another tool": ("history.csv", lambda out: (out / "history.csv").write_text("step,value\n1,2\n")),
    "history of other epochs": ("history.csv", lambda out: (out / "history.csv").write_text(
        "\n".join((out / "history.csv").read_text().splitlines()[:2]) + "\n")),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_record_of_a_finished_run_is_named(case, finished, small_data_dir, capsys):
    """The same command run again over a finished run whose records were damaged or edited: exit 2 and one line
    naming the file, before anything else is written."""
    name, damage = DAMAGE[case]
    damage(finished)
    before = (finished / "metrics.json").stat().st_mtime_ns
    assert run(small_data_dir, finished) == 2
    one_error_line(capsys, name)
    assert (finished / "metrics.json").stat().st_mtime_ns == before


@pytest.fixture
def interrupted(small_data_dir, tmp_path, monkeypatch, capsys):
    """A tiny run of 3 epochs interrupted after its first: its checkpoint.pt, read and written by the test."""
    out = tmp_path / "cut"
    real_save = rundir_module.FileCheckpoint.save

    def save_then_interrupt(self, state):
        real_save(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir_module.FileCheckpoint, "save", save_then_interrupt)
    assert run(small_data_dir, out, "--epochs", "3") == 130
    monkeypatch.setattr(rundir_module.FileCheckpoint, "save", real_save)
    capsys.readouterr()
    return out


def _edit_checkpoint(path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


CHECKPOINT_DAMAGE = {
    "no optimiser state": lambda state: state.pop("optimizer"),
    "weights of another shape": lambda state: state["network"].update(
        {key: torch.zeros(3, 3) for key in list(state["network"])[:1]}),
    "a history longer than the epochs asked for": lambda state: state.update(
        history=[{**state["history"][0], "epoch": n} for n in range(1, 6)]),
    "a history that is no list": lambda state: state.update(history="epochs"),
    "not a table": None,
}


@pytest.mark.parametrize("case", list(CHECKPOINT_DAMAGE))
def test_a_checkpoint_with_wrong_contents_is_named(case, interrupted, small_data_dir, capsys):
    """A valid torch file with the wrong contents: exit 2 naming checkpoint.pt, never a traceback, and never a
    run that reports epochs it did not train."""
    path = interrupted / "checkpoint.pt"
    if CHECKPOINT_DAMAGE[case] is None:
        torch.save([1, 2, 3], path)
    else:
        _edit_checkpoint(path, CHECKPOINT_DAMAGE[case])
    assert run(small_data_dir, interrupted, "--epochs", "3") == 2
    one_error_line(capsys, "checkpoint.pt: cannot resume")
    assert not (interrupted / "metrics.json").exists()


def test_a_resumed_run_counts_every_epochs_time(interrupted, small_data_dir, capsys):
    """train_seconds of a resumed run counts the epochs the interrupted process trained too."""
    first = torch.load(interrupted / "checkpoint.pt", weights_only=True)["history"][0]["elapsed"]
    assert first > 0
    assert run(small_data_dir, interrupted, "--epochs", "3") == 0
    metrics = json.loads((interrupted / "metrics.json").read_text())
    history = [line.split(",") for line in (interrupted / "history.csv").read_text().splitlines()]
    elapsed = [float(row[history[0].index("elapsed")]) for row in history[1:]]
    assert elapsed[0] == pytest.approx(first) and elapsed == sorted(elapsed)
    assert metrics["train_seconds"] >= elapsed[-1] - 0.01 > first


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("source", ["/dev/zero", "fifo", "huge", "directory"])
@pytest.mark.parametrize("flag", ["--config", "--space"])
def test_settings_files_are_read_with_bounds(flag, source, fifo, tmp_path, capsys):
    """A settings or space file that is a device, a FIFO, a directory or far too large is refused in one line,
    neither read until memory runs out nor waited on."""
    path = {"/dev/zero": "/dev/zero", "fifo": str(fifo), "directory": str(tmp_path)}.get(source)
    if source == "huge":
        path = str(tmp_path / "huge.toml")
        with open(path, "wb") as handle:
            handle.truncate(64 << 20)
    command = ["run", "--out", str(tmp_path / "out"), flag, path] if flag == "--config" else [
        "tune", "--out", str(tmp_path / "out"), flag, path]
    assert main(command) == 2
    one_error_line(capsys, path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,fragment", [
    ("lr = " + "9" * 400, "within float range"),
    ('{"lr": ' + "9" * 400 + "}", "within float range"),
    ("epochs = " + "9" * 400, "epochs must be in"),
    ("a = " + "[" * 5000 + "]" * 5000, "cannot read config"),
    ('{"lr": 1e999}', "lr must be"),
    ("seed = -1", "seed"),
])
def test_absurd_values_in_a_config_file_are_one_line(text, fragment, tmp_path, capsys):
    path = tmp_path / ("c.json" if text.startswith("{") else "c.toml")
    path.write_text(text)
    assert main(["run", "--out", str(tmp_path / "out"), "--config", str(path)]) == 2
    one_error_line(capsys, fragment, str(path))


@pytest.mark.parametrize("text,fragment", [
    ("[lr]\nlow = 0.01\nhigh = " + "9" * 400, "within float range"),
    ("[epochs]\nlow = 1\nhigh = " + "9" * 400, "cannot work"),
    ("x = " + "[" * 5000 + "]" * 5000, "cannot read the search space"),
    # each choice can work alone, not together: a trial drawing both raised a traceback mid-search
    ("[whiten]\nchoices = [true]\n[filters]\nchoices = [[4, 8, 8], [5, 8, 8]]\n",
     "whiten True with filters 5,8,8 cannot work"),
])
def test_absurd_values_in_a_space_file_are_one_line(text, fragment, tmp_path, capsys):
    path = tmp_path / "space.toml"
    path.write_text(text)
    assert main(["tune", "--out", str(tmp_path / "out"), "--space", str(path)]) == 2
    one_error_line(capsys, fragment)


def test_paths_the_records_cannot_name_are_refused_before_training(tmp_path, capsys):
    """An --out that is not valid UTF-8, or whose name is longer than the file system allows: one line, before
    any training."""
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff\xfe")
    assert main(["run", "--out", bad, "--epochs", "1"]) == 2
    one_error_line(capsys, "not valid UTF-8")
    assert main(["run", "--out", str(tmp_path / ("x" * 300)), "--epochs", "1"]) == 2
    one_error_line(capsys, "255")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["meta", "tpu", "cuda:x"])
def test_predict_refuses_a_device_it_cannot_use(device, finished, small_data_dir, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert main(["predict", "--model", str(finished), "--test", str(small_data_dir / "test.csv"), "--out", str(out),
                 "--device", device]) == 2
    one_error_line(capsys, "device")
    assert not out.exists()


@pytest.mark.parametrize("change, fault", [(lambda t: t.fill_(float("nan")), "weight"),
                                           (lambda t: t * 1e30, "predicts")])
@pytest.mark.parametrize("command", ["predict", "export", "serve"])
def test_a_network_that_computes_no_numbers_is_refused(command, change, fault, finished, small_data_dir, tmp_path,
                                                       capsys):
    """Weights that are not numbers, or that overflow, would make every label 0 (the argmax of NaN) or fail every
    request: refused with one line naming the network, and nothing written."""
    change_weights(finished / "model.safetensors", change)
    out = tmp_path / ("sub.csv" if command == "predict" else "model.onnx")
    args = {"predict": ["predict", "--model", str(finished), "--test", str(small_data_dir / "test.csv"), "--out",
                        str(out)],
            "export": ["export", "--model", str(finished), "--onnx", str(out)],
            "serve": ["serve", "--model", str(finished), "--port", "0"]}[command]  # refused before it listens
    assert main(args) == 2
    one_error_line(capsys, str(finished), "not finite", fault)
    assert not out.exists()


STUDY_DAMAGE = {
    "text": lambda path: path.write_text("not a database\n" * 10),
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:2048]),
    "a directory": lambda path: (path.unlink(), path.mkdir()),
    "a trial without settings": lambda path: _sql(path, "DELETE FROM trial_user_attributes WHERE key = 'config'"),
    "a trial with mangled settings": lambda path: _sql(
        path, "UPDATE trial_user_attributes SET value_json = '{\"epochs\": \"many\"}' WHERE key = 'config'"),
    # Read back as they are, these wrote checkpoints outside the run directory and removed a folder there (a
    # retried trial's folds named by a path), trained a trial on settings outside the space (a traceback), or
    # reported the worst trial as the best (a study minimising).
    "a retry that names a path": lambda path: _sql(
        path, "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (1, 'retry_of', "
              "'\"/../../../elsewhere/x\"')"),
    "a setting outside the space": lambda path: _sql(
        path, "UPDATE trial_params SET param_value = 1e9 WHERE param_name = 'lr'"),
    "a setting drawn from another range": lambda path: _sql(
        path, "UPDATE trial_params SET distribution_json = '{\"name\": \"FloatDistribution\", \"attributes\": "
              "{\"step\": null, \"low\": 0.0, \"high\": 1e10, \"log\": false}}' WHERE param_name = 'lr'"),
    "a study that minimises": lambda path: _sql(path, "UPDATE study_directions SET direction = 'MINIMIZE'"),
    "a study of another name": lambda path: _sql(path, "UPDATE studies SET study_name = 'other'"),
}


def _sql(path, statement: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(statement)


@pytest.mark.parametrize("case", list(STUDY_DAMAGE))
def test_tune_refuses_a_damaged_study_before_any_trial(case, small_data_dir, tmp_path, capsys, monkeypatch):
    """tune over a study.db that is text, truncated, a directory, or whose trials lack or mangle their settings:
    exit 2 naming study.db, and no trial is trained."""
    pytest.importorskip("optuna")
    out = tmp_path / "tune"
    command = ["tune", "--data-dir", str(small_data_dir), "--out", str(out), "--model", "fast", "--trials", "1",
               "--folds", "2", "--epochs", "1", "--filters", "4,8,8", "--dense", "16", "--quiet"]
    assert main(command) == 0
    capsys.readouterr()
    STUDY_DAMAGE[case](out / "study.db")
    import digit_recognizer.execute as execute_module

    monkeypatch.setattr(execute_module, "train_job", lambda *a, **k: pytest.fail("a trial was trained"))
    assert main(command) == 2
    one_error_line(capsys, "study.db")


@pytest.mark.parametrize("target", ["/etc/passwd", "/proc/self/environ"])
def test_serve_never_follows_a_linked_report_out_of_the_run(target, finished, capsys, monkeypatch):
    """A report.html that is a link out of the run directory is refused at start, never served at /report."""
    import digit_recognizer.serve as serve_module

    (finished / "report.html").unlink()
    (finished / "report.html").symlink_to(target)
    monkeypatch.setattr(serve_module, "serve", lambda *a, **k: pytest.fail("served"))
    assert main(["serve", "--model", str(finished), "--port", "0"]) == 2
    one_error_line(capsys, "report.html: a symbolic link")
