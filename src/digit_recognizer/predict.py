"""Predictors for a trained model: PyTorch (a run directory) or ONNX Runtime (a file made by `export`).

Nothing here imports torch at module level: ONNX prediction runs without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import N_CLASSES, SIDE
from .errors import first_line


def _probes() -> np.ndarray:
    """Three images a loaded model must answer: a blank one and two inked ones, as a model may fail only on ink."""
    probes = np.zeros((3, SIDE, SIDE), dtype=np.uint8)
    probes[1, 4:24, 12:16] = 255  # a bar
    probes[2, 6:22, 6:22] = 255
    probes[2, 10:18, 10:18] = 0  # a ring
    return probes.reshape(3, -1)


PROBES = _probes()


class TorchPredictor:
    """Probabilities from a run directory (any method saved by the pipeline)."""

    backend = "pytorch"

    def __init__(self, run_dir: str | Path, device: str = "cpu", tta: bool = False) -> None:
        # Imported here, not at module level, so that serving an ONNX file never loads torch.
        from .loading import load_model
        from .methods import estimator_proba

        self.model = load_model(run_dir, device=device, tta=tta)
        self.proba = estimator_proba
        self.name = str(run_dir)
        self(PROBES)  # weights that overflow are named now, not at the first request

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``(n, 10)``; raises ValueError naming the run if any is not a finite number (weights that
        overflow), so that no submission is made of them."""
        proba = self.proba(self.model, images)
        if not np.isfinite(proba).all():
            raise ValueError(f"{self.name}: the model predicts probabilities that are not finite numbers "
                             "(damaged weights)")
        return proba


class OnnxPredictor:
    """Probabilities from an ONNX file written by :func:`export_onnx`, with ONNX Runtime."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path) -> None:
        """Open and check the file: one input of 1x28x28 images, one output, and one row of 10 finite scores per
        image for a batch of one image and for a batch of three different ones. Raises ValueError naming the file
        and the fault."""
        import onnxruntime

        if not Path(path).is_file():
            fault = ("a directory, not an ONNX file" if Path(path).is_dir() else
                     "not a regular file (a device or a pipe, say)" if Path(path).exists() else "file not found")
            raise ValueError(f"{path}: {fault}")
        options = onnxruntime.SessionOptions()
        # ONNX Runtime's own log would add lines of its own to stderr for a failing model; the fault is reported
        # here, in one line, instead.
        options.log_severity_level = 4
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime raises several kinds for a damaged or foreign file
            raise ValueError(f"{path}: not a usable ONNX model ({first_line(err)})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or list(inputs[0].shape[1:]) != [1, SIDE, SIDE] or len(outputs) != 1:
            raise ValueError(f"{path}: expected one input of shape (n, 1, 28, 28) and one output, got inputs "
                             f"{[i.shape for i in inputs]} and {len(outputs)} outputs")
        self.input = inputs[0].name
        self.name = str(path)
        # A model that ignores the batch size, or works only for one image, would otherwise load and then write a
        # submission of the wrong length or fail every request. Batches of 1 and 3, so that a fixed batch size is
        # caught either way.
        for batch in (PROBES[:1], PROBES):
            self(batch)

    def __call__(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Probabilities ``(n, 10)``; raises ValueError naming the model if it fails or answers anything but one
        row of 10 finite scores per image, so that no submission can have the wrong number of rows."""
        # Batches small enough for the activations to stay in cache: 28,000 images in one call are
        # about five times slower than the same images 256 at a time.
        x = images.reshape(-1, 1, SIDE, SIDE).astype(np.float32) / 255.0
        logits = np.concatenate([self._scores(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        """The model's scores for one batch, checked: ``(len(x), 10)`` finite numbers."""
        n = len(x)
        batch = f"a batch of {n} image{'s' if n != 1 else ''}"
        try:
            out = self.session.run(None, {self.input: x})[0]
        except Exception as err:  # ONNX Runtime raises several kinds; the model is at fault, not the images
            raise ValueError(f"{self.name}: the model fails on {batch} ({first_line(err)})") from None
        if not isinstance(out, np.ndarray) or out.dtype.kind not in "iuf":
            what = f"{out.dtype} values" if isinstance(out, np.ndarray) else f"a {type(out).__name__}"
            raise ValueError(f"{self.name}: the model answers {what}, not numeric scores")
        if out.shape != (n, N_CLASSES):
            raise ValueError(f"{self.name}: the model answers shape {out.shape} for {batch}, not ({n}, {N_CLASSES}): "
                             "one row of 10 scores per image")
        if not np.isfinite(out).all():
            raise ValueError(f"{self.name}: the model answers scores that are not finite (NaN or infinite) for {batch}")
        return out.astype(np.float32, copy=False)
