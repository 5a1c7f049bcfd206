"""``rsdml train --labels FILE.csv``: the split made from a labels file.

The file's rows are the labelled images; every other image below ``--data`` (any folder tree:
an archive need not be sorted into class folders) is unlabelled and carries no label at all,
so there is nothing to test against: evaluation then reports what needs no test labels
(:func:`rsdml.evaluation.suite.evaluate_embeddings`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from rsdml.config import TrainConfig
from rsdml.data.split import Split, labels_split
from rsdml.errors import DatasetNotFoundError, RsdmlError
from rsdml.labelling.labels import class_counts, read_labels

log = logging.getLogger(__name__)


def split_from_labels(cfg: TrainConfig) -> Split:
    """The labelled rows of ``cfg.labels`` and every other image of ``cfg.data``."""
    from rsdml.data.scan import list_images

    assert cfg.data and cfg.labels
    root = Path(cfg.data).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"--data {root} does not exist; check the path")
    paths, bad = list_images(root)
    if bad:
        log.warning("skipping %d unreadable image(s) (first: %s)", len(bad), ", ".join(bad[:3]))
    labels = read_labels(cfg.labels, paths)
    counts = class_counts(labels)
    if len(counts) < 2:
        raise RsdmlError(f"--labels {cfg.labels} names {len(counts)} class(es); metric learning "
                         "needs at least 2: label images of another class")
    single = [c for c, n in counts.items() if n == 1]
    if single:
        log.warning("%d class(es) have one labelled image (%s); a typo in a class name looks "
                    "like this, and more images of a class help it", len(single),
                    ", ".join(single[:5]) + (", ..." if len(single) > 5 else ""))
    if len(labels) == len(paths):
        raise RsdmlError(f"--labels {cfg.labels} labels every image under {root}; nothing is "
                         "left unlabelled: train with --data alone (class folders) instead")
    return labels_split(paths, labels, data_root=root, labels_file=cfg.labels)
