"""Stratified labelled / unlabelled / validation / test splits, and ``split.csv`` I/O.

This module holds the one definition of "unlabelled" in rsdml (:meth:`Split.unlabeled_index`):
under the paper's *transductive* protocol the unlabelled pool is the test images (without their
labels); under the *inductive* protocol it is a disjoint role of its own and test images are
never trained on.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsdml.errors import RsdmlError

ROLES = ("labeled", "unlabeled", "val", "test")
SPLIT_COLUMNS = ("path", "class_name", "label", "role")


@dataclass(frozen=True)
class Split:
    """Every image of a run with its label and role; rows sorted like the scan (class, name)."""

    protocol: str
    classes: list[str]
    paths: list[str]
    labels: np.ndarray  # int64, one per path
    roles: np.ndarray  # str, one of ROLES per path

    def __post_init__(self) -> None:
        if not (len(self.paths) == len(self.labels) == len(self.roles)):
            raise ValueError("paths, labels and roles must have the same length")

    def index(self, role: str) -> np.ndarray:
        return np.flatnonzero(self.roles == role)

    def unlabeled_index(self) -> np.ndarray:
        """The images whose labels training may never see (the only definition in rsdml)."""
        return self.index("test" if self.protocol == "transductive" else "unlabeled")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        return {r: int((self.roles == r).sum()) for r in ROLES if (self.roles == r).any()}


def _round_count(fraction: float, n: int) -> int:
    return int(math.floor(fraction * n + 0.5))


def make_split(
    paths: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    *,
    protocol: str = "transductive",
    labeled_fraction: float = 0.2,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Split each class on its own (stratified) under ``seed``.

    Per class of n images: max(1, round(f_l * n)) labelled. Transductive: the rest is test.
    Inductive: round(f_test * n) test (at least 1), round(f_val * n) validation, the rest
    unlabelled; validation shrinks first when a small class cannot hold all roles.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if protocol not in ("transductive", "inductive"):
        raise RsdmlError(f"--protocol {protocol!r} is not one of transductive, inductive")
    roles = np.empty(len(paths), dtype=object)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        n = len(idx)
        if n == 0 or (protocol == "inductive" and n < 2):
            raise RsdmlError(
                f"class {name!r} has {n} image(s); the {protocol} protocol needs at least "
                f"{1 if protocol == 'transductive' else 2} per class: add images or remove the folder"
            )
        idx = idx[rng.permutation(n)]
        n_lab = max(1, min(_round_count(labeled_fraction, n), n - 1))
        if protocol == "transductive":
            roles[idx[:n_lab]] = "labeled"
            roles[idx[n_lab:]] = "test"
            continue
        n_test = min(max(1, _round_count(test_fraction, n)), n - n_lab)
        n_val = min(_round_count(val_fraction, n), n - n_lab - n_test)
        roles[idx[:n_lab]] = "labeled"
        roles[idx[n_lab : n_lab + n_test]] = "test"
        roles[idx[n_lab + n_test : n_lab + n_test + n_val]] = "val"
        roles[idx[n_lab + n_test + n_val :]] = "unlabeled"
    return Split(protocol, list(classes), list(paths), labels, roles.astype(str))


def write_split_csv(split: Split, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SPLIT_COLUMNS)
        for p, y, r in zip(split.paths, split.labels, split.roles):
            w.writerow((p, split.classes[int(y)], int(y), r))
    tmp.replace(path)


def read_split_csv(path: str | Path, data_root: str | Path | None = None) -> Split:
    """Read a split written by :func:`write_split_csv`; check it names existing images."""
    path = Path(path)
    if not path.is_file():
        raise RsdmlError(f"--split {path} does not exist; give the split.csv of an earlier run")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or tuple(reader.fieldnames[:4]) != SPLIT_COLUMNS:
            raise RsdmlError(
                f"--split {path} has columns {reader.fieldnames}; expected {','.join(SPLIT_COLUMNS)}"
            )
        rows = list(reader)
    if not rows:
        raise RsdmlError(f"--split {path} lists no images")
    classes: dict[int, str] = {}
    paths, labels, roles = [], [], []
    for i, row in enumerate(rows, start=2):
        try:
            y = int(row["label"])
        except ValueError:
            raise RsdmlError(f"--split {path} line {i}: label {row['label']!r} is not an integer") from None
        if row["role"] not in ROLES:
            raise RsdmlError(
                f"--split {path} line {i}: role {row['role']!r} is not one of {', '.join(ROLES)}"
            )
        if classes.setdefault(y, row["class_name"]) != row["class_name"]:
            raise RsdmlError(f"--split {path} line {i}: label {y} names two classes")
        paths.append(row["path"])
        labels.append(y)
        roles.append(row["role"])
    if sorted(classes) != list(range(len(classes))):
        raise RsdmlError(f"--split {path}: labels must be 0..C-1, got {sorted(classes)}")
    roles_arr = np.asarray(roles)
    protocol = "inductive" if (roles_arr == "unlabeled").any() or (roles_arr == "val").any() else "transductive"
    if data_root is not None:
        root = Path(data_root)
        missing = [p for p in paths if not (root / p).is_file()]
        if missing:
            raise RsdmlError(
                f"--split {path} names {len(missing)} image(s) missing under {root} "
                f"(first: {', '.join(missing[:3])}); use the data folder the split was made for"
            )
    for r in ("labeled", "test"):
        if not (roles_arr == r).any():
            raise RsdmlError(f"--split {path} has no {r!r} images")
    return Split(protocol, [classes[c] for c in range(len(classes))], paths,
                 np.asarray(labels, dtype=np.int64), roles_arr)
