#!/usr/bin/env python
"""Try rsdml as a new user would, on a messy copy of a data set, with a killed-and-resumed run.

The script copies a small class-per-folder data set (default: 6 classes x 20 images of
../shared/data/AID, or a synthetic one with ``--synthetic`` / when AID is absent) into a temp
folder and spoils it the way real archives are spoiled: ``.DS_Store`` and ``Thumbs.db``, a
truncated JPEG, random bytes named ``.jpg``, a 16-bit TIFF, a 5-band TIFF, grayscale /
palette / RGBA PNGs, a CMYK JPEG and an empty class folder. Then it drives the real CLI
(``python -m rsdml train``) twice:

* ``straight``: one uninterrupted run;
* ``killed``: the same run, SIGKILLed in the middle (once its first checkpoint exists, after a
  random delay, or at a random moment with ``--kill-anytime``), then continued with
  ``rsdml train --resume`` (repeated until it finishes).

It checks that no output holds a Python traceback, that every checkpoint left by a kill loads,
and that ``final_metrics.json`` and every tensor of the final ``model`` / ``method`` state are
identical in both runs. Prints a JSON summary; exit code 0 when every check passed, 1 if not.

    python scripts/messy_trial.py [--data DIR] [--classes 6] [--per-class 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
AID = REPO.parent / "shared" / "data" / "AID"
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

#: Options of every run (besides --data/--out/--resume): a tiny CPU run. The batch sizes give
#: a few steps per epoch so that a kill can land in the middle of one.
TRAIN_ARGS = ["--image-size", "32", "--epochs", "3", "--pretrained", "none",
              "--batch-size", "8", "--unlabeled-batch-size", "8", "--device", "cpu"]


# --------------------------------------------------------------------------- the messy copy
def _rgb(path: Path, size: int | None = None) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        return im.resize((size, size)) if size else im.copy()


def make_messy_copy(src: Path, dst: Path, *, classes: int, per_class: int,
                    seed: int = 0) -> dict[str, Any]:
    """Copy ``classes`` x ``per_class`` images of ``src`` to ``dst`` and add the messy files.

    Returns what was added: {"bad": [...], "odd_modes": [...], "junk": [...], "empty_class": name}.
    The bad files must be skipped, the odd modes used, the junk ignored.
    """
    import tifffile

    rng = np.random.default_rng(seed)
    names = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(names) < classes:
        raise SystemExit(f"{src} has {len(names)} class folders; --classes {classes} is too many")
    names = names[:classes]
    originals: dict[str, Path] = {}
    for name in names:
        files = sorted(f for f in (src / name).iterdir() if f.suffix.lower() in IMAGE_EXT)
        files = files[:per_class]
        if len(files) < per_class:
            raise SystemExit(f"{src / name} has {len(files)} images; need {per_class}")
        (dst / name).mkdir(parents=True)
        for f in files:
            shutil.copy2(f, dst / name / f.name)
        originals[name] = dst / name / files[0].name

    def sample(i: int) -> tuple[str, Image.Image]:
        cls = names[i % len(names)]
        return cls, _rgb(originals[cls])

    added: dict[str, Any] = {"bad": [], "odd_modes": [], "junk": []}

    def rel(p: Path) -> str:
        return p.relative_to(dst).as_posix()

    # junk the scan must ignore
    for p in (dst / ".DS_Store", dst / names[0] / ".DS_Store", dst / names[1] / "Thumbs.db",
              dst / names[2] / "._IMG_0001.jpg", dst / "README.txt"):
        p.write_bytes(b"\x00\x01junk" * 8)
        added["junk"].append(rel(p))
    # files that look like images but cannot be used: skipped with a warning
    cls, im = sample(0)
    full = dst / cls / "zz_truncated.jpg"
    im.save(full, quality=90)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    cls, _ = sample(1)
    noise = dst / cls / "zz_random_bytes.jpg"
    noise.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    added["bad"] += [rel(full), rel(noise)]
    # odd but valid modes: converted to RGB by documented rules (docs/data.md)
    odd: list[Path] = []
    cls, im = sample(2)
    noise12 = rng.integers(0, 16, (*im.size[::-1], 3), dtype=np.uint16)
    a = np.asarray(im).astype(np.uint16) * 16 + noise12  # 12-bit data in 16-bit, like many sensors
    odd.append(dst / cls / "zz_16bit.tif")
    tifffile.imwrite(odd[-1], a, photometric="rgb")
    cls, im = sample(3)
    rgb = np.asarray(im)
    gray = rgb.mean(2).astype(np.uint8)
    bands = np.stack([rgb[..., 0], rgb[..., 1], rgb[..., 2], gray, rgb[..., 0]])  # 5 bands
    odd.append(dst / cls / "zz_5band.tif")
    tifffile.imwrite(odd[-1], bands, photometric="minisblack", planarconfig="separate")
    cls, im = sample(4)
    odd.append(dst / cls / "zz_gray.png")
    im.convert("L").save(odd[-1])
    cls, im = sample(5)
    odd.append(dst / cls / "zz_palette.png")
    im.convert("P", palette=Image.Palette.ADAPTIVE).save(odd[-1])
    cls, im = sample(6)
    rgba = im.convert("RGBA")
    rgba.putalpha(200)
    odd.append(dst / cls / "zz_rgba.png")
    rgba.save(odd[-1])
    cls, im = sample(7)
    odd.append(dst / cls / "zz_cmyk.jpg")
    im.convert("CMYK").save(odd[-1], quality=90)
    added["odd_modes"] = [rel(p) for p in odd]
    empty = dst / "zz_empty_class"
    empty.mkdir()
    added["empty_class"] = empty.name
    return added


def make_synthetic_source(root: Path, classes: int, per_class: int) -> Path:
    from rsdml.data.synthetic import make_synthetic_scenes

    make_synthetic_scenes(root, n_classes=classes, per_class=per_class, size=64, seed=0)
    return root


# --------------------------------------------------------------------------- driving the CLI
def _cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    out.write(f"$ rsdml {' '.join(args)}\n".encode())
    out.flush()
    return subprocess.Popen([sys.executable, "-m", "rsdml", *args], stdout=out,
                            stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SystemExit(f"rsdml did not finish within {timeout:.0f} s") from None


def _stamp(run: Path) -> tuple[int, int] | None:
    """Which last.pt is in place (a cheap stat: each save replaces the file, new inode)."""
    try:
        st = (run / "checkpoints" / "last.pt").stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _checkpoint_state(run: Path) -> dict[str, Any] | None:
    """Load last.pt the way resume does; None if there is none (raises if it is damaged)."""
    from rsdml.training.checkpoint import load_checkpoint

    last = run / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    s = load_checkpoint(last)
    return {"epoch": int(s["epoch"]), "batch_in_epoch": int(s["batch_in_epoch"]),
            "global_step": int(s["global_step"])}


def _epoch_seconds(run: Path) -> float:
    """Training time of epoch 1 of a finished run (its train_log.jsonl)."""
    log = run / "train_log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return float(rows[0]["seconds"]) if rows else 1.0


def run_killed(data: Path, run: Path, log: Path, *, rng: random.Random, kills: int,
               anytime: bool, epoch_s: float, timeout: float) -> list[dict[str, Any]]:
    """Start the run, SIGKILL it ``kills`` times, resume each time; return what each kill left.

    By default each kill lands a random fraction of an epoch (``epoch_s``) after a new
    checkpoint appeared: in the middle of the next epoch's steps.
    """
    events: list[dict[str, Any]] = []
    fresh = ["train", "--data", str(data), *TRAIN_ARGS, "--out", str(run)]
    for k in range(kills + 1):
        # a kill before the run folder was written leaves nothing to resume: start again
        started = (run / "config.yaml").is_file()
        proc = _cli(["train", "--resume", str(run)] if started else fresh, log)
        if k < kills:
            start = time.monotonic()
            before = _stamp(run)
            if anytime:
                time.sleep(rng.uniform(2.0, 12.0))
            else:  # wait for a newer checkpoint, then kill somewhere in the next epoch
                while proc.poll() is None and _stamp(run) == before:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.1, 0.7) * epoch_s)
            alive = proc.poll() is None
            if alive:
                proc.send_signal(signal.SIGKILL)
            code = proc.wait()
            try:
                state, error = _checkpoint_state(run), None
            except Exception as e:  # a damaged checkpoint is exactly what this trial looks for
                state, error = None, f"{type(e).__name__}: {e}"
            events.append({"kill": k + 1, "killed": alive,
                           "after_s": round(time.monotonic() - start, 1), "exit_code": code,
                           "last_pt": state, "last_pt_error": error})
            if not alive and code == 0:
                break  # finished before the kill landed
        else:
            code = _finish(proc, timeout)
            events.append({"final_exit_code": code})
    return events


def _weights(run: Path) -> dict[str, Any]:
    from rsdml.training.checkpoint import load_checkpoint

    s = load_checkpoint(run / "checkpoints" / "last.pt")
    return {**{f"model.{k}": v for k, v in s["model"].items()},
            **{f"method.{k}": v for k, v in s["method"].items()}}


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    import torch

    wa, wb = _weights(a), _weights(b)
    differ = sorted(k for k in wa.keys() | wb.keys()
                    if k not in wa or k not in wb or not torch.equal(wa[k], wb[k]))
    fa, fb = (json.loads((r / "final_metrics.json").read_text())
              if (r / "final_metrics.json").is_file() else None for r in (a, b))
    return {"tensors": len(wa), "tensors_differing": differ[:10], "weights_identical": not differ,
            "final_metrics_identical": fa is not None and fa == fb,
            "final_metrics_straight": fa, "final_metrics_killed": fb}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None,
                   help="source data set (default: ../shared/data/AID if present)")
    p.add_argument("--synthetic", action="store_true", help="use a synthetic source data set")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--kills", type=int, default=1, help="SIGKILLs of the second run")
    p.add_argument("--kill-anytime", action="store_true",
                   help="kill after a random 2-12 s instead of just after a checkpoint appears")
    p.add_argument("--seed", type=int, default=0, help="seed of the messy files and kill times")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per CLI call")
    p.add_argument("--keep", type=Path, default=None, help="work here and keep everything")
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    work = a.keep or Path(tempfile.mkdtemp(prefix="rsdml-messy-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RSDML_CACHE", str(work / "cache"))  # never the user's ~/.cache
    try:
        src = a.data
        if src is None and not a.synthetic and AID.is_dir():
            src = AID
        if src is None:
            src = make_synthetic_source(work / "synthetic-source", a.classes, a.per_class)
        data = work / "messy"
        added = make_messy_copy(src, data, classes=a.classes, per_class=a.per_class, seed=a.seed)
        straight, killed = work / "run-straight", work / "run-killed"
        log_s, log_k = work / "straight.log", work / "killed.log"
        t0 = time.monotonic()
        fresh = ["train", "--data", str(data), *TRAIN_ARGS, "--out", str(straight)]
        code_s = _finish(_cli(fresh, log_s), a.timeout)
        seconds_s = time.monotonic() - t0
        events = run_killed(data, killed, log_k, rng=rng, kills=a.kills, anytime=a.kill_anytime,
                            epoch_s=_epoch_seconds(straight), timeout=a.timeout)
        text_s, text_k = log_s.read_text(errors="replace"), log_k.read_text(errors="replace")
        warnings = [l for l in text_s.splitlines() if l.startswith("rsdml: warning:")]
        errors = [l for l in (text_s + text_k).splitlines() if l.startswith("rsdml: error:")]
        final = events[-1].get("final_exit_code")
        cmp = compare_runs(straight, killed) if code_s == 0 and final == 0 else {}
        checks = {
            "straight_exit_0": code_s == 0,
            "killed_run_finished_exit_0": final == 0,
            "at_least_one_kill_landed": any(e.get("killed") for e in events),
            "no_traceback": "Traceback" not in text_s + text_k,
            "checkpoints_after_kills_load": all(e.get("last_pt_error") is None for e in events),
            "bad_files_named_in_warning": all(any(b in w for w in warnings) for b in added["bad"]),
            "empty_class_named_in_warning": any(added["empty_class"] in w for w in warnings),
            "weights_identical": bool(cmp.get("weights_identical")),
            "final_metrics_identical": bool(cmp.get("final_metrics_identical")),
        }
        summary = {
            "source": str(src), "classes": a.classes, "per_class": a.per_class, "added": added,
            "train_args": TRAIN_ARGS, "straight_seconds": round(seconds_s, 1),
            "warnings": warnings, "errors": errors, "kill_events": events, "comparison": cmp,
            "checks": checks, "ok": all(checks.values()), "work": str(work),
        }
        print(json.dumps(summary, indent=2))
        return 0 if summary["ok"] else 1
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
