"""Choose the classic methods' settings by cross-validation, and time the chosen ones on the full data.

    python benchmarks/tune_classic.py --data-dir ../shared/data/digit-recognizer --out runs/tune-classic

Step 1: for each classic method, a small grid is scored by stratified 3-fold cross-validation on a random
subsample of train.csv (``--rows``, default 10,000) to keep the search within minutes on 2 cores.
Step 2 is ``digit-recognizer compare`` itself, run on the full file with the settings written into
``digit_recognizer/methods.py``. Writes ``<out>/tuning.json`` with every grid point's mean accuracy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from digit_recognizer.data import find_csv, read_train
from digit_recognizer.files import write_json
from digit_recognizer.methods import _scaler

GRIDS = {
    "logreg": (Pipeline([("scale", _scaler()), ("clf", LogisticRegression(max_iter=300))]),
               {"clf__C": [0.01, 0.1, 1.0]}),
    "knn": (Pipeline([("scale", _scaler()), ("pca", PCA(random_state=0)),
                      ("clf", KNeighborsClassifier(weights="distance"))]),
            {"pca__n_components": [30, 40, 60], "clf__n_neighbors": [3, 4, 6]}),
    "svm": (Pipeline([("scale", _scaler()), ("pca", PCA(random_state=0)), ("clf", SVC(gamma="scale"))]),
            {"pca__n_components": [35, 50, 80], "clf__C": [3, 10, 30]}),
    "forest": (RandomForestClassifier(n_jobs=-1, random_state=0),
               {"n_estimators": [100, 300], "max_features": ["sqrt", 0.1]}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/digit-recognizer"))
    parser.add_argument("--out", type=Path, default=Path("runs/tune-classic"))
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--methods", default=",".join(GRIDS))
    args = parser.parse_args()

    train = read_train(find_csv(args.data_dir, "train"))
    pick = np.random.default_rng(0).choice(len(train), size=min(args.rows, len(train)), replace=False)
    X, y = train.images[pick], train.labels[pick]
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    results = {}
    for name in args.methods.split(","):
        estimator, grid = GRIDS[name]
        started = time.perf_counter()
        search = GridSearchCV(estimator, grid, cv=cv, n_jobs=1).fit(X, y)
        seconds = time.perf_counter() - started
        scores = [
            {"params": dict(params), "accuracy": round(float(score), 4)}
            for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True)
        ]
        results[name] = {"best": search.best_params_, "best_accuracy": round(float(search.best_score_), 4),
                         "seconds": round(seconds, 1), "grid": scores}
        print(f"{name:>7}: best {search.best_params_}  cv accuracy {search.best_score_:.4f}  ({seconds:.0f}s)")
    write_json({"rows": len(X), "folds": 3, "results": results}, args.out / "tuning.json")


if __name__ == "__main__":
    main()
