"""What a search writes from its study: ``trials.csv``, ``best.toml``, ``best_command.txt`` and two figures.

All are written together, from one reading of the whole study, so that they always describe the same study.
"""

from __future__ import annotations

import json
import shlex
import warnings
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; never needs a display

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from .errors import TrainingDiverged
from .rundir import (
    BEST_COMMAND,
    BEST_CONFIG,
    SEARCH_HISTORY_FIGURE,
    SEARCH_IMPORTANCES_FIGURE,
    STUDY_FILE,
    TRIALS_TABLE,
    RunDir,
)
from .tune_space import Param

OBJECTIVE = "mean held-out accuracy"


def write_outputs(study: optuna.Study, run_dir: RunDir, method: str, space: dict[str, Param], folds: int,
                   data_dir: str | Path | None) -> dict:
    """``trials.csv``, the figures, ``best.toml`` and ``best_command.txt``, from every trial of the study."""
    trials = study.get_trials(deepcopy=False)
    run_dir.write_table(trials_table(trials, space), TRIALS_TABLE)
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    _write_figures(study, run_dir, len(finished))
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    if not finished:
        for stale in (BEST_CONFIG, BEST_COMMAND):  # they would describe no trial of this study
            run_dir.remove(stale)
        raise TrainingDiverged(f"no trial of the search finished ({counts['fail']} failed: see "
                               f"{run_dir.path / TRIALS_TABLE}); narrow the space (a lower learning rate?)")
    best = study.best_trial
    command = ["digit-recognizer", "run", "--model", method, "--config", str(run_dir.path / BEST_CONFIG)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    command = shlex.join(command)
    run_dir.write_text(best_toml(best.user_attrs["config"], [
        f"The best of {len(finished)} finished trials in {STUDY_FILE} (trial {best.number}): {OBJECTIVE} "
        f"{best.value:.4f} over {folds} folds, model {method}.", f"Train it: {command}"]), BEST_CONFIG)
    run_dir.write_text(command + "\n", BEST_COMMAND)
    recipe = next((t for t in trials if t.user_attrs.get("recipe") and t.state == TrialState.COMPLETE), None)
    return {"trials": len(trials), **counts, "best_trial": best.number, "best_accuracy": best.value,
            "recipe_accuracy": recipe.value if recipe else None, "folds": folds,
            "best_config": str(run_dir.path / BEST_CONFIG), "command": command}


def trials_table(trials: list[FrozenTrial], space: dict[str, Param]) -> pd.DataFrame:
    """One row per trial: its number, whether it is the recipe itself (the first trial of a new study, when the
    space holds the recipe's values), state, accuracy (the mean over the folds it finished), wall seconds, folds
    finished, the searched settings, and why it failed."""
    rows = []
    for trial in trials:
        scores = [fold["accuracy"] for fold in trial.user_attrs.get("folds", {}).values()]
        ended = trial.datetime_complete is not None and trial.datetime_start is not None
        rows.append({
            "number": trial.number,
            "recipe": bool(trial.user_attrs.get("recipe")),
            "state": trial.state.name.lower(),
            "accuracy": trial.value if trial.value is not None else (float(np.mean(scores)) if scores else None),
            "seconds": round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1) if ended else None,
            "folds_done": len(scores),
            **{name: trial.params.get(name) for name in space},
            "error": trial.user_attrs.get("error", "interrupted" if trial.state == TrialState.FAIL else ""),
        })
    return pd.DataFrame(rows, columns=["number", "recipe", "state", "accuracy", "seconds", "folds_done", *space,
                                       "error"])


def _write_figures(study: optuna.Study, run_dir: RunDir, finished: int) -> None:
    """Optuna's history of the objective and parameter importances (matplotlib)."""
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental API; "too few trials" notes
        ax = plot_optimization_history(study, target_name=OBJECTIVE)
        ax.set_title(f"Search history: {OBJECTIVE} per trial")  # replaces Optuna's title
        run_dir.write_figure(ax.figure, SEARCH_HISTORY_FIGURE)
        if finished >= 2:
            ax = plot_param_importances(study, target_name=OBJECTIVE)
            ax.set_title(f"Parameter importances for the {OBJECTIVE} ({finished} finished trials)", loc="left")
            figure = ax.figure
        else:
            figure, ax = plt.subplots(figsize=(6.4, 2))
            ax.axis("off")
            ax.text(0.5, 0.5, f"Parameter importances need 2 finished trials ({finished} so far)",
                    ha="center", va="center")
        run_dir.write_figure(figure, SEARCH_IMPORTANCES_FIGURE)


def best_toml(settings: dict, comments: list[str]) -> str:
    """Settings as a TOML file that ``run --config`` reads as is, under comment lines."""
    lines = [f"# {comment}" for comment in comments]
    lines += [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # the shortest exact form, valid TOML (1e-05, 0.1, 12)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")
