"""report.html: one self-contained page per run, built from the run directory, and served by ``serve``."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import tiny
from fastapi.testclient import TestClient

from digit_recognizer.cli import main
from digit_recognizer.data import Digits
from digit_recognizer.runs import per_class, train_run
from digit_recognizer.serve import create_app

FIGURES = ("curves.png", "confusion_matrix.png", "errors.png")


@pytest.fixture(scope="module")
def digits(embedded) -> Digits:
    train = embedded[0]
    return Digits(train.images[:400], train.labels[:400])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("report") / "run"
    train_run(digits, out, "fast", tiny(2), progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_ensemble(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("report") / "ensemble"
    train_run(digits, out, "fast", tiny(1), progress=False, members=2, folds=2)
    return out


class Page(HTMLParser):
    """Every tag and attribute of a page, and its text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags, self.attributes, self.text = [], [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]

    def handle_data(self, data):
        self.text.append(data)


def inlined(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def test_the_report_holds_every_figure_and_table(tiny_run):
    html = (tiny_run / "report.html").read_text()
    page = Page(html)
    sources = [value for tag, name, value in page.attributes if tag == "img" and name == "src"]
    assert sources == [inlined((tiny_run / name).read_bytes()) for name in FIGURES]
    ids = [value for _, name, value in page.attributes if name == "id"]
    assert ids == ["metrics", "settings", "curves", "confusion", "per-class", "errors", "execution"]
    text = " ".join(page.text)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    settings = json.loads((tiny_run / "run.json").read_text())["train"]
    assert f"{metrics['val_accuracy']:.4f}" in text and f"{metrics['val_loss']:.4f}" in text
    assert all(name in text for name in settings)
    assert "Per-class accuracy" in text and page.tags.count("tr") >= 10 + len(settings)


def test_the_report_loads_nothing_from_anywhere(tiny_run, tiny_ensemble):
    for out in (tiny_run, tiny_ensemble):
        html = (out / "report.html").read_text()
        page = Page(html)
        assert not {"script", "link", "iframe", "object", "embed", "base", "form"} & set(page.tags)
        for tag, name, value in page.attributes:
            if name in ("src", "href", "action", "srcset", "poster", "data") or name.startswith("on"):
                assert value.startswith(("data:image/png;base64,", "#")), (tag, name, value[:80])
        without_images = "".join(part.split('"', 1)[-1] for part in html.split("data:image/png;base64,"))
        assert "://" not in without_images and "url(" not in without_images and "@import" not in without_images


def test_per_class_accuracy_comes_from_the_held_out_probabilities(tiny_run, digits):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    with np.load(tiny_run / "heldout.npz") as saved:
        rows, proba = saved["scored_rows"], saved["proba"]
    assert metrics["per_class"] == per_class(digits.labels[rows], proba.argmax(1))
    assert sum(row["images"] for row in metrics["per_class"]) == metrics["n_val"]
    assert sum(row["correct"] for row in metrics["per_class"]) / metrics["n_val"] == pytest.approx(
        metrics["val_accuracy"])
    assert [row["digit"] for row in metrics["per_class"]] == list(range(10))


def test_an_ensembles_report_has_its_members_table_and_curves(tiny_ensemble):
    html = (tiny_ensemble / "report.html").read_text()
    page = Page(html)
    sources = [value for tag, name, value in page.attributes if tag == "img" and name == "src"]
    assert sources == [inlined((tiny_ensemble / name).read_bytes()) for name in FIGURES]  # curves of every job
    text = " ".join(page.text)
    for row in json.loads((tiny_ensemble / "metrics.json").read_text())["table"]:
        assert row["model"] in text and f"{row['accuracy']:.4f}" in text
    assert "member1-fold1" in text and "Ensemble of 2 fast networks x 2 folds" in text
    assert 'id="members"' in html and 'id="per-class"' in html


class StubPredictor:
    name, backend = "stub", "none"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.full((len(images), 10), 0.1)


def test_serve_links_the_page_to_the_report(tiny_run):
    report = (tiny_run / "report.html").read_text()
    client = TestClient(create_app(StubPredictor(), report=report), base_url="http://127.0.0.1")
    assert 'href="/report"' in client.get("/").text
    answer = client.get("/report")
    assert answer.status_code == 200 and answer.text == report
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    without = TestClient(create_app(StubPredictor()), base_url="http://127.0.0.1")
    assert 'href="/report"' not in without.get("/").text and "report link" not in without.get("/").text
    assert without.get("/report").status_code == 404 and "error" in without.get("/report").json()


def test_serve_model_reads_the_runs_report(tiny_run, tmp_path, monkeypatch, capsys):
    served = {}

    def record(predictor, sock, report):
        served.update(report=report, port=sock.getsockname()[1])

    monkeypatch.setattr("digit_recognizer.serve.serve", record)
    assert main(["serve", "--model", str(tiny_run), "--port", "0"]) == 0  # 0: a free port, printed as the real one
    assert served["report"] == (tiny_run / "report.html").read_text()
    port = served["port"]
    assert port != 0
    assert f"on http://127.0.0.1:{port}/ (its report: http://127.0.0.1:{port}/report)" in capsys.readouterr().err
    older = tmp_path / "older"  # a run made before reports were written
    shutil.copytree(tiny_run, older)
    (older / "report.html").unlink()
    assert main(["serve", "--model", str(older), "--port", "0"]) == 0
    assert served["report"] is None and "/report" not in capsys.readouterr().err
