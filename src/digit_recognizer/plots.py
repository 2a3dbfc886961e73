"""The figures of a run: learning curves, confusion matrix, the most confident mistakes, a comparison.

Each function returns a matplotlib Figure; the run directory (:mod:`digit_recognizer.rundir`) saves it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from .data import SIDE


def plot_curves(history: list[dict]) -> Figure:
    """Loss (log scale) and accuracy of the training and validation sets per epoch, as in the seed kernel.

    The accuracy axis leaves out the first epoch's low values when there are later ones, so that the last
    tenths of a percent, where runs differ, stay readable.
    """
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for ax, key, title in ((ax_loss, "loss", "Loss (log scale)"), (ax_acc, "accuracy", "Accuracy")):
        ax.plot(epochs, [row[key] for row in history], "b-", marker=".", label=f"Training {key}")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], "r-", marker=".", label=f"Validation {key}")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
    ax_loss.set_yscale("log")
    later = [row[k] for row in history[1:] for k in ("accuracy", "val_accuracy")] or \
        [row[k] for row in history for k in ("accuracy", "val_accuracy")]
    low, high = min(later), max(later)
    margin = max(0.1 * (high - low), 0.002)
    ax_acc.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    ax_acc.set_xlabel("Epoch")
    fig.suptitle("Training and validation curves")
    return fig


def plot_member_curves(histories: dict[str, tuple[int, list[dict]]]) -> Figure:
    """Validation loss (log scale) and accuracy per epoch of each training job of an ensemble, one line each:
    ``histories`` maps a job's name to its member's number (its colour) and its history."""
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    colours = plt.get_cmap("tab10")
    later = []
    for name, (member, history) in histories.items():
        epochs = [row["epoch"] for row in history]
        colour = colours(member % 10)
        ax_loss.plot(epochs, [row["val_loss"] for row in history], color=colour, lw=1, alpha=0.8, label=name)
        ax_acc.plot(epochs, [row["val_accuracy"] for row in history], color=colour, lw=1, alpha=0.8)
        later += [row["val_accuracy"] for row in (history[1:] or history)]
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("Validation loss (log scale)")
    ax_acc.set_ylabel("Validation accuracy")
    low, high = min(later), max(later)
    margin = max(0.1 * (high - low), 0.002)
    ax_acc.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    ax_acc.set_xlabel("Epoch")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if len(histories) <= 10:
        ax_loss.legend(loc="best", fontsize=8)
    fig.suptitle(f"Validation curves of the {len(histories)} training jobs")
    return fig


def plot_confusion(labels: np.ndarray, predicted: np.ndarray, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay.from_predictions(
        labels, predicted, labels=list(range(10)), ax=ax, cmap="Blues", colorbar=False
    )
    ax.set_title(title)
    return fig


def plot_gallery(images: np.ndarray, captions: list[str], title: str, empty: str) -> Figure:
    """Digits (rows of 784 pixels) in a grid of up to six columns, each titled with its caption; as wide as the
    images need (a few make a small figure, not a mostly empty one); ``empty`` is written when there are none."""
    cols = min(6, max(1, len(images)))
    rows = max(1, -(-len(images) // cols))
    # Constrained layout keeps the title clear of the images' two-line captions, whatever the grid's size.
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * 1.7, 4.0), rows * 2.0 + 0.5), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions, strict=False):
        ax.imshow(image.reshape(SIDE, SIDE), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=9)
    if len(images) == 0:
        axes.flat[0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=14)
    fig.suptitle(title, fontsize=11)
    return fig


def plot_errors(
    images: np.ndarray, labels: np.ndarray, proba: np.ndarray, indices: np.ndarray,
    title: str = "Most confident mistakes on the validation set",
) -> Figure:
    """The given images, each titled with its true and predicted label and the confidence."""
    predicted = proba[indices].argmax(1)
    captions = [f"true {labels[i]}  pred {p}\np={proba[i, p]:.2f}" for i, p in zip(indices, predicted, strict=True)]
    return plot_gallery(images[indices], captions, title, "no errors")


def plot_comparison(table: pd.DataFrame) -> Figure:
    """Accuracy and time per method, side by side, best accuracy on top."""
    table = table.sort_values("accuracy")
    names = table["model"].tolist()
    y = np.arange(len(names))
    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(11, 0.55 * len(names) + 1.8), sharey=True)
    ax_acc.barh(y, table["accuracy"] * 100, color="tab:blue")
    low = max(0.0, table["accuracy"].min() * 100 - 2)
    ax_acc.set_xlim(low, 100)
    for yi, acc in zip(y, table["accuracy"], strict=True):
        ax_acc.text(acc * 100, yi, f" {acc * 100:.2f}%", va="center", fontsize=9)
    ax_acc.set_yticks(y, names)
    ax_acc.set_xlabel("validation accuracy (%)")
    ax_acc.set_title("Accuracy")
    ax_time.barh(y - 0.2, table["fit_seconds"], height=0.4, label="fit", color="tab:orange")
    ax_time.barh(y + 0.2, table["predict_seconds"], height=0.4, label="predict (validation part)", color="tab:green")
    ax_time.set_xscale("log")
    ax_time.set_xlabel("seconds (log scale)")
    ax_time.set_title("Time")
    ax_time.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8, frameon=False)
    for ax in (ax_acc, ax_time):
        ax.grid(axis="x", alpha=0.3)
    return fig
