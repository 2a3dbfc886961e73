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
import sys
import tomllib
from pathlib import Path

from . import __version__
from .config import ENSEMBLES, METHOD_NAMES, TrainConfig, default_config
from .data import DataError, find_csv, load_embedded, read_test, read_train, write_csv
from .predict import write_submission

PROG = "digit-recognizer"


PRESET_MODELS = {"seed": "cnn", "fast": "fast"}
PRESETS = (*PRESET_MODELS, "ensemble")


class UsageError(Exception):
    """A command-line mistake; reported in one line with exit code 2."""


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


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME",
                        help=f"method to train: {', '.join(METHOD_NAMES)} (default: cnn, the seed kernel's CNN)")
    parser.add_argument("--preset", choices=PRESETS,
                        help="seed: the seed kernel's CNN and recipe (= --model cnn); fast: a small CNN that "
                             "reaches the same accuracy in a fraction of the time (= --model fast); ensemble: "
                             "the default ensemble for this hardware, out-of-fold scored "
                             "(CPU: 8 fast networks x 5 folds, about 75 minutes on 2 cores; GPU: 15 seed "
                             "networks x 5 folds)")
    parser.add_argument("--members", type=int,
                        help="train an ensemble of N networks that differ by seed and average them (default: 1)")
    parser.add_argument("--folds", type=int,
                        help="with K > 1, train every member on K folds and score out-of-fold on all rows "
                             "(default: 1)")
    group = parser.add_argument_group("network training settings (defaults: the chosen model's recipe)")
    group.add_argument("--config", type=Path, help="TOML or JSON file of settings; flags override it")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"(default: {shown})")
        else:
            group.add_argument(flag, type=_FLAG_TYPES[f.type], default=None, metavar=f.name.upper(),
                               help=f"(default: {shown})")


def apply_preset(args: argparse.Namespace) -> None:
    """Resolve --model and --preset into ``args.model`` (default: the seed CNN), and --members / --folds.

    ``--preset ensemble`` takes its model, members, folds and settings from :data:`config.ENSEMBLES` for the
    device that will train; explicit flags still win.
    """
    args.preset_settings = {}
    if args.preset == "ensemble":
        from .train import resolve_device

        try:
            plan = ENSEMBLES["cuda" if resolve_device(args.device or "auto").type == "cuda" else "cpu"]
        except (ValueError, RuntimeError) as err:
            raise UsageError(f"bad training setting: {err}") from None
        preset_model = plan["model"]
        args.members = plan["members"] if args.members is None else args.members
        args.folds = plan["folds"] if args.folds is None else args.folds
        args.preset_settings = plan["settings"]
    else:
        preset_model = PRESET_MODELS[args.preset or "seed"]
    if args.preset and args.model and args.model != preset_model:
        raise UsageError(f"--preset {args.preset} trains model '{preset_model}', not '{args.model}'")
    args.model = args.model or preset_model
    if args.model not in METHOD_NAMES:
        raise UsageError(f"unknown model '{args.model}'; known: {', '.join(METHOD_NAMES)}")
    args.members = 1 if args.members is None else args.members
    args.folds = 1 if args.folds is None else args.folds


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The chosen method's training config (``args.model`` resolved), updated by the preset's settings, then
    ``--config``, then flags."""
    values: dict = dataclasses.asdict(default_config(args.model) or TrainConfig())
    values.update(getattr(args, "preset_settings", {}))
    if args.config is not None:
        values.update(read_config_file(args.config))
    for f in dataclasses.fields(TrainConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    from .train import resolve_device

    try:
        cfg = TrainConfig(**values)
        cfg.validate()
        resolve_device(cfg.device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise UsageError(f"bad training setting: {err}") from None
    return cfg


def read_config_file(path: Path) -> dict:
    """Settings from a TOML or JSON file, checked against TrainConfig's fields."""
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot read config ({err})") from None
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key not in fields:
            raise UsageError(f"{path}: unknown setting '{key}'; known: {', '.join(fields)}")
        if isinstance(value, list):
            values[key] = tuple(value)
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Kaggle's Digit Recognizer (MNIST), end to end.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("run", help="train, report and write a submission (the whole job)")
    p.add_argument("--data-dir", type=Path,
                   help="folder with train.csv(.gz) and test.csv(.gz); default: the embedded 5,000 MNIST digits")
    p.add_argument("--out", type=Path, default=Path("run"), help="run directory to write (default: run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--tta", action="store_true", help="test-time augmentation for the submission")
    _add_config_flags(p)

    p = sub.add_parser("train", help="train and report, without predicting a test set")
    p.add_argument("--train", type=Path, help="Kaggle train.csv(.gz); default: the embedded digits")
    p.add_argument("--out", type=Path, default=Path("run"), help="run directory to write (default: run)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    _add_config_flags(p)

    p = sub.add_parser("predict", help="write a submission for a test file with a trained run")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="run directory made by 'run' or 'train'")
    source.add_argument("--onnx", type=Path, help="ONNX file made by 'export' (runs on ONNX Runtime)")
    p.add_argument("--test", type=Path, required=True, help="Kaggle test.csv(.gz)")
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over one-pixel shifts of each image (networks only)")

    p = sub.add_parser("compare", help="compare methods on the same split (or folds): table, figure, submissions")
    p.add_argument("--data-dir", type=Path,
                   help="folder with train.csv(.gz) and optionally test.csv(.gz); default: the embedded digits")
    p.add_argument("--out", type=Path, default=Path("comparison"), help="folder to write (default: comparison)")
    p.add_argument("--models", default=",".join(METHOD_NAMES),
                   help=f"comma-separated methods (default: all of {','.join(METHOD_NAMES)})")
    p.add_argument("--folds", type=int, default=1, help="K for stratified K-fold; 1 = one split (default: 1)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction when --folds is 1")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("serve", help="web page to draw a digit, and the prediction API")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="run directory made by 'run' or 'train' (PyTorch)")
    source.add_argument("--onnx", type=Path, help="ONNX file made by 'export' (ONNX Runtime)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)

    p = sub.add_parser("export", help="write a run's network as ONNX")
    p.add_argument("--model", type=Path, required=True, help="run directory made by 'run' or 'train'")
    p.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")

    p = sub.add_parser("sample-data", help="write the embedded digits as Kaggle-style train.csv and test.csv")
    p.add_argument("--out", type=Path, required=True, help="folder to write them into")
    return parser


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> None:
    apply_preset(args)
    cfg = config_from_args(args)
    _check_ensemble_args(args)
    _check_out_dir(args.out)
    # Read and check both files before training, so that a bad test file costs seconds, not an hour.
    if args.data_dir is None:
        train, test = load_embedded()
        source = "the embedded MNIST sample"
    else:
        train = read_train(find_csv(args.data_dir, "train"))
        test = read_test(find_csv(args.data_dir, "test"))
        source = str(args.data_dir)
    _say(args.quiet, f"{PROG}: {len(train):,} training and {len(test):,} test images from {source}")
    from .pipeline import run

    metrics = run(train, test, args.out, args.model, cfg, not args.quiet, args.members, args.folds, args.tta)
    _say(args.quiet, _summary(metrics, args.out, with_submission=True))


def cmd_train(args: argparse.Namespace) -> None:
    apply_preset(args)
    cfg = config_from_args(args)
    _check_ensemble_args(args)
    _check_out_dir(args.out)
    from .pipeline import train_run

    train = load_embedded()[0] if args.train is None else read_train(args.train)
    metrics = train_run(train, args.out, args.model, cfg, not args.quiet, args.members, args.folds)
    _say(args.quiet, _summary(metrics, args.out, with_submission=False))


def _check_ensemble_args(args: argparse.Namespace) -> None:
    """Refuse, before any data is read or trained on, what only networks can do."""
    if args.members < 1 or args.folds < 1:
        raise UsageError("--members and --folds must be at least 1")
    network = default_config(args.model) is not None
    if (args.members > 1 or args.folds > 1) and not network:
        raise UsageError(f"--members and --folds train networks; '{args.model}' is not one")
    if getattr(args, "tta", False) and not network:
        raise UsageError("--tta applies to networks, not to scikit-learn models")


def cmd_predict(args: argparse.Namespace) -> None:
    if args.onnx is not None and args.tta:
        raise UsageError("--tta works with --model (PyTorch); an ONNX file predicts each image once")
    test = read_test(args.test)
    if args.onnx is not None:
        from .predict import OnnxPredictor

        if not args.onnx.is_file():
            raise UsageError(f"{args.onnx}: file not found")
        proba = OnnxPredictor(args.onnx)(test.images)
    else:
        from .methods import estimator_proba, load_model

        try:
            model = load_model(args.model, device=args.device, tta=args.tta)
        except (ValueError, RuntimeError) as err:
            raise UsageError(str(err)) from None
        proba = estimator_proba(model, test.images)
    write_submission(proba.argmax(1), args.out)
    print(f"{PROG}: wrote {len(test):,} predictions to {args.out}", file=sys.stderr)


def cmd_compare(args: argparse.Namespace) -> None:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in METHOD_NAMES]
    if unknown or not models:
        raise UsageError(f"unknown model '{unknown[0] if unknown else ''}'; known: {', '.join(METHOD_NAMES)}")
    if args.folds < 1 or (args.folds == 1 and not 0 < args.val_fraction < 1):
        raise UsageError("--folds must be >= 1 and --val-fraction between 0 and 1")
    _check_out_dir(args.out)
    if args.data_dir is None:
        train, test = load_embedded()
    else:
        train = read_train(find_csv(args.data_dir, "train"))
        has_test = any((args.data_dir / f"test.csv{ext}").is_file() for ext in ("", ".gz"))
        test = read_test(find_csv(args.data_dir, "test")) if has_test else None
    from .compare import compare

    table = compare(train, args.out, models, test=test, folds=args.folds, val_fraction=args.val_fraction,
                    seed=args.seed, progress=not args.quiet)
    if not args.quiet:
        print(table[["model", "accuracy", "fit_seconds", "predict_seconds"]].to_string(index=False))
    _say(args.quiet, f"{PROG}: wrote {args.out / 'comparison.csv'} and {args.out / 'comparison.png'}")


def cmd_serve(args: argparse.Namespace) -> None:
    from .predict import OnnxPredictor, TorchPredictor
    from .serve import serve

    if args.onnx is not None and not args.onnx.is_file():
        raise UsageError(f"{args.onnx}: file not found")
    try:
        predictor = OnnxPredictor(args.onnx) if args.onnx else TorchPredictor(args.model)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err).splitlines()[0]) from None
    print(f"{PROG}: serving {predictor.name} ({predictor.backend}) on http://{args.host}:{args.port}/",
          file=sys.stderr)
    serve(predictor, args.host, args.port)


def cmd_export(args: argparse.Namespace) -> None:
    from .predict import export_onnx

    export_onnx(args.model, args.onnx)
    print(f"{PROG}: wrote {args.onnx}", file=sys.stderr)


def cmd_sample_data(args: argparse.Namespace) -> None:
    _check_out_dir(args.out)
    train, test = load_embedded()
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(train, args.out / "train.csv")
    write_csv(test, args.out / "test.csv")
    print(f"{PROG}: wrote {args.out / 'train.csv'} ({len(train):,} rows) and "
          f"{args.out / 'test.csv'} ({len(test):,} rows)", file=sys.stderr)


def _summary(metrics: dict, out: Path, with_submission: bool) -> str:
    from .pipeline import SUBMISSION_FILE

    if "ensemble_accuracy" in metrics:
        line = (f"{PROG}: {metrics['estimate']} accuracy: single model {metrics['single_model_accuracy']:.4f}, "
                f"ensemble of {metrics['members']} {metrics['ensemble_accuracy']:.4f}, "
                f"with TTA {metrics['ensemble_accuracy_tta']:.4f}; outputs in {out}/")
        return line + (f" (submission: {out / SUBMISSION_FILE})" if with_submission else "")
    epochs = f" after {metrics['epochs']} epochs" if "epochs" in metrics else ""
    line = (f"{PROG}: {metrics['model']} val_accuracy {metrics['val_accuracy']:.4f}{epochs} "
            f"in {metrics['train_seconds']:.0f}s on {metrics['device']}; outputs in {out}/")
    return line + (f" (submission: {out / SUBMISSION_FILE})" if with_submission else "")


COMMANDS = {"run": cmd_run, "train": cmd_train, "predict": cmd_predict, "compare": cmd_compare,
            "serve": cmd_serve, "export": cmd_export, "sample-data": cmd_sample_data}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except (UsageError, DataError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
