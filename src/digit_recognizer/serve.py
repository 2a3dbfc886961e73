"""A web page to draw a digit and a JSON API, on a trained run (PyTorch) or an exported ONNX model.

    digit-recognizer serve --model runs/fast [--onnx model.onnx] [--host 127.0.0.1] [--port 8000]

``GET /report`` serves the run's ``report.html`` where it has one, linked from the page.
``POST /api/predict`` takes an image (PNG, JPEG, ...: the body, with an image content type) or JSON
``{"pixels": [784 values]}`` / ``{"pixels": [[784 values], ...]}`` (up to 1,024 images) in Kaggle's layout
(0-255, white digit on black). ``GET /api/health`` says which model answers. Bad input gets a 4xx JSON error.

Every error body is ``{"error": "..."}``. Decoding runs in worker threads, at most ``MAX_DECODES`` at once, so
large images do not hold up other requests. Unless the server is opened to other machines, a request whose
``Host`` header is not a loopback name is refused (a defence against DNS rebinding). ``/docs`` and ``/redoc``
serve their scripts from an installed package, so they work offline.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources

import numpy as np
from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .data import N_PIXELS
from .errors import BadRequest, ImageError, NoDigitError
from .predict import OnnxPredictor, TorchPredictor
from .preprocess import decode, mnist_like

MAX_BODY = 4 * 1024 * 1024
MAX_BATCH = 1024
MAX_DECODES = 2  # bodies (images or JSON) decoded at once, in worker threads; more wait their turn
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "application/octet-stream")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
REPORT_LINK = '<p class="hint"><a href="/report">The model\'s report</a>: its metrics, curves and errors.</p>'
# report.html is self-contained: it may show its own inline styles and data: images, and load nothing else.
REPORT_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def pixels_from_json(body: bytes) -> tuple[np.ndarray, bool]:
    """``{"pixels": [...784...]}`` or ``{"pixels": [[...784...], ...]}`` -> (uint8 ``(n, 784)``, single?)."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise BadRequest(400, "JSON is nested too deeply") from None
    except ValueError:  # also malformed UTF-8, and integers of thousands of digits
        raise BadRequest(400, "body is not valid JSON") from None
    if not isinstance(payload, dict) or "pixels" not in payload:
        raise BadRequest(422, 'expected a JSON object {"pixels": [...]}')
    try:
        array = np.asarray(payload["pixels"])
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged or absurdly deep lists
        array = None
    # Booleans, strings, objects, nulls and integers too large for 64 bits are no pixel values.
    if array is None or array.dtype.kind not in "iuf":
        raise BadRequest(422, "pixels must be numbers 0-255: a list of 784, or a list of such lists")
    if array.ndim not in (1, 2):
        raise BadRequest(422, f"pixels must be a list of 784 numbers or a list of such lists, got shape "
                              f"{list(array.shape)}")
    single = array.ndim == 1
    if single:
        array = array[None, :]
    if array.shape[1] != N_PIXELS:
        raise BadRequest(422, f"pixels must hold 784 values per image, got shape {list(array.shape)}")
    if len(array) == 0:
        raise BadRequest(422, "pixels holds no image")
    if len(array) > MAX_BATCH:
        raise BadRequest(413, f"a batch holds at most {MAX_BATCH} images, got {len(array)}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise BadRequest(422, "pixel values must be within 0-255")
    return np.rint(array).astype(np.uint8), single


def pixels_from_image(body: bytes) -> tuple[np.ndarray, bool]:
    """An image's bytes -> (uint8 ``(1, 784)``, True); anything the decoders raise is the client's mistake."""
    try:
        return mnist_like(decode(body))[None, :], True
    except NoDigitError as err:  # an image, but nothing to classify
        raise BadRequest(422, str(err)) from None
    except ImageError as err:
        raise BadRequest(400, str(err)) from None
    except Exception as err:  # a conversion PIL does not support (an exotic mode), or similar
        raise BadRequest(415, f"cannot use this image ({str(err) or type(err).__name__})") from None


async def read_body(request: Request) -> bytes:
    """The request body, refusing (413) more than MAX_BODY bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(413, f"body is {int(declared):,} bytes; at most {MAX_BODY:,}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise BadRequest(413, f"body is over {MAX_BODY:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # the client left mid-upload: nobody to answer, and nothing for the log
        raise BadRequest(400, "the client disconnected before the body ended") from None
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


def host_name(header: str) -> str:
    """A ``Host`` header without its port: ``"[::1]:8000"`` -> ``"[::1]"``, ``"Localhost:80"`` -> ``"localhost"``."""
    header = header.strip().lower()
    return header.partition("]")[0] + "]" if header.startswith("[") else header.partition(":")[0]


def create_app(predictor: TorchPredictor | OnnxPredictor,
               allowed_hosts: Iterable[str] | None = LOOPBACK_HOSTS, report: str | None = None) -> FastAPI:
    """The page and the API. Requests whose ``Host`` (without port) is not in ``allowed_hosts`` get a 400;
    ``None`` accepts any, for a server opened to other machines. ``report`` (a run's ``report.html``) is served at
    ``/report`` and linked from the page."""
    app = FastAPIOffline(title="digit-recognizer", summary="Handwritten digit recognition (MNIST / Kaggle)",
                         swagger_ui_parameters={"validatorUrl": None})
    app.state.decodes = CapacityLimiter(MAX_DECODES)
    hosts = None if allowed_hosts is None else {host.lower() for host in allowed_hosts}

    @app.middleware("http")
    async def check_host(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if hosts is not None and host_name(request.headers.get("host", "")) not in hosts:
            return JSONResponse({"error": "the Host header must be 127.0.0.1, localhost or [::1]: this server "
                                          "is not open to other machines (see --host)"}, status_code=400)
        return await call_next(request)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{err.detail}: {request.method} {request.url.path}"},
                            status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(Exception)
    async def crash(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal server error"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("digit_recognizer").joinpath("static/index.html").read_text()
        return HTMLResponse(html.replace("<!-- report link -->", REPORT_LINK if report is not None else ""))

    if report is not None:
        @app.get("/report", response_class=HTMLResponse, include_in_schema=False)
        async def report_page() -> HTMLResponse:
            return HTMLResponse(report, headers={"Content-Security-Policy": REPORT_POLICY})

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
            parse = pixels_from_json
        elif content_type in IMAGE_TYPES or content_type.startswith("image/") or not content_type:
            parse = pixels_from_image
        else:
            raise BadRequest(415, f"unsupported content type '{content_type}': send an image or application/json")
        images, single = await to_thread.run_sync(parse, body, limiter=app.state.decodes)
        proba = await run_in_threadpool(predictor, images)
        return answer(proba, single)

    return app


def is_loopback(host: str) -> bool:
    """Whether ``--host`` keeps the server to this machine (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def allowed_hosts(address: str) -> tuple[str, ...] | None:
    """The ``Host`` names a server listening on ``address`` answers: on a loopback address, the loopback names and
    the address itself; elsewhere, any (``None``), as it is open to other machines."""
    if not is_loopback(address):
        return None
    return (*LOOPBACK_HOSTS, f"[{address.strip('[]')}]" if ":" in address else address)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: a free port), for :func:`serve`. Bound once, here, so that the
    address printed is the one served and nothing else can take the port in between. Raises ValueError naming the
    address and the fault."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family)
    except (OSError, OverflowError) as err:  # OverflowError: a port outside 0-65535
        raise ValueError(f"cannot listen on {host}:{port}: {getattr(err, 'strerror', None) or err}") from None


def url(sock: socket.socket) -> str:
    """``http://host:port`` of a listening socket: the address and port it is actually bound to."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(predictor: TorchPredictor | OnnxPredictor, sock: socket.socket, report: str | None = None) -> None:
    """Run the server on a socket from :func:`listen` until interrupted; on a loopback address it answers only
    requests addressed to a loopback name (see :func:`allowed_hosts`)."""
    import uvicorn

    app = create_app(predictor, allowed_hosts(sock.getsockname()[0]), report)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
