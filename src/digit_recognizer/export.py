"""A run's network as an ONNX file, for ONNX Runtime (``predict --onnx``, ``serve --onnx``)."""

from __future__ import annotations

from pathlib import Path

import torch

from .data import SIDE
from .files import output_path
from .methods import EnsembleModel, NetClassifier
from .predict import TorchPredictor


def export_onnx(run_dir: str | Path, path: str | Path) -> None:
    """Write the network of a run directory as ONNX (input ``pixels``: float (n, 1, 28, 28) in [0, 1]).

    Only a single network exports; an ensemble, a scikit-learn model or a network whose scores are not finite
    numbers (damaged weights) raises ValueError saying so.
    """
    model = TorchPredictor(run_dir).model  # loaded, and its probabilities checked to be finite numbers
    if isinstance(model, EnsembleModel):
        raise ValueError(f"{run_dir}: an ensemble of {len(model.members)} models; export takes a single network "
                         f"(one member's folder under {Path(run_dir) / 'jobs'} exports)")
    if not isinstance(model, NetClassifier):
        raise ValueError(f"{run_dir}: a scikit-learn model; export takes a single network (cnn, fast or mlp)")
    network = model.network_
    example = torch.rand(2, 1, SIDE, SIDE)
    with output_path(path) as tmp:
        torch.onnx.export(
            network, (example,), str(tmp), input_names=["pixels"], output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )
