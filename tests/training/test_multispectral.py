"""A 13-band uint16 GeoTIFF folder (EuroSAT-MS-like, tiny) trains, evaluates and embeds with
every band; ``--bands 4,3,2`` on 8-bit data equals the RGB path on RGB files of those bands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from clihelp import run_cli
from PIL import Image

from rsdml.config import TrainConfig
from rsdml.data.bands import Bands, InputSpec
from rsdml.data.preprocess import Preprocess
from rsdml.models.embedding import build_model
from rsdml.models.resnet import resnet18

TINY = ["--image-size", "32", "--batch-size", "8", "--unlabeled-batch-size", "8",
        "--device", "cpu", "--quiet", "--eval-batch-size", "64", "--no-report", "--epochs", "1",
        "--head-warmup-epochs", "0", "--labeled-fraction", "0.5"]
CLASSES, PER_CLASS, SIZE, BANDS = 3, 8, 32, 13


def _scene(cls: int, i: int, dtype=np.uint16) -> np.ndarray:
    """A class-specific spectrum (one level per band) plus texture and noise."""
    rng = np.random.default_rng(100 * cls + i)
    levels = 500 + 300 * np.random.default_rng(cls).random(BANDS)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    texture = np.sin((xx + yy * cls) / (2 + cls) + i)[:, :, None] * 200
    img = levels[None, None, :] + texture + rng.normal(0, 40, (SIZE, SIZE, BANDS))
    if dtype == np.uint8:
        img = img / 8
    return np.clip(img, 0, np.iinfo(dtype).max).astype(dtype)


def _write_folder(root: Path, dtype=np.uint16) -> Path:
    for c in range(CLASSES):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(PER_CLASS):
            tifffile.imwrite(d / f"{i}.tif", _scene(c, i, dtype), photometric="minisblack",
                             planarconfig="contig")
    return root


@pytest.fixture(scope="module")
def eurosat_ms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("eurosat-ms"))


def test_all_bands_from_scratch_train_evaluate_embed(eurosat_ms, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", str(eurosat_ms), "--out", str(run),
                              "--bands", "all", "--rgb-bands", "4,3,2", "--pretrained", "none",
                              "--extra-augment", *TINY], capsys)
    assert code == 0, err
    spec = InputSpec.load(run / "bands.json")
    assert spec.bands == tuple(range(1, 14)) and spec.rgb == (3, 2, 1)
    assert spec.dtype == "uint16" and spec.normalization == "bands"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert state["trunk.conv1.weight"].shape[1] == 13
    # the statistics are those of the training images only (labelled + unlabelled pool)
    split = [r.split(",") for r in (run / "split.csv").read_text().splitlines()[1:]]
    train = [p for p, _, _, role in split if role in ("labeled", "test")]
    pixels = np.stack([tifffile.imread(eurosat_ms / p) for p in train]).astype(np.float64)
    assert np.allclose(spec.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-6)
    assert np.allclose(spec.std, pixels.std(axis=(0, 1, 2)), rtol=1e-5)

    code, out, err = run_cli(["evaluate", str(run), "--quiet"], capsys)
    assert code == 0, err
    assert "knn_acc" in out
    code, out, err = run_cli(["embed", str(eurosat_ms), "--run", str(run), "--out",
                              str(tmp_path / "e.npz"), "--quiet"], capsys)
    assert code == 0, err
    emb = np.load(tmp_path / "e.npz")
    assert emb["embeddings"].shape == (CLASSES * PER_CLASS, 128)
    # embed feeds the model what evaluation fed it
    ev = np.load(run / "eval" / "embeddings.npz")
    order = {p: i for i, p in enumerate(ev["paths"].tolist())}
    same = [order[p] for p in emb["paths"].tolist()]
    assert np.allclose(emb["embeddings"], ev["embeddings"][same], atol=1e-5)
    # rsdml index and search take the same bands from the run
    code, _, err = run_cli(["index", str(eurosat_ms), "--run", str(run), "--out",
                            str(tmp_path / "idx"), "--quiet"], capsys)
    assert code == 0, err
    query = eurosat_ms / "class1" / "3.tif"
    code, out, err = run_cli(["search", str(tmp_path / "idx"), "--image", str(query), "--k",
                              "1", "--format", "json"], capsys)
    assert code == 0, err
    hit = json.loads(out)["results"][0]
    assert hit["path"].endswith("class1/3.tif") and hit["score"] == pytest.approx(1, abs=1e-4)
    # the run keeps its preprocessing, and rsdml serve decodes uploads with it (it used to
    # decode them as RGB: HTTP 400 for a 13-band upload)
    assert Preprocess.load(run / "preprocess.json") == Preprocess(32, spec)
    assert _served_top_hit(tmp_path / "idx", query) == ("class1/3.tif", pytest.approx(1, abs=1e-4))


def _served_top_hit(index_dir: Path, query: Path) -> tuple[str, float]:
    from fastapi.testclient import TestClient

    from rsdml.retrieval.archive import ArchiveIndex
    from rsdml.retrieval.server import create_app

    with TestClient(create_app(ArchiveIndex.open(index_dir)), base_url="http://localhost") as c:
        r = c.post("/api/search?k=1", files={"file": ("q.tif", query.read_bytes(), "image/tiff")})
    assert r.status_code == 200, r.text
    hit = r.json()["results"][0]
    return hit["path"], hit["score"]


def test_all_bands_from_an_imagenet_trunk(eurosat_ms, tmp_path, capsys):
    """The 'ImageNet' trunk is a local RGB state dict (no download): R, G, B filters go to
    bands 4, 3, 2, the other bands get their mean, all scaled by 3/13."""
    weights = tmp_path / "rgb_trunk.pt"
    torch.manual_seed(0)
    torch.save(resnet18(False).state_dict(), weights)
    rgb_w = torch.load(weights, weights_only=True)["conv1.weight"]
    cfg = TrainConfig(backbone="resnet18", weights=str(weights), bands="all", rgb_bands="4,3,2")
    spec = InputSpec(tuple(range(1, 14)), (3, 2, 1), "uint16", "bands", (0.0,) * 13, (1.0,) * 13)
    conv = build_model(cfg, spec).trunk.conv1.weight.detach()
    assert torch.allclose(conv[:, 3], rgb_w[:, 0] * 3 / 13)
    assert torch.allclose(conv[:, 1], rgb_w[:, 2] * 3 / 13)
    assert torch.allclose(conv[:, 10], rgb_w.mean(1) * 3 / 13)

    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", str(eurosat_ms), "--out", str(run),
                            "--bands", "all", "--rgb-bands", "4,3,2", "--weights", str(weights),
                            *TINY], capsys)
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["bands"] == "all"
    assert json.loads((run / "final_metrics.json").read_text())["knn_acc"] >= 0
    # fast mode: the adapted trunk's features of the normalised bands, cached once
    # Two inductive splits have different band statistics, so the features (of normalised bands) are
    # cached once per run, not shared (the key used to hash the paths only).
    cache = tmp_path / "cache"
    for seed in ("0", "1"):
        code, _, err = run_cli(["train", "--data", str(eurosat_ms), "--out",
                                str(tmp_path / f"fz{seed}"), "--bands", "all", "--rgb-bands",
                                "4,3,2", "--weights", str(weights), "--freeze-backbone",
                                "--method", "hr-s2dml",  # the plain features (no views)
                                "--seed", seed, "--cache-dir", str(cache), "--protocol",
                                "inductive", *TINY], capsys)
        assert code == 0, err
    stats = [InputSpec.load(tmp_path / f"fz{s}" / "bands.json").mean for s in "01"]
    assert stats[0] != stats[1]
    assert len(list(cache.glob("features-*.pt"))) == 2


def test_band_list_on_8bit_data_equals_the_rgb_path(tmp_path, capsys):
    ms = _write_folder(tmp_path / "ms", np.uint8)
    rgb = tmp_path / "rgb"
    for f in sorted(ms.rglob("*.tif")):
        out = rgb / f.relative_to(ms).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(tifffile.imread(f)[:, :, [3, 2, 1]])).save(out)
    results = []
    for data, bands in ((ms, "4,3,2"), (rgb, "rgb")):
        run = tmp_path / f"run-{bands}"
        code, _, err = run_cli(["train", "--data", str(data), "--out", str(run), "--bands",
                                bands, "--pretrained", "none", "--seed", "3", *TINY], capsys)
        assert code == 0, err
        results.append(np.load(run / "eval" / "embeddings.npz"))
    spec = InputSpec.load(tmp_path / "run-4,3,2" / "bands.json")
    assert spec.normalization == "imagenet" and spec.rgb == (0, 1, 2)
    # serve decodes an upload with bands 4,3,2 (as RGB it took bands 1,2,3: a wrong top hit)
    from rsdml.retrieval.indexing import build_index

    build_index(ms, tmp_path / "idx", run_dir=tmp_path / "run-4,3,2", quiet=True)
    query = ms / "class2" / "5.tif"
    assert _served_top_hit(tmp_path / "idx", query) == ("class2/5.tif", pytest.approx(1, abs=1e-4))
    a, b = results
    for key in a.files:
        if key != "paths":
            assert np.array_equal(a[key], b[key]), key
    assert not (tmp_path / "run-rgb" / "bands.json").exists()


def test_yaml_band_list_and_bad_bands(eurosat_ms, tmp_path, capsys):
    cfg = TrainConfig.from_dict({"bands": [4, 3, 2, 8], "rgb_bands": "4,3,2"})
    assert cfg.bands == "4,3,2,8" and Bands.parse(cfg.bands, cfg.rgb_bands).select == (4, 3, 2, 8)
    code, _, err = run_cli(["train", "--data", str(eurosat_ms), "--out", str(tmp_path / "r"),
                            "--bands", "4,3,20", *TINY], capsys)
    assert code == 2 and "band 20" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
