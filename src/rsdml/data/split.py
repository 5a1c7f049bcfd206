"""Stratified labelled / unlabelled / validation / test splits, and ``split.csv`` I/O.

This module holds the one definition of "unlabelled" in rsdml (:meth:`Split.unlabeled_index`):
under the paper's *transductive* protocol the unlabelled pool is the test images (without their
labels); under the *inductive* protocol it is a disjoint role of its own and test images are
never trained on.

A split file carries its own contract: ``NAME.csv`` (one row per image) and the sidecar
``NAME.json`` (protocol, seed, fractions, data root and the CSV's checksum), so a reused split
is never reinterpreted: its protocol is read, not guessed from the roles, and a split is only
used with the data folder it was made from. A CSV without a sidecar (written by rsdml before
the contract existed) is read with the protocol the caller names, after checking its roles.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rsdml.errors import RsdmlError
from rsdml.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

PROTOCOLS = ("transductive", "inductive")
ROLES = ("labeled", "unlabeled", "val", "test")
#: The roles each protocol may use (transductive: the unlabelled pool is the test images).
PROTOCOL_ROLES = {"transductive": ("labeled", "test"), "inductive": ROLES}
SPLIT_COLUMNS = ("path", "class_name", "label", "role")
CONTRACT_FORMAT = 1


@dataclass(frozen=True)
class SplitContract:
    """How a split was made; ``None`` where it is not known (a split of an older rsdml)."""

    protocol: str
    seed: int | None = None
    labeled_fraction: float | None = None
    val_fraction: float | None = None  # inductive only
    test_fraction: float | None = None  # inductive only
    data_root: str | None = None  # absolute, symlinks resolved
    #: ``--labels FILE.csv``: the labels came from this file (absolute) with this checksum;
    #: every other image is unlabelled and has no label at all (-1 in split.csv)
    labels: str | None = None
    labels_sha256: str | None = None

    def fractions(self) -> dict[str, float]:
        """The fractions the split was made with (those that are known and matter)."""
        names = ("labeled_fraction", "val_fraction", "test_fraction")
        return {k: v for k in names if (v := getattr(self, k)) is not None}


@dataclass(frozen=True)
class Split:
    """Every image of a run with its label and role; rows sorted like the scan (class, name)."""

    protocol: str
    classes: list[str]
    paths: list[str]
    labels: np.ndarray  # int64, one per path
    roles: np.ndarray  # str, one of ROLES per path
    contract: SplitContract | None = field(default=None, compare=False)

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
    data_root: str | Path | None = None,
) -> Split:
    """Split each class on its own (stratified) under ``seed``.

    Per class of n images: max(1, round(f_l * n)) labelled. Transductive: the rest is test.
    Inductive: round(f_test * n) test (at least 1), round(f_val * n) validation, the rest
    unlabelled; validation shrinks first when a small class cannot hold all roles.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if protocol not in PROTOCOLS:
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
    inductive = protocol == "inductive"
    contract = SplitContract(
        protocol, int(seed), float(labeled_fraction),
        float(val_fraction) if inductive else None, float(test_fraction) if inductive else None,
        str(Path(data_root).expanduser().resolve()) if data_root is not None else None,
    )
    return Split(protocol, list(classes), list(paths), labels, roles.astype(str), contract)


def labels_split(paths: Sequence[str], labels: dict[str, str], *,
                 data_root: str | Path, labels_file: str | Path) -> Split:
    """The split of ``rsdml train --labels``: the rows of the labels file are ``labeled``,
    every other image is unlabelled (role ``test`` of the transductive protocol, label -1:
    there is no label to hold). Classes are the file's, sorted by name."""
    classes = sorted(set(labels.values()))
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[labels[p]] if p in labels else -1 for p in paths], dtype=np.int64)
    roles = np.where(y >= 0, "labeled", "test").astype(str)
    labels_file = Path(labels_file).expanduser().resolve()
    contract = SplitContract(
        "transductive", data_root=str(Path(data_root).expanduser().resolve()),
        labels=str(labels_file), labels_sha256=hashlib.sha256(labels_file.read_bytes()).hexdigest(),
    )
    return Split("transductive", classes, list(paths), y, roles, contract)


def has_test_labels(split: Split) -> bool:
    """Whether the test images carry labels (not under ``--labels``, where none has one)."""
    test = split.index("test")
    return bool(len(test)) and bool((split.labels[test] >= 0).all())


def contract_path(path: str | Path) -> Path:
    """The sidecar of a split file: ``split.csv`` -> ``split.json``."""
    return Path(path).with_suffix(".json")


def write_split_csv(split: Split, path: Path) -> None:
    """``path`` and its contract sidecar, each replaced atomically (sidecar first: a kill
    between the two leaves no CSV, which is then written again, never a CSV without it)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(SPLIT_COLUMNS)
    for p, y, r in zip(split.paths, split.labels, split.roles):
        w.writerow((p, split.classes[int(y)] if y >= 0 else "", int(y), r))
    data = buf.getvalue().encode("utf-8")
    contract = split.contract or SplitContract(split.protocol)
    if contract.protocol != split.protocol:
        contract = replace(contract, protocol=split.protocol)
    meta = {"format": CONTRACT_FORMAT, **asdict(contract), "images": len(split.paths),
            "classes": split.num_classes, "csv_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(contract_path(path), (json.dumps(meta, indent=2) + "\n").encode())
    atomic_write_bytes(Path(path), data)


def read_split_csv(path: str | Path, data_root: str | Path | None = None, *,
                   protocol: str | None = None) -> Split:
    """Read a split written by :func:`write_split_csv`; check it names existing images.

    ``protocol``: what the caller's config says; a split whose contract records another one
    is an error. Only a CSV without a contract and without ``protocol`` has its protocol
    inferred from the roles (the behaviour of older rsdml, kept for old files).
    """
    split = read_split(path, protocol=protocol)
    if data_root is not None:
        check_images(split, data_root, f"--split {path}",
                     "use the data folder the split was made for")
    return split


def read_split(path: str | Path, *, protocol: str | None = None,
               what: str | None = None) -> Split:
    """The split in ``path`` (CSV plus contract); ``what`` names it in errors."""
    path = Path(path)
    what = what or f"--split {path}"
    if not path.is_file():
        raise RsdmlError(f"{what} does not exist; give the split.csv of an earlier run")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as e:
        raise RsdmlError(f"{what} cannot be read ({e.strerror or e}); check the path") from None
    except UnicodeDecodeError:
        raise RsdmlError(
            f"{what} is not a split.csv (not UTF-8 text); give the split.csv of an earlier run"
        ) from None
    contract = _read_contract(path, data, what)
    classes, paths, labels, roles_arr = _parse_rows(
        text, what, unlabeled_test=contract is not None and contract.labels is not None)
    if contract is not None:
        if protocol is not None and protocol != contract.protocol:
            raise RsdmlError(
                f"{what} was made for --protocol {contract.protocol}, but --protocol is "
                f"{protocol}; drop --protocol (the split's is used) or make a new split"
            )
        protocol = contract.protocol
    elif protocol is None:  # an older file, no caller protocol: the old rule, said out loud
        has_extra = bool(np.isin(roles_arr, ("unlabeled", "val")).any())
        protocol = "inductive" if has_extra else "transductive"
    else:
        log.warning("%s has no %s (made by an older rsdml): its protocol, fractions and data "
                    "folder are not recorded; reading it as --protocol %s", what,
                    contract_path(path).name, protocol)
    if protocol not in PROTOCOLS:
        raise RsdmlError(f"{what}: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    stray = sorted(set(roles_arr.tolist()) - set(PROTOCOL_ROLES[protocol]))
    if stray:
        raise RsdmlError(
            f"{what} has {', '.join(stray)} rows, which the {protocol} protocol does not have; "
            f"use --protocol inductive with it"
        )
    for r in ("labeled", "test"):
        if not (roles_arr == r).any():
            raise RsdmlError(f"{what} has no {r!r} images")
    return Split(protocol, classes, paths, np.asarray(labels, dtype=np.int64), roles_arr,
                 contract)


def _read_contract(path: Path, data: bytes, what: str) -> SplitContract | None:
    side = contract_path(path)
    if not side.is_file():
        return None
    fix = f"restore it, or delete {side.name} to read {path.name} as a split of an older rsdml"
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != CONTRACT_FORMAT:
            raise ValueError("not a split contract")
        contract = SplitContract(**{k: meta[k] for k in SplitContract.__dataclass_fields__
                                    if k in meta})
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise RsdmlError(f"{what}: {side} cannot be read ({type(e).__name__}); {fix}") from None
    if meta.get("csv_sha256") != hashlib.sha256(data).hexdigest():
        raise RsdmlError(
            f"{what} was changed after {side.name} was written (checksum differs); {fix}"
        )
    return contract


def _parse_rows(text: str, what: str, unlabeled_test: bool = False,
                ) -> tuple[list[str], list[str], list[int], np.ndarray]:
    """The rows of a split.csv; ``unlabeled_test``: test rows may have no label (-1, class
    name empty), as a split made from a labels file has."""
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fieldnames = reader.fieldnames
        if fieldnames is None or tuple(fieldnames[:4]) != SPLIT_COLUMNS:
            raise RsdmlError(
                f"{what} has columns {fieldnames}; expected {','.join(SPLIT_COLUMNS)}"
            )
        rows = list(reader)
    except csv.Error as e:
        raise RsdmlError(f"{what} is not a valid CSV file ({e}); give the split.csv of an "
                         "earlier run") from None
    if not rows:
        raise RsdmlError(f"{what} lists no images")
    classes: dict[int, str] = {}
    paths, labels, roles = [], [], []
    for i, row in enumerate(rows, start=2):
        if any(row.get(c) is None for c in SPLIT_COLUMNS):
            raise RsdmlError(f"{what} line {i}: fewer than {len(SPLIT_COLUMNS)} columns")
        try:
            y = int(row["label"])
        except ValueError:
            raise RsdmlError(f"{what} line {i}: label {row['label']!r} is not an integer") from None
        if row["role"] not in ROLES:
            raise RsdmlError(
                f"{what} line {i}: role {row['role']!r} is not one of {', '.join(ROLES)}"
            )
        if y == -1 and unlabeled_test and row["role"] == "test" and not row["class_name"]:
            paths.append(row["path"])
            labels.append(y)
            roles.append(row["role"])
            continue
        if classes.setdefault(y, row["class_name"]) != row["class_name"]:
            raise RsdmlError(f"{what} line {i}: label {y} names two classes")
        paths.append(row["path"])
        labels.append(y)
        roles.append(row["role"])
    if sorted(classes) != list(range(len(classes))):
        raise RsdmlError(f"{what}: labels must be 0..C-1, got {sorted(classes)}")
    return [classes[c] for c in range(len(classes))], paths, labels, np.asarray(roles)


def check_images(split: Split, data_root: str | Path, what: str, fix: str) -> None:
    """Every image of the split exists under ``data_root`` (else one line naming a few)."""
    root = Path(data_root).expanduser()
    missing = [p for p in split.paths if not (root / p).is_file()]
    if missing:
        raise RsdmlError(
            f"{what} names {len(missing)} image(s) missing under {root} "
            f"(first: {', '.join(missing[:3])}); {fix}"
        )


def check_data_root(split: Split, data_root: str | Path, what: str) -> None:
    """A split is used only with the data folder it was made from (its contract says which)."""
    made = split.contract.data_root if split.contract else None
    here = Path(data_root).expanduser().resolve()
    if made is not None and Path(made) != here:
        raise RsdmlError(
            f"{what} was made from data folder {made}, not {here}; pass --data {made}, or "
            "make a new split for this folder (run without --split)"
        )


def split_options(path: str | Path) -> dict[str, Any]:
    """The options a split's contract fixes (protocol and fractions), for a run that reuses
    it without giving them; empty for a split without a contract."""
    try:
        split = read_split(path)
    except RsdmlError:
        return {}  # the run reads it again and reports the problem in context
    if split.contract is None:
        return {}
    return {"protocol": split.contract.protocol, **split.contract.fractions()}
