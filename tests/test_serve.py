from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFont

from digit_recognizer.cli import main
from digit_recognizer.methods import estimator_proba, load_model
from digit_recognizer.predict import OnnxPredictor, TorchPredictor, export_onnx
from digit_recognizer.preprocess import ImageError, decode, mnist_like
from digit_recognizer.serve import MAX_BATCH, create_app

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


@pytest.fixture(scope="session")
def client(served_run) -> TestClient:
    return TestClient(create_app(TorchPredictor(served_run)))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
    assert result["label"] == 3
    assert len(result["probabilities"]) == 10 and abs(sum(result["probabilities"]) - 1) < 1e-3


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


BAD = {
    "not an image": ({"content": b"\x00\x01garbage", "headers": {"content-type": "image/png"}}, 400, "not an image"),
    "empty body": ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
    "body over 4 MB": ({"content": b"\x89PNG" + b"0" * (4 * 1024 * 1024 + 1), "headers": {"content-type": "image/png"}},
                       413, "at most"),
    "image over 4096 px": ({"content": png(Image.new("L", (5000, 8), 255)), "headers": {"content-type": "image/png"}},
                           400, "4096"),
    "blank image": ({"content": png(Image.new("L", (280, 280), 255)), "headers": {"content-type": "image/png"}},
                    422, "blank"),
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
    onnx_client = TestClient(create_app(OnnxPredictor(path)))
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

