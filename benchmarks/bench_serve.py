"""``rsdml serve`` under load: concurrent clients on loopback vs the same queries in-process.

Prints one JSON object: for search by index id and by image upload, the served queries/s,
p50/p99 latency and errors with ``--clients`` concurrent keep-alive clients for ``--duration``
seconds each, beside the same queries run in-process (as many threads, no HTTP), and the
served/in-process throughput ratio.

The index is either one that ``rsdml index`` built (``--index DIR``, e.g. over AID; its own
model embeds the uploads) or synthetic: ``--n`` random unit vectors (default 100,000, so
``auto`` picks IVF) with fake metadata, saved with the identity of a model that can embed
uploads: ``--run RUN``, or by default a tiny run trained for one epoch on synthetic scenes
(about 20 s). Uploads are ``--upload-px`` px JPEGs of synthetic scenes; the model resizes them
to its own image size.

    python benchmarks/bench_serve.py --index runs/aid-index [--clients 8] [--duration 10]
    python benchmarks/bench_serve.py [--n 1000000] [--clients 8] [--duration 10]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, log  # noqa: E402

from rsdml.retrieval.archive import ArchiveIndex, choose_kind  # noqa: E402


def tiny_run(base: Path, image_size: int) -> Path:
    """A 1-epoch run on synthetic scenes: a real model of the usual architecture."""
    from rsdml.config import TrainConfig
    from rsdml.data.synthetic import make_synthetic_scenes
    from rsdml.training.runner import train

    make_synthetic_scenes(base / "scenes", n_classes=4, per_class=8, size=image_size, seed=0)
    train(TrainConfig(data=str(base / "scenes"), out=str(base / "run"), backbone="resnet18",
                      pretrained="none", image_size=image_size, epochs=1, batch_size=8,
                      unlabeled_batch_size=8, lr=0.003, head_warmup_epochs=0.5, device="cpu",
                      quiet=True, seed=0, eval_batch_size=32, report=False))
    return base / "run"


def synthetic_index(base: Path, run: Path, n: int, kind: str, seed: int) -> Path:
    """``n`` random unit vectors in the run's embedding space, with fake paths and classes."""
    from rsdml.data.synthetic import make_synthetic_scenes
    from rsdml.retrieval.indexing import build_index

    make_synthetic_scenes(base / "probe", n_classes=2, per_class=2, size=32, seed=1)
    identity = build_index(base / "probe", base / "probe.index", run_dir=run, quiet=True).identity
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, identity.embedding_dim), dtype=np.float32)
    entries = [{"path": f"class_{i % 30:02d}/img_{i:07d}.jpg", "class": f"class_{i % 30:02d}",
                "root": 0, "width": 600, "height": 600} for i in range(n)]
    kind, why = choose_kind(kind, n)
    log(f"building a {kind} index over {n} x {identity.embedding_dim} vectors ({why})")
    ArchiveIndex.create(identity, kind, [str(base / "none")], entries, vectors).save(base / "idx")
    return base / "idx"


def uploads(px: int, count: int = 16) -> list[bytes]:
    """JPEG bytes of synthetic scenes (noise over smooth gradients), ``px`` x ``px``."""
    from PIL import Image

    rng = np.random.default_rng(7)
    out = []
    for _ in range(count):
        grid = np.linspace(0, 1, px, dtype=np.float32)
        base = np.stack([np.outer(grid, rng.random() * grid) for _ in range(3)], axis=-1)
        img = np.clip(255 * (0.6 * base + 0.4 * rng.random((px, px, 3))), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"q.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def load(clients: int, duration: float, query: Callable[[int, int], bool]) -> dict[str, Any]:
    """``clients`` threads calling ``query(client, i)`` (True = success) for ``duration`` s."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(c: int) -> None:
        start.wait()
        i = 0
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            try:
                ok = query(c, i)
            except Exception:
                ok = False
            if ok:
                lat[c].append(time.perf_counter() - t)
            else:
                errors[c] += 1
            i += 1

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + duration
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = np.array([x for row in lat for x in row]) * 1000
    done = len(all_lat)
    return {"queries": done, "errors": int(sum(errors)), "qps": round(done / wall, 1),
            "p50_ms": round(float(np.percentile(all_lat, 50)), 2) if done else None,
            "p99_ms": round(float(np.percentile(all_lat, 99)), 2) if done else None}


def start_server(index: Path, workers: int, queue: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", "from rsdml.cli.main import main; main()",
                             "serve", str(index), "--port", "0", "--workers", str(workers),
                             "--queue", str(queue)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stderr.readline()
        if m := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit(f"rsdml serve did not start: {proc.stderr.read() if proc.stderr else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default=None, help="an index built by rsdml index (else synthetic)")
    ap.add_argument("--n", type=int, default=100_000, help="vectors in the synthetic index")
    ap.add_argument("--kind", default="auto")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--run", default=None, help="a run whose model embeds uploads")
    ap.add_argument("--image-size", type=int, default=128, help="the tiny run's image size")
    ap.add_argument("--upload-px", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--modes", nargs="+", choices=("by_id", "by_upload"),
                    default=["by_id", "by_upload"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.duration <= 120:
        ap.error("--clients must be 1..64 and --duration 0..120 s")

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        base = Path(tmp)
        load0 = load_average()
        if args.index:
            idx_dir = Path(args.index)
        else:
            if args.run:
                run = Path(args.run)
            else:
                log(f"training a tiny {args.image_size} px run on synthetic scenes")
                run = tiny_run(base, args.image_size)
            idx_dir = synthetic_index(base, run, args.n, args.kind, args.seed)
        index = ArchiveIndex.open(idx_dir)
        raw = uploads(args.upload_px)
        images = [multipart(b) for b in raw]
        rng = np.random.default_rng(args.seed)
        ids = rng.integers(0, len(index), 100_000)

        # --- in-process: the server's own pieces, no HTTP ---------------------------------
        from rsdml.data.imageio import read_resized
        from rsdml.retrieval.server import Embedder

        embed = Embedder(index, None, None)
        embed.load()
        size = embed.image_size

        def local_id(c: int, i: int) -> bool:
            j = int(ids[(c * 7919 + i) % len(ids)])
            return len(index.search(index.vectors[j], args.k, exclude=j)) == args.k

        def local_upload(c: int, i: int) -> bool:
            with tempfile.TemporaryDirectory() as t:
                p = Path(t) / "upload"
                p.write_bytes(raw[(c + i) % len(raw)])
                vec = embed(read_resized(p, size))
            return len(index.search(vec, args.k)) == args.k

        result: dict[str, Any] = {
            "index": {"vectors": len(index), "dim": int(index.vectors.shape[1]),
                      "kind": index.kind, "source": str(idx_dir) if args.index else "synthetic"},
            "clients": args.clients, "duration_s": args.duration, "k": args.k,
            "upload": {"px": args.upload_px, "model_image_size": size,
                       "bytes_mean": int(np.mean([len(b) for b in raw]))},
            "server": {"workers": args.workers, "queue": args.queue},
            "load_average_before": load0,
        }
        local = {"by_id": local_id, "by_upload": local_upload}
        result["in_process"] = {}
        for mode in args.modes:
            log(f"in-process: {mode}")
            load(args.clients, 1.0, local[mode])  # warm-up
            result["in_process"][mode] = load(args.clients, args.duration, local[mode])

        # --- served: rsdml serve in a subprocess, keep-alive clients on loopback ----------
        proc, port = start_server(idx_dir, args.workers, args.queue)
        conns: dict[int, http.client.HTTPConnection] = {}

        def request(c: int, method: str, url: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> bool:
            conn = conns.get(c)
            if conn is None:
                conn = conns[c] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request(method, url, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conns.pop(c, None)
                return False
            return resp.status == 200 and len(json.loads(data)["results"]) == args.k

        def served_id(c: int, i: int) -> bool:
            j = int(ids[(c * 7919 + i) % len(ids)])
            return request(c, "GET", f"/api/search?id={j}&k={args.k}")

        def served_upload(c: int, i: int) -> bool:
            body, ctype = images[(c + i) % len(images)]
            return request(c, "POST", f"/api/search?k={args.k}", body,
                           {"Content-Type": ctype, "Content-Length": str(len(body))})

        served = {"by_id": served_id, "by_upload": served_upload}
        result["served"] = {}
        try:
            for mode in args.modes:
                log(f"served on port {port}: {mode}")
                load(args.clients, 1.0, served[mode])  # warm-up (and the first connections)
                result["served"][mode] = load(args.clients, args.duration, served[mode])
        finally:
            for conn in conns.values():
                conn.close()
            proc.terminate()
            proc.wait(30)
        result["served_over_in_process_qps"] = {
            m: round(result["served"][m]["qps"] / max(result["in_process"][m]["qps"], 1e-9), 3)
            for m in args.modes}
        result["load_average_after"] = load_average()
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
