"""Benchmark: the seed model in this project (PyTorch) against a Keras implementation, side by side.

    pip install -e ".[keras]"        # optional: TensorFlow/Keras; without it the Keras side is skipped
    python benchmarks/keras_compare.py --out benchmarks/results/keras_compare

Both sides train the same architecture on the same batches (the first ``--batches`` batches of 86 images of
train.csv, or of the embedded digits where the competition files are absent), without augmentation, so that
the model's own speed is compared; and both predict the same images. The project's full training loop (with
its augmentation) is timed too. The machine's ceiling is measured as the float32 rate of a large matrix
product; the seed model's cost per training image is counted from its layers (forward + 2x for backward).

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from digit_recognizer.data import Digits, find_csv, load_embedded, read_train
from digit_recognizer.evaluate import predict_proba
from digit_recognizer.models import SeedCNN, to_input
from digit_recognizer.train import TrainConfig, fit

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
    _, history = fit(cfg, Digits(x, y), val, progress=False)
    return history[-1]["images_per_second"]


def torch_predict(x: np.ndarray) -> float:
    network = SeedCNN().to(memory_format=torch.channels_last).eval()
    predict_proba(network, x[:2048])
    started = time.perf_counter()
    predict_proba(network, x)
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

    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        *conv_pair(32, 5), layers.BatchNormalization(), layers.MaxPooling2D(), layers.Dropout(0.25),
        *conv_pair(64, 3), layers.BatchNormalization(), layers.MaxPooling2D(), layers.Dropout(0.25),
        *conv_pair(128, 3), layers.BatchNormalization(), layers.Dropout(0.25),
        layers.Flatten(), layers.Dense(256, activation="relu"), layers.BatchNormalization(), layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3, rho=0.9, epsilon=1e-8),
                  loss="sparse_categorical_crossentropy")
    xs = (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.started

    timer = Timer()
    model.fit(xs, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
    model.predict(xs[:2048], batch_size=1024, verbose=0)
    started = time.perf_counter()
    model.predict(xs, batch_size=1024, verbose=0)
    predict_seconds = time.perf_counter() - started
    return {"version": f"keras {keras.__version__} ({keras.backend.backend()})",
            "train_images_per_second": len(xs) / timer.seconds,
            "predict_images_per_second": len(xs) / predict_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/keras_compare"))
    args = parser.parse_args()

    try:
        data = read_train(find_csv(args.data_dir, "train"))
    except ValueError:
        data = load_embedded()[0]
    n = min(args.batches * BATCH, len(data))
    x, y = data.images[:n], data.labels[:n]

    peak = matmul_gflops()
    flop_per_train_image = 3 * 2 * seed_macs_per_image()
    project = {
        "train_images_per_second": torch_train_steps(x, y),
        "train_loop_with_augmentation_images_per_second": torch_full_loop(x, y),
        "predict_images_per_second": torch_predict(x),
    }
    keras_result = keras_side(x, y)
    result = {
        "images": n, "batch_size": BATCH, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "matmul_gflops": round(peak, 1),
        "seed_mflop_per_training_image": round(flop_per_train_image / 1e6, 1),
        "project": {k: round(v, 1) for k, v in project.items()},
        "project_train_fraction_of_peak": round(project["train_images_per_second"] * flop_per_train_image
                                                / (peak * 1e9), 3),
    }
    if keras_result:
        result["keras"] = {k: round(v, 1) if isinstance(v, float) else v for k, v in keras_result.items()}
        result["ratio_train"] = round(project["train_images_per_second"] / keras_result["train_images_per_second"], 2)
        result["ratio_train_with_augmentation"] = round(
            project["train_loop_with_augmentation_images_per_second"] / keras_result["train_images_per_second"], 2)
        result["ratio_predict"] = round(
            project["predict_images_per_second"] / keras_result["predict_images_per_second"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| measure | project (PyTorch) | Keras | project / Keras |", "| --- | --- | --- | --- |"]
    k = result.get("keras", {})
    for label, key in (("training, images/s", "train_images_per_second"),
                       ("prediction, images/s", "predict_images_per_second")):
        ratio = f"{project[key] / k[key]:.2f}x" if k else "-"
        lines.append(f"| {label} | {project[key]:.0f} | {k.get(key, '-')} | {ratio} |")
    lines.append(f"| training loop with augmentation, images/s | "
                 f"{project['train_loop_with_augmentation_images_per_second']:.0f} | | |")
    lines.append(f"| training, fraction of the matmul ceiling ({peak:.0f} GFLOP/s) | "
                 f"{result['project_train_fraction_of_peak']:.0%} | | |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
