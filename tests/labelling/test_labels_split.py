"""The split of ``rsdml train --labels``: labelled rows from the file, every other image
unlabelled with no label at all, and a contract that names the labels file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rsdml.data.split import has_test_labels, labels_split, read_split, write_split_csv
from rsdml.errors import RsdmlError
from rsdml.labelling.labels import write_labels


def test_round_trip_keeps_unlabelled_rows_without_labels(tmp_path):
    paths = ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "c/0.png"]
    labels = {"b/1.png": "Beach", "a/0.png": "Airport"}
    lf = tmp_path / "labels.csv"
    write_labels(lf, labels)
    split = labels_split(paths, labels, data_root=tmp_path, labels_file=lf)
    assert split.classes == ["Airport", "Beach"]
    assert split.labels.tolist() == [0, -1, -1, 1, -1]
    assert split.roles.tolist() == ["labeled", "test", "test", "labeled", "test"]
    assert not has_test_labels(split)
    write_split_csv(split, tmp_path / "split.csv")
    meta = json.loads((tmp_path / "split.json").read_text())
    assert meta["labels"] == str(lf.resolve()) and meta["labeled_fraction"] is None
    back = read_split(tmp_path / "split.csv")
    assert back.labels.tolist() == split.labels.tolist()
    assert back.contract is not None and back.contract.labels == str(lf.resolve())
    np.testing.assert_array_equal(back.roles, split.roles)


def test_a_split_without_a_labels_contract_still_refuses_label_minus_one(tmp_path):
    f = tmp_path / "split.csv"
    f.write_text("path,class_name,label,role\na.png,A,0,labeled\nb.png,,-1,test\n")
    with pytest.raises(RsdmlError):
        read_split(f, protocol="transductive")
