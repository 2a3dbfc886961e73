"""A web page to draw a digit and a JSON API, on a trained run (PyTorch) or an exported ONNX model.

    digit-recognizer serve --model runs/fast [--onnx model.onnx] [--host 127.0.0.1] [--port 8000]

``POST /api/predict`` takes an image (PNG, JPEG, ...: the body, with an image content type) or JSON
``{"pixels": [784 values]}`` / ``{"pixels": [[784 values], ...]}`` (up to 1,024 images) in Kaggle's layout
(0-255, white digit on black). ``GET /api/health`` says which model answers. Bad input gets a 4xx JSON error.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from .data import N_PIXELS
from .predict import OnnxPredictor, TorchPredictor
from .preprocess import ImageError, decode, mnist_like

MAX_BODY = 4 * 1024 * 1024
MAX_BATCH = 1024
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "application/octet-stream")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def pixels_from_json(body: bytes) -> tuple[np.ndarray, bool]:
    """``{"pixels": [...784...]}`` or ``{"pixels": [[...784...], ...]}`` -> (uint8 ``(n, 784)``, single?)."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "body is not valid JSON") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise BadRequest(422, 'expected a JSON object {"pixels": [...]}')
    try:
        array = np.asarray(payload["pixels"], dtype=np.float64)
    except (ValueError, TypeError):
        raise BadRequest(422, "pixels must be numbers: a list of 784, or a list of such lists") from None
    single = array.ndim == 1
    if single:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != N_PIXELS:
        raise BadRequest(422, f"pixels must hold 784 values per image, got shape {list(array.shape)}")
    if len(array) == 0:
        raise BadRequest(422, "pixels holds no image")
    if len(array) > MAX_BATCH:
        raise BadRequest(413, f"a batch holds at most {MAX_BATCH} images, got {len(array)}")
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise BadRequest(422, "pixel values must be within 0-255")
    return np.rint(array).astype(np.uint8), single


async def read_body(request: Request) -> bytes:
    """The request body, refusing (413) more than MAX_BODY bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(413, f"body is {int(declared):,} bytes; at most {MAX_BODY:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest(413, f"body is over {MAX_BODY:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def answer(proba: np.ndarray, single: bool) -> dict:
    results = [{"label": int(p.argmax()), "probabilities": [round(float(v), 6) for v in p]} for p in proba]
    return results[0] if single else {"predictions": results}


PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {
                "type": "object", "required": ["pixels"],
                "properties": {"pixels": {"description": "784 values 0-255, or a list of up to 1,024 such lists",
                                          "type": "array", "items": {}}},
            }},
        },
    }
}


def create_app(predictor: TorchPredictor | OnnxPredictor) -> FastAPI:
    app = FastAPI(title="digit-recognizer", summary="Handwritten digit recognition (MNIST / Kaggle)")

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("digit_recognizer").joinpath("static/index.html").read_text())

    @app.get("/api/health")
    async def health() -> dict:
        return {"status": "ok", "model": predictor.name, "backend": predictor.backend}

    @app.post("/api/predict", openapi_extra=PREDICT_DOC)
    async def predict(request: Request) -> dict:
        """Label and the ten class probabilities for one image, or a batch of pixel rows."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await read_body(request)
        if not body:
            raise BadRequest(400, "empty body: send an image or JSON pixels")
        if content_type == "application/json":
            images, single = pixels_from_json(body)
        elif content_type in IMAGE_TYPES or content_type.startswith("image/") or not content_type:
            try:
                images = mnist_like(decode(body))[None, :]
            except ImageError as err:
                raise BadRequest(422 if "blank" in str(err) else 400, str(err)) from None
            single = True
        else:
            raise BadRequest(415, f"unsupported content type '{content_type}': send an image or application/json")
        proba = await run_in_threadpool(predictor, images)
        return answer(proba, single)

    return app


def serve(predictor: TorchPredictor | OnnxPredictor, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(create_app(predictor), host=host, port=port, log_level="warning")
