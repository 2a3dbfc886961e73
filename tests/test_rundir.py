"""A run directory records what made it: a run resumes only with the same settings, anything else is refused
(or cleared with --overwrite), interrupted writes leave nothing behind, and an interrupted network resumes
from its last finished epoch to the same result."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_FLAGS, snapshot
from safetensors.numpy import load_file

import digit_recognizer.rundir as rundir_module
from digit_recognizer.cli import main
from digit_recognizer.config import method_config
from digit_recognizer.data import Digits
from digit_recognizer.runs import train_run

TINY = ["--preset", "fast", *TINY_FLAGS, "--quiet"]


def run(small_data_dir, out, *extra):
    return main(["run", "--data-dir", str(small_data_dir), "--out", str(out), *TINY, *extra])


def test_a_single_run_into_an_ensemble_directory_is_refused_then_overwritten(small_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(small_data_dir, out, "--members", "2") == 0
    capsys.readouterr()
    assert run(small_data_dir, out) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert json.loads((out / "run.json").read_text())["kind"] == "ensemble"  # nothing was touched

    assert run(small_data_dir, out, "--overwrite") == 0
    assert json.loads((out / "run.json").read_text())["kind"] == "single"
    assert not (out / "jobs").exists()  # the old members are gone: they cannot be predicted with
    sub = tmp_path / "sub.csv"
    assert main(["predict", "--model", str(out), "--test", str(small_data_dir / "test.csv"), "--out", str(sub)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(sub), pd.read_csv(out / "submission.csv"))


@pytest.mark.parametrize("change", [["--epochs", "2"], ["--members", "1"], ["--seed", "3"], ["--model", "fast",
                                                                                          "--lr", "0.05"]])
def test_an_ensemble_rerun_with_other_settings_is_refused(small_data_dir, tmp_path, capsys, change):
    out = tmp_path / "out"
    assert run(small_data_dir, out, "--members", "2") == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert run(small_data_dir, out, "--members", "2", *change) == 2
    assert "other settings" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_run_made_before_a_setting_existed_resumes_when_the_setting_is_at_its_default(small_data_dir, tmp_path,
                                                                                       capsys):
    """An upgrade that adds a setting must not strand an unfinished run: the older run.json lacks the setting, and
    it trained with the setting's default. Asking for another value is still refused."""
    out = tmp_path / "out"
    assert run(small_data_dir, out) == 0
    manifest = json.loads((out / "run.json").read_text())
    del manifest["train"]["crop"]  # as written by a version before the setting
    (out / "run.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert run(small_data_dir, out) == 0
    assert run(small_data_dir, out, "--crop", "24") == 2
    assert "crop 28 -> 24" in capsys.readouterr().err


def test_other_training_data_is_refused(small_data_dir, tmp_path, capsys, embedded):
    out = tmp_path / "out"
    assert run(small_data_dir, out) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "test.csv").write_bytes((small_data_dir / "test.csv").read_bytes())
    lines = (small_data_dir / "train.csv").read_text().splitlines()
    (other / "train.csv").write_text("\n".join(lines[:-1]) + "\n")  # one row fewer
    assert main(["run", "--data-dir", str(other), "--out", str(out), *TINY]) == 2
    assert "other data" in capsys.readouterr().err



def test_a_folder_without_run_json_is_never_cleared(small_data_dir, tmp_path, capsys):
    """A user's folder that happens to hold a run's names (submissions/, jobs/, config.json) is refused, and
    following the advice to add --overwrite is refused too: nothing of it is touched."""
    out = tmp_path / "out"
    (out / "submissions").mkdir(parents=True)
    (out / "submissions" / "mine.csv").write_text("ImageId,Label\n1,7\n")
    (out / "jobs" / "cron").mkdir(parents=True)
    (out / "jobs" / "cron" / "job.sh").write_text("echo hi\n")
    (out / "config.json").write_text('{"mine": true}')
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        assert run(small_data_dir, out, *extra) == 2
        err = capsys.readouterr().err
        assert "no run.json" in err and len(err.strip().splitlines()) == 1
        assert snapshot(out) == before


def test_overwrite_removes_only_what_the_run_recorded(small_data_dir, tmp_path):
    """--overwrite removes the files the old run recorded as its own, and its folders once empty; a file someone
    put beside them, in the top folder or in a job's folder, stays with its folder."""
    out = tmp_path / "out"
    assert run(small_data_dir, out, "--members", "2") == 0
    (out / "notes.txt").write_text("mine")
    (out / "jobs" / "member0" / "notes.txt").write_text("mine too")
    assert run(small_data_dir, out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "jobs" / "member0" / "notes.txt").read_text() == "mine too"
    assert sorted(p.name for p in (out / "jobs" / "member0").iterdir()) == ["notes.txt"]
    assert not (out / "jobs" / "member1").exists()  # emptied, so removed
    assert json.loads((out / "run.json").read_text())["kind"] == "single"


@pytest.mark.parametrize("mine", ["comparison.csv", "submissions/knn.csv", "best.toml"])
def test_a_file_of_a_runs_name_that_the_run_did_not_write_is_refused_before_anything_is_removed(
        mine, small_data_dir, tmp_path, capsys):
    """A file of one of the names runs write, put into a finished run's folder by someone else, would be replaced
    by a later run there (another kind after --overwrite, say): refused by name before anything is removed or
    trained, with or without --overwrite."""
    out = tmp_path / "out"
    assert run(small_data_dir, out) == 0
    capsys.readouterr()
    (out / mine).parent.mkdir(exist_ok=True)
    (out / mine).write_text("mine")
    before = snapshot(out)
    for extra in ([], ["--members", "2", "--overwrite"]):
        assert run(small_data_dir, out, *extra) == 2
        err = capsys.readouterr().err
        assert mine.split("/")[0] in err and "not a file this run wrote" in err and err.count("\n") == 1, err
        assert snapshot(out) == before


def test_a_file_the_run_did_not_write_is_never_replaced(tmp_path):
    """The last guard of every write: a file in the way that run.json does not list as the run's (put there while
    the run trained, say) is refused by name and left as it was; the run's own files are replaced."""
    run_dir = rundir_module.RunDir(tmp_path / "out")
    run_dir.start(rundir_module.manifest("single", []))
    run_dir.write_text("mine", "notes.txt")
    run_dir.write_text("again", "notes.txt")  # its own: replaced
    (run_dir.path / "report.html").write_text("the user's")
    with pytest.raises(rundir_module.RunDirError, match=r"report\.html: not a file this run wrote"):
        run_dir.write_report("<html>")
    assert (run_dir.path / "report.html").read_text() == "the user's"
    assert (run_dir.path / "notes.txt").read_text() == "again"
    assert "report.html" not in run_dir.read_manifest()["files"]


def test_a_run_json_naming_files_outside_the_folder_is_refused(small_data_dir, tmp_path, capsys):
    """run.json is read back as input: a list of files that leaves the directory is refused, and --overwrite
    deletes nothing outside it."""
    out = tmp_path / "out"
    assert run(small_data_dir, out) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    what = json.loads((out / "run.json").read_text())
    what["files"].append("../victim.txt")
    (out / "run.json").write_text(json.dumps(what))
    assert run(small_data_dir, out, "--epochs", "2", "--overwrite") == 2
    assert "run.json: 'files' must list" in capsys.readouterr().err
    assert victim.read_text() == "keep me"


def test_only_the_runs_own_temporary_files_are_removed(small_data_dir, tmp_path):
    """The temporaries of the run's interrupted writes go when the run is accepted; another tool's '.*.tmp'
    files under --out stay, also when a run is refused."""
    out = tmp_path / "out"
    assert run(small_data_dir, out, "--members", "2") == 0
    ours = [out / ".metrics.json.a1b2c3d4.tmp", out / "jobs" / "member0" / ".model.safetensors.x9_y8z7w.tmp"]
    theirs = [out / ".lock.tmp", out / "cache" / ".index.db.12345678.tmp", out / ".notes.txt.abcdefgh.tmp"]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    assert run(small_data_dir, out, "--members", "3") == 2  # refused: nothing removed
    assert all(path.exists() for path in ours + theirs)
    assert run(small_data_dir, out, "--members", "2") == 0  # resumes: everything is finished
    assert not any(path.exists() for path in ours)
    assert all(path.read_bytes() == b"half" for path in theirs)


def test_an_interrupted_network_resumes_to_the_same_result(embedded, tmp_path, monkeypatch):
    digits = Digits(embedded[0].images[:400], embedded[0].labels[:400])
    cfg = method_config("fast")
    cfg.filters, cfg.dense, cfg.epochs = (4, 8, 8), 16, 3
    whole = train_run(digits, tmp_path / "whole", "fast", cfg, progress=False)

    saves = []
    real_save = rundir_module.FileCheckpoint.save

    def interrupt_after_first_epoch(self, state):
        real_save(self, state)
        saves.append(len(state["history"]))
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir_module.FileCheckpoint, "save", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(digits, tmp_path / "cut", "fast", cfg, progress=False)
    assert saves == [1] and (tmp_path / "cut" / "checkpoint.pt").is_file()
    assert not (tmp_path / "cut" / "job.json").exists()
    monkeypatch.setattr(rundir_module.FileCheckpoint, "save", real_save)

    resumed = train_run(digits, tmp_path / "cut", "fast", cfg, progress=False)
    assert resumed["val_accuracy"] == whole["val_accuracy"] and resumed["epochs"] == 3
    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("whole", "cut"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    history = [pd.read_csv(tmp_path / d / "history.csv").drop(columns=["seconds", "images_per_second", "elapsed"])
               for d in ("whole", "cut")]
    pd.testing.assert_frame_equal(*history)
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()  # dropped once the job finished


def test_a_damaged_checkpoint_is_named(embedded, tmp_path, capsys, small_data_dir):
    out = tmp_path / "out"
    assert run(small_data_dir, out) == 0
    (out / "job.json").unlink()
    what = json.loads((out / "run.json").read_text())
    if "checkpoint.pt" not in what["files"]:  # as an interrupted run recorded its checkpoint before writing it
        (out / "run.json").write_text(json.dumps({**what, "files": [*what["files"], "checkpoint.pt"]}))
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert run(small_data_dir, out) == 2
    assert "checkpoint.pt: cannot resume" in capsys.readouterr().err
