"""Benchmark: training recipes compared out of fold over several seeds, one JSON line per recipe x seed.

    python benchmarks/recipes.py benchmarks/recipes/baseline.toml other.toml --seeds 0,1,2 \\
        --data-dir ../shared/data/digit-recognizer --out runs/recipes --results benchmarks/results/recipes.jsonl
    python benchmarks/recipes.py --table --results benchmarks/results/recipes.jsonl [--baseline NAME] \\
        [--figure F.png [--preset NAME]]

A recipe is a TOML file of training settings in the format ``digit-recognizer run --config FILE`` reads, plus an
optional ``model = "fast"`` naming the method whose recipe the settings change (default: ``--model``); its name is
the file's stem. Every recipe is checked before anything trains. Each recipe x seed trains one network on each of
``--folds`` stratified folds of all the training rows (``train_run(..., members=1, folds=K)``) into
``OUT/<recipe>-seed<seed>/`` and appends one line to the results file: the errors out of fold on every row,
without and with test-time augmentation, seconds, the machine and its load, and the commit. Seeds are the outer
loop, so that after N complete rounds every recipe has N seeds.

Killed, the same command resumes: a recipe x seed already in the results file is skipped, a finished run
directory is read rather than trained, and an unfinished one resumes after its last finished fold (and epoch).

``--time`` trains one epoch of each recipe on a fold's worth of rows and appends its seconds to ``--timings``:
run it with nothing else on the machine, since the out-of-fold runs' own seconds are often taken while other
work shares it. ``--table`` summarises the results file per recipe: seeds, errors (mean ± standard deviation
over seeds), seconds (the quiet ones too where ``--timings`` has them), and the paired difference against the
baseline on the seeds both have. Lines of the file not written by this harness (hand-made records of earlier
comparisons) are skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

import digit_recognizer
from digit_recognizer.cli import MAX_SETTINGS_FILE
from digit_recognizer.config import TrainConfig, check_method, completed, method_config
from digit_recognizer.data import Digits, find_csv, read_train
from digit_recognizer.errors import InputError, TrainingDiverged, first_line
from digit_recognizer.files import read_bounded
from digit_recognizer.jobs import check_split, member_name
from digit_recognizer.rundir import HISTORY_FILE, METRICS_FILE, RunDir, digest
from digit_recognizer.runs import train_run
from digit_recognizer.train import resolve_device

sys.path.insert(0, str(Path(__file__).parent))
from seed_recipe import machine

BENCHMARK = "recipes"  # marks this harness's lines in a results file that may hold others
TIMING = "recipes_time"  # marks the lines of --time


class HarnessError(Exception):
    """A bad recipe, argument or results file: one line, exit code 2, before any training where it can be."""


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str
    config: TrainConfig  # the method's recipe updated by the file; the seed is set per run


def load_recipe(path: Path, default_model: str) -> Recipe:
    """A recipe file, checked as ``run --config`` checks a settings file, then its values as ``run`` does."""
    try:
        values = tomllib.loads(read_bounded(path, MAX_SETTINGS_FILE, "a recipe").decode("utf-8"))
    except InputError as err:
        raise HarnessError(str(err)) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise HarnessError(f"{path}: cannot read TOML ({first_line(err)})") from None
    model = values.pop("model", default_model)
    if "seed" in values:  # the folds and the network's start are drawn from the seed: --seeds decides them
        raise HarnessError(f"{path}: 'seed' is set by --seeds, not by a recipe")
    try:
        given = TrainConfig.from_dict(values, str(path))  # names and types; the message names the file
    except ValueError as err:
        raise HarnessError(str(err)) from None
    try:
        if not isinstance(model, str):
            raise ValueError(f"model must be a string, got {model!r}")
        if not check_method(model).network:
            raise ValueError(f"model '{model}' is not a network; only networks train on folds")
        # As `run --model M --config FILE`: the method's recipe, updated by the file's settings.
        cfg = dataclasses.replace(method_config(model), **{key: getattr(given, key) for key in values})
        cfg.validate()
        resolve_device(cfg.device)
    except (ValueError, RuntimeError) as err:
        raise HarnessError(f"{path}: {err}") from None
    return Recipe(path.stem, model, cfg)


def settings(cfg: TrainConfig) -> dict:
    """The settings that decide a result, as they read back from JSON (the device does not decide one)."""
    return cfg.settings()


def same_settings(recorded: object, now: dict) -> bool:
    """Whether a line's settings are ``now``'s (a setting added after the line was written at its default)."""
    return isinstance(recorded, dict) and completed(recorded) == now


def read_results(path: Path) -> tuple[list[dict], int]:
    """This harness's lines of the results file, and how many other lines it holds."""
    if not path.exists():
        return [], 0
    lines, others = [], 0
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as err:
            raise HarnessError(f"{path}:{number}: not a JSON line ({err.msg})") from None
        if isinstance(line, dict) and line.get("benchmark") == BENCHMARK:
            lines.append(line)
        else:
            others += 1
    return lines, others


def already_measured(path: Path, recipes: list[Recipe], seeds: list[int], folds: int, data: str) -> set[tuple]:
    """The (recipe, seed) pairs the results file holds; refuses one measured otherwise, since its line and the
    new ones would then be compared as if they were the same recipe."""
    wanted = {(r.name, seed): r for r in recipes for seed in seeds}
    done = set()
    for line in read_results(path)[0]:
        key = (line.get("recipe"), line.get("seed"))
        if key not in wanted:
            continue
        recipe = wanted[key]
        expected = {"model": recipe.model, "settings": settings(dataclasses.replace(recipe.config, seed=key[1])),
                    "folds": folds, "data": data}
        changed = [field for field, value in expected.items()
                   if not (same_settings(line.get(field), value) if field == "settings" else line.get(field) == value)]
        if changed:
            raise HarnessError(f"{path}: recipe '{key[0]}' seed {key[1]} was measured with other "
                               f"{', '.join(changed)}; rename the recipe file or use another --results")
        done.add(key)
    return done


def finished_metrics(run_dir: Path, recipe: Recipe, cfg: TrainConfig, folds: int, data: str) -> dict | None:
    """metrics.json of a run directory that these settings finished on this data, else None (train_run then
    resumes the directory, or refuses one made otherwise)."""
    run = RunDir(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        return None
    made = run.read_manifest()
    wanted = {"method": recipe.model, "members": 1, "folds": folds, "data": data}
    if any(made.get(key) != value for key, value in wanted.items()) or not same_settings(made.get("train"),
                                                                                         settings(cfg)):
        return None
    return run.read_metrics()


def timings(run_dir: Path, folds: int) -> tuple[float, float]:
    """Mean seconds per epoch (training passes only) and total training seconds (with each epoch's scoring of
    the monitored rows: history's ``elapsed``, which also counts epochs trained before a resume)."""
    epoch_seconds, total, epochs = 0.0, 0.0, 0
    for fold in range(folds):
        history = pd.read_csv(RunDir(run_dir).job_dir(member_name(0, fold)) / HISTORY_FILE)
        epoch_seconds += float(history["seconds"].sum())
        epochs += len(history)
        total += float(history["elapsed"].iloc[-1]) if "elapsed" in history else float(history["seconds"].sum())
    return round(epoch_seconds / epochs, 3), round(total, 1)


def git_state() -> dict:
    """The commit of the checkout the package is imported from, and whether the package's source or this harness
    differ from it (the results file is tracked and grows with every line, so the whole tree is always dirty)."""
    package = Path(digit_recognizer.__file__).resolve().parent

    def git(*args: str) -> str:
        # --no-optional-locks: reading the state must not rewrite the index of a tree others are working in.
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=package, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel"))
        paths = [str(p) for p in (package, Path(__file__).resolve()) if p.is_relative_to(top)]
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", *paths))}
    except (OSError, subprocess.CalledProcessError):  # an installed copy, not a checkout
        return {"commit": None, "dirty": None}


def append_result(path: Path, line: dict) -> None:
    """Append ``line`` to the JSON-lines file ``path`` and print it, stamped with the load average at its end
    (a timing wants nothing else running), the machine, the package's version and commit, and the time."""
    line.update(load_end=list(os.getloadavg()), machine=machine(), version=digit_recognizer.__version__,
                git=git_state(), time=datetime.now(UTC).isoformat(timespec="seconds"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    print(json.dumps(line, indent=1))


def measure(recipe: Recipe, seed: int, train: Digits, args: argparse.Namespace, data: str) -> dict:
    """Train (or read) one recipe x seed and return its results line."""
    # The folds are StratifiedKFold(K, shuffle=True, random_state=cfg.seed) of the labels (jobs.ensemble_jobs ->
    # data.split_indices), and the network's seed is cfg.seed + 1000: recipes on the same seed share their folds,
    # which is what makes the table's paired differences fair.
    cfg = dataclasses.replace(recipe.config, seed=seed)
    run_dir = args.out / f"{recipe.name}-seed{seed}"
    load_start = os.getloadavg()
    metrics = finished_metrics(run_dir, recipe, cfg, args.folds, data)
    trained_here = metrics is None
    if metrics is None:
        metrics = train_run(train, str(run_dir), recipe.model, cfg, progress=False, members=1, folds=args.folds)
    load_end = os.getloadavg()
    # One member: the "ensemble of 1" is that member's out-of-fold prediction of every row.
    rows = metrics["rows_scored"]
    accuracy, accuracy_tta = metrics["ensemble_accuracy"], metrics["ensemble_accuracy_tta"]
    seconds_per_epoch, train_seconds = timings(run_dir, args.folds)
    threads = args.machine["threads"]
    return {
        "benchmark": BENCHMARK, "recipe": recipe.name, "model": recipe.model, "settings": settings(cfg),
        "seed": seed, "folds": args.folds, "rows": rows, "data": data,
        "errors": round((1 - accuracy) * rows), "errors_tta": round((1 - accuracy_tta) * rows),
        "accuracy": accuracy, "accuracy_tta": accuracy_tta,
        "seconds_per_epoch": seconds_per_epoch, "train_seconds": train_seconds, "run_dir": str(run_dir),
        # Our own training keeps about `threads` runnable; more than that at either end means another process
        # shared the cores. The 1-minute average at the start still carries the previous recipe's training.
        # Read from a run directory finished earlier, the loads say nothing about its training.
        "trained_here": trained_here, "load_start": list(load_start), "load_end": list(load_end),
        "busy": max(load_start[0], load_end[0]) > threads + 0.5 if trained_here else None,
        "machine": args.machine, "git": args.git, "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def append(path: Path, line: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def train_recipes(args: argparse.Namespace) -> None:
    recipes = [load_recipe(path, args.model) for path in args.recipes]  # every one checked before training
    names = [recipe.name for recipe in recipes]
    if len(set(names)) < len(names):
        raise HarnessError(f"two recipe files share a name (their stem): {', '.join(names)}")
    if args.folds < 2:
        raise HarnessError("--folds must be at least 2: the errors are counted out of fold")
    train = read_train(find_csv(args.data_dir, "train"))
    check_split(train.labels, args.folds, 0.1)  # val_fraction plays no part with folds
    data = digest(train)
    done = already_measured(args.results, recipes, args.seeds, args.folds, data)
    # Once per command: the package was imported from this commit, whatever changes while it trains.
    args.machine, args.git = machine(), git_state()
    for seed in args.seeds:
        for recipe in recipes:
            if (recipe.name, seed) in done:
                print(f"recipes: {recipe.name} seed {seed}: already in {args.results}", file=sys.stderr)
                continue
            line = measure(recipe, seed, train, args, data)
            append(args.results, line)
            print(f"recipes: {recipe.name} seed {seed}: {line['errors']} errors out of fold ({line['errors_tta']} "
                  f"with TTA) of {line['rows']:,}, {line['seconds_per_epoch']:.1f} s/epoch, "
                  f"{line['train_seconds']:.0f} s" + (", machine busy" if line["busy"] else ""), file=sys.stderr)


# --- quiet timings -------------------------------------------------------------------------------------------

def time_recipes(args: argparse.Namespace) -> None:
    """One training epoch of each recipe on a fold's worth of rows (the first (K-1)/K of train.csv), in this
    process with torch's threads, appended as one line per recipe to ``--timings``. The out-of-fold runs' own
    seconds are taken while other work may share the machine; these are the ones to compare, taken with nothing
    else running (the line records the load average before and after)."""
    import torch

    from digit_recognizer.train import build, train_epoch

    recipes = [load_recipe(path, args.model) for path in args.recipes]
    train = read_train(find_csv(args.data_dir, "train"))
    rows = len(train.labels) * (args.folds - 1) // args.folds
    pixels, labels = torch.from_numpy(train.images[:rows]), torch.from_numpy(train.labels[:rows]).long()
    info, state = machine(), git_state()
    for recipe in recipes:
        cfg = recipe.config
        load_start = os.getloadavg()
        training = build(recipe.model, cfg, torch.device("cpu"), steps_per_epoch=-(-rows // cfg.batch_size),
                         pixels=pixels)
        epoch = train_epoch(training, cfg, pixels, labels, epoch=1)
        load_end = os.getloadavg()
        line = {"benchmark": TIMING, "recipe": recipe.name, "model": recipe.model, "settings": settings(cfg),
                "rows": rows, "seconds_per_epoch": round(epoch["seconds"], 2),
                "images_per_second": round(epoch["images_per_second"]), "load_start": list(load_start),
                "load_end": list(load_end), "busy": max(load_start[0], load_end[0]) > info["threads"] + 0.5,
                "machine": info, "git": state, "time": datetime.now(UTC).isoformat(timespec="seconds")}
        append(args.timings, line)
        print(f"recipes: {recipe.name}: {line['seconds_per_epoch']:.1f} s per epoch of {rows:,} rows "
              f"({line['images_per_second']:,} images/s, {info['threads']} threads)"
              + (", machine busy" if line["busy"] else ""), file=sys.stderr)


def read_timings(path: Path) -> dict[str, dict]:
    """The last quiet timing line of each recipe in ``path`` (none if the file is absent)."""
    if not path.exists():
        return {}
    latest = {}
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            line = json.loads(text) if text.strip() else None
        except json.JSONDecodeError as err:
            raise HarnessError(f"{path}:{number}: not a JSON line ({err.msg})") from None
        if isinstance(line, dict) and line.get("benchmark") == TIMING and not line.get("busy"):
            latest[line["recipe"]] = line
    return latest


# --- the table -------------------------------------------------------------------------------------------------

def spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(lines: list[dict], baseline: str | None, quiet: dict[str, dict] | None = None) -> list[dict]:
    """One row per recipe, in the order of the file: its seeds' errors, seconds, and the paired difference
    against ``baseline`` (recipe errors - baseline errors on each seed both have: the same seed, the same folds).
    ``quiet``: timing lines by recipe; a recipe with one also gets its quiet seconds per epoch and the quiet
    training seconds of all its folds (that times epochs times folds)."""
    quiet = quiet or {}
    by_recipe: dict[str, dict[int, dict]] = {}
    for line in lines:
        by_recipe.setdefault(line["recipe"], {}).setdefault(line["seed"], line)  # the first line of a seed
    base = by_recipe.get(baseline, {})
    rows = []
    for name, seeds in by_recipe.items():
        measured = list(seeds.values())
        shared = sorted(set(seeds) & set(base))
        row = {"recipe": name, "seeds": len(measured),
               "errors": spread([m["errors"] for m in measured]),
               "errors_tta": spread([m["errors_tta"] for m in measured]),
               "seconds_per_epoch": statistics.mean(m["seconds_per_epoch"] for m in measured),
               "train_seconds": spread([m["train_seconds"] for m in measured]),
               "shared_seeds": len(shared), "difference": None, "difference_tta": None,
               "quiet_seconds_per_epoch": None, "quiet_train_seconds": None}
        if name in quiet:
            row["quiet_seconds_per_epoch"] = quiet[name]["seconds_per_epoch"]
            row["quiet_train_seconds"] = (quiet[name]["seconds_per_epoch"] * measured[0]["settings"]["epochs"]
                                          * measured[0]["folds"])
        if shared and name != baseline:
            row["difference"] = spread([seeds[s]["errors"] - base[s]["errors"] for s in shared])
            row["difference_tta"] = spread([seeds[s]["errors_tta"] - base[s]["errors_tta"] for s in shared])
        rows.append(row)
    return rows


def markdown(rows: list[dict], baseline: str | None) -> str:
    def plus_minus(value: tuple[float, float | None], sign: str = "") -> str:
        mean, sd = value
        return f"{mean:{sign}.1f}" + (f" ± {sd:.1f}" if sd is not None else "")

    def paired(row: dict, key: str) -> str:
        if row["recipe"] == baseline:
            return "baseline"
        return f"{plus_minus(row[key], '+')} (n={row['shared_seeds']})" if row[key] else "-"

    against = f"`{baseline}`" if baseline else "the baseline"
    def quiet(row: dict) -> str:
        if row["quiet_seconds_per_epoch"] is None:
            return "- | -"
        return f"{row['quiet_seconds_per_epoch']:.2f} | {row['quiet_train_seconds']:.0f}"

    table = [f"| recipe | seeds | errors | errors with TTA | s / epoch | training s | s / epoch, quiet | training s, "
             f"quiet | errors - {against} (paired) | with TTA - {against} (paired) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    table += [f"| {row['recipe']} | {row['seeds']} | {plus_minus(row['errors'])} | {plus_minus(row['errors_tta'])} "
              f"| {row['seconds_per_epoch']:.2f} | {row['train_seconds'][0]:.0f} | {quiet(row)} "
              f"| {paired(row, 'difference')} | {paired(row, 'difference_tta')} |" for row in rows]
    return "\n".join(table)


def plot(rows: list[dict], baseline: str | None, path: Path, preset: str | None = None) -> None:
    """Mean errors against mean training seconds per recipe, ± one standard deviation over seeds: one pass of the
    held-out images on the left, with TTA on the right. The baseline is a red star, ``preset`` a green one."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharex=True, sharey=True)
    quiet = all(row["quiet_train_seconds"] is not None for row in rows)
    for ax, key, title in ((axes[0], "errors", "one pass"), (axes[1], "errors_tta", "with TTA")):
        for row in rows:
            role = "baseline" if row["recipe"] == baseline else "preset" if row["recipe"] == preset else None
            (x, x_sd), (y, y_sd) = (row["quiet_train_seconds"], None) if quiet else row["train_seconds"], row[key]
            ax.errorbar(x, y, xerr=x_sd or 0, yerr=y_sd or 0, fmt="*" if role else "o", markersize=13 if role else 6,
                        color={"baseline": "C3", "preset": "C2"}.get(role, "C0"), capsize=3)
            label = row["recipe"] + (f" ({role})" if role and role != row["recipe"] else "")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("training seconds of all folds, " + ("nothing else running (--time)" if quiet else
                                                            "mean over seeds (the machine may have been shared)"))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("out-of-fold errors, mean ± sd over seeds")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def show_table(args: argparse.Namespace) -> None:
    lines, others = read_results(args.results)
    if others:
        print(f"recipes: {args.results}: skipped {others} lines not written by this harness", file=sys.stderr)
    if not lines:
        raise HarnessError(f"{args.results}: no results of this harness")
    names = {line["recipe"] for line in lines}
    if args.baseline is not None and args.baseline not in names:
        raise HarnessError(f"{args.results}: no recipe '{args.baseline}' (--baseline); "
                           f"known: {', '.join(sorted(names))}")
    baseline = args.baseline or ("baseline" if "baseline" in names else None)
    rows = summarise(lines, baseline, read_timings(args.timings))
    print(markdown(rows, baseline))
    if args.preset is not None and args.preset not in names:
        raise HarnessError(f"{args.results}: no recipe '{args.preset}' (--preset); known: {', '.join(sorted(names))}")
    if args.figure:
        plot(rows, baseline, args.figure, args.preset)


# --- command line ----------------------------------------------------------------------------------------------

def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got '{text}'") from None
    if not all(0 <= seed < 2**31 - 1000 for seed in seeds):  # the network's seed is seed + 1000
        raise argparse.ArgumentTypeError("seeds must be in 0 .. 2^31 - 1001")
    return list(dict.fromkeys(seeds))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", type=Path, metavar="RECIPE.toml", help="recipes to train")
    parser.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated seeds (default: 0)")
    parser.add_argument("--folds", type=int, default=5, help="stratified folds of all training rows (default: 5)")
    parser.add_argument("--model", default="fast", help="the method of a recipe that names none (default: fast)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"),
                        help="folder with train.csv(.gz)")
    parser.add_argument("--out", type=Path, default=Path("runs/recipes"), help="folder of the run directories")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/recipes.jsonl"),
                        help="JSON lines file the results are appended to, and --table reads")
    parser.add_argument("--time", action="store_true",
                        help="time one epoch of each recipe (nothing else should run) instead of training folds")
    parser.add_argument("--timings", type=Path, default=Path("benchmarks/results/recipes_time.jsonl"),
                        help="JSON lines file --time appends to and --table reads")
    parser.add_argument("--table", action="store_true", help="print the results file's table instead of training")
    parser.add_argument("--baseline", help="recipe the table's paired differences are against (default: baseline)")
    parser.add_argument("--figure", type=Path, help="with --table: also write a PNG of errors against seconds")
    parser.add_argument("--preset", help="with --figure: the recipe of the fast preset, marked in the figure")
    args = parser.parse_intermixed_args(argv)  # recipe files before or after the options
    if args.table and args.recipes:
        parser.error("--table reads the results file; give no recipes with it")
    if not args.table and not args.recipes:
        parser.error("give recipe files to train or --time, or --table")
    if args.table and args.time:
        parser.error("--time and --table are separate steps")
    if not args.table and (args.figure or args.baseline):
        parser.error("--figure and --baseline go with --table")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.table:
            show_table(args)
        elif args.time:
            time_recipes(args)
        else:
            train_recipes(args)
    except (HarnessError, InputError) as err:  # InputError: the project's own one-line faults (data, run dirs)
        print(f"recipes: error: {first_line(err, 400)}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"recipes: error: {first_line(err, 400)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
