"""One rule for the labelling loop's files (issue 25, defects 9, 10, 11): a file that is
missing, or that names images not under DATA, is refused the same way by every command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsdml.data.split import labels_split, write_split_csv
from rsdml.errors import RsdmlError


def _folder(root: Path, names: list[str]) -> Path:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), len(n) * 7 % 255, np.uint8)).save(root / n)
    return root


def test_suggest_refuses_a_labels_file_that_does_not_exist(tmp_path):
    """Defect 9: it ran as if there were no labels and suggested labelled images."""
    from rsdml.labelling.suggest import suggest_for_folder

    data = _folder(tmp_path / "data", ["a/0.png", "a/1.png", "b/0.png"])
    with pytest.raises(RsdmlError, match="does not exist"):
        suggest_for_folder(data, 2, labels_file=tmp_path / "nope.csv", device="cpu", quiet=True)


def test_predict_refuses_a_folder_the_runs_labels_are_not_under(tmp_path):
    """Defect 10: predict RUN OTHER used the 1 of the run's labels found there, silently."""
    from rsdml.labelling.predict import predict_folder
    from rsdml.training.run_folder import RunFolder

    data = _folder(tmp_path / "data", ["a/0.png", "a/1.png", "b/0.png", "b/1.png"])
    other = _folder(tmp_path / "other", ["a/0.png", "c/5.png", "c/6.png"])
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class\na/0.png,A\nb/0.png,B\n")
    split = labels_split(["a/0.png", "a/1.png", "b/0.png", "b/1.png"],
                         {"a/0.png": "A", "b/0.png": "B"}, data_root=data, labels_file=labels)
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    write_split_csv(split, run.split)
    with pytest.raises(RsdmlError, match=r"names 1 image\(s\) not in the data folder.*b/0.png"):
        predict_folder(run.root, other, quiet=True)


def test_label_refuses_suggestions_made_for_another_folder(tmp_path):
    """Defect 11: suggestions naming none of DATA's images fell back to folder order."""
    from rsdml.labelling.page import open_session

    data = _folder(tmp_path / "data", ["a/0.png", "a/1.png"])
    sugg = tmp_path / "next.csv"
    sugg.write_text("rank,path,strategy,predicted,probability\n1,x/9.png,typiclust,,\n")
    with pytest.raises(RsdmlError, match="--suggestions .* not in the data folder"):
        open_session(data, tmp_path / "labels.csv", suggestions=sugg, quiet=True)
    assert not (tmp_path / "labels.csv").exists()  # refused before anything was written


def test_review_refuses_predictions_of_another_folder(tmp_path):
    from rsdml.labelling.page import read_review

    pred = tmp_path / "pred.csv"
    pred.write_text("path,class,probability,knn_agreement,margin\nx/3.png,Beach,0.4,0.3,0.05\n"
                    "elsewhere/9.png,Beach,0.5,0.5,0.1\n")
    with pytest.raises(RsdmlError, match="--predictions .* names 1 image"):
        read_review(pred, {"x/3.png"})


def test_label_on_a_busy_port_fails_before_any_work(tmp_path, capsys):
    """Issue 25: `label --port BUSY` failed only after the TypiClust pass and left an empty
    journal beside the labels file."""
    import socket

    from clihelp import assert_one_line_error, run_cli

    data = _folder(tmp_path / "data", ["a/0.png", "a/1.png"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(["label", str(data), "--labels", str(tmp_path / "labels.csv"),
                                "--port", str(port), "--quiet"], capsys)
    assert_one_line_error(code, err, "cannot listen", "--port")
    assert not list(tmp_path.glob("labels.csv*"))  # no labels file, no journal
