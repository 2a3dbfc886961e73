"""Benchmark: how fast the project trains and predicts, against a Keras implementation of the seed model.

    pip install -e ".[keras]"        # optional: TensorFlow/Keras; without it the Keras side is skipped
    python benchmarks/speed.py --data-dir ../shared/data/digit-recognizer --out benchmarks/results/speed

One run measures, on this machine:

1. The seed model, project (PyTorch) and Keras side by side, trained on the same batches (the first
   ``--batches`` batches of 86 images of train.csv, or of the embedded digits where the competition files are
   absent) without augmentation, so that the model's own speed is compared; and both predicting the same
   images. Then each side's whole training loop with the seed's augmentation (the project's on-device
   affine_grid/grid_sample; Keras's RandomRotation/RandomZoom/RandomTranslation layers). The machine's ceiling is
   the float32 rate of a large matrix product; the seed model's cost per training image is counted from its
   layers (forward + 2x for backward).
2. Where the seed model's training step spends its time (torch.profiler), and the rate it would reach if
   everything but the convolutions cost nothing.
3. ``digit-recognizer run --preset fast`` as a user runs it, in a fresh process, from reading the CSVs to
   the submission; its validation accuracy and the training seconds to 99.5 % and 99.6 %.
4. ``digit-recognizer predict`` of test.csv (28,000 rows) with that run, in a fresh process, imports,
   model and CSV included: with ONNX Runtime (``--onnx``) and with PyTorch (``--model``); median of 3.

Parts 3 and 4 need the competition files. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from seed_recipe import machine

from digit_recognizer.config import TrainConfig
from digit_recognizer.data import Digits, find_csv, load_embedded, read_train
from digit_recognizer.evaluate import network_proba
from digit_recognizer.models import SeedCNN, to_input
from digit_recognizer.train import fit

BATCH = 86


def seed_macs_per_image() -> int:
    """Multiply-adds of one forward pass of the seed CNN, counted from its layers."""
    macs, side = 0, 28
    for module in SeedCNN().modules():
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs += side * side * module.in_channels * module.out_channels * k
        elif isinstance(module, torch.nn.MaxPool2d):
            side //= 2
        elif isinstance(module, torch.nn.Linear):
            macs += module.in_features * module.out_features
    return macs


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def torch_train_steps(x: np.ndarray, y: np.ndarray, epochs: int = 2) -> float:
    """Images/s of plain training steps (no augmentation) on fixed batches; the first epoch is warm-up."""
    torch.manual_seed(0)
    network = SeedCNN().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.RMSprop(network.parameters(), lr=1e-3, alpha=0.9, eps=1e-8)
    xs = to_input(torch.from_numpy(x)).contiguous(memory_format=torch.channels_last)
    ys = torch.from_numpy(y)
    for _ in range(epochs):  # the last epoch is timed; the first warms up
        started = time.perf_counter()
        for i in range(0, len(xs), BATCH):
            loss = F.cross_entropy(network(xs[i:i + BATCH]), ys[i:i + BATCH])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return len(xs) / (time.perf_counter() - started)


def torch_full_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Images/s of the project's own training loop (augmentation on), one epoch after a warm-up epoch."""
    cfg = TrainConfig(epochs=2, lr_patience=100)
    val = Digits(x[:BATCH * 4], y[:BATCH * 4])
    _, history = fit("cnn", cfg, Digits(x, y), val, torch.device("cpu"), progress=False)
    return history[-1]["images_per_second"]


def torch_predict(x: np.ndarray) -> float:
    network = SeedCNN().to(memory_format=torch.channels_last).eval()
    network_proba(network, x[:2048])
    started = time.perf_counter()
    network_proba(network, x)
    return len(x) / (time.perf_counter() - started)


def keras_side(x: np.ndarray, y: np.ndarray, epochs: int = 2) -> dict | None:
    try:
        import keras
        from keras import layers
    except ImportError:
        print("Keras/TensorFlow is not installed: the Keras side is skipped (pip install -e '.[keras]')")
        return None

    def conv_pair(filters: int, kernel: int) -> list:
        return [layers.Conv2D(filters, kernel, padding="same", activation="relu") for _ in range(2)]

    def seed_model(augmentation: list) -> keras.Model:
        model = keras.Sequential([
            keras.Input((28, 28, 1)), *augmentation,
            *conv_pair(32, 5), layers.BatchNormalization(), layers.MaxPooling2D(), layers.Dropout(0.25),
            *conv_pair(64, 3), layers.BatchNormalization(), layers.MaxPooling2D(), layers.Dropout(0.25),
            *conv_pair(128, 3), layers.BatchNormalization(), layers.Dropout(0.25),
            layers.Flatten(), layers.Dense(256, activation="relu"), layers.BatchNormalization(), layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ])
        model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, epsilon=1e-8),
                      loss="sparse_categorical_crossentropy")
        return model

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.started

    def train_rate(model: keras.Model) -> float:
        timer = Timer()
        model.fit(xs, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
        return len(xs) / timer.seconds  # the last epoch; the first includes tracing and compilation

    xs = (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    model = seed_model([])
    train = train_rate(model)
    model.predict(xs[:2048], batch_size=1024, verbose=0)
    started = time.perf_counter()
    model.predict(xs, batch_size=1024, verbose=0)
    predict_seconds = time.perf_counter() - started
    # The seed's augmentation the Keras 3 way, as layers active in training only: rotation +-10 degrees
    # (a fraction of a full turn), zoom and shifts +-10 %, zeros shifted in.
    augmentation = [layers.RandomRotation(10 / 360, fill_mode="constant"),
                    layers.RandomZoom(0.1, fill_mode="constant"),
                    layers.RandomTranslation(0.1, 0.1, fill_mode="constant")]
    return {"version": f"keras {keras.__version__} ({keras.backend.backend()})",
            "train_images_per_second": train,
            "train_with_augmentation_images_per_second": train_rate(seed_model(augmentation)),
            "predict_images_per_second": len(xs) / predict_seconds}


# Profiler operator names, grouped into the parts of a training step.
OPERATOR_GROUPS = {
    "convolution forward": ("aten::mkldnn_convolution", "aten::_convolution", "aten::conv2d"),
    "convolution backward": ("aten::convolution_backward",),
    "dropout masks": ("aten::bernoulli_",),
    "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward"),
    "dense layers": ("aten::mm", "aten::addmm"),
}


def profile_seed_step(x: np.ndarray, y: np.ndarray, steps: int = 20) -> dict:
    """Share of a seed training step's time per part (profiler self time), and the rate if only the
    convolutions cost anything."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    network = SeedCNN().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.RMSprop(network.parameters(), lr=1e-3, alpha=0.9, eps=1e-8)
    xs = to_input(torch.from_numpy(x[:steps * BATCH])).contiguous(memory_format=torch.channels_last)
    ys = torch.from_numpy(y[:steps * BATCH])

    def steps_once() -> None:
        for i in range(0, len(xs), BATCH):
            loss = F.cross_entropy(network(xs[i:i + BATCH]), ys[i:i + BATCH])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    steps_once()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        steps_once()
    self_us = {event.key: event.self_cpu_time_total for event in prof.key_averages()}
    total = sum(self_us.values())
    shares = {group: sum(self_us.get(op, 0) for op in ops) / total for group, ops in OPERATOR_GROUPS.items()}
    shares["everything else"] = 1 - sum(shares.values())
    return {k: round(v, 3) for k, v in shares.items()}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def seconds_to(history: pd.DataFrame, target: float) -> float | None:
    reached = history.index[history["val_accuracy"] >= target]
    return None if len(reached) == 0 else round(float(history["seconds"].loc[: reached[0]].sum()), 1)


def fast_preset_and_predict(data_dir: Path, work: Path, repeats: int = 3) -> dict:
    """Parts 3 and 4: the fast preset end to end, then prediction of test.csv, each in a fresh process."""
    cli = [sys.executable, "-m", "digit_recognizer.cli"]
    run_dir, onnx = work / "fast-run", work / "fast.onnx"
    test = find_csv(data_dir, "test")
    run_seconds = timed([*cli, "run", "--preset", "fast", "--data-dir", str(data_dir), "--out", str(run_dir),
                         "--quiet"])
    subprocess.run([*cli, "export", "--model", str(run_dir), "--onnx", str(onnx)], check=True,
                   stderr=subprocess.DEVNULL)
    predict = {}
    for name, source in (("onnxruntime", ["--onnx", str(onnx)]), ("pytorch", ["--model", str(run_dir)])):
        times = sorted(timed([*cli, "predict", *source, "--test", str(test), "--out", str(work / f"{name}.csv")])
                       for _ in range(repeats))
        predict[name] = round(times[len(times) // 2], 2)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    return {
        "run_wall_seconds": round(run_seconds, 1),
        "val_accuracy": round(metrics["val_accuracy"], 4),
        "epochs": metrics["epochs"],
        "train_images_per_second": metrics["train_images_per_second"],
        "train_seconds_to_99.5": seconds_to(history, 0.995),
        "train_seconds_to_99.6": seconds_to(history, 0.996),
        "predict_28000_wall_seconds": predict,
    }


def table(result: dict) -> str:
    project, keras = result["seed"]["project"], result["seed"].get("keras", {})
    rows = [("| measure | project (PyTorch) | Keras | project / Keras |"), "| --- | --- | --- | --- |"]
    for label, key in (("seed model training, images/s (batch 86)", "train_images_per_second"),
                       ("seed model prediction, images/s", "predict_images_per_second")):
        ratio = f"{project[key] / keras[key]:.2f}x" if keras else "-"
        rows.append(f"| {label} | {project[key]:.0f} | {keras.get(key, '-')} | {ratio} |")
    with_aug = project["train_loop_with_augmentation_images_per_second"]
    keras_aug = keras.get("train_with_augmentation_images_per_second")
    rows.append(f"| seed training with the seed's augmentation (each side its own), images/s | {with_aug:.0f} | "
                + (f"{keras_aug} | {with_aug / keras_aug:.2f}x |" if keras_aug else "| - |"))
    rows.append(f"| seed training, fraction of the matmul rate ({result['matmul_gflops']:.0f} GFLOP/s) | "
                f"{result['seed']['train_fraction_of_matmul_rate']:.0%} | | |")
    profile = result["seed"]["profile"]
    rows.append("| seed step time: " + ", ".join(f"{k} {v:.0%}" for k, v in profile.items()) + " | | | |")
    bound = project["train_images_per_second"] / (profile["convolution forward"] + profile["convolution backward"])
    rows.append(f"| seed training if only convolutions cost time, images/s | {bound:.0f} | | "
                f"{bound / keras['train_images_per_second']:.2f}x |" if keras else
                f"| seed training if only convolutions cost time, images/s | {bound:.0f} | | |")
    fast = result.get("fast_preset")
    if fast:
        rows += [
            f"| `run --preset fast`, wall seconds (CSV to submission) | {fast['run_wall_seconds']} | | |",
            f"| fast preset validation accuracy ({fast['epochs']} epochs) | {fast['val_accuracy']:.2%} | | |",
            f"| fast preset training seconds to 99.5 % / 99.6 % | {fast['train_seconds_to_99.5']} / "
            f"{fast['train_seconds_to_99.6']} | | |",
            f"| `predict` 28,000 rows, wall seconds: ONNX Runtime / PyTorch | "
            f"{fast['predict_28000_wall_seconds']['onnxruntime']} / {fast['predict_28000_wall_seconds']['pytorch']}"
            " | | |",
        ]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--batches", type=int, default=100, help="seed-model batches of 86 to time")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed"))
    parser.add_argument("--work", type=Path, default=Path("runs/speed"), help="where the fast run is written")
    parser.add_argument("--no-fast", action="store_true", help="skip parts 3 and 4 (the fast preset)")
    args = parser.parse_args()

    try:
        data = read_train(find_csv(args.data_dir, "train"))
        competition = True
    except ValueError:
        print(f"{args.data_dir}: no competition files; timing the seed model on the embedded digits only")
        data, competition = load_embedded()[0], False
    n = min(args.batches * BATCH, len(data))
    x, y = data.images[:n], data.labels[:n]

    peak = matmul_gflops()
    flop_per_train_image = 3 * 2 * seed_macs_per_image()
    project = {
        "train_images_per_second": torch_train_steps(x, y),
        "train_loop_with_augmentation_images_per_second": torch_full_loop(x, y),
        "predict_images_per_second": torch_predict(x),
    }
    seed: dict = {
        "images": n, "batch_size": BATCH, "mflop_per_training_image": round(flop_per_train_image / 1e6, 1),
        "project": {k: round(v, 1) for k, v in project.items()},
        "train_fraction_of_matmul_rate": round(project["train_images_per_second"] * flop_per_train_image
                                               / (peak * 1e9), 3),
        "profile": profile_seed_step(x, y),
    }
    keras_result = keras_side(x, y)
    if keras_result:
        seed["keras"] = {k: round(v, 1) if isinstance(v, float) else v for k, v in keras_result.items()}
        for key in ("train", "predict"):
            seed[f"ratio_{key}"] = round(project[f"{key}_images_per_second"]
                                         / keras_result[f"{key}_images_per_second"], 2)
        seed["ratio_train_with_augmentation"] = round(
            project["train_loop_with_augmentation_images_per_second"]
            / keras_result["train_with_augmentation_images_per_second"], 2)
    result = {"machine": machine(), "matmul_gflops": round(peak, 1), "seed": seed}
    if competition and not args.no_fast:
        result["fast_preset"] = fast_preset_and_predict(args.data_dir, args.work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = f"Machine: {result['machine']}\n\n" + table(result)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
