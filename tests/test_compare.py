"""compare: every method on the same split, its table, figure and submissions; the classic methods' files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import PNG_MAGIC

import digit_recognizer.jobs as jobs_module
from digit_recognizer.cli import main
from digit_recognizer.config import METHODS, method_config
from digit_recognizer.data import read_test, split_indices
from digit_recognizer.methods import estimator_proba, load_estimator, make_estimator, save_estimator

CLASSIC = ["logreg", "knn", "svm", "forest"]


class SteadyClock:
    """Stands for the time module where jobs are timed: each reading is 0.75 s after the one before."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.75
        return self.now


def test_compare_on_a_small_slice(small_data_dir, tmp_path, capsys, monkeypatch):
    """compare of the classic methods on 150 digits: one row per method with its settings, held-out size and
    times (read on a steady fake clock, so exact on any machine), accuracies far above chance (these methods
    leave nothing to chance: the same reading every run), the figure, and a submission per method."""
    monkeypatch.setattr(jobs_module, "time", SteadyClock())
    out = tmp_path / "cmp"
    code = main(["compare", "--data-dir", str(small_data_dir), "--out", str(out), "--quiet",
                 "--models", ",".join(CLASSIC), "--val-fraction", "0.25"])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "comparison.csv")
    assert table["model"].tolist() == CLASSIC
    for column in ("model", "accuracy", "fit_seconds", "predict_seconds", "settings"):
        assert column in table.columns
    assert table["accuracy"].between(0.5, 1.0).all()  # 150 real digits are enough to beat chance by far
    assert (table["fit_seconds"] == 0.75).all() and (table["predict_seconds"] == 0.75).all()
    assert (table["n_val"] == 50).all()
    assert "PCA(n_components=30" in table.set_index("model").loc["knn", "settings"]
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    test_rows = len(read_test(small_data_dir / "test.csv"))
    for name in CLASSIC:
        sub = pd.read_csv(out / "submissions" / f"{name}.csv")
        assert list(sub.columns) == ["ImageId", "Label"] and len(sub) == test_rows


def test_unknown_model_lists_the_known_ones(tmp_path, capsys):
    """An unknown method, to compare or to run, exits 2 with one line listing the known ones."""
    code = main(["compare", "--out", str(tmp_path / "cmp"), "--models", "knn,deepforest"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "deepforest" in err and all(name in err for name in METHODS)
    assert not (tmp_path / "cmp").exists()
    assert main(["run", "--out", str(tmp_path / "r"), "--model", "deepforest"]) == 2
    assert "known: logreg" in capsys.readouterr().err


def test_folds_partition_the_data():
    """K folds hold out every row exactly once, never a row a fold also trains on."""
    labels = np.repeat(np.arange(10), 12)
    pairs = split_indices(labels, 4, 0.1, seed=0)
    assert len(pairs) == 4
    held_out = np.concatenate([va for _, va in pairs])
    assert sorted(held_out.tolist()) == list(range(len(labels)))  # every row held out exactly once
    for tr, va in pairs:
        assert not set(tr) & set(va)


@pytest.mark.parametrize("name", CLASSIC)
def test_classic_methods_save_and_load_without_pickle(name, embedded, tmp_path):
    """A fitted classic method saved with skops loads back predicting the same, with probabilities summing to 1."""
    train, _ = embedded
    estimator = make_estimator(name).fit(train.images[:300], train.labels[:300])
    save_estimator(estimator, tmp_path / "model.skops")
    loaded = load_estimator(name, method_config(name), tmp_path / "model.skops")
    np.testing.assert_array_equal(loaded.predict(train.images[300:350]), estimator.predict(train.images[300:350]))
    proba = estimator_proba(loaded, train.images[300:350])
    assert proba.shape == (50, 10)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)


def test_run_and_predict_with_a_classic_method(small_data_dir, tmp_path):
    """run --model knn writes its model and outputs; predict with it writes the run's own submission."""
    out = tmp_path / "knn"
    assert main(["run", "--data-dir", str(small_data_dir), "--out", str(out), "--model", "knn", "--quiet"]) == 0
    for name in ("model.skops", "config.json", "metrics.json", "confusion_matrix.png", "errors.png",
                 "submission.csv"):
        assert (out / name).is_file(), name
    sub = tmp_path / "sub.csv"
    assert main(["predict", "--model", str(out), "--test", str(small_data_dir / "test.csv"), "--out", str(sub)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(sub), pd.read_csv(out / "submission.csv"))
