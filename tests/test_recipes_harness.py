"""The recipe harness, benchmarks/recipes.py, end to end on 300 embedded digits: two tiny recipes, one seed, 2 folds
of 1 epoch; resuming without training; the table; a bad recipe refused before anything trains."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from digit_recognizer.data import Digits, load_embedded, write_csv

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "recipes.py"
# A network trained in about a second: the fast recipe shrunk to 4-8-8 filters and 16 dense units, one epoch.
TINY = "epochs = 1\nfilters = [4, 8, 8]\ndense = 16\ndevice = \"cpu\"\n"
ROWS = 300


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    """The harness imported as a module (benchmarks/ is not a package); it finds seed_recipe.py beside itself."""
    spec = importlib.util.spec_from_file_location("recipes_harness", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, list[str]]:
    """A data folder of 300 labelled digits, two recipe files, and the harness's arguments for them."""
    train = load_embedded()[0]
    data = tmp_path / "data"
    data.mkdir()
    write_csv(Digits(train.images[:ROWS], train.labels[:ROWS]), data / "train.csv")
    (tmp_path / "small.toml").write_text('model = "fast"\n' + TINY)
    (tmp_path / "smaller_batch.toml").write_text(TINY + "batch_size = 64\nlabel_smoothing = 0.0\n")
    args = [str(tmp_path / "small.toml"), str(tmp_path / "smaller_batch.toml"), "--seeds", "0", "--folds", "2",
            "--data-dir", str(data), "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "r" / "out.jsonl")]
    return tmp_path, args


def refuse_training(*args: object, **kwargs: object) -> None:
    raise AssertionError("trained although nothing was left to train")


def lines(path: Path) -> list[dict]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def test_harness_measures_resumes_and_tabulates(harness, setup, monkeypatch, capsys):
    tmp_path, args = setup
    results = tmp_path / "r" / "out.jsonl"
    assert harness.main(args) == 0
    measured = lines(results)
    assert [line["recipe"] for line in measured] == ["small", "smaller_batch"]
    for line in measured:
        assert line["benchmark"] == "recipes" and line["model"] == "fast"
        assert line["seed"] == 0 and line["folds"] == 2 and line["rows"] == ROWS
        assert line["settings"]["filters"] == [4, 8, 8] and line["settings"]["seed"] == 0
        assert "device" not in line["settings"]
        for kind in ("", "_tta"):
            assert 0 <= line[f"errors{kind}"] <= ROWS
            assert line[f"errors{kind}"] == round((1 - line[f"accuracy{kind}"]) * ROWS)
        assert 0 < line["seconds_per_epoch"] <= line["train_seconds"]
        assert line["trained_here"] and len(line["load_start"]) == len(line["load_end"]) == 3
        assert isinstance(line["busy"], bool)
        assert {"cpu", "cores", "torch", "threads"} <= set(line["machine"])
        assert set(line["git"]) == {"commit", "dirty"} and line["time"].endswith("+00:00")
    assert measured[1]["settings"]["batch_size"] == 64 and measured[0]["settings"]["batch_size"] == 128

    # Run again: every recipe x seed is in the results file, so nothing trains and no line is added.
    monkeypatch.setattr(harness, "train_run", refuse_training)
    assert harness.main(args) == 0
    assert lines(results) == measured
    # Without the results file, the finished run directories are read back, not retrained.
    results.unlink()
    assert harness.main(args) == 0
    again = lines(results)
    assert [(a["errors"], a["errors_tta"]) for a in again] == [(m["errors"], m["errors_tta"]) for m in measured]
    assert not any(line["trained_here"] for line in again)

    capsys.readouterr()
    figure, timings = tmp_path / "f.png", tmp_path / "r" / "time.jsonl"
    table_args = ["--table", "--results", str(results), "--timings", str(timings), "--baseline", "small"]
    assert harness.main([*table_args, "--figure", str(figure), "--preset", "smaller_batch"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 4 and table[2].startswith("| small |") and table[3].startswith("| smaller_batch |")
    difference = again[1]["errors"] - again[0]["errors"]
    assert "| baseline |" in table[2] and f"{difference:+.1f} (n=1)" in table[3]
    assert "| - | - |" in table[2]  # no quiet timing yet
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert harness.main([*table_args, "--figure", str(figure), "--preset", "fast"]) == 2  # not in the results
    assert "no recipe 'fast' (--preset)" in capsys.readouterr().err

    # --time: one epoch of each recipe on a fold's worth of rows, one line each; the table then shows them, with
    # the quiet training seconds of all folds (seconds per epoch x epochs x folds).
    recipe_files = args[:2]
    assert harness.main([*recipe_files, "--time", "--folds", "2", "--data-dir", args[args.index("--data-dir") + 1],
                         "--timings", str(timings)]) == 0
    timed = lines(timings)
    assert [line["recipe"] for line in timed] == ["small", "smaller_batch"]
    assert all(line["benchmark"] == "recipes_time" and line["rows"] == ROWS // 2 and line["seconds_per_epoch"] > 0
               for line in timed)
    for line in timed:
        line["busy"] = False  # whatever else ran while the tests did, the table takes these as quiet
    timings.write_text("".join(json.dumps(line) + "\n" for line in timed))
    capsys.readouterr()
    assert harness.main(table_args) == 0
    row = capsys.readouterr().out.splitlines()[3].split("|")
    assert float(row[7]) == pytest.approx(timed[1]["seconds_per_epoch"], abs=0.01)
    assert float(row[8]) == pytest.approx(timed[1]["seconds_per_epoch"] * 1 * 2, abs=1)  # 1 epoch x 2 folds


def test_bad_recipe_is_refused_before_training(harness, setup, monkeypatch, capsys):
    tmp_path, args = setup
    monkeypatch.setattr(harness, "train_run", refuse_training)
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY + "learning_rate = 0.1\n")
    assert harness.main([*args, str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "learning_rate" in err[0]
    bad.write_text(TINY + "lr = -1\n")  # the right type, a value that cannot train
    assert harness.main([*args, str(bad)]) == 2
    assert "lr must be" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def test_every_committed_recipe_file_still_makes_the_recipe_it_measured(harness):
    """A recipe file updates the method's recipe of the day, so a file that leaves a setting out changes meaning when
    the preset changes: each file in benchmarks/recipes/ must still give the settings its lines in the committed
    results were measured with (the harness refuses to add seeds to a recipe that no longer matches)."""
    root = HARNESS.parent
    results = root / "results" / "recipes_oof.jsonl"
    recipes = [harness.load_recipe(path, "fast") for path in sorted((root / "recipes").glob("*.toml"))]
    measured = lines(results)
    assert measured and {line["recipe"] for line in measured} <= {recipe.name for recipe in recipes}
    seeds = sorted({line["seed"] for line in measured})
    for data in {line["data"] for line in measured}:
        done = harness.already_measured(results, recipes, seeds, 5, data)
        # every line of this data was checked against its recipe file (none skipped as unknown)
        assert done == {(line["recipe"], line["seed"]) for line in measured if line["data"] == data}
