"""rsdml index / rsdml search: build, reopen, add, search, kinds, refusals, interrupted writes."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rsdml.cli.main import main
from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError
from rsdml.retrieval.archive import ArchiveIndex, choose_kind
from rsdml.retrieval.identity import file_sha256
from rsdml.retrieval.indexing import add_to_index, build_index
from rsdml.retrieval.query import format_hits, search_id, search_image
from rsdml.training.checkpoint import load_checkpoint, save_checkpoint
from rsdml.training.embed import embed_folder
from rsdml.training.runner import train


@pytest.fixture(scope="module")
def run(tiny_scenes, tmp_path_factory) -> Path:
    """One tiny trained run for the whole module (the model every index here uses)."""
    out = tmp_path_factory.mktemp("index-run") / "run"
    train(TrainConfig(data=str(tiny_scenes), out=str(out), backbone="resnet18", pretrained="none",
                      image_size=32, epochs=1, batch_size=8, unlabeled_batch_size=8, lr=0.003,
                      head_warmup_epochs=0.5, device="cpu", quiet=True, seed=0,
                      eval_batch_size=64, report=False))
    return out


@pytest.fixture(scope="module")
def built(run, tiny_scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "idx"
    build_index(tiny_scenes, out, run_dir=run, quiet=True)
    return out


@pytest.fixture(scope="module")
def foreign_run(run, tmp_path_factory) -> Path:
    """The same run with one weight changed: another model, same architecture."""
    other = tmp_path_factory.mktemp("foreign") / "run"
    shutil.copytree(run, other)
    for ckpt in (other / "checkpoints").glob("*.pt"):
        state = load_checkpoint(ckpt)
        name = next(k for k, v in state["model"].items() if v.dtype == torch.float32)
        state["model"][name] = state["model"][name] + 0.5
        save_checkpoint(state, ckpt)
    return other


def _copy_classes(src: Path, dst: Path, classes: list[str]) -> Path:
    for c in classes:
        shutil.copytree(src / c, dst / c)  # copy2: same size and mtime as the source
    return dst


def test_build_writes_a_folder_that_reopens(built, run, tiny_scenes):
    assert sorted(p.name for p in built.iterdir()) == ["index.faiss", "meta.json", "model.json",
                                                       "vectors.npy"]
    idx = ArchiveIndex.open(built)
    assert len(idx) == 64 and idx.kind == "flat"
    classes = sorted(p.name for p in tiny_scenes.iterdir() if p.is_dir())
    assert sorted({e["class"] for e in idx.entries}) == classes
    e = idx.entries[0]
    assert e["path"].split("/")[0] == e["class"] and (e["width"], e["height"]) == (32, 32)
    assert e["bytes"] == (tiny_scenes / e["path"]).stat().st_size
    model = json.loads((built / "model.json").read_text())
    ckpt = Path(model["checkpoint"])
    assert model["checkpoint_sha256"] == file_sha256(ckpt)
    assert Path(model["run"]) == run.resolve() and model["image_size"] == 32
    assert model["backbone"] == "resnet18" and "ImageNet" in model["preprocessing"]
    np.testing.assert_allclose(np.linalg.norm(idx.vectors, axis=1), 1, atol=1e-5)


def test_search_by_id_excludes_the_query_and_by_image_finds_it(built, tiny_scenes):
    idx = ArchiveIndex.open(built)
    path = idx.entries[5]["path"]
    hits = search_id(built, path, k=5)
    assert len(hits) == 5 and path not in [h.path for h in hits]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h.cls == idx.entries[h.id]["class"] for h in hits)
    top = search_image(built, tiny_scenes / path, k=3)
    assert top[0].path == path and top[0].score > 0.999  # same preprocessing as the index
    with pytest.raises(RsdmlError, match="not in the index"):
        search_id(built, "nope.png")


def test_auto_kind_states_its_choice():
    assert choose_kind("auto", 64)[0] == "flat"
    assert choose_kind("auto", 500_000)[0] == "ivf"
    assert choose_kind("hnsw", 10) == ("hnsw", "as asked")
    with pytest.raises(RsdmlError, match="--kind"):
        choose_kind("lsh", 10)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_kinds_agree_with_exact_on_top1(built, kind, tmp_path):
    flat = ArchiveIndex.open(built)
    approx = ArchiveIndex.create(flat.identity, kind, flat.roots, flat.entries, flat.vectors)
    approx.save(tmp_path / kind)
    reopened = ArchiveIndex.open(tmp_path / kind)
    assert reopened.kind == kind and len(reopened) == len(flat)
    for i in range(len(flat)):
        want = flat.search(flat.vectors[i], 1)[0]
        assert want.id == i
        got = reopened.search(flat.vectors[i], 1)[0]
        assert (got.id, got.score) == (want.id, pytest.approx(want.score, abs=1e-5))


def test_add_skips_held_images_and_grows(run, tiny_scenes, tmp_path, caplog):
    classes = sorted(p.name for p in tiny_scenes.iterdir() if p.is_dir())
    half = _copy_classes(tiny_scenes, tmp_path / "half", classes[:2])
    full = _copy_classes(tiny_scenes, tmp_path / "full", classes)
    out = tmp_path / "idx"
    with caplog.at_level("INFO", logger="rsdml"):
        build_index(half, out, run_dir=run, quiet=True)
    assert "index kind flat" in caplog.text
    idx, added, skipped, _ = add_to_index(out, full, quiet=True)
    assert (len(idx), added, skipped) == (64, 32, 32)
    idx, added, skipped, _ = add_to_index(out, full, quiet=True)
    assert (len(idx), added, skipped) == (64, 0, 64)
    reopened = ArchiveIndex.open(out)
    assert len(reopened) == 64 and len({e["path"] for e in reopened.entries}) == 64
    # a changed file of an indexed folder replaces its vector; the count stays
    assert reopened.entries[40]["root"] == 1  # full's own entry (its first half were copies)
    shutil.copy(full / reopened.entries[50]["path"], full / reopened.entries[40]["path"])
    idx, added, skipped, replaced = add_to_index(out, full, quiet=True)
    assert (len(idx), added, skipped, replaced) == (64, 0, 63, 1)
    np.testing.assert_allclose(idx.vectors[40], idx.vectors[50], atol=1e-5)
    # full's copy of an image of half, once changed, is another image than half's: added
    shutil.copy(full / reopened.entries[50]["path"], full / reopened.entries[0]["path"])
    idx, added, skipped, replaced = add_to_index(out, full, quiet=True)
    assert (len(idx), added, skipped, replaced) == (65, 1, 63, 0)


def test_add_counts_a_folder_that_reuses_relative_paths(run, tiny_scenes, tmp_path):
    """Another folder's class0/0.png is another image: added, not a silent replacement of the
    indexed one ("added 0, skipped 0" before); an empty folder or an index folder is refused."""
    from rsdml.errors import DatasetNotFoundError, RsdmlError

    classes = sorted(p.name for p in tiny_scenes.iterdir() if p.is_dir())
    first = _copy_classes(tiny_scenes, tmp_path / "first", classes[:2])
    second = tmp_path / "second"  # the other classes' images under the first two's names
    for mine, theirs in zip(classes[:2], classes[2:]):
        (second / mine).mkdir(parents=True)
        for f in sorted((tiny_scenes / theirs).iterdir()):
            shutil.copy(f, second / mine / f.name.replace(theirs, mine))
    out = tmp_path / "idx"
    build_index(first, out, run_dir=run, quiet=True)
    before = ArchiveIndex.open(out).vectors.copy()
    done = add_to_index(out, second, quiet=True)
    assert (len(done.index), done.added, done.skipped, done.replaced) == (64, 32, 0, 0)
    reopened = ArchiveIndex.open(out)
    np.testing.assert_array_equal(reopened.vectors[:32], before)  # nothing replaced
    rel = reopened.entries[0]["path"]
    with pytest.raises(RsdmlError, match="2 image folders"):
        reopened.lookup(rel)
    assert reopened.lookup(str((second / rel).resolve())) >= 32
    assert reopened.lookup(str((first / rel).resolve())) == 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        add_to_index(out, tmp_path / "empty", quiet=True)
    build_index(first, tmp_path / "other", run_dir=run, quiet=True)
    with pytest.raises(RsdmlError, match="is an rsdml index"):
        add_to_index(out, tmp_path / "other", quiet=True)
    with pytest.raises(RsdmlError, match="the index itself"):
        add_to_index(out, out, quiet=True)
    assert len(ArchiveIndex.open(out)) == 64


def test_add_extends_an_approximate_index(built, tiny_scenes, run, tmp_path):
    classes = sorted(p.name for p in tiny_scenes.iterdir() if p.is_dir())
    half = _copy_classes(tiny_scenes, tmp_path / "half", classes[:2])
    rest = _copy_classes(tiny_scenes, tmp_path / "rest", classes[2:])
    out = tmp_path / "idx"
    build_index(half, out, run_dir=run, kind="ivf", quiet=True)
    idx, added, _, _ = add_to_index(out, rest, quiet=True)
    assert (len(idx), added, idx.kind) == (64, 32, "ivf")
    reopened = ArchiveIndex.open(out)
    assert reopened.search(reopened.vectors[50], 1)[0].id == 50


def test_npz_input_and_foreign_models_refused(built, run, foreign_run, tiny_scenes, tmp_path):
    mine = tmp_path / "mine.npz"
    embed_folder(tiny_scenes, run, mine, quiet=True)
    from_npz = build_index(mine, tmp_path / "from-npz", quiet=True)  # identity from the .npz
    np.testing.assert_allclose(from_npz.vectors, ArchiveIndex.open(built).vectors, atol=1e-5)
    assert from_npz.entries[0]["width"] == 32  # the .npz records its image folder
    theirs = tmp_path / "theirs.npz"
    embed_folder(tiny_scenes, foreign_run, theirs, quiet=True)
    with pytest.raises(RsdmlError, match="another model") as e:
        add_to_index(built, theirs, quiet=True)
    assert "\n" not in str(e.value)
    with pytest.raises(RsdmlError, match="another model"):
        add_to_index(built, tiny_scenes, run_dir=foreign_run, quiet=True)
    idx, added, skipped, _ = add_to_index(tmp_path / "from-npz", mine, quiet=True)
    assert (len(idx), added, skipped) == (64, 0, 64)
    legacy = tmp_path / "legacy.npz"
    with np.load(mine) as z:
        np.savez(legacy, embeddings=z["embeddings"], paths=z["paths"])
    # without its image folder, an .npz image counts as held when its vector is the same
    lost = tmp_path / "lost.npz"
    with np.load(mine) as z:
        np.savez(lost, embeddings=z["embeddings"], paths=z["paths"], model=z["model"],
                 root=np.asarray(str(tmp_path / "gone")))
    idx, added, skipped, _ = add_to_index(tmp_path / "from-npz", lost, quiet=True)
    assert (len(idx), added, skipped) == (64, 0, 64)
    with pytest.raises(RsdmlError, match="does not record which model"):
        build_index(legacy, tmp_path / "legacy-idx", quiet=True)


def test_an_interrupted_build_leaves_the_old_index(built, run, tiny_scenes, tmp_path,
                                                   monkeypatch):
    out = tmp_path / "idx"
    shutil.copytree(built, out)
    before = (out / "meta.json").read_bytes()
    real = ArchiveIndex._write_files

    def dies_midway(self, tmp):
        real(self, tmp)
        (tmp / "meta.json").write_text("{")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(ArchiveIndex, "_write_files", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_scenes, out, run_dir=run, kind="hnsw", force=True, quiet=True)
    more = tmp_path / "more"
    shutil.copytree(next(p for p in tiny_scenes.iterdir() if p.is_dir()), more / "extra")
    with pytest.raises(KeyboardInterrupt):
        add_to_index(out, more, quiet=True)
    assert (out / "meta.json").read_bytes() == before
    assert len(ArchiveIndex.open(out)) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "more"]  # no temp folder left
    # killed between replace_dir's two renames: the old folder is aside, and put back on open
    out.rename(tmp_path / ".idx.999999999.old")
    assert ArchiveIndex.open(out).kind == "flat"


def test_output_formats(built):
    hits = search_id(built, ArchiveIndex.open(built).entries[0]["path"], k=4)
    doc = json.loads(format_hits(hits, "json", query="q"))
    assert doc["query"] == "q" and [r["rank"] for r in doc["results"]] == [1, 2, 3, 4]
    assert {"score", "class", "path", "id"} <= doc["results"][0].keys()
    rows = list(csv.DictReader(io.StringIO(format_hits(hits, "csv"))))
    assert [r["path"] for r in rows] == [h.path for h in hits]
    table = format_hits(hits, "table").splitlines()
    assert table[0].split() == ["rank", "score", "class", "path"] and len(table) == 5
    assert hits[0].path in table[1]
    with pytest.raises(RsdmlError, match="--format"):
        format_hits(hits, "xml")


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_cli_end_to_end(run, foreign_run, tiny_scenes, tmp_path, capsys):
    out = tmp_path / "idx"
    code, stdout, err = _cli(["index", str(tiny_scenes), "--run", str(run), "--out", str(out),
                              "--quiet"], capsys)
    assert code == 0 and "indexed 64 images (flat)" in stdout and "index kind flat" in err
    path = ArchiveIndex.open(out).entries[3]["path"]
    code, stdout, _ = _cli(["search", str(out), "--id", path, "--k", "3", "--format", "json"],
                           capsys)
    assert code == 0 and len(json.loads(stdout)["results"]) == 3
    code, stdout, _ = _cli(["search", str(out), "--image", str(tiny_scenes / path),
                            "--format", "csv"], capsys)
    assert code == 0 and stdout.splitlines()[1].split(",")[3] == path
    (tmp_path / "notes.png").write_text("not an image")
    code, stdout, _ = _cli(["index", "--add", str(out), str(tiny_scenes), "--quiet"], capsys)
    assert code == 0 and "added 0 images, skipped 64" in stdout
    for args, message in [
        (["search", str(out)], "exactly one query"),
        (["index", str(tiny_scenes), "--run", str(run), "--out", str(out)], "already exists"),
        (["index", str(tiny_scenes), "--out", str(tmp_path / "x")], "--run is required"),
        (["index", "--add", str(out), str(tiny_scenes), "--run", str(foreign_run)],
         "another model"),
        (["search", str(tmp_path), "--id", path], "not an rsdml index"),
        (["search", str(out), "--image", str(tmp_path / "notes.png")], "cannot read image"),
        (["index", str(tiny_scenes), "--run", str(run), "--out", str(tmp_path), "--force"],
         "not an rsdml index"),
    ]:
        code, _, err = _cli(args, capsys)
        assert code == 2 and err.startswith("rsdml: error: ") and message in err, args
        assert err.count("\n") == 1


def test_the_model_is_loaded_once_per_process(built, tiny_scenes, monkeypatch):
    import rsdml.training.embed as embed
    from rsdml.retrieval.query import model_for

    model_for.cache_clear()
    calls = []
    real = embed.load_run_model
    monkeypatch.setattr(embed, "load_run_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    paths = [e["path"] for e in ArchiveIndex.open(built).entries[:3]]
    for p in paths:
        assert search_image(built, tiny_scenes / p, k=1)[0].path == p
    assert len(calls) == 1
