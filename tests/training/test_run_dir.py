"""Run folder errors that say why: a missing best.pt, a run trained after its index."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml

from rsdml.errors import RsdmlError
from rsdml.retrieval.identity import ModelIdentity
from rsdml.training.run_folder import RunFolder


def _run(tmp_path, protocol: str) -> RunFolder:
    run = RunFolder(tmp_path / protocol)
    (run.root / "checkpoints").mkdir(parents=True)
    run.config.write_text(yaml.safe_dump({"protocol": protocol}))
    run.last.write_bytes(b"weights")
    return run


def test_best_on_a_transductive_run_says_why_there_is_none(tmp_path):
    run = _run(tmp_path, "transductive")
    assert run.existing_checkpoint("last") == run.last
    assert run.existing_checkpoint("auto") == run.last
    with pytest.raises(RsdmlError, match="transductive run has no validation images by design"):
        run.existing_checkpoint("best")
    inductive = _run(tmp_path, "inductive")
    with pytest.raises(RsdmlError, match="validation accuracy improves"):
        inductive.existing_checkpoint("best")
    run.last.unlink()
    with pytest.raises(RsdmlError, match="train the run first"):
        run.existing_checkpoint("last")


def test_a_run_trained_after_its_index_is_named_so(tmp_path):
    made = ModelIdentity(str(tmp_path / "run"), str(tmp_path / "run/checkpoints/last.pt"),
                         "a" * 64, 64, "resnet18", 128)
    now = replace(made, checkpoint_sha256="b" * 64)
    with pytest.raises(RsdmlError, match="was trained further since the index was made"):
        made.check_same(now, "run")
    other = replace(now, run=str(tmp_path / "elsewhere"))
    with pytest.raises(RsdmlError, match="comes from another model"):
        made.check_same(other, "run")
    with pytest.raises(RsdmlError, match="comes from another model"):
        made.check_same(replace(now, embedding_dim=64), "run")
    made.check_same(replace(made), "run")  # the same model: no error
