"""The labels file (path,class) and its journal: parse errors and durable, replayable changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsdml.errors import RsdmlError
from rsdml.labelling.labels import LabelStore, journal_path, read_labels, write_labels

IMAGES = [f"a/{i}.png" for i in range(5)] + [f"b/{i}.png" for i in range(5)]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return p


def test_reads_rows_in_order(tmp_path):
    p = _write(tmp_path, "path,class\nb/1.png,Beach\na/0.png, Airport \n\n")
    assert read_labels(p, IMAGES) == {"b/1.png": "Beach", "a/0.png": "Airport"}


@pytest.mark.parametrize("text, needle", [
    ("path,class\na/0.png,A\nzz/9.png,B\n", "not in the data folder"),
    ("path,class\na/0.png,A\na/1.png,A\na/0.png,A\n", "line 4: a/0.png is labelled again (first on line 2)"),
    ("", "holds no labels"),
    ("path,class\n", "holds no labels"),
    ("image,label\na/0.png,A\n", "header path,class"),
    ("path,class\n../x.png,A\n", "not a path relative"),
    ("path,class\na/0.png,\n", "not a usable class name"),
])
def test_bad_files_are_one_line_errors(tmp_path, text, needle):
    with pytest.raises(RsdmlError) as e:
        read_labels(_write(tmp_path, text), IMAGES)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_store_writes_every_change_and_undoes_groups(tmp_path):
    p = tmp_path / "labels.csv"
    store = LabelStore(p, IMAGES)
    assert store.set_many(["a/0.png", "a/1.png"], "A") == 2
    assert read_labels(p, IMAGES) == {"a/0.png": "A", "a/1.png": "A"}  # on disk at once
    store.set_many(["a/1.png"], "B")
    assert store.undo() == [("a/1.png", "A")]
    assert store.undo() == [("a/0.png", None), ("a/1.png", None)]
    assert store.undo() == []
    assert read_labels(p, IMAGES, allow_empty=True) == {}
    store.close()
    assert not journal_path(p).exists()


def test_journal_is_replayed_and_a_torn_line_ignored(tmp_path):
    p = tmp_path / "labels.csv"
    write_labels(p, {"a/0.png": "A"})
    journal_path(p).write_text(
        '{"op": "set", "path": "a/2.png", "class": "A"}\n'
        '{"op": "remove", "path": "a/0.png"}\n'
        '{"op": "set", "path": "b/0.png", "cl'  # a kill mid-write: never acknowledged
    )
    store = LabelStore(p, IMAGES)
    assert store.snapshot() == {"a/2.png": "A"}
    assert read_labels(p, IMAGES) == {"a/2.png": "A"}  # the CSV holds the replay
    store.close()


def test_a_second_writer_is_refused(tmp_path):
    p = tmp_path / "labels.csv"
    first = LabelStore(p, IMAGES)
    with pytest.raises(RsdmlError, match="another process"):
        LabelStore(p, IMAGES)
    first.close()
    LabelStore(p, IMAGES).close()  # free again
