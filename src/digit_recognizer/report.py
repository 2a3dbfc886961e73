"""``report.html``: a run on one self-contained page.

:func:`render_report` builds one self-contained page from what a run directory holds: the settings
(``run.json``), the metrics (``metrics.json``, per-class accuracy included), the learning curves, the confusion
matrix and the most confident errors (its PNG figures, inlined as ``data:`` URIs), for an ensemble the
members' table, for a second stage the test images it learned from with pseudo-labels, and once the run has been
audited (:mod:`digit_recognizer.audit`) the gallery of the rows whose label is probably wrong. The page loads
nothing from anywhere: no scripts, no fonts, no links off the page.

It is written through :class:`~digit_recognizer.rundir.RunDir`, the only writer of a run directory.
"""

from __future__ import annotations

import base64
import math
from html import escape

from .rundir import CONFUSION_FILE, CURVES_FILE, ERRORS_FILE, LABEL_ISSUES_FIGURE, LABEL_ISSUES_TABLE, RunDir

# --- report.html ---------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #f6f7f9; }
main { max-width: 980px; margin: 0 auto; padding: 1.5rem 1.5rem 3rem; background: #fff; }
h1 { font-size: 1.5rem; margin: 0 0 0.3rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 0.6rem; border-bottom: 1px solid #ddd; padding-bottom: 0.25rem; }
p.sub { color: #555; margin: 0 0 1rem; }
nav a { margin-right: 0.9rem; color: #2a5db0; text-decoration: none; font-size: 0.92rem; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8rem; margin: 1rem 0; }
.card { border: 1px solid #dde3ea; border-radius: 6px; padding: 0.6rem 0.9rem; min-width: 8rem; }
.card .v { font-size: 1.35rem; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .k { font-size: 0.8rem; color: #666; }
table { border-collapse: collapse; font-size: 0.9rem; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 0.25rem 0.8rem 0.25rem 0; border-bottom: 1px solid #eee; vertical-align: top; }
th { color: #444; font-weight: 600; }
td.n { text-align: right; }
.cols { display: flex; flex-wrap: wrap; gap: 2.5rem; }
figure { margin: 0.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
.bar { width: 160px; height: 11px; background: #eee; border-radius: 2px; overflow: hidden; }
.bar div { height: 100%; background: #3b78c4; }
footer { margin-top: 2.5rem; font-size: 0.8rem; color: #777; }
"""


def render_report(run_dir: RunDir) -> str:
    """``report.html`` for the run in ``run_dir`` (a single run or an ensemble), from its files."""
    what, metrics = run_dir.read_manifest(), run_dir.read_metrics()
    ensemble = what["kind"] == "ensemble"
    method = str(what.get("method", "?"))
    if ensemble:
        folds = what.get("folds", 1)
        title = f"Ensemble of {what.get('members')} {method} networks" + (
            f" x {folds} folds" if isinstance(folds, int) and folds > 1 else "")
        headline = {f"{metrics.get('estimate', 'held-out')} accuracy": metrics.get("ensemble_accuracy"),
                    "with TTA": metrics.get("ensemble_accuracy_tta"),
                    "single model": metrics.get("single_model_accuracy"),
                    "training (s)": metrics.get("train_seconds")}
        scored = f"the {metrics.get('rows_scored', 0):,} held-out rows, ensemble with test-time augmentation"
    elif what["kind"] == "distill":
        teacher = what["teacher"] if isinstance(what.get("teacher"), dict) else {}
        title = f"{method}: one network distilled from {teacher.get('members', '?')} x {teacher.get('folds', '?')} " \
                "teacher networks"
        estimate = metrics.get("estimate")
        headline = {f"students' {estimate} accuracy" if estimate else "not scored": metrics.get("val_accuracy"),
                    "with TTA": metrics.get("val_accuracy_tta"), "teachers' accuracy": metrics.get("teacher_accuracy"),
                    "temperature": metrics.get("temperature"),
                    "training (s)": metrics.get("train_seconds")}
        scored = (f"the {metrics.get('rows_scored', 0):,} rows its students were scored on ({estimate}: each by a "
                  "student whose teachers never trained on it)") if estimate else "no rows (--no-score)"
    else:
        title = f"{method}: one training run"
        headline = {"validation accuracy": metrics.get("val_accuracy"), "validation loss": metrics.get("val_loss"),
                    "epochs": metrics.get("epochs"), "training (s)": metrics.get("train_seconds")}
        scored = f"the validation split ({metrics.get('n_val', 0):,} images)"
    sections = [
        ("metrics", "Metrics", _cards(headline) + _key_values(
            {key: value for key, value in metrics.items() if not isinstance(value, dict | list)})),
        ("settings", "Settings", _settings(what)),
        ("curves", "Learning curves", _figure(run_dir.read_figure(CURVES_FILE), "Learning curves",
                                              "Loss and accuracy per epoch" if not ensemble else
                                              "Validation loss and accuracy per epoch, one line per training job")),
        ("confusion", "Confusion matrix", _figure(run_dir.read_figure(CONFUSION_FILE), "Confusion matrix",
                                                  f"True digit (rows) against predicted digit (columns) on {scored}")),
        ("per-class", "Per-class accuracy", _per_class(metrics.get("per_class"), scored)),
        ("errors", "Most confident errors", _figure(run_dir.read_figure(ERRORS_FILE), "Most confident errors",
                                                    f"The digits of {scored} the model gets most confidently wrong")),
        ("label-issues", "Probably mislabelled rows", _figure(
            run_dir.read_figure(LABEL_ISSUES_FIGURE), "Training rows whose label is probably wrong",
            "Training rows whose given label is probably wrong (cleanlab's confident learning on the out-of-fold "
            "probabilities), most likely wrong first: the row of train.csv (0-based, header not counted), the "
            f"given label and the suggested one. Every flagged row is listed in {LABEL_ISSUES_TABLE}.")),
    ]
    if ensemble:
        sections.append(("members", "Members", _table(
            metrics.get("table", []), ["model", "accuracy", "errors", "accuracy_tta", "errors_tta", "train_seconds"])
            + _shared_errors(metrics.get("shared_errors"))))
    sections.append(("pseudo-labels", "Pseudo-labelled test images", _pseudo_labels(metrics.get("pseudo_labels"))))
    execution = metrics.get("execution", {})
    if execution:
        sections.append(("execution", "Where it ran", _key_values(
            {key: value for key, value in execution.items() if key != "jobs"}) + _table(
            [{**job, "name": job.get("name") or "the run"} for job in execution.get("jobs", [])],
            ["name", "where", "device", "seconds"])))
    body = "".join(f'<section id="{key}"><h2>{escape(heading)}</h2>{content}</section>'
                   for key, heading, content in sections if content)
    nav = "".join(f'<a href="#{key}">{escape(heading)}</a>' for key, heading, content in sections if content)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}: digit-recognizer report</title>\n<style>{STYLE}</style>\n</head>\n"
            "<body>\n<main>\n"
            f"<h1>{escape(title)}</h1>\n"
            f'<p class="sub">Run directory {escape(run_dir.path.resolve().name)}: {escape(what["kind"])} run on '
            f'training data {escape(str(what.get("data", "?")))}</p>\n<nav>{nav}</nav>\n{body}\n'
            f"<footer>Written by digit-recognizer {escape(str(what.get('version', '')))} from the files of this run "
            f"directory.</footer>\n</main>\n</body>\n</html>\n")


def _format(value: object, key: str = "") -> str:
    """A value as the page shows it: accuracies and losses to 4 decimals, other numbers as they are."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}" if ("accuracy" in key or "loss" in key) and math.isfinite(value) else f"{value:,.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(_format(item) for item in value)
    return str(value)


def _cards(values: dict) -> str:
    cards = "".join(f'<div class="card"><div class="v">{escape(_format(value, key))}</div>'
                    f'<div class="k">{escape(key)}</div></div>' for key, value in values.items() if value is not None)
    return f'<div class="cards">{cards}</div>'


def _key_values(values: dict) -> str:
    rows = "".join(f"<tr><th>{escape(str(key))}</th><td>{escape(_format(value, str(key)))}</td></tr>"
                   for key, value in values.items())
    return f"<table>{rows}</table>" if rows else ""


def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(
        f'<td{" class=n" if isinstance(row.get(column), int | float) else ""}>'
        f"{escape(_format(row.get(column, ''), column))}</td>" for column in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _settings(what: dict) -> str:
    run = {key: what[key] for key in ("kind", "method", "members", "folds", "data", "version") if key in what}
    if isinstance(what.get("exclude_rows"), list):
        run["excluded rows (never trained on)"] = len(what["exclude_rows"])
    if isinstance(what.get("pseudo_labels"), dict):
        run["pseudo-label threshold"] = what["pseudo_labels"].get("threshold")
    return f'<div class="cols"><div>{_key_values(run)}</div><div>{_key_values(what.get("train", {}))}</div></div>'


def _shared_errors(shared: object) -> str:
    """How often the members err on the same rows, in a sentence."""
    if not isinstance(shared, dict) or not isinstance(shared.get("errors"), list) or not shared["errors"]:
        return ""
    errors = [e for e in shared["errors"] if isinstance(e, int | float)]
    mean = sum(errors) / len(errors) if errors else float("nan")
    return (f"<p>Out of {escape(_format(shared.get('rows')))} rows, each member gets {mean:,.1f} wrong on average "
            f"(one pass) and their average {escape(_format(shared.get('average')))}. Any two members get "
            f"{escape(_format(shared.get('both_wrong')))} rows wrong together on average, against "
            f"{escape(_format(shared.get('if_independent')))} if their mistakes were independent; "
            f"{escape(_format(shared.get('wrong_in_all')))} rows are wrong in every member, "
            f"{escape(_format(shared.get('wrong_in_any')))} in at least one.</p>")


def _pseudo_labels(pseudo: object) -> str:
    """How many test images each fold's jobs learned from, the threshold, and the teacher networks that chose them."""
    if not isinstance(pseudo, dict):
        return ""
    folds = pseudo.get("folds", [])
    rows = [{"fold": "every job" if entry.get("fold") is None else entry.get("fold"),
             "test images used": entry.get("used"), "teachers": ", ".join(map(str, entry.get("teachers", [])))}
            for entry in folds if isinstance(entry, dict)]
    honest = (" The jobs of fold k learned only from the teacher's networks of fold k, which never trained on the "
              "rows fold k is scored on." if len(rows) > 1 else "")
    return (f"<p>Besides its training rows, each job trained on the test images (of "
            f"{escape(_format(pseudo.get('test_images')))}) whose mean probability of their most probable digit "
            f"over its teacher networks, of the run {escape(str(pseudo.get('teacher')))}, is at least "
            f"{escape(_format(pseudo.get('threshold')))}, labelled with that digit.{escape(honest)}</p>"
            + _table(rows, ["fold", "test images used", "teachers"]))


def _figure(png: bytes | None, alt: str, caption: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _per_class(rows: list[dict] | None, scored: str) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{row['digit']}</td><td class=n>{row['images']:,}</td><td class=n>{row['correct']:,}</td>"
        f"<td class=n>{_format(row['accuracy'], 'accuracy')}</td>"
        f'<td><div class="bar"><div style="width: {100 * (row["accuracy"] or 0):.1f}%"></div></div></td></tr>'
        for row in rows)
    return (f"<p>On {escape(scored)}.</p><table><tr><th>digit</th><th>images</th><th>correct</th>"
            f"<th>accuracy</th><th></th></tr>{body}</table>")
