"""Class predictions of unlabelled images from embeddings and the current labels.

Method-agnostic, so it works for every method and for classes created after training (a new
class in the labels file gets a prototype at once): the probability of class c is the softmax
over classes of cos(x, mean unit embedding of the images labelled c) / T. T is fitted on
labelled images the run did not train on (labels added since training, a validation split:
temperature scaling, :mod:`rsdml.evaluation.prototypes`), so that "0.8" is right about 8 times
in 10; without such images it is 0.05 and the probabilities are not calibrated (they are
overconfident: a trained embedding pulls its labelled images close to their class). The kNN
agreement is the share of the distance-weighted vote of the K nearest labelled images (as the
kNN evaluation votes) that goes to the predicted class. The two disagree where an image sits
between classes or in a class that has few labels: those are the predictions worth reviewing
first (lowest probability first, then lowest agreement).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsdml.errors import RsdmlError
from rsdml.evaluation.knn import knn_predict
from rsdml.evaluation.prototypes import (
    DEFAULT_TEMPERATURE,
    Calibration,
    fit_temperature_on,
    prototype_predict,
)
from rsdml.fsutil import atomic_write_bytes
from rsdml.vectors import l2_normalize

KNN_K = 10
PREDICTION_COLUMNS = ("path", "class", "probability", "knn_agreement", "margin")


@dataclass
class Predictions:
    """One row per unlabelled image; ``proba`` [N, C] over ``classes``."""

    paths: list[str]
    classes: list[str]
    proba: np.ndarray
    knn_agreement: np.ndarray
    #: the fitted temperature (``held_out`` 0: too few labels to fit one; the default used)
    calibration: Calibration = Calibration(DEFAULT_TEMPERATURE, 0)

    @property
    def predicted(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @property
    def probability(self) -> np.ndarray:
        return self.proba.max(axis=1)

    @property
    def margin(self) -> np.ndarray:
        """Top-1 minus top-2 probability: small = the model hesitates between two classes."""
        if self.proba.shape[1] < 2:
            return np.ones(len(self.paths))
        top = np.sort(self.proba, axis=1)
        return top[:, -1] - top[:, -2]

    def review_order(self) -> np.ndarray:
        """Least certain first: by probability, then kNN agreement (stable)."""
        return np.lexsort((self.knn_agreement, self.probability))


def predict(vectors: np.ndarray, paths: list[str], labels: dict[str, str], *,
            temperature: float | None = None, held_out: set[str] | None = None,
            k: int = KNN_K) -> Predictions:
    """Predictions for every image of ``paths`` not in ``labels`` (vectors: unit rows).
    ``held_out``: labelled images the vectors were not trained with; the temperature is fitted
    on them (against the others' prototypes) unless ``temperature`` is given."""
    where = {p: i for i, p in enumerate(paths)}
    lab = [p for p in labels if p in where]
    classes = sorted({labels[p] for p in lab})
    if len(classes) < 2:
        raise RsdmlError(f"predictions need labelled images of at least 2 classes; the labels "
                         f"hold {len(classes)}: label more images first")
    x = l2_normalize(np.asarray(vectors, np.float32))
    li = np.asarray([where[p] for p in lab], np.int64)
    ly = np.asarray([classes.index(labels[p]) for p in lab], np.int64)
    if temperature is not None:
        cal = Calibration(float(temperature), 0)
    else:
        ho = np.asarray([p in (held_out or ()) for p in lab], bool)
        cal = fit_temperature_on(x[li[~ho]], ly[~ho], x[li[ho]], ly[ho], len(classes)) \
            if ho.any() and (~ho).any() else Calibration(DEFAULT_TEMPERATURE, 0)
    unl = np.setdiff1d(np.arange(len(paths)), li)
    proba = prototype_predict(x[li], ly, x[unl], len(classes), cal.temperature)
    _, votes = knn_predict(x[li], ly, x[unl], k=k, num_classes=len(classes))
    agree = votes[np.arange(len(unl)), proba.argmax(axis=1)]
    return Predictions([paths[i] for i in unl], classes, proba, agree, cal)


def predictions_csv(pred: Predictions) -> bytes:
    """The CSV of ``rsdml predict``: least certain first."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PREDICTION_COLUMNS)
    cls, prob, marg = pred.predicted, pred.probability, pred.margin
    for i in pred.review_order():
        w.writerow((pred.paths[i], pred.classes[cls[i]], f"{prob[i]:.4f}",
                    f"{pred.knn_agreement[i]:.2f}", f"{marg[i]:.4f}"))
    return buf.getvalue().encode("utf-8")


def write_predictions(path: str | Path, pred: Predictions) -> None:
    path = Path(path)
    if not path.parent.is_dir():
        raise RsdmlError(f"--out folder {path.parent} does not exist; create it first")
    atomic_write_bytes(path, predictions_csv(pred))


def run_labels(run_dir: str | Path) -> tuple[dict[str, str], Path | None]:
    """The labels a run was trained with: its labels file as it is now (``--labels`` runs:
    labels added since training count), else the labelled rows of its split.csv."""
    from rsdml.data.split import read_split
    from rsdml.labelling.labels import read_labels
    from rsdml.training.run_folder import RunFolder

    run = RunFolder(Path(run_dir))
    if not run.split.is_file():
        raise RsdmlError(f"{run.root} is not a trained run folder (no split.csv); give the "
                         "folder `rsdml train` wrote")
    split = read_split(run.split, what=f"{run.root}: split.csv")
    if split.contract is not None and split.contract.labels and Path(split.contract.labels).is_file():
        path = Path(split.contract.labels)
        return read_labels(path, allow_empty=True), path
    lab = split.index("labeled")
    return {split.paths[i]: split.classes[int(split.labels[i])] for i in lab}, None


def predict_folder(run_dir: str | Path, data: str | Path, *,
                   labels_file: str | Path | None = None, device: str | None = None,
                   quiet: bool = False, batch_size: int | None = None) -> Predictions:
    """``rsdml predict``: the run's embeddings of ``data`` and predictions of its unlabelled
    images from the labels (``labels_file``, else the run's own)."""
    from rsdml.labelling.labels import check_under_data, read_labels
    from rsdml.training.archive_vectors import archive_images, run_vectors

    root, images = archive_images(data)
    if labels_file:
        labels = read_labels(labels_file, images)
    else:  # the run's labels name images of its own data folder: refused elsewhere
        labels, source = run_labels(run_dir)
        check_under_data(labels, images, f"the labels of {run_dir} ({source or 'its split.csv'})",
                         f"give the folder the run was trained on, or --labels FILE.csv with "
                         f"labels of images under {data}")
    vec = run_vectors(run_dir, root, device=device, quiet=quiet, batch_size=batch_size)
    return predict(vec.vectors, vec.paths, labels, held_out=set(labels) - trained_on(run_dir))


def trained_on(run_dir: str | Path) -> set[str]:
    """The images whose labels a run trained with (its split's labelled rows)."""
    from rsdml.data.split import read_split
    from rsdml.training.run_folder import RunFolder

    run = RunFolder(Path(run_dir))
    if not run.split.is_file():
        return set()
    split = read_split(run.split, what=f"{run.root}: split.csv")
    return {split.paths[i] for i in split.index("labeled")}
