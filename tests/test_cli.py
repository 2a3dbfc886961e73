"""What a user meets at the command line and in the README that the other test files do not cover: compare
with folds and its refusals, --cluster without Ray or with a bad address or share, Ctrl-C, --version, the mlp
method, and the README's Python example run as written."""

from __future__ import annotations

import json
import os
import re
import sys
from importlib.metadata import version
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_FLAGS, one_error_line

import digit_recognizer.train as train_module
from digit_recognizer import __version__
from digit_recognizer.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"



def test_compare_with_folds_scores_every_row_out_of_fold(small_data_dir, tmp_path, capsys):
    """compare --folds 2 fits each method on each fold and scores it on the other: 100 held-out rows per fold,
    each method's accuracy the mean of its two folds', and a submission per method."""
    out = tmp_path / "cmp"
    assert main(["compare", "--data-dir", str(small_data_dir), "--out", str(out), "--models", "logreg,knn",
                 "--folds", "2", "--quiet"]) == 0, capsys.readouterr().err
    table = pd.read_csv(out / "comparison.csv").set_index("model")
    assert list(table.index) == ["logreg", "knn"]
    assert (table.folds == 2).all() and (table.n_train == 100).all() and (table.n_val == 100).all()
    for model in ("logreg", "knn"):
        folds = [json.loads((out / "jobs" / f"{model}-fold{k}" / "job.json").read_text()) for k in (0, 1)]
        assert table.accuracy[model] == pytest.approx(np.mean([fold["accuracy"] for fold in folds]))
        assert table.accuracy_std[model] == pytest.approx(np.std([fold["accuracy"] for fold in folds]))
        assert len(pd.read_csv(out / "submissions" / f"{model}.csv")) == 30


@pytest.mark.parametrize(("args", "fault"), [
    (["--models", "knn,logreg,knn"], "--models names a method twice: knn,logreg,knn"),
    (["--folds", "0"], "--folds must be >= 1"),
    (["--folds", "1", "--val-fraction", "1.5"], "--val-fraction between 0 and 1"),
    (["--folds", "50"], "50 folds need at least 50 rows of every digit"),
    (["--seed", "-1"], "--seed must be in 0 .. 2^31 - 1"),
    (["--seed", str(2**31)], "--seed must be in 0 .. 2^31 - 1"),
])
def test_compare_refuses_what_cannot_be_compared(args, fault, small_data_dir, tmp_path, capsys):
    """compare refuses a method named twice, folds below 1 or more than the data has of a digit, a held-out
    fraction outside (0, 1) and a seed out of range: exit 2, one line, nothing written."""
    out = tmp_path / "cmp"
    assert main(["compare", "--data-dir", str(small_data_dir), "--out", str(out), "--models", "logreg,knn",
                 *args]) == 2
    one_error_line(capsys, fault)
    assert not out.exists()


def test_cluster_without_ray_exits_2_with_the_install_hint(small_data_dir, tmp_path, monkeypatch, capsys):
    """--cluster where Ray is not installed exits 2 with one line saying what to install, and trains nothing."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with patch.dict(os.environ):  # the Ray settings the cluster sets before importing it go with the test
        code = main(["train", "--train", str(small_data_dir / "train.csv"), "--out", str(tmp_path / "out"),
                     *TINY_FLAGS, "--cluster", "auto"])
    assert code == 2
    one_error_line(capsys, "--cluster needs Ray", "pip install 'digit-recognizer[ray]'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["nohost", "localhost:port", "ray://:10001", "10.0.0.1:"])
def test_a_malformed_cluster_address_exits_2_naming_the_forms(address, small_data_dir, tmp_path, capsys):
    """A --cluster address that is neither auto, HOST:PORT nor ray://HOST:PORT exits 2 with one line, at once
    (nothing is tried to connect to)."""
    pytest.importorskip("ray")
    with patch.dict(os.environ):
        code = main(["train", "--train", str(small_data_dir / "train.csv"), "--out", str(tmp_path / "out"),
                     *TINY_FLAGS, "--cluster", address])
    assert code == 2
    one_error_line(capsys, f"--cluster {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("share", [["--cpus-per-job", "0"], ["--cpus-per-job", "-1"], ["--gpus-per-job", "-0.5"],
                                   ["--gpus-per-job", "65"]])
def test_a_job_share_out_of_range_exits_2(share, small_data_dir, tmp_path, capsys):
    """CPUs per job must be above 0 and GPUs per job in 0 .. 64: anything else exits 2 with one line, before
    any training, with or without --cluster."""
    code = main(["train", "--train", str(small_data_dir / "train.csv"), "--out", str(tmp_path / "out"),
                 *TINY_FLAGS, *share])
    assert code == 2
    one_error_line(capsys, "--cpus-per-job must be above 0 and --gpus-per-job in 0 .. 64")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_training_exits_130_with_one_line(small_data_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C while a network trains ends the command with exit code 130 (the shell's for SIGINT) and one line,
    not a traceback, and no submission is written."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "fit", interrupted)
    code = main(["run", "--data-dir", str(small_data_dir), "--out", str(tmp_path / "out"), *TINY_FLAGS, "--quiet"])
    assert code == 130
    assert capsys.readouterr().err.splitlines()[-1] == "digit-recognizer: interrupted"
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_version_prints_the_package_version(capsys):
    """--version prints the installed package's version on stdout and exits 0 (argparse ends the program)."""
    with pytest.raises(SystemExit) as ended:
        main(["--version"])
    assert ended.value.code == 0
    assert capsys.readouterr().out == f"digit-recognizer {__version__}\n"
    assert __version__ == version("digit-recognizer")


def test_the_mlp_method_trains_and_predicts(small_data_dir, tmp_path, capsys):
    """run --model mlp trains the fully connected network and writes a submission; predict with the run writes
    the same labels."""
    out = tmp_path / "mlp"
    assert main(["run", "--model", "mlp", "--epochs", "1", "--data-dir", str(small_data_dir), "--out", str(out),
                 "--quiet"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "mlp" and metrics["epochs"] == 1 and 0 <= metrics["val_accuracy"] <= 1
    sub = tmp_path / "sub.csv"
    assert main(["predict", "--model", str(out), "--test", str(small_data_dir / "test.csv"), "--out", str(sub)]) == 0
    submitted = pd.read_csv(out / "submission.csv")
    assert len(submitted) == 30 and submitted.Label.between(0, 9).all()
    pd.testing.assert_frame_equal(pd.read_csv(sub), submitted)


def readme_python_example() -> str:
    """The code block of README.md's "From Python" section."""
    section = README.read_text(encoding="utf-8").split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "README.md's 'From Python' section has no python code block"
    return found.group(1)


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """README.md's "From Python" example, run as written but for 1 epoch instead of 5, in an empty folder:
    it prints the validation accuracy, writes runs/five/submission.csv, and loads a model that predicts."""
    code, shortened = re.subn(r"^cfg\.epochs = \d+", "cfg.epochs = 1", readme_python_example(), flags=re.MULTILINE)
    assert shortened == 1, "the example no longer sets cfg.epochs on a line of its own: shorten it another way"
    monkeypatch.chdir(tmp_path)
    example: dict = {}
    exec(compile(code, str(README), "exec"), example)
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) == example["metrics"]["val_accuracy"]
    assert (tmp_path / "runs" / "five" / "submission.csv").is_file()
    assert example["model"].predict(example["test"].images[:5]).shape == (5,)
