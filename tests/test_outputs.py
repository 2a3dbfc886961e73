"""Outputs a user names: a regular file is replaced atomically, '-' is standard output, a link is written through
to its target, a device or a pipe is written to as a stream; an output that is one of the command's inputs, or a
file sample-data would replace, is refused before any work."""

from __future__ import annotations

import os
import threading

import pytest

from digit_recognizer.cli import main

TINY = ["--preset", "fast", "--epochs", "1", "--filters", "4,8,8", "--dense", "16", "--quiet"]


@pytest.fixture(scope="module")
def trained(small_data_dir, tmp_path_factory):
    """A finished tiny run, and its submission as the reference for what predict must write."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["run", "--data-dir", str(small_data_dir), "--out", str(out), *TINY]) == 0
    return out


def predict(trained, small_data_dir, out) -> int:
    return main(["predict", "--model", str(trained), "--test", str(small_data_dir / "test.csv"), "--out", str(out)])


def test_dash_writes_the_submission_to_standard_output(trained, small_data_dir, capsys):
    assert predict(trained, small_data_dir, "-") == 0
    captured = capsys.readouterr()
    assert captured.out == (trained / "submission.csv").read_text()
    assert "standard output" in captured.err


def test_a_link_is_written_through_to_its_target(trained, small_data_dir, tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert predict(trained, small_data_dir, link) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == (trained / "submission.csv").read_text()


def test_a_pipe_is_written_to_as_a_stream(trained, small_data_dir, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    assert predict(trained, small_data_dir, fifo) == 0
    reader.join(timeout=30)
    assert received == [(trained / "submission.csv").read_text()]
    assert fifo.is_fifo()  # not replaced by a file


def test_a_full_device_is_one_line_and_stays_a_device(trained, small_data_dir, capsys):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    assert predict(trained, small_data_dir, "/dev/full") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "/dev/full: cannot write" in err
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")


def test_predict_refuses_to_write_over_its_test_file(trained, small_data_dir, tmp_path, capsys):
    test = tmp_path / "test.csv"
    test.write_bytes((small_data_dir / "test.csv").read_bytes())
    before = test.read_bytes()
    assert main(["predict", "--model", str(trained), "--test", str(test), "--out", str(test)]) == 2
    assert "one of this command's inputs" in capsys.readouterr().err
    assert test.read_bytes() == before


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "run.json"])
def test_export_refuses_to_write_over_the_runs_own_files(name, trained, tmp_path, capsys):
    before = (trained / name).read_bytes()
    assert main(["export", "--model", str(trained), "--onnx", str(trained / name)]) == 2
    assert "one of this command's inputs" in capsys.readouterr().err
    assert (trained / name).read_bytes() == before


@pytest.mark.parametrize("existing", ["train.csv", "test.csv"])
def test_sample_data_never_replaces_a_file(existing, tmp_path, capsys):
    (tmp_path / existing).write_text("label,pixel0\n1,2\n")
    assert main(["sample-data", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / existing).read_text() == "label,pixel0\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_sample_data_writes_both_files_into_a_new_folder(tmp_path):
    assert main(["sample-data", "--out", str(tmp_path / "data")]) == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["test.csv", "train.csv"]
    assert main(["run", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run"), *TINY]) == 0


def test_help_shows_each_models_defaults_and_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "cnn 30, mlp 20, fast 8" in text  # --epochs: the default depends on the model
    assert "{rmsprop,adam,adamw,sgd}" in text and "{plateau,onecycle,triangle}" in text
