from __future__ import annotations

import asyncio
import io
import queue
import re
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import matplotlib
import numpy as np
import onnx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw, ImageFont
from starlette.requests import ClientDisconnect

from digit_recognizer.cli import main
from digit_recognizer.data import Digits, write_csv
from digit_recognizer.errors import BadRequest
from digit_recognizer.export import export_onnx
from digit_recognizer.loading import load_model
from digit_recognizer.methods import estimator_proba
from digit_recognizer.predict import OnnxPredictor, TorchPredictor
from digit_recognizer.preprocess import ImageError, decode, mnist_like
from digit_recognizer.serve import MAX_BATCH, MAX_DECODES, allowed_hosts, create_app, listen, read_body, serve

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
LOCAL = "http://127.0.0.1"  # TestClient's default host, 'testserver', is refused like any non-loopback name


@pytest.fixture(scope="session")
def client(served_run) -> TestClient:
    return TestClient(create_app(TorchPredictor(served_run)), base_url=LOCAL)


class StubPredictor:
    """Uniform probabilities, for the tests about the server rather than the model."""

    name, backend = "stub", "none"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.full((len(images), 10), 0.1)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grey pixels, with no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    size = struct.pack("<HH", width, height)
    return b"GIF89a" + size + b"\x00\x00\x00" + b"," + b"\x00" * 4 + size + b"\x00\x02\x02\x4c\x01\x00;"


def bmp_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info


def png_with_text_bomb(kind: bytes, before_pixels: bool) -> bytes:
    """A small PNG with a zTXt or iTXt chunk that inflates to 16 MB (PIL stops at 1 MB)."""
    ok = png(Image.new("L", (8, 8), 0))
    flags = b"\x00" if kind == b"zTXt" else b"\x01\x00\x00\x00"
    bomb = png_chunk(kind, b"comment\x00" + flags + zlib.compress(b"a" * (16 << 20), 9))
    cut = 33 if before_pixels else len(ok) - 12  # after IHDR, or just before IEND
    return ok[:cut] + bomb + ok[cut:]


def truncated_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    data = png(Image.fromarray(noise))
    return data[: len(data) // 2]


def json_body(pixels: str) -> dict:
    return {"content": b'{"pixels": ' + pixels.encode() + b"}", "headers": {"content-type": "application/json"}}


def render(digit: int, size: int, offset: tuple[int, int], canvas: int = 280) -> Image.Image:
    """A digit in DejaVu Sans, black on white with its strokes thickened to pen width, off-centre on a canvas."""
    image = Image.new("L", (canvas, canvas), 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(str(FONT), size)
    draw.text((canvas / 2 + offset[0], canvas / 2 + offset[1]), str(digit), fill=0, font=font, anchor="mm",
              stroke_width=max(2, size // 20), stroke_fill=0)
    return image


def test_preprocessing_centres_and_scales_like_mnist():
    pixels = mnist_like(render(7, 200, (60, -50))).reshape(28, 28).astype(float)
    rows, cols = np.flatnonzero(pixels.max(1) > 0), np.flatnonzero(pixels.max(0) > 0)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 21  # fits the 20x20 box (+1 for anti-aliasing)
    yy, xx = np.indices(pixels.shape)
    com = ((yy * pixels).sum() / pixels.sum(), (xx * pixels).sum() / pixels.sum())
    assert abs(com[0] - 13.5) <= 1.0 and abs(com[1] - 13.5) <= 1.0
    assert pixels.max() == 255 and pixels[0, 0] == 0  # white ink on black, as in Kaggle's rows


def test_preprocessing_refuses_blank_and_non_images():
    with pytest.raises(ImageError, match="blank"):
        mnist_like(Image.new("L", (280, 280), 255))
    with pytest.raises(ImageError, match="not an image"):
        decode(b"definitely not a PNG")
    with pytest.raises(ImageError, match="at most 4096"):
        decode(png(Image.new("L", (4097, 10), 255)))


def test_font_digits_on_a_canvas_are_recognised(served_run, shared_data):
    # Needs the model trained on competition rows (shared_data): the embedded 4,000 digits are too few for a
    # network to read printed glyphs reliably.
    # Three sizes, each placed off-centre in two directions; the shift keeps the digit on the canvas.
    cases = [(digit, size, (sign * (280 - size) // 3, -sign * (280 - size) // 4))
             for digit in range(10) for size in (110, 160, 220) for sign in (-1, 1)]
    images = np.stack([mnist_like(render(digit, size, offset)) for digit, size, offset in cases])
    predicted = estimator_proba(load_model(served_run, device="cpu"), images).argmax(1)
    truth = np.array([digit for digit, _, _ in cases])
    wrong = [(int(t), int(p)) for t, p in zip(truth, predicted, strict=True) if t != p]
    assert np.mean(predicted == truth) >= 0.9, wrong


def test_predict_an_image(client):
    response = client.post("/api/predict", content=png(render(3, 180, (30, 20))),
                           headers={"content-type": "image/png"})
    assert response.status_code == 200
    result = response.json()
    assert set(result) == {"label", "probabilities"} and result["label"] in range(10)
    assert len(result["probabilities"]) == 10 and abs(sum(result["probabilities"]) - 1) < 1e-3


def test_a_printed_three_is_read_as_three(client, shared_data):
    # Needs the model trained on competition rows (shared_data): trained on the embedded digits only, it reads
    # printed glyphs by luck.
    response = client.post("/api/predict", content=png(render(3, 180, (30, 20))),
                           headers={"content-type": "image/png"})
    assert response.json()["label"] == 3


def test_predict_json_pixels_single_and_batch(client, embedded):
    train, _ = embedded
    one = client.post("/api/predict", json={"pixels": train.images[0].tolist()})
    assert one.status_code == 200 and set(one.json()) == {"label", "probabilities"}
    batch = client.post("/api/predict", json={"pixels": train.images[:20].tolist()})
    assert batch.status_code == 200
    labels = [p["label"] for p in batch.json()["predictions"]]
    assert len(labels) == 20 and np.mean(np.array(labels) == train.labels[:20]) >= 0.8


def test_health_and_openapi(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["backend"] == "pytorch"
    spec = client.get("/openapi.json").json()
    assert "/api/predict" in spec["paths"] and "/api/health" in spec["paths"]
    assert "image/png" in spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text


def specks() -> Image.Image:
    """Two white pixels at opposite corners of a large black image: ink that vanishes when fitted to 20x20."""
    image = Image.new("L", (1000, 1000), 0)
    image.putpixel((0, 0), 255)
    image.putpixel((999, 999), 255)
    return image


BAD = {
    "not an image": ({"content": b"\x00\x01garbage", "headers": {"content-type": "image/png"}}, 400, "not an image"),
    "empty body": ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
    "body over 4 MB": ({"content": b"\x89PNG" + b"0" * (4 * 1024 * 1024 + 1), "headers": {"content-type": "image/png"}},
                       413, "at most"),
    "image over 4096 px": ({"content": png(Image.new("L", (5000, 8), 255)), "headers": {"content-type": "image/png"}},
                           400, "4096"),
    "blank image": ({"content": png(Image.new("L", (280, 280), 255)), "headers": {"content-type": "image/png"}},
                    422, "blank"),
    "two specks far apart": ({"content": png(specks()), "headers": {"content-type": "image/png"}}, 422, "no digit"),
    "invalid json": ({"content": b"{pixels: ", "headers": {"content-type": "application/json"}}, 400, "JSON"),
    "json without pixels": ({"json": {"image": [0] * 784}}, 422, "pixels"),
    "wrong length": ({"json": {"pixels": [0] * 783}}, 422, "784"),
    "ragged batch": ({"json": {"pixels": [[0] * 784, [0] * 10]}}, 422, "pixels"),
    "pixel over 255": ({"json": {"pixels": [0] * 783 + [256]}}, 422, "0-255"),
    "negative pixel": ({"json": {"pixels": [-1] + [0] * 783}}, 422, "0-255"),
    "text pixels": ({"json": {"pixels": ["a"] * 784}}, 422, "numbers"),
    "batch over the limit": ({"json": {"pixels": [[0] * 784] * (MAX_BATCH + 1)}}, 413, "at most"),
    "unsupported type": ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "content type"),
}
PNG_TYPE = {"content-type": "image/png"}
ZEROS = "0, " * 783
HOSTILE = {
    "PNG header claiming 100000x100000": ({"content": png_claiming(100_000, 100_000), "headers": PNG_TYPE}, 400,
                                          "too large"),
    "GIF header claiming 65535x65535": ({"content": gif_claiming(65535, 65535),
                                         "headers": {"content-type": "image/gif"}}, 400, "too large"),
    "BMP header claiming 100000x100000": ({"content": bmp_claiming(100_000, 100_000),
                                           "headers": {"content-type": "image/bmp"}}, 400, "too large"),
    "zTXt bomb": ({"content": png_with_text_bomb(b"zTXt", True), "headers": PNG_TYPE}, 400, "too large"),
    "iTXt bomb after the pixels": ({"content": png_with_text_bomb(b"iTXt", False), "headers": PNG_TYPE}, 400,
                                   "too large"),
    "truncated PNG": ({"content": truncated_png(), "headers": PNG_TYPE}, 400, "truncated"),
    "PostScript (not a format the API reads)": ({"content": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n",
                                                 "headers": {"content-type": "image/eps"}}, 400, "not an image"),
    "a number of 400 digits": (json_body("[" + ZEROS + "9" * 400 + "]"), 422, "numbers"),
    "an integer of 5000 digits": (json_body("[" + ZEROS + "9" * 5000 + "]"), 400, "JSON"),
    "1e400": (json_body("[" + ZEROS + "1e400]"), 422, "0-255"),
    "NaN": (json_body("[" + ZEROS + "NaN]"), 422, "0-255"),
    "-Infinity": (json_body("[" + ZEROS + "-Infinity]"), 422, "0-255"),
    "JSON nested 100,000 deep": (json_body("[" * 100_000 + "]" * 100_000), 400, "nested"),
    "lists nested 200 deep": (json_body("[" * 200 + "0" + "]" * 200), 422, "pixels"),
    "pixels of depth 3": ({"json": {"pixels": [[[0] * 784]]}}, 422, "shape"),
    "pixels a number": ({"json": {"pixels": 7}}, 422, "list of 784"),
    "pixels an object": ({"json": {"pixels": {"0": 0}}}, 422, "numbers"),
    "pixels true": ({"json": {"pixels": True}}, 422, "numbers"),
    "pixels booleans": ({"json": {"pixels": [False] * 784}}, 422, "numbers"),
    "pixels null": ({"json": {"pixels": None}}, 422, "numbers"),
    "pixels a string": ({"json": {"pixels": "0" * 784}}, 422, "numbers"),
    "invalid UTF-8": ({"content": b'{"pixels": "\xc3\x28"}', "headers": {"content-type": "application/json"}}, 400,
                      "JSON"),
}
BAD |= HOSTILE


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_json_error_and_the_server_keeps_serving(case, client, embedded):
    kwargs, status, fragment = BAD[case]
    response = client.post("/api/predict", **kwargs)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]
    assert client.post("/api/predict", json={"pixels": embedded[0].images[0].tolist()}).status_code == 200


def test_onnx_export_agrees_with_pytorch(served_run, embedded, tmp_path):
    path = tmp_path / "model.onnx"
    assert main(["export", "--model", str(served_run), "--onnx", str(path)]) == 0
    images = embedded[1].images[:500]
    onnx_proba = OnnxPredictor(path)(images)
    torch_proba = TorchPredictor(served_run)(images)
    np.testing.assert_allclose(onnx_proba, torch_proba, atol=1e-4)
    sub = tmp_path / "sub.csv"
    assert main(["predict", "--onnx", str(path), "--test", str(tmp_path / "absent.csv"), "--out", str(sub),
                 "--tta"]) == 2  # refused before anything is read, not silently ignored
    assert not sub.exists()
    onnx_client = TestClient(create_app(OnnxPredictor(path)), base_url=LOCAL)
    assert onnx_client.get("/api/health").json()["backend"] == "onnxruntime"
    assert onnx_client.post("/api/predict", json={"pixels": images[0].tolist()}).json()["label"] == int(
        torch_proba[0].argmax())


def test_onnx_on_the_competition_test_rows(served_run, shared_data, tmp_path):
    from digit_recognizer.data import read_test

    test = read_test(shared_data / "test.csv.gz")
    export_onnx(served_run, tmp_path / "m.onnx")
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "m.onnx")(test.images),
                               TorchPredictor(served_run)(test.images), atol=1e-4)


def test_serve_refuses_a_missing_model(tmp_path, capsys):
    assert main(["serve", "--onnx", str(tmp_path / "none.onnx")]) == 2
    assert "not found" in capsys.readouterr().err



def modes_of(image: Image.Image) -> dict[str, tuple[bytes, str]]:
    """The same black-on-white digit in the modes and formats a user may upload."""
    ink = Image.fromarray(255 - np.asarray(image))  # ink as the level: the alpha of a digit on transparent paper
    palette = image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    frames = [image.convert("P")] + [Image.new("P", image.size, 255) for _ in range(150)]
    for k, frame in enumerate(frames[1:]):
        frame.putpixel((k, 0), 0)  # frames that differ, so none is merged away

    def encoded(picture: Image.Image, fmt: str, **options) -> bytes:
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return {
        "16-bit grey PNG": (encoded(Image.fromarray(np.asarray(image).astype(np.uint16) * 257), "PNG"), "image/png"),
        "CMYK JPEG": (encoded(image.convert("CMYK"), "JPEG", quality=95), "image/jpeg"),
        "palette PNG": (encoded(palette, "PNG"), "image/png"),
        "palette PNG, transparent paper": (encoded(palette, "PNG", transparency=palette.getpixel((0, 0))),
                                           "image/png"),
        "grey + alpha PNG, ink on transparent": (encoded(Image.merge("LA", (Image.new("L", image.size, 0), ink)),
                                                         "PNG"), "image/png"),
        "1-bit BMP": (encoded(image.convert("1", dither=Image.Dither.NONE), "BMP"), "image/bmp"),
        "animated GIF of 151 frames": (encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
                                       "image/gif"),
    }


def test_unusual_modes_and_animations_are_answered(client):
    for name, (data, content_type) in modes_of(render(3, 180, (30, 20))).items():
        response = client.post("/api/predict", content=data, headers={"content-type": content_type})
        assert response.status_code == 200, (name, response.text)
        assert response.json()["label"] in range(10), name


def test_unusual_modes_and_animations_are_read_like_plain_grey(client, shared_data):
    # Reading each as a 3 needs the model trained on competition rows, as for the plain printed 3.
    for name, (data, content_type) in modes_of(render(3, 180, (30, 20))).items():
        response = client.post("/api/predict", content=data, headers={"content-type": content_type})
        assert response.json()["label"] == 3, name


def test_health_answers_while_images_decode(monkeypatch):
    """Decodes run in worker threads, at most MAX_DECODES at once: while that many are held mid-decode by the
    test, /api/health answers and the other requests wait their turn."""
    release, entered = threading.Event(), threading.Semaphore(0)
    started, finished = [], []

    def held_decode(body: bytes) -> Image.Image:
        started.append(body)
        entered.release()
        try:
            # A timeout, so that a failing test ends rather than leaves threads blocked.
            assert release.wait(timeout=30), "never released"
            return decode(body)
        finally:
            finished.append(body)

    monkeypatch.setattr("digit_recognizer.serve.decode", held_decode)
    app = create_app(StubPredictor())
    body = png(render(3, 180, (30, 20)))

    async def scenario() -> tuple[httpx.Response, int, int, list[httpx.Response]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as http:
            decodes = [asyncio.create_task(http.post("/api/predict", content=body, headers=PNG_TYPE))
                       for _ in range(2 * MAX_DECODES)]
            try:
                for _ in range(MAX_DECODES):  # in another thread: the event loop must go on serving meanwhile
                    assert await asyncio.to_thread(entered.acquire, timeout=30), "the decodes never ran side by side"
                health = await http.get("/api/health")
                in_flight, done = len(started), len(finished)
            finally:
                release.set()
            return health, in_flight, done, await asyncio.gather(*decodes)

    health, in_flight, done, decoded = asyncio.run(scenario())
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert (in_flight, done) == (MAX_DECODES, 0)  # health answered while the most decodes allowed were under way
    assert [response.status_code for response in decoded] == [200] * len(decoded)
    assert len(finished) == len(decoded)


def test_errors_are_json_everywhere():
    app = create_app(StubPredictor())

    @app.get("/probe/{number}")
    async def probe(number: int) -> dict:
        return {"number": number}

    local = TestClient(app, base_url=LOCAL)
    for method, path, status in [("GET", "/nowhere", 404), ("GET", "/api/predict", 405), ("POST", "/api/health", 405),
                                 ("GET", "/probe/seven", 422), ("GET", "/static-offline-docs/absent.js", 404)]:
        response = local.request(method, path)
        assert response.status_code == status, (method, path)
        assert set(response.json()) == {"error"} and response.json()["error"], (method, path)
    assert "POST" in local.get("/api/predict").headers["allow"]
    assert "number" in local.get("/probe/seven").json()["error"]

    class Broken(StubPredictor):
        def __call__(self, images: np.ndarray) -> np.ndarray:
            raise RuntimeError("model failure")

    broken = TestClient(create_app(Broken()), base_url=LOCAL, raise_server_exceptions=False)
    response = broken.post("/api/predict", json={"pixels": [0] * 784})
    assert response.status_code == 500 and response.json() == {"error": "internal server error"}


def test_pages_load_nothing_from_other_hosts():
    local = TestClient(create_app(StubPredictor()), base_url=LOCAL)
    for path in ("/", "/docs", "/redoc", "/docs/oauth2-redirect"):
        page = local.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        outside = [url for url in re.findall(r"https?://[^\s\"'<>()]+", page.text)
                   if urlsplit(url).hostname not in ("127.0.0.1", "localhost")]
        assert outside == [], path
        for asset in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page.text):
            assert local.get(urljoin(LOCAL + path, asset)).status_code == 200, (path, asset)
    assert "swagger-ui-bundle.js" in local.get("/docs").text


def test_host_header_must_be_loopback_unless_opened_to_other_machines(monkeypatch):
    loopback_only = TestClient(create_app(StubPredictor()), base_url=LOCAL)
    for host in ("127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST:8000", "[::1]", "[::1]:8000"):
        assert loopback_only.get("/api/health", headers={"host": host}).status_code == 200, host
    for host in ("attacker.example", "attacker.example:8000", "testserver", "127.0.0.1.attacker.example", ""):
        response = loopback_only.get("/api/health", headers={"host": host})
        assert response.status_code == 400 and "Host" in response.json()["error"], host
    opened = TestClient(create_app(StubPredictor(), allowed_hosts=None))
    assert opened.get("/api/health", headers={"host": "digits.example:8000"}).status_code == 200

    # The names a server answers follow the address its socket is bound to.
    for address, expected in [("127.0.0.1", 400), ("127.0.0.2", 400), ("::1", 400), ("0.0.0.0", 200), ("::", 200),
                              ("192.0.2.7", 200)]:
        served = TestClient(create_app(StubPredictor(), allowed_hosts(address)), base_url=LOCAL)
        assert served.get("/api/health", headers={"host": "attacker.example"}).status_code == expected, address
        assert served.get("/api/health").status_code == 200, address
    bound = TestClient(create_app(StubPredictor(), allowed_hosts("127.0.0.2")), base_url="http://127.0.0.2:8000")
    assert bound.get("/api/health").status_code == 200  # the address it is bound to is a name it answers

    # serve() runs uvicorn on the very socket it is handed, answering the names of the address it is bound to.
    runs = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: runs.append((self.config.app, sockets)))
    with listen("localhost", 0) as sock:
        serve(StubPredictor(), sock)
    [(app, sockets)] = runs
    assert sockets == [sock]
    assert TestClient(app, base_url=LOCAL).get("/api/health", headers={"host": "attacker.example"}).status_code == 400


def onnx_file(path: Path, nodes: list, weights: dict[str, np.ndarray]) -> Path:
    """An ONNX model of ``nodes`` from the input ``pixels`` (n, 1, 28, 28) to the output ``logits``."""
    graph = helper.make_graph(
        nodes, "model", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, None])],
        initializer=[numpy_helper.from_array(value, name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # one that ONNX Runtime reads, whatever the onnx package writes by default
    onnx.save(model, str(path))
    return path


WEIGHTS = {"w": np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32)}
LINEAR = [helper.make_node("Flatten", ["pixels"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])]


def first_images(count: int) -> tuple[list, dict[str, np.ndarray]]:
    """A linear model that answers for the first ``count`` images of a batch, whatever its size."""
    ends = {"start": np.array([0]), "end": np.array([count]), "axis": np.array([0])}
    slice_ = helper.make_node("Slice", ["pixels", "start", "end", "axis"], ["some"])
    return [slice_, helper.make_node("Flatten", ["some"], ["flat"]), LINEAR[1]], WEIGHTS | ends


def constant(rows: int) -> list:
    """A model that answers ``rows`` rows of scores, whatever the batch."""
    scores = numpy_helper.from_array(np.zeros((rows, 10), np.float32))
    return [helper.make_node("Constant", [], ["logits"], value=scores)]


HOSTILE_MODELS = {  # name: nodes, weights, the fault named
    "a constant of 1 row": (constant(1), {}, "shape (1, 10) for a batch of 3 images"),
    "a constant of 2 rows": (constant(2), {}, "shape (2, 10) for a batch of 1 image,"),
    "the first 2 images of a batch": (*first_images(2), "shape (2, 10) for a batch of 3 images"),
    "one image at a time": ([helper.make_node("Reshape", ["pixels", "one"], ["flat"]), LINEAR[1]],
                            WEIGHTS | {"one": np.array([1, 784])}, "fails on a batch of 3 images"),
    "9 scores": (LINEAR, {"w": WEIGHTS["w"][:, :9]}, "shape (1, 9)"),
    "NaN scores": ([*LINEAR[:1], helper.make_node("MatMul", ["flat", "w"], ["scores"]),
                    helper.make_node("Mul", ["scores", "nan"], ["logits"])],
                   WEIGHTS | {"nan": np.array(np.nan, np.float32)}, "not finite"),
}


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory, embedded) -> Path:
    path = tmp_path_factory.mktemp("test") / "test.csv"
    write_csv(Digits(embedded[1].images[:500]), path)
    return path


def refused_in_one_line(capfd, *fragments: str) -> None:
    out, err = capfd.readouterr()  # file descriptors, so that ONNX Runtime's own log would show here too
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and "error" in lines[0] and "serving" not in err, err
    assert all(fragment in lines[0] for fragment in fragments), err


@pytest.mark.parametrize("case", list(HOSTILE_MODELS))
def test_an_onnx_model_without_one_row_per_image_is_refused_at_load(case, test_csv, tmp_path, capfd, monkeypatch):
    nodes, weights, fault = HOSTILE_MODELS[case]
    path = onnx_file(tmp_path / "hostile.onnx", nodes, weights)
    with pytest.raises(ValueError, match=re.escape(fault)):
        OnnxPredictor(path)
    capfd.readouterr()
    out = tmp_path / "sub.csv"
    assert main(["predict", "--onnx", str(path), "--test", str(test_csv), "--out", str(out)]) == 2
    refused_in_one_line(capfd, "hostile.onnx", fault)
    served = []  # should the model pass, the test records it rather than serve for ever
    monkeypatch.setattr("digit_recognizer.serve.serve", lambda *args: served.append(args))
    assert main(["serve", "--onnx", str(path), "--port", "0"]) == 2
    refused_in_one_line(capfd, "hostile.onnx", fault)
    assert served == [] and list(tmp_path.iterdir()) == [path]


def test_an_onnx_model_wrong_only_for_larger_batches_writes_no_submission(test_csv, tmp_path, capfd):
    path = onnx_file(tmp_path / "three.onnx", *first_images(3))  # right for the batches checked at load
    predictor = OnnxPredictor(path)
    with pytest.raises(ValueError, match=r"three.onnx: the model answers shape \(3, 10\) for a batch of 256 images"):
        predictor(np.zeros((500, 784), np.uint8))
    capfd.readouterr()
    out = tmp_path / "sub.csv"
    assert main(["predict", "--onnx", str(path), "--test", str(test_csv), "--out", str(out)]) == 2
    refused_in_one_line(capfd, "three.onnx", "shape (3, 10) for a batch of 256 images")
    assert list(tmp_path.iterdir()) == [path]
    served = TestClient(create_app(predictor), base_url=LOCAL, raise_server_exceptions=False)
    assert served.post("/api/predict", json={"pixels": [[0] * 784] * 3}).status_code == 200
    response = served.post("/api/predict", json={"pixels": [[0] * 784] * 5})
    assert response.status_code == 500 and response.json() == {"error": "internal server error"}


def test_serve_on_port_0_prints_the_port_it_listens_on(tmp_path):
    model = onnx_file(tmp_path / "linear.onnx", LINEAR, WEIGHTS)
    command = [sys.executable, "-m", "digit_recognizer.cli", "serve", "--onnx", str(model), "--port", "0"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as server:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in server.stderr], daemon=True).start()
        try:
            first = lines.get(timeout=60)
            match = re.search(r"serving .* on (http://127\.0\.0\.1:(\d+))/$", first.strip())
            assert match and int(match[2]) != 0, first
            health = httpx.get(match[1] + "/api/health", timeout=30)  # the socket listens before the line is printed
            assert health.status_code == 200 and health.json()["backend"] == "onnxruntime"
            stranger = httpx.get(match[1] + "/api/health", headers={"host": "attacker.example"}, timeout=30)
            assert stranger.status_code == 400
            batch = httpx.post(match[1] + "/api/predict", json={"pixels": [[0] * 784] * 3}, timeout=30)
            assert batch.status_code == 200 and len(batch.json()["predictions"]) == 3
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def test_serve_refuses_a_port_in_use_or_out_of_range(tmp_path, capsys, monkeypatch):
    model = onnx_file(tmp_path / "linear.onnx", LINEAR, WEIGHTS)
    served = []  # should the port be accepted, the test records it rather than serve for ever
    monkeypatch.setattr("digit_recognizer.serve.serve", lambda *args: served.append(args))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--onnx", str(model), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "serving" not in err and "in use" in err and len(err.strip().splitlines()) == 1, err
    assert main(["serve", "--onnx", str(model), "--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "serving" not in err and "cannot listen on 127.0.0.1:70000" in err and len(err.strip().splitlines()) == 1
    assert served == []


def test_a_client_that_leaves_mid_upload_is_answered_not_logged():
    """A body cut off by the client (Content-Length 1,000, ten bytes sent, the socket closed) is a 400 of the
    API's own, not an exception with a traceback in the server's log for every such request."""
    class Leaving:
        def __init__(self) -> None:
            self.headers = {}

        async def stream(self):
            yield b"\x89PNG\r\n\x1a\n00"
            raise ClientDisconnect()

    with pytest.raises(BadRequest) as refused:
        asyncio.run(read_body(Leaving()))
    assert refused.value.status == 400 and "disconnected" in refused.value.message
