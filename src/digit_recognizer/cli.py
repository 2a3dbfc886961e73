"""The ``digit-recognizer`` command: a thin layer over the package's functions.

Every training setting of :class:`~digit_recognizer.config.TrainConfig` is a flag (``--batch-size 128``,
``--no-augment``, ``--filters 32,64,128``) and can also come from a TOML or JSON file (``--config``);
flags win over the file. Bad input ends the command with exit code 2 and one line on stderr.

Heavy libraries (torch, scikit-learn) are imported by the commands that need them, so that ``predict
--onnx`` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .config import (
    DEFAULT_TEMPERATURE,
    DEVICE_HELP,
    INITS,
    METHOD_NAMES,
    METHODS,
    OPTIMIZER_NAMES,
    PRECISIONS,
    PRESETS,
    SCHEDULES,
    TrainConfig,
    choose,
    is_device_name,
    method_config,
)
from .data import find_csv, load_data, load_embedded, read_row_numbers, read_test, read_train, write_csv
from .errors import InputError, KaggleError, TrainingDiverged, UsageError
from .files import STDOUT, check_path, check_writable, read_bounded, same_file
from .rundir import RunDir
from .submission import write_submission

if TYPE_CHECKING:
    import numpy as np

    from .runs import PseudoLabelSource

PROG = "digit-recognizer"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(message)


def _list_of(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got '{text}'") from None
    return parse


# TrainConfig's annotations are strings (postponed evaluation); map each to a command-line parser.
_FLAG_TYPES = {"int": int, "float": float, "str": str,
               "tuple[int, ...]": _list_of(int), "tuple[float, ...]": _list_of(float)}
_CHOICES = {"optimizer": OPTIMIZER_NAMES, "schedule": SCHEDULES, "precision": PRECISIONS, "init": INITS}
MAX_SETTINGS_FILE = 1 << 20  # bytes; a settings file is a few hundred


def _add_setting_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per TrainConfig setting, each with its default under every network's recipe."""
    networks = sorted((name for name, method in METHODS.items() if method.network), key=lambda n: n != "cnn")
    recipes = {name: METHODS[name].recipe for name in networks}  # the default model, cnn, first
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        shown = {name: _shown(getattr(recipe, f.name)) for name, recipe in recipes.items()}
        if len(set(shown.values())) == 1:
            default = f"default: {next(iter(shown.values()))}"
        else:
            default = "default: the model's recipe: " + ", ".join(f"{name} {value}" for name, value in shown.items())
        if f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"({default})")
        elif f.name in _CHOICES:
            group.add_argument(flag, choices=_CHOICES[f.name], default=None, help=f"({default})")
        elif f.name == "device":
            group.add_argument(flag, default=None, metavar="DEVICE",
                               help=f"auto (CUDA when there is one), cpu, cuda or cuda:N ({default})")
        else:
            group.add_argument(flag, type=_FLAG_TYPES[f.type], default=None, metavar=f.name.upper(),
                               help=f"({default})")


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_output_flags(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--out", type=Path, default=Path(default_out),
                        help=f"run directory to write (default: {default_out}); the same command run again "
                             "resumes an interrupted run there")
    parser.add_argument("--overwrite", action="store_true",
                        help="clear a run directory made by other settings instead of refusing it")
    parser.add_argument("--quiet", action="store_true", help="no progress output; the result line stays")
    group = parser.add_argument_group("scale out (Ray)")
    group.add_argument("--cluster", metavar="auto|ADDRESS",
                       help="run the training jobs as Ray tasks: 'auto' starts Ray on this machine's cores and "
                            "GPUs, an ADDRESS (host:6379 or ray://host:10001) joins a running cluster")
    group.add_argument("--cpus-per-job", type=float, default=1, metavar="N",
                       help="CPU cores per job; torch uses as many threads (default: 1)")
    group.add_argument("--gpus-per-job", type=float, default=0, metavar="F",
                       help="GPUs per job; a fraction such as 0.25 lets four small networks share one (default: 0)")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME", help="method to train (default: cnn): " + "; ".join(
        f"{name}: {method.description}" for name, method in METHODS.items()))
    parser.add_argument("--preset", choices=list(PRESETS),
                        help="seed: the seed kernel's CNN and recipe (= --model cnn); fast: a small CNN that "
                             "reaches the same accuracy in a fraction of the time (= --model fast); ensemble: "
                             "8 wide networks x 5 folds, out-of-fold scored, its submission "
                             "with TTA (about an hour on 2 CPU cores with AMX)")
    parser.add_argument("--members", type=int,
                        help="train an ensemble of N networks that differ by seed and average them (default: 1)")
    parser.add_argument("--folds", type=int,
                        help="with K > 1, train every member on K folds and score out-of-fold on all rows "
                             "(default: 1)")
    group = parser.add_argument_group("network training settings (defaults: the chosen model's recipe)")
    group.add_argument("--config", type=Path, help="TOML or JSON file of settings; flags override it")
    _add_setting_flags(group)


def apply_preset(args: argparse.Namespace) -> None:
    """Resolve --preset, --model, --members, --folds and (run) --tta (:func:`~digit_recognizer.config.choose`)
    into ``args.model``, ``args.members``, ``args.folds`` and ``args.tta``."""
    try:
        chosen = choose(args.preset, args.model, args.members, args.folds, getattr(args, "tta", None))
    except ValueError as err:
        raise UsageError(str(err)) from None
    args.model, args.members, args.folds = chosen.method, chosen.members, chosen.folds
    if hasattr(args, "tta"):
        args.tta = chosen.tta


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The chosen method's training config (``args.model`` resolved), updated by ``--config``, then by flags;
    every value checked, and the device resolved, before anything else happens."""
    values = method_config(args.model).to_dict()
    if args.config is not None:
        values.update(read_config_file(args.config))
    for f in dataclasses.fields(TrainConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    from .train import resolve_device

    try:
        cfg = TrainConfig.from_dict(values)
        cfg.validate()
        resolve_device(cfg.device)
    except (ValueError, RuntimeError) as err:
        source = "" if args.config is None else f" (from the flags and {args.config})"
        raise UsageError(f"bad training setting{source}: {err}") from None
    return cfg


def read_config_file(path: Path) -> dict:
    """Settings from a TOML or JSON file, checked against TrainConfig's names and types."""
    text = read_bounded(path, MAX_SETTINGS_FILE, "a settings file")
    try:
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # also bytes that are not UTF-8, and 5,000-deep nesting
        raise UsageError(f"{path}: cannot read config ({str(err)[:200] or type(err).__name__})") from None
    try:
        typed = TrainConfig.from_dict(values, str(path))
    except ValueError as err:
        raise UsageError(str(err)) from None
    return {key: getattr(typed, key) for key in values}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Kaggle's Digit Recognizer (MNIST), end to end.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("run", help="train, report and write a submission (the whole job)")
    p.add_argument("--data-dir", type=Path,
                   help="folder with train.csv(.gz) and test.csv(.gz); default: the embedded 5,000 MNIST digits")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction,
                   help="test-time augmentation for the submission: shifted copies of the digits a network is "
                        "unsure of (default: the preset's; on for fast)")
    p.add_argument("--submit", metavar="MESSAGE",
                   help="submit submission.csv to the Kaggle competition at the end, with this description (checked "
                        "first; needs the kaggle extra, credentials and Kaggle's 28,000 test images)")
    _add_output_flags(p, "run")
    _add_tensorboard_flag(p)
    _add_exclude_flag(p)
    _add_pseudo_flags(p, "the test.csv of --data-dir")
    _add_config_flags(p)

    p = sub.add_parser("train", help="train and report, without predicting a test set")
    p.add_argument("--train", type=Path, help="Kaggle train.csv(.gz); default: the embedded digits")
    p.add_argument("--test", type=Path,
                   help="with --pseudo-labels only: the Kaggle test.csv(.gz) whose images are pseudo-labelled; "
                        "default: the embedded test digits (those that go with the default --train)")
    _add_output_flags(p, "run")
    _add_tensorboard_flag(p)
    _add_exclude_flag(p)
    _add_pseudo_flags(p, "--test")
    _add_config_flags(p)

    p = sub.add_parser("audit", help="find the training rows whose label is probably wrong, from a K-fold run "
                                     "(cleanlab; the audit extra)")
    p.add_argument("--run", type=Path, required=True,
                   help="run directory of a finished run made with --folds K (K of 2 or more)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data-dir", type=Path,
                      help="folder with the train.csv(.gz) the run was trained on; default: the embedded digits")
    data.add_argument("--train", type=Path, help="the train.csv(.gz) the run was trained on (a run made by "
                                                 "'train --train FILE')")

    p = sub.add_parser("distill", help="train one fast network on a finished run's averaged probabilities (its "
                                       "soft targets), scored out of fold; a single run that predict, export "
                                       "and serve take")
    p.add_argument("--teacher", type=Path, required=True,
                   help="run directory of a finished run made by 'run' or 'train' (--members N and/or --folds K)")
    p.add_argument("--data-dir", type=Path, help="folder with the train.csv(.gz) the teacher was trained on and the "
                                                 "test.csv(.gz) whose images the student also learns from; default: "
                                                 "the embedded digits")
    p.add_argument("--out", type=Path, required=True, help="run directory to write; the same command run again "
                                                           "resumes an interrupted distillation there")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help="softens the teachers' probabilities (p^(1/T), renormalised) and divides the student's "
                        f"logits in the loss (default: {DEFAULT_TEMPERATURE:g}, the probabilities as they are; "
                        "above 1 lifts the small ones; from 0.1 to 100)")
    p.add_argument("--no-score", dest="score", action="store_false",
                   help="train only the served student, not the scoring students (one per fold of the teacher) "
                        "whose accuracy on rows none of them nor their teachers trained on is the honest score")
    p.add_argument("--overwrite", action="store_true",
                   help="clear a run directory made by other settings instead of refusing it")
    p.add_argument("--quiet", action="store_true", help="no progress output; the result line stays")
    p.add_argument("--model", choices=[name for name in METHOD_NAMES if METHODS[name].network], default="fast",
                   help="the student's network and recipe (default: fast)")
    group = p.add_argument_group("the student's training settings (defaults: the chosen model's recipe)")
    group.add_argument("--config", type=Path, help="TOML or JSON file of settings; flags override it")
    _add_setting_flags(group)

    p = sub.add_parser("predict", help="write a submission for a test file with a trained run")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="run directory made by 'run' or 'train'")
    source.add_argument("--onnx", type=Path, help="ONNX file made by 'export' (runs on ONNX Runtime)")
    p.add_argument("--test", type=Path, required=True, help="Kaggle test.csv(.gz)")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write; - writes it to standard output")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda or cuda:N "
                                                    "(default: auto)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: each digit a network is unsure of averaged over its one-pixel shifts "
                        "(networks only)")

    p = sub.add_parser("compare", help="compare methods on the same split (or folds): table, figure, submissions")
    p.add_argument("--data-dir", type=Path,
                   help="folder with train.csv(.gz) and optionally test.csv(.gz); default: the embedded digits")
    p.add_argument("--models", default=",".join(METHOD_NAMES),
                   help=f"comma-separated methods (default: all of {','.join(METHOD_NAMES)})")
    p.add_argument("--folds", type=int, default=1, help="K for stratified K-fold; 1 = one split (default: 1)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction when --folds is 1")
    p.add_argument("--seed", type=int, default=2)
    _add_output_flags(p, "comparison")

    p = sub.add_parser("tune", help="search a network's training settings (Optuna), scored out of fold")
    p.add_argument("--data-dir", type=Path,
                   help="folder with train.csv(.gz); default: the embedded digits")
    p.add_argument("--model", choices=[name for name in METHOD_NAMES if METHODS[name].network], default="fast",
                   help="network whose settings to search (default: fast)")
    p.add_argument("--trials", type=int, default=20,
                   help="trials to add to the study (default: 20); the same command run again adds more")
    p.add_argument("--folds", type=int, default=3,
                   help="K stratified folds, the same for every trial; a trial scores the mean held-out "
                        "accuracy over them (default: 3)")
    p.add_argument("--timeout", type=_seconds, metavar="TIME",
                   help="start no trial after this wall time (90, 90s, 30m, 2h); trials under way finish")
    p.add_argument("--space", type=Path,
                   help="TOML file of the settings to search, one table each (default: the model's space)")
    _add_output_flags(p, "tune")
    group = p.add_argument_group("fixed training settings: not searched (defaults: the model's recipe)")
    group.add_argument("--config", type=Path, help="TOML or JSON file of settings; flags override it")
    _add_setting_flags(group)

    p = sub.add_parser("serve", help="web page to draw a digit, and the prediction API")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="run directory made by 'run' or 'train' (PyTorch)")
    source.add_argument("--onnx", type=Path, help="ONNX file made by 'export' (ONNX Runtime)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000; 0 picks a free port)")

    p = sub.add_parser("export", help="write a run's network as ONNX")
    p.add_argument("--model", type=Path, required=True, help="run directory made by 'run' or 'train'")
    p.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")

    p = sub.add_parser("sample-data", help="write the embedded digits as Kaggle-style train.csv and test.csv")
    p.add_argument("--out", type=Path, required=True, help="folder to write them into")

    p = sub.add_parser("kaggle", help="download the competition's files, or submit a file (the kaggle extra)")
    kaggle = p.add_subparsers(dest="kaggle_command", required=True, parser_class=Parser)
    k = kaggle.add_parser("download", help="download the competition's files into a folder that run --data-dir reads")
    k.add_argument("--out", type=Path, default=Path("data"), help="folder to unpack them into (default: data)")
    k = kaggle.add_parser("submit", help="check a submission file as the leaderboard would, then submit it")
    k.add_argument("file", type=Path, help="submission CSV (ImageId,Label; 28,000 rows)")
    k.add_argument("-m", "--message", required=True, help="the submission's description on Kaggle")
    return parser


def _add_tensorboard_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensorboard", action="store_true",
                        help="also log per-epoch scalars, figures and settings to OUT/tensorboard/ "
                             "(the tensorboard extra); changes no result")


def _add_exclude_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exclude-rows", type=Path, metavar="FILE",
                        help="CSV file with a 'row' column (0-based data rows of train.csv; label_issues.csv of "
                             "'audit' is one): never train on those rows, but score them like any other")


def _add_pseudo_flags(parser: argparse.ArgumentParser, test: str) -> None:
    group = parser.add_argument_group("pseudo-labels: a second stage that also learns from the test images")
    group.add_argument("--pseudo-labels", type=Path, metavar="RUN",
                       help="a finished run of 'run' or 'train' on the same training data (with --folds K, the same "
                            f"K and --seed): also train on the test images ({test}) its networks are sure of, "
                            "labelled with their digit; the job of fold k learns only from that run's fold-k networks")
    group.add_argument("--pseudo-threshold", type=float, metavar="P",
                       help="use a test image when the mean probability of its most probable digit over the "
                            "teacher networks is at least P, in (0, 1) (default: 0.99 less 0.9 x the first stage's "
                            "label smoothing: 0.90 for the fast recipe)")


def _pseudo_source(args: argparse.Namespace) -> PseudoLabelSource | None:
    """The pseudo-labels' source the flags name, or None; the threshold and the run's run.json are checked before
    any data is read."""
    if args.pseudo_labels is None:
        if args.pseudo_threshold is not None:
            raise UsageError("--pseudo-threshold: needs --pseudo-labels RUN, the run whose networks label the test "
                             "images")
        return None
    from .rundir import read_trained_run
    from .runs import PSEUDO_USE, PseudoLabelSource, check_pseudo_threshold, default_pseudo_threshold

    if args.pseudo_threshold is not None:
        check_pseudo_threshold(args.pseudo_threshold)
    teacher = read_trained_run(args.pseudo_labels, PSEUDO_USE)  # a folder that is not a run: named before the data
    threshold = default_pseudo_threshold(teacher.cfg) if args.pseudo_threshold is None else args.pseudo_threshold
    return PseudoLabelSource(args.pseudo_labels, threshold)


def _say_pseudo_labels(metrics: dict) -> None:
    """How many test images the second stage learned from; a warning when a job learned from none."""
    pseudo = metrics.get("pseudo_labels")
    if pseudo is None:
        return
    used = [entry["used"] for entry in pseudo["folds"]]
    print(f"{PROG}: pseudo-labels from {pseudo['teacher']} at threshold {pseudo['threshold']:g}: "
          f"{', '.join(f'{n:,}' for n in used)} of {pseudo['test_images']:,} test images"
          + (" (per fold)" if len(used) > 1 else ""), file=sys.stderr)
    if min(used) == 0:
        print(f"{PROG}: warning: no test image reached --pseudo-threshold {pseudo['threshold']:g}"
              + (" in some folds" if max(used) > 0 else "") + ": those jobs trained on the training rows only",
              file=sys.stderr)


def _excluded(path: Path | None, rows: int) -> np.ndarray | None:
    """The rows ``--exclude-rows`` lists, checked against the ``rows`` of the training data, or None."""
    return None if path is None else read_row_numbers(path, rows)


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def _executor(args: argparse.Namespace, device: str):
    """Where the training jobs run: in this process, or as Ray tasks with --cluster."""
    if args.cpus_per_job <= 0 or not 0 <= args.gpus_per_job <= 64:
        raise UsageError("--cpus-per-job must be above 0 and --gpus-per-job in 0 .. 64")
    if args.cluster is None:
        from .execute import InProcess

        return InProcess(device)
    from .cluster import RayCluster

    try:
        return RayCluster(args.cluster, cpus_per_job=args.cpus_per_job, gpus_per_job=args.gpus_per_job)
    except (ImportError, ConnectionError, ValueError) as err:
        raise UsageError(str(err)) from None


def _out_dir(args: argparse.Namespace) -> RunDir:
    """The run directory of --out, checked before any work: writable, and with --overwrite holding none of the
    command's input files (clearing the run there would remove them)."""
    run_dir = RunDir(args.out)
    run_dir.check_writable()
    if getattr(args, "overwrite", False):
        run_dir.check_kept(getattr(args, name, None) for name in ("config", "exclude_rows", "train", "test", "space"))
    return run_dir


def _training_command(args: argparse.Namespace) -> tuple[TrainConfig, RunDir]:
    """Everything a training command checks before reading data: settings, output directory."""
    apply_preset(args)
    cfg = config_from_args(args)
    if args.tensorboard:
        from .tensorboard import tensorboard_missing

        if tensorboard_missing():
            raise UsageError(tensorboard_missing())
    return cfg, _out_dir(args)


def cmd_run(args: argparse.Namespace) -> None:
    cfg, _ = _training_command(args)
    pseudo = _pseudo_source(args)
    train, test, source = load_data(args.data_dir, test="required")
    _say(args.quiet, f"{PROG}: {len(train):,} training and {len(test):,} test images from {source}")
    exclude = _excluded(args.exclude_rows, len(train))
    api = _kaggle_before_training(args.submit, len(test)) if args.submit is not None else None
    from .runs import run

    data = "the embedded digits" if args.data_dir is None else str(find_csv(args.data_dir, "train"))
    executor = _executor(args, cfg.device)
    with _closing(executor):
        metrics = run(train, test, args.out, args.model, cfg, not args.quiet, args.members, args.folds, args.tta,
                      args.overwrite, executor, args.tensorboard, exclude, pseudo, data)
    _say_pseudo_labels(metrics)
    _report(metrics, args.out, with_submission=True)
    if api is not None:
        from .kaggle import submit
        from .rundir import SUBMISSION_FILE

        answer = submit(args.out / SUBMISSION_FILE, args.submit, api)  # checks the file first
        print(f"{PROG}: submitted {args.out / SUBMISSION_FILE} to Kaggle: {answer}", file=sys.stderr)


def _kaggle_before_training(message: str, test_rows: int) -> object:
    """What ``run --submit`` can check before an hour of training: a message, Kaggle's test set, credentials."""
    from .kaggle import connect
    from .submission import TEST_ROWS

    if not message.strip():
        raise UsageError("--submit needs a description of the submission, e.g. --submit 'fast preset, 15 epochs'")
    if test_rows != TEST_ROWS:
        raise UsageError(f"--submit: the test set has {test_rows:,} images, but the leaderboard scores Kaggle's "
                         f"{TEST_ROWS:,}; give --data-dir the competition's files (digit-recognizer kaggle download)")
    return connect()


def cmd_train(args: argparse.Namespace) -> None:
    cfg, _ = _training_command(args)
    pseudo = _pseudo_source(args)
    if args.test is not None and pseudo is None:
        raise UsageError("--test: read only with --pseudo-labels RUN ('train' predicts no test set; 'run' does)")
    if pseudo is not None and args.train is not None and args.test is None:
        raise UsageError("--pseudo-labels: give --test FILE too, the test.csv that goes with --train FILE (the "
                         "embedded test digits go with the embedded training digits only)")
    from .runs import train_run

    train = load_embedded()[0] if args.train is None else read_train(args.train)
    test = None
    if pseudo is not None:
        test = load_embedded()[1] if args.test is None else read_test(args.test)
    exclude = _excluded(args.exclude_rows, len(train))
    data = "the embedded digits" if args.train is None else str(args.train)
    executor = _executor(args, cfg.device)
    with _closing(executor):
        metrics = train_run(train, args.out, args.model, cfg, not args.quiet, args.members, args.folds,
                            args.overwrite, executor, args.tensorboard, exclude, pseudo, test, data)
    _say_pseudo_labels(metrics)
    _report(metrics, args.out, with_submission=False)


def cmd_audit(args: argparse.Namespace) -> None:
    from .audit import audit, cleanlab_missing, read_run

    if cleanlab_missing():
        raise UsageError(cleanlab_missing())
    read_run(args.run)  # a directory that is not a K-fold run is named before the data is read
    if args.train is None and args.data_dir is None:
        train, source = load_embedded()[0], "the embedded digits"
    else:
        path = args.train if args.train is not None else find_csv(args.data_dir, "train")
        train, source = read_train(path), str(path)
    issues = audit(args.run, train, source)
    print(f"{PROG}: {len(issues):,} of {issues.rows_audited:,} training rows flagged as probably mislabelled; "
          f"wrote {issues.table} (and the gallery in {args.run / 'report.html'})", file=sys.stderr)


def cmd_distill(args: argparse.Namespace) -> None:
    from .distill import TEACHER_USE, distill, result_line
    from .rundir import read_trained_run
    from .train import check_temperature

    try:
        check_temperature(args.temperature)
    except ValueError as err:
        raise UsageError(f"--temperature: {err}") from None
    cfg = config_from_args(args)
    read_trained_run(args.teacher, TEACHER_USE)  # a folder that is not a run is named before the data is read
    _out_dir(args)
    train, test, source = load_data(args.data_dir, test="required")
    _say(args.quiet, f"{PROG}: {len(train):,} training and {len(test):,} test images from {source}")
    data = "the embedded digits" if args.data_dir is None else str(find_csv(args.data_dir, "train"))
    metrics = distill(args.teacher, train, test, args.out, args.model, cfg, args.temperature, args.score,
                      not args.quiet, args.overwrite, data)
    print(f"{PROG}: {result_line(metrics, args.out)}", file=sys.stderr)
    if "val_accuracy" in metrics:
        _warn_if_chance(metrics["val_accuracy"], "the students' accuracy")


def _closing(executor: object):
    """Shut a cluster connection down when the command ends, however it ends."""
    import contextlib

    close = getattr(executor, "close", None)
    return contextlib.closing(executor) if close else contextlib.nullcontext()


def _check_output_file(path: Path, inputs: Callable[[], list[Path | None]]) -> None:
    """Refuse, before any work, an output that cannot be written, then one that is one of the command's own
    inputs (writing it would destroy what it is made from)."""
    check_writable(path)
    for source in inputs():
        if source is not None and same_file(path, source):
            raise UsageError(f"{path}: is one of this command's inputs ({source}); choose another output")


def cmd_predict(args: argparse.Namespace) -> None:
    if args.onnx is not None and args.tta:
        raise UsageError("--tta works with --model (PyTorch); an ONNX file predicts each image once")
    if not is_device_name(args.device):
        raise UsageError(f"--device {args.device}: {DEVICE_HELP}")
    from .loading import model_files

    _check_output_file(args.out, lambda: [args.test, args.onnx] if args.onnx is not None else
                       [args.test, *model_files(args.model)])
    test = read_test(args.test)
    from .predict import OnnxPredictor, TorchPredictor

    try:
        predictor = (OnnxPredictor(args.onnx) if args.onnx is not None else
                     TorchPredictor(args.model, device=args.device, tta=args.tta))
        proba = predictor(test.images)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    write_submission(proba.argmax(1), args.out)
    where = "standard output" if str(args.out) == STDOUT else args.out
    print(f"{PROG}: wrote {len(test):,} predictions to {where}", file=sys.stderr)


def cmd_compare(args: argparse.Namespace) -> None:
    from .runs import check_comparison, compare

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        check_comparison(models, args.folds, args.val_fraction, args.seed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _out_dir(args)
    train, test, _ = load_data(args.data_dir, test="optional")
    executor = _executor(args, "auto")
    with _closing(executor):
        table = compare(train, args.out, models, test=test, folds=args.folds, val_fraction=args.val_fraction,
                        seed=args.seed, progress=not args.quiet, overwrite=args.overwrite, executor=executor)
    if not args.quiet:
        print(table[["model", "accuracy", "fit_seconds", "predict_seconds"]].to_string(index=False))
    print(f"{PROG}: wrote {args.out / 'comparison.csv'} and {args.out / 'comparison.png'}", file=sys.stderr)


def _seconds(text: str) -> float:
    """A wall time: seconds, or a number with s, m or h."""
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower(), 1)
    try:
        seconds = float(text[:-1] if text[-1:].lower() in "smh" else text) * scale
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"expected a wall time above 0 such as 90, 90s, 30m or 2h, got '{text}'")
    return seconds


def cmd_tune(args: argparse.Namespace) -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UsageError("tune needs Optuna: pip install 'digit-recognizer[tune]' "
                         "(or pip install -e '.[tune]' in a checkout)") from None
    if args.trials < 1 or args.folds < 1:
        raise UsageError("--trials and --folds must be at least 1")
    from .jobs import check_split
    from .tune import tune
    from .tune_space import make_space

    cfg = config_from_args(args)
    fixed = {f.name for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    if args.config is not None:
        fixed |= set(read_config_file(args.config))
    try:
        space = make_space(args.model, cfg, args.space, fixed)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _out_dir(args)
    train, _, _ = load_data(args.data_dir, test="none")
    check_split(train.labels, args.folds, cfg.val_fraction)
    executor = _executor(args, cfg.device)
    with _closing(executor):
        summary = tune(train, args.out, args.model, cfg, space, args.trials, args.folds, args.timeout, executor,
                       not args.quiet, args.overwrite, args.data_dir)
    print(f"{PROG}: best of {summary['trials']} trials ({summary['complete']} finished, {summary['pruned']} "
          f"pruned, {summary['fail']} failed): trial {summary['best_trial']}, mean held-out accuracy "
          f"{summary['best_accuracy']:.4f} over {summary['folds']} folds"
          + (f" (the {args.model} recipe itself: {summary['recipe_accuracy']:.4f})"
             if summary["recipe_accuracy"] is not None else "")
          + f"; outputs in {args.out}/; train it with:", file=sys.stderr)
    print(summary["command"])
    _warn_if_chance(summary["best_accuracy"], "the best trial's mean held-out accuracy")


def cmd_serve(args: argparse.Namespace) -> None:
    from .predict import OnnxPredictor, TorchPredictor
    from .serve import listen, serve, url

    try:
        predictor = OnnxPredictor(args.onnx) if args.onnx else TorchPredictor(args.model)
        report = RunDir(args.model).read_report() if args.model else None
        sock = listen(args.host, args.port)  # a port in use is refused here, before "serving" is printed
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    with sock:
        address = url(sock)
        print(f"{PROG}: serving {predictor.name} ({predictor.backend}) on {address}/"
              + (f" (its report: {address}/report)" if report else ""), file=sys.stderr)
        serve(predictor, sock, report)


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_onnx
    from .loading import model_files

    _check_output_file(args.onnx, lambda: model_files(args.model))
    try:
        export_onnx(args.model, args.onnx)
    except ValueError as err:
        raise UsageError(str(err)) from None
    print(f"{PROG}: wrote {args.onnx}", file=sys.stderr)


def cmd_sample_data(args: argparse.Namespace) -> None:
    existing = [args.out / name for name in ("train.csv", "test.csv") if (args.out / name).exists()
                or (args.out / name).is_symlink()]
    if existing:
        raise UsageError(f"{existing[0]}: already exists; sample-data never replaces a file: choose another --out")
    _out_dir(args)
    train, test = load_embedded()
    write_csv(train, args.out / "train.csv")
    write_csv(test, args.out / "test.csv")
    print(f"{PROG}: wrote {args.out / 'train.csv'} ({len(train):,} rows) and "
          f"{args.out / 'test.csv'} ({len(test):,} rows)", file=sys.stderr)


def cmd_kaggle(args: argparse.Namespace) -> None:
    from . import kaggle

    if args.kaggle_command == "download":
        _out_dir(args)
        got = kaggle.download(args.out)  # checks the data before any file in --out is replaced
        print(f"{PROG}: wrote {', '.join(path.name for path in got.files)} to {args.out} ({got.train_images:,} "
              f"training and {got.test_images:,} test images); train on them with: {PROG} run --data-dir {args.out}",
              file=sys.stderr)
    else:
        if not args.message.strip():
            raise UsageError("-m needs a description of the submission")
        answer = kaggle.submit(args.file, args.message)  # checks the file before anything is sent
        print(f"{PROG}: submitted {args.file} to Kaggle: {answer}", file=sys.stderr)


def _report(metrics: dict, out: Path, with_submission: bool) -> None:
    """The result line (always printed, --quiet or not), and a warning when training failed to learn."""
    from .runs import result_line

    line, accuracy = result_line(metrics, out, with_submission)
    print(f"{PROG}: {line}", file=sys.stderr)
    _warn_if_chance(accuracy, "accuracy")


def _warn_if_chance(accuracy: float, what: str) -> None:
    """A result at chance level is a failed training, whatever the exit code says."""
    from .train import CHANCE

    if accuracy <= CHANCE:
        print(f"{PROG}: warning: {what} {accuracy:.4f} is at chance level: the model learned nothing "
              "(check --lr and the other settings)", file=sys.stderr)


COMMANDS = {"run": cmd_run, "train": cmd_train, "predict": cmd_predict, "compare": cmd_compare,
            "serve": cmd_serve, "export": cmd_export, "sample-data": cmd_sample_data, "tune": cmd_tune,
            "kaggle": cmd_kaggle, "audit": cmd_audit, "distill": cmd_distill}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        for value in vars(args).values():  # every path named in records and messages must be text
            if isinstance(value, Path):
                check_path(value)
        COMMANDS[args.command](args)
    except (UsageError, InputError, FileNotFoundError, KaggleError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # the file system refused something no check foresaw (a disk full, say)
        print(f"{PROG}: error: {err.filename or ''}{': ' if err.filename else ''}{err.strerror or err}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
