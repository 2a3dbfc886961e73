"""A single run end to end: its outputs, the command line's settings and refusals, and its warnings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import FAST_RECIPE, PNG_MAGIC, SEED_RECIPE, TINY_FLAGS, pinned, pinned_file

from digit_recognizer.cli import main
from digit_recognizer.data import Digits, read_train, write_csv
from digit_recognizer.runs import train_run

RUN_FILES = ["model.safetensors", "config.json", "history.csv", "curves.png", "confusion_matrix.png",
             "errors.png", "metrics.json", "submission.csv"]


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """`digit-recognizer run` of the seed CNN on the embedded default, narrowed to 8-16-32 filters and 64 dense
    units, 2 epochs, every setting pinned by a config file (conftest.SEED_RECIPE)."""
    folder = tmp_path_factory.mktemp("run")
    config = pinned_file(folder, SEED_RECIPE, filters=(8, 16, 32), dense=64, epochs=2)
    assert main(["run", "--out", str(folder / "out"), "--config", str(config), "--quiet"]) == 0
    return folder / "out"


@pytest.mark.slow
def test_run_writes_every_output(embedded_run):
    """Every output file is written, the figures are PNG files, and no temporary file is left."""
    for name in RUN_FILES:
        assert (embedded_run / name).is_file(), name
    for name in ("curves.png", "confusion_matrix.png", "errors.png"):
        assert (embedded_run / name).read_bytes()[:8] == PNG_MAGIC
    assert not list(embedded_run.glob(".*tmp"))


@pytest.mark.slow
def test_history_and_metrics(embedded_run):
    """history.csv has one row per epoch; metrics.json the validation accuracy of the last epoch, where the run
    trained, and how fast. The pinned settings reached 0.91 when this was written: 0.8 leaves room for another
    torch's numerics, and chance is 0.1."""
    history = pd.read_csv(embedded_run / "history.csv")
    assert list(history.columns[:6]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert history["epoch"].tolist() == [1, 2]
    metrics = json.loads((embedded_run / "metrics.json").read_text())
    for key in ("val_accuracy", "val_loss", "epochs", "train_seconds", "device", "seconds_per_epoch"):
        assert key in metrics
    assert metrics["epochs"] == 2 and metrics["device"] == "cpu"
    assert metrics["val_accuracy"] == pytest.approx(history["val_accuracy"].iloc[-1])
    assert metrics["val_accuracy"] > 0.8


@pytest.mark.slow
def test_submission_format(embedded_run):
    """submission.csv is Kaggle's: ImageId from 1, a digit per test image; a network at 0.9 uses every digit."""
    sub = pd.read_csv(embedded_run / "submission.csv")
    assert list(sub.columns) == ["ImageId", "Label"]
    assert len(sub) == 1000
    assert sub["ImageId"].tolist() == list(range(1, 1001))
    assert sub["Label"].between(0, 9).all()
    assert sub["Label"].nunique() == 10


@pytest.mark.slow
def test_predict_command_matches_run(embedded_run, small_data_dir, tmp_path):
    """predict with the run's model writes the same labels as the run's own submission for the same images."""
    out = tmp_path / "sub.csv"
    assert main(["predict", "--model", str(embedded_run), "--test", str(small_data_dir / "test.csv"),
                 "--out", str(out)]) == 0
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["ImageId", "Label"] and len(sub) == 30
    # The small folder's test rows are the first 30 test images of the embedded default.
    full = pd.read_csv(embedded_run / "submission.csv")
    np.testing.assert_array_equal(sub["Label"].to_numpy(), full["Label"].to_numpy()[:30])


def test_predict_with_a_folder_that_is_not_a_run(small_data_dir, tmp_path, capsys):
    """predict with a folder that holds no run exits 2 naming the missing file, and writes nothing."""
    code = main(["predict", "--model", str(tmp_path), "--test", str(small_data_dir / "test.csv"),
                 "--out", str(tmp_path / "sub.csv")])
    assert code == 2
    assert "config.json: not found" in capsys.readouterr().err
    assert not (tmp_path / "sub.csv").exists()


def test_train_command_with_config_file_and_flag_override(small_data_dir, tmp_path):
    """train takes settings from a TOML file, a flag wins over the file, and no submission is written."""
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
    (["--optimizer", "sgdx"], "invalid choice: 'sgdx' (choose from 'rmsprop', 'adam', 'adamw', 'sgd')"),
    (["--val-fraction", "1.5"], "val_fraction"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_settings_exit_2(args, message, tmp_path, capsys):
    """A bad flag or setting exits 2 with one line naming it, before anything is written."""
    code = main(["run", "--out", str(tmp_path / "out"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_setting_in_config_file(tmp_path, capsys):
    """A misspelt setting in a config file exits 2 naming it."""
    config = tmp_path / "c.json"
    config.write_text('{"epoch": 3}')
    assert main(["train", "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "unknown setting 'epoch'" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_on_competition_data(shared_data, tmp_path):
    """A few thousand real Kaggle rows, 2 epochs of the seed network (every setting pinned, Adam): at least 95 %
    on validation.

    Adam instead of the seed's RMSprop: with RMSprop at 1e-3 the eval-mode accuracy still swings between
    60 % and 97 % after ~170 steps (BatchNorm statistics lag the fast-moving weights), which says nothing about
    the pipeline. The full recipe (99.6 %) is measured by benchmarks/seed_recipe.py.
    """
    train = read_train(shared_data / "train.csv.gz")
    rows = Digits(train.images[:8000], train.labels[:8000])
    metrics = train_run(rows, tmp_path / "run", "cnn", pinned(SEED_RECIPE, epochs=2, optimizer="adam"),
                        progress=False)
    assert metrics["n_train"] == 7200 and metrics["n_val"] == 800
    assert metrics["val_accuracy"] >= 0.95, metrics
    assert (tmp_path / "run" / "curves.png").is_file() and (tmp_path / "run" / "errors.png").is_file()


TINY = ["--preset", "fast", *TINY_FLAGS]


def test_a_diverging_run_exits_1_and_writes_no_submission(tmp_path, capsys):
    """A learning rate of a million (SGD, every setting pinned) makes the loss overflow: the run exits 1 with one
    line saying it diverged, and writes no submission and no job record."""
    out = tmp_path / "out"  # the embedded digits: enough batches for the loss to overflow within the epoch
    config = pinned_file(tmp_path, FAST_RECIPE, filters=(4, 8, 8), dense=16, epochs=3, lr=1e6)
    code = main(["run", "--out", str(out), "--model", "fast", "--config", str(config), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "diverged" in err and len(err.strip().splitlines()) == 1
    assert not (out / "submission.csv").exists() and not (out / "job.json").exists()


@pytest.mark.parametrize("ensemble", [[], ["--members", "2", "--folds", "2"]], ids=["single", "ensemble"])
def test_a_run_at_chance_level_is_warned(ensemble, tmp_path, capsys):
    """Trained on blank images, a network predicts the same digit for every image: on held-out rows with as many
    of each digit its accuracy is exactly 0.1, and the run, single or an ensemble, ends with the warning."""
    data = tmp_path / "blank"
    data.mkdir()
    write_csv(Digits(np.zeros((200, 784), np.uint8), np.repeat(np.arange(10), 20)), data / "train.csv")
    write_csv(Digits(np.zeros((5, 784), np.uint8)), data / "test.csv")
    code = main(["run", "--data-dir", str(data), "--out", str(tmp_path / "o"), *TINY, *ensemble, "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["ensemble_accuracy" if ensemble else "val_accuracy"] == 0.1
    assert err.strip().splitlines()[-1].startswith("digit-recognizer: warning: accuracy 0.1000 is at chance level")


def test_a_run_well_above_chance_is_not_warned(small_data_dir, tmp_path, capsys):
    """k-nearest neighbours on 180 real digits, which leaves nothing to chance, scores well above chance level
    (0.2) and prints only its result line."""
    code = main(["run", "--data-dir", str(small_data_dir), "--out", str(tmp_path / "o"), "--model", "knn",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["val_accuracy"] >= 0.5
    assert len(err.strip().splitlines()) == 1 and "warning" not in err


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
    """A bad setting, by flag or config file, exits 2 with one line before the (absent) data is looked at."""
    if config is not None:
        path = tmp_path / ("c.json" if config.startswith("[") else "c.toml")
        path.write_text(config)
        args = [*args, "--config", str(path)]
    code = main(["run", "--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_found_before_training(tmp_path, capsys):
    """An --out under a file exits 2 saying it cannot be written, before the (absent) data is looked at."""
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
    """Data too small for the validation split or the folds asked for exits 2 with one line, before training."""
    folder = tmp_path / "data"
    write_csv(Digits(embedded[0].images[:rows], embedded[0].labels[:rows]), folder / "train.csv")
    write_csv(Digits(embedded[1].images[:5]), folder / "test.csv")
    code = main(["run", "--data-dir", str(folder), "--out", str(tmp_path / "out"), *TINY, *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "run.json").exists()


@pytest.mark.slow
def test_progress_to_a_file_is_one_line_per_epoch_and_quiet_keeps_the_result(small_data_dir, tmp_path):
    """With stderr to a file, progress is one plain line per epoch (no bars); --quiet leaves the result line."""
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
    """The curves' accuracy axis zooms on the last epochs' values, not on the first epoch's 16 %."""
    from digit_recognizer.plots import plot_curves

    history = [{"epoch": e, "loss": 1 / e, "val_loss": 1 / e, "accuracy": a, "val_accuracy": v}
               for e, a, v in [(1, 0.5, 0.16), (2, 0.985, 0.99), (3, 0.992, 0.995), (4, 0.995, 0.996)]]
    figure = plot_curves(history)
    low, high = figure.axes[1].get_ylim()
    assert 0.97 < low < 0.985 and 0.996 <= high <= 1.0


@pytest.mark.parametrize("target", ["a directory", "under a file"])
def test_output_files_are_checked_before_any_work(small_data_dir, tmp_path, capsys, target):
    """predict and export refuse an output that is a directory or lies under a file, before the model is read."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    out = tmp_path / ("folder" if target == "a directory" else "file/x")
    code = main(["predict", "--model", str(tmp_path / "absent-run"), "--test", str(small_data_dir / "test.csv"),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and str(out) in err and len(err.strip().splitlines()) == 1, err  # before the model is read
    assert main(["export", "--model", str(tmp_path / "absent-run"), "--onnx", str(out)]) == 2
    assert str(out) in capsys.readouterr().err
