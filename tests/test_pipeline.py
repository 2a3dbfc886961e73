from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from digit_recognizer.cli import main
from digit_recognizer.config import TrainConfig
from digit_recognizer.data import Digits, read_train, write_csv
from digit_recognizer.pipeline import train_run

RUN_FILES = ["model.safetensors", "config.json", "history.csv", "curves.png", "confusion_matrix.png",
             "errors.png", "metrics.json", "submission.csv"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """`digit-recognizer run` on the embedded default, shortened to 2 epochs and a narrower network."""
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(["run", "--out", str(out), "--epochs", "2", "--quiet"])
    assert code == 0
    return out


def test_run_writes_every_output(embedded_run):
    for name in RUN_FILES:
        assert (embedded_run / name).is_file(), name
    for name in ("curves.png", "confusion_matrix.png", "errors.png"):
        assert (embedded_run / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(embedded_run.glob(".*tmp"))


def test_history_and_metrics(embedded_run):
    history = pd.read_csv(embedded_run / "history.csv")
    assert list(history.columns[:6]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert history["epoch"].tolist() == [1, 2]
    metrics = json.loads((embedded_run / "metrics.json").read_text())
    for key in ("val_accuracy", "val_loss", "epochs", "train_seconds", "device", "seconds_per_epoch"):
        assert key in metrics
    assert metrics["epochs"] == 2 and metrics["device"] == "cpu"
    assert metrics["val_accuracy"] == pytest.approx(history["val_accuracy"].iloc[-1])
    assert metrics["val_accuracy"] > 0.8  # 2 epochs on 3,600 real digits; chance is 0.1


def test_submission_format(embedded_run):
    sub = pd.read_csv(embedded_run / "submission.csv")
    assert list(sub.columns) == ["ImageId", "Label"]
    assert len(sub) == 1000
    assert sub["ImageId"].tolist() == list(range(1, 1001))
    assert sub["Label"].between(0, 9).all()
    assert sub["Label"].nunique() == 10


def test_predict_command_matches_run(embedded_run, small_data_dir, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    assert main(["predict", "--model", str(embedded_run), "--test", str(small_data_dir / "test.csv"),
                 "--out", str(out)]) == 0
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["ImageId", "Label"] and len(sub) == 30
    # The small folder's test rows are the first 30 test images of the embedded default.
    full = pd.read_csv(embedded_run / "submission.csv")
    np.testing.assert_array_equal(sub["Label"].to_numpy(), full["Label"].to_numpy()[:30])


def test_predict_with_a_folder_that_is_not_a_run(small_data_dir, tmp_path, capsys):
    code = main(["predict", "--model", str(tmp_path), "--test", str(small_data_dir / "test.csv"),
                 "--out", str(tmp_path / "sub.csv")])
    assert code == 2
    assert "config.json: not found" in capsys.readouterr().err
    assert not (tmp_path / "sub.csv").exists()


def test_train_command_with_config_file_and_flag_override(small_data_dir, tmp_path):
    config = tmp_path / "small.toml"
    config.write_text('epochs = 3\nfilters = [8, 16, 16]\ndense = 32\nbatch_size = 32\n')
    out = tmp_path / "run"
    code = main(["train", "--train", str(small_data_dir / "train.csv"), "--out", str(out), "--quiet",
                 "--config", str(config), "--epochs", "1"])
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["filters"] == [8, 16, 16]
    assert not (out / "submission.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "epochs must be in 1 .. 10000"),
    (["--epochs", "99999999999999999999999"], "epochs must be in 1 .. 10000"),
    (["--filters", "8,x"], "comma-separated"),
    (["--optimizer", "sgdx"], "optimizer must be one of"),
    (["--val-fraction", "1.5"], "val_fraction"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_settings_exit_2(args, message, tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "out"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_setting_in_config_file(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text('{"epoch": 3}')
    assert main(["train", "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "unknown setting 'epoch'" in capsys.readouterr().err


def test_end_to_end_on_competition_data(shared_data, tmp_path):
    """A few thousand real Kaggle rows, 2 epochs of the seed network: at least 95 % on validation.

    Adam instead of the seed's RMSprop: with RMSprop at 1e-3 the eval-mode accuracy still swings between
    60 % and 97 % after ~170 steps (BatchNorm statistics lag the fast-moving weights), which says nothing about
    the pipeline. The full recipe (99.6 %) is measured by benchmarks/seed_recipe.py.
    """
    train = read_train(shared_data / "train.csv.gz")
    rows = Digits(train.images[:8000], train.labels[:8000])
    metrics = train_run(rows, tmp_path / "run", "cnn", TrainConfig(epochs=2, optimizer="adam"), progress=False)
    assert metrics["n_train"] == 7200 and metrics["n_val"] == 800
    assert metrics["val_accuracy"] >= 0.95, metrics
    assert (tmp_path / "run" / "curves.png").is_file() and (tmp_path / "run" / "errors.png").is_file()


TINY = ["--preset", "fast", "--epochs", "1", "--filters", "4,8,8", "--dense", "16"]


def test_a_diverging_run_exits_1_and_writes_no_submission(tmp_path, capsys):
    out = tmp_path / "out"  # the embedded digits: enough batches for the loss to overflow within the epoch
    code = main(["run", "--out", str(out), *TINY, "--epochs", "3", "--lr", "1e6", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "diverged" in err and len(err.strip().splitlines()) == 1
    assert not (out / "submission.csv").exists() and not (out / "job.json").exists()


def test_chance_level_accuracy_is_warned(small_data_dir, tmp_path, capsys):
    # One epoch at a learning rate far too small for a one-cycle schedule: the network learns nothing.
    code = main(["run", "--data-dir", str(small_data_dir), "--out", str(tmp_path / "o"), *TINY, "--lr", "1e-9",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 0
    accuracy = json.loads((tmp_path / "o" / "metrics.json").read_text())["val_accuracy"]
    assert ("chance level" in err) == (accuracy <= 0.2)


@pytest.mark.parametrize("args, config, message", [
    (["--kernels", "4,3,3"], None, "odd sizes"),
    (["--dense", "0"], None, "dense must be"),
    (["--device", "mps"], None, "device must be"),
    (["--device", "meta"], None, "device must be"),
    ([], "epochs = 1.5", "epochs must be a whole number"),
    ([], 'filters = "abc"', "filters must be a list"),
    ([], 'augment = "no"', "augment must be true or false"),
    ([], "lr = inf", "lr must be a finite"),
    ([], "epochs = [", "cannot read config"),
    ([], "[1, 2]", "expected a table of settings"),
])
def test_bad_settings_are_refused_before_anything_is_read(args, config, message, tmp_path, capsys):
    if config is not None:
        path = tmp_path / ("c.json" if config.startswith("[") else "c.toml")
        path.write_text(config)
        args = [*args, "--config", str(path)]
    code = main(["run", "--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_found_before_training(small_data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["run", "--data-dir", str(tmp_path / "absent"), "--out", str(blocker / "out"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write there" in err, err  # before the missing data is even looked at


@pytest.mark.parametrize("rows, args, message", [
    (200, ["--val-fraction", "0.001"], "each side needs"),
    (1, [], "each side needs"),
    (200, ["--members", "1", "--folds", "50"], "50 folds need"),
])
def test_data_too_small_to_split_is_refused_before_training(rows, args, message, embedded, tmp_path, capsys):
    folder = tmp_path / "data"
    write_csv(Digits(embedded[0].images[:rows], embedded[0].labels[:rows]), folder / "train.csv")
    write_csv(Digits(embedded[1].images[:5]), folder / "test.csv")
    code = main(["run", "--data-dir", str(folder), "--out", str(tmp_path / "out"), *TINY, *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "run.json").exists()


def test_progress_to_a_file_is_one_line_per_epoch_and_quiet_keeps_the_result(small_data_dir, tmp_path):
    command = [sys.executable, "-m", "digit_recognizer.cli", "run", "--data-dir", str(small_data_dir), *TINY,
               "--epochs", "2"]
    logged = subprocess.run([*command, "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert logged.returncode == 0, logged.stderr
    assert "\r" not in logged.stderr and "\x1b" not in logged.stderr  # no bars when stderr is not a terminal
    lines = logged.stderr.strip().splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/2", "2/2"]
    assert sum("val_accuracy" in line for line in lines) == 1
    quiet = subprocess.run([*command, "--out", str(tmp_path / "b"), "--quiet"], capture_output=True, text=True)
    assert quiet.returncode == 0
    quiet_lines = quiet.stderr.strip().splitlines()  # the result line, and a warning if the tiny net learned little
    assert "val_accuracy" in quiet_lines[0] and not any(line.startswith("epoch") for line in quiet_lines)


def test_the_accuracy_axis_shows_the_last_tenths_of_a_percent():
    from digit_recognizer.plots import plot_curves

    history = [{"epoch": e, "loss": 1 / e, "val_loss": 1 / e, "accuracy": a, "val_accuracy": v}
               for e, a, v in [(1, 0.5, 0.16), (2, 0.985, 0.99), (3, 0.992, 0.995), (4, 0.995, 0.996)]]
    figure = plot_curves(history)
    low, high = figure.axes[1].get_ylim()
    assert 0.97 < low < 0.985 and 0.996 <= high <= 1.0


@pytest.mark.parametrize("target", ["a directory", "under a file"])
def test_output_files_are_checked_before_any_work(small_data_dir, tmp_path, capsys, target):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    out = tmp_path / ("folder" if target == "a directory" else "file/x")
    code = main(["predict", "--model", str(tmp_path / "absent-run"), "--test", str(small_data_dir / "test.csv"),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and str(out) in err and len(err.strip().splitlines()) == 1, err  # before the model is read
    assert main(["export", "--model", str(tmp_path / "absent-run"), "--onnx", str(out)]) == 2
    assert str(out) in capsys.readouterr().err
