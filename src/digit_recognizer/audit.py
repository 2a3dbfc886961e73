"""The label audit: the training rows whose label is probably wrong, found from a finished K-fold run.

A K-fold run (``run --folds K``) has scored every training row with networks that never trained on it. Confident
learning (cleanlab's ``find_label_issues``) compares those out-of-fold probabilities with the given labels, class
by class, and flags the rows whose label the networks confidently disagree with. Each flagged row comes with the
label the networks suggest (the most probable digit) and cleanlab's label quality score of the given label
(``given_label_quality``, 0-1: the probability the networks give the given label; lower = more likely wrong).
The probabilities are those the run's report scores: the mean over the members, with test-time augmentation.

The run is read back like any input: ``run.json`` checked, its jobs planned again exactly as the run planned them
(:func:`~digit_recognizer.jobs.plan_jobs`, its excluded rows included), each job's record read through
:meth:`~digit_recognizer.rundir.RunDir.read_job` (its rows and probabilities checked against the job), and the
training data must be the run's own (its digest). Only then is anything written, through the run directory:
``label_issues.csv``, ``label_issues.png`` (the gallery ``report.html`` shows) and ``report.html`` again, each
recorded in ``run.json``'s files, so that ``--overwrite`` removes them with the run.

cleanlab is an optional extra (``pip install "digit-recognizer[audit]"``), imported only when an audit runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import Digits
from .errors import RunDirError
from .plots import plot_gallery
from .report import render_report
from .rundir import (
    HELDOUT_FILE,
    LABEL_ISSUES_FIGURE,
    LABEL_ISSUES_TABLE,
    MANIFEST_FILE,
    REPORT_FILE,
    RunDir,
    TrainedRun,
    read_trained_records,
    read_trained_run,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

CLEANLAB_MISSING = ('the label audit needs cleanlab: pip install "digit-recognizer[audit]" '
                    "(or pip install -e '.[audit]' in a checkout)")
# cleanlab's default score: the probability the out-of-fold networks give the given label. The same score ranks
# the flagged rows and fills the table, so that the table's order is its column's.
QUALITY_METHOD = "self_confidence"
TABLE_COLUMNS = ("row", "given_label", "suggested_label", "given_label_quality")
GALLERY = 24  # flagged rows the report shows (label_issues.csv lists them all)
_SUM_TOLERANCE = 1e-3  # a row of float32 probabilities sums to 1 within far less


@dataclass(frozen=True)
class LabelIssues:
    """The training rows whose label is probably wrong, most likely wrong first; one entry per row in each
    array."""

    rows: np.ndarray       # 0-based data rows of train.csv (the header is not a row)
    given: np.ndarray      # the label train.csv gives the row
    suggested: np.ndarray  # the digit the out-of-fold probabilities favour
    quality: np.ndarray    # cleanlab's label quality score of the given label, 0-1; lower = more likely wrong
    rows_audited: int      # every row of the training data was scored and considered
    table: Path | None = None  # label_issues.csv, once written

    def __len__(self) -> int:
        return len(self.rows)

    def frame(self) -> pd.DataFrame:
        """The rows as ``label_issues.csv`` holds them."""
        import pandas as pd

        return pd.DataFrame(dict(zip(TABLE_COLUMNS, (self.rows, self.given, self.suggested, self.quality.round(6)),
                                     strict=True)))


def cleanlab_missing() -> str | None:
    """The install line when cleanlab cannot be imported, else None (a check that imports nothing)."""
    return CLEANLAB_MISSING if importlib.util.find_spec("cleanlab") is None else None


def read_run(path: str | Path) -> TrainedRun:
    """The K-fold run in ``path``, from its ``run.json``; refuses (RunDirError naming the file) a directory that is
    not a run, and a run that did not score every training row out of fold."""
    run = read_trained_run(path, "audit a run made with --folds K (K of 2 or more)")
    if run.kind != "ensemble" or run.folds < 2:
        made = ("a single run, scored on one validation split" if run.kind == "single" else
                f"an ensemble scored on one validation split (folds {run.folds})")
        raise RunDirError(f"{run.path / MANIFEST_FILE}: {made}: the audit needs every training row scored out of "
                          "fold; audit a run made with --folds K (K of 2 or more)")
    return run


def out_of_fold_proba(run: TrainedRun, digits: Digits, source: str = "the training data") -> np.ndarray:
    """Every training row's probabilities ``(n, 10)``, out of fold: the mean over the run's members (with
    test-time augmentation) of the fold that did not train on the row. ``digits`` must be the run's training data
    (``source`` names it in the message when it is not); every record is checked as it is read."""
    run_dir = RunDir(run.path)
    proba = np.zeros((run.members, len(digits), 10))
    for i, (job, record) in enumerate(read_trained_records(run, digits, source)):  # member by member, fold by fold
        if not np.allclose(record.proba_tta.sum(1), 1, atol=_SUM_TOLERANCE):
            raise RunDirError(f"{run_dir.job_dir(job.name) / HELDOUT_FILE}: 'proba_tta' rows must each sum to 1 "
                              "(probabilities of the 10 digits)")
        proba[i // run.folds, record.scored_rows] = record.proba_tta
    return proba.mean(0)


def find_label_issues(labels: np.ndarray, proba: np.ndarray) -> LabelIssues:
    """The rows whose ``labels`` are probably wrong under the out-of-fold probabilities ``proba`` (cleanlab's
    ``find_label_issues``, confident learning), most likely wrong first."""
    if cleanlab_missing():
        raise ImportError(CLEANLAB_MISSING)
    from cleanlab.filter import find_label_issues as find
    from cleanlab.rank import get_label_quality_scores

    # One process: cleanlab's default pool forks this one, torch's threads and all, for no gain at this size.
    rows = np.asarray(find(labels, proba, return_indices_ranked_by=QUALITY_METHOD, n_jobs=1), dtype=np.int64)
    quality = get_label_quality_scores(labels, proba, method=QUALITY_METHOD)[rows]
    order = np.lexsort((rows, quality))  # lowest quality first, ties by row: the same file every time
    rows, quality = rows[order], quality[order]
    return LabelIssues(rows, labels[rows], proba[rows].argmax(1), quality, len(labels))


def audit(path: str | Path, digits: Digits, source: str = "the training data") -> LabelIssues:
    """Audit the labels of ``digits``, the training data of the K-fold run in ``path``: find the rows whose label
    is probably wrong, write ``label_issues.csv`` and the gallery, and write ``report.html`` again with it.

    Everything is read and checked before anything is written: a fault raises RunDirError or DataError naming
    the file (``source`` names the training data), and without cleanlab, ImportError with the install line.
    """
    if cleanlab_missing():
        raise ImportError(CLEANLAB_MISSING)
    run = read_run(path)
    run_dir = RunDir(run.path)
    run_dir.check_writable()
    run_dir.check_own(LABEL_ISSUES_TABLE, LABEL_ISSUES_FIGURE, REPORT_FILE)
    issues = find_label_issues(digits.labels, out_of_fold_proba(run, digits, source))
    render_report(run_dir)  # reads the run's other files: a damaged one is named before anything is written
    run_dir.write_table(issues.frame(), LABEL_ISSUES_TABLE)
    run_dir.write_figure(plot_label_issues(digits.images, issues), LABEL_ISSUES_FIGURE)
    run_dir.write_report(render_report(run_dir))
    return dataclasses.replace(issues, table=run_dir.path / LABEL_ISSUES_TABLE)


def plot_label_issues(images: np.ndarray, issues: LabelIssues, limit: int = GALLERY) -> Figure:
    """The first ``limit`` flagged rows as a gallery, each image titled with its row, its given -> suggested label
    and the given label's quality score."""
    shown = min(len(issues), limit)
    captions = [f"row {issues.rows[k]}\n{issues.given[k]} \u2192 {issues.suggested[k]}  q={issues.quality[k]:.2f}"
                for k in range(shown)]
    more = f", the first {shown} shown" if len(issues) > shown else ""
    # Two lines: a gallery of a few digits is narrow.
    title = (f"{len(issues):,} of {issues.rows_audited:,} training rows probably mislabelled\n"
             f"(given \u2192 suggested label){more}")
    return plot_gallery(images[issues.rows[:shown]], captions, title, "no label issues")
