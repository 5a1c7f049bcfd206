"""The command line: options from YAML and flags, one-line errors with exit code 2, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from clihelp import run_cli

TINY = ["--pretrained", "none", "--image-size", "32", "--batch-size", "8",
        "--unlabeled-batch-size", "8", "--device", "cpu", "--quiet", "--eval-batch-size", "64",
        "--no-report"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--labeled-fraction", "1.5"], "--labeled-fraction 1.5 must be in (0, 1)"),
        (["--labeled-fraction", "0"], "--labeled-fraction 0.0 must be in (0, 1)"),
        (["--epochs", "0"], "--epochs 0 must be a positive whole number"),
        (["--batch-size", "-4"], "--batch-size -4 must be a positive whole number"),
        (["--margin", "2.0"], "--margin 2.0 must be in [0, pi/2)"),
        (["--temperature", "0"], "--temperature 0.0 must be > 0"),
        (["--method", "magic"], "--method 'magic' is unknown"),
        (["--backbone", "vgg99"], "--backbone 'vgg99' is unknown"),
    ],
)
def test_invalid_options_give_one_line_and_exit_2(args, message, tiny_scenes, tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--out", str(tmp_path / "r"), *args], capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_missing_data_folder(tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "nope" in err and "Traceback" not in err


def test_split_naming_missing_images(tiny_scenes, tmp_path, capsys):
    f = tmp_path / "split.csv"
    f.write_text("path,class_name,label,role\nghost/a.png,ghost,0,labeled\nghost/b.png,ghost,0,test\n")
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--out", str(tmp_path / "r"),
                            "--split", str(f)], capsys)
    assert code == 2 and "missing" in err and "ghost/a.png" in err


def test_unknown_yaml_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 0.1\n")
    code, _, err = run_cli(["train", "--config", str(cfg)], capsys)
    assert code == 2 and "learning_rate" in err


def test_yaml_config_cli_override_train_resume_evaluate_embed(tiny_scenes, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": str(tiny_scenes), "epochs": 1, "margin": 0.3,
                                   "eval_every": 1, "seed": 5}))
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--config", str(cfg), "--out", str(run), "--seed", "7", *TINY], capsys)
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["margin"] == 0.3 and saved["seed"] == 7 and saved["epochs"] == 1
    assert "knn_acc" in out

    code, _, err = run_cli(["train", "--resume", str(run), "--epochs", "2", "--extend", "--quiet"], capsys)
    assert code == 0, err
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]

    (run / "eval" / "metrics.json").unlink()
    code, out, err = run_cli(["evaluate", str(run), "--quiet"], capsys)
    assert code == 0, err
    assert "knn" in json.loads((run / "eval" / "metrics.json").read_text())

    npz = tmp_path / "emb.npz"
    code, out, err = run_cli(["embed", str(tiny_scenes), "--run", str(run), "--out", str(npz), "--quiet"], capsys)
    assert code == 0, err
    z = np.load(npz)
    assert z["embeddings"].shape == (64, 128) and len(z["paths"]) == 64
    assert np.allclose(np.linalg.norm(z["embeddings"], axis=1), 1, atol=1e-4)


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "rsdml", "train", "--labeled-fraction", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("rsdml: error:") and "Traceback" not in r.stderr


def test_extend_after_a_partial_last_epoch_logs_each_epoch_once(tiny_scenes, tmp_path, capsys):
    """Issue 25, defect 5: --steps 12 (7 steps an epoch), then --resume --steps 20 --extend
    logged epochs (1,7), (2,12), (2,14), (3,20), and the final lines said epoch 1 then 2."""
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", str(tiny_scenes), "--out", str(run),
                              "--freeze-backbone", "--backbone", "resnet18", "--steps", "12",
                              "--eval-every", "1", *TINY], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    spe = rows[0]["step"]
    assert 12 % spe and 2 * spe > 12  # the second epoch is partial
    assert "epoch 2 (partial), step 12" in out
    code, out, err = run_cli(["train", "--resume", str(run), "--steps", "20", "--extend",
                              "--quiet"], capsys)
    assert code == 0, err
    for log in ("train_log.jsonl", "metrics.jsonl"):
        rows = [json.loads(line) for line in (run / log).read_text().splitlines()]
        epochs = [r["epoch"] for r in rows]
        assert epochs == sorted(set(epochs)), (log, [(r["epoch"], r["step"]) for r in rows])
    assert rows[-1]["epoch"] == -(-20 // spe) and rows[-1]["step"] == 20
    assert f"epoch {-(-20 // spe)}" in out and "step 20" in out
