"""Shared helpers of the speed benchmarks (bench_train, bench_epoch, bench_embed).

Why one module: the three benchmarks must build the model, the optimiser, the split, the
cache and the per-sample reference pipeline the same way, or their ratios compare different
things. rsdml's own code is used wherever rsdml has it (``build_session``, ``Trainer``,
``load_image_cache``, ``TrainAugment``); only the reference pipeline and the timing live here.

Also a tiny CLI for the GPU script: ``python benchmarks/_common.py synth DIR --n 10000``
writes a synthetic class folder of JPEGs (the GPU machine does not receive ``../shared``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "AID"

if str(REPO_ROOT / "src") not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT / "src"))

from rsdml import allocator  # noqa: E402
from rsdml.config import TrainConfig  # noqa: E402
from rsdml.data.split import Split, make_split  # noqa: E402

_T0 = time.perf_counter()
#: The benchmarks measure what the CLI runs: its allocator setting in the network passes
#: (RSDML_MALLOC=system: off).
KEPT_MEMORY = allocator.enable()


def log(*parts: object) -> None:
    """Progress for the person running the benchmark: stderr, so stdout stays one JSON object."""
    print(f"[{time.perf_counter() - _T0:7.1f}s]", *parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=1))


def rnd(x: float, digits: int = 4) -> float:
    return float(round(x, digits))


# --------------------------------------------------------------------------- CLI and machine
def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes for a smoke run (seconds); the numbers mean nothing")
    ap.add_argument("--data", default=str(DEFAULT_DATA),
                    help="class-folder image data set "
                         "(default: ../shared/data/AID from the repo root)")
    ap.add_argument("--cache-dir", default=None,
                    help="image-cache folder "
                         "(default: a fresh temporary folder, so the build is cold)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads in this process (default: torch's own choice)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers of the per-sample pipeline and cache decoding threads "
                         "(default: the number of usable cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", default="auto", choices=("auto", "off", "bf16"),
                    help="rsdml's --amp for the session (auto = bf16 on CUDA where supported); "
                         "the JSON's 'precision' says what the trainer really used")
    ap.add_argument("--compile", action="store_true",
                    help="rsdml's --compile: torch.compile the model (all parts); compilation "
                         "happens in the untimed warm-up")
    ap.add_argument("--device-cache", default="auto", choices=("auto", "off"),
                    help="rsdml's --device-cache (auto: images in GPU memory when they fit)")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def setup(args: argparse.Namespace) -> torch.device:
    """Threads (only when asked), device, and the seed; exits with a message if CUDA is missing."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workers is None:
        args.workers = usable_cores()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is visible; use --device cpu")
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    torch.manual_seed(args.seed)  # cudnn.benchmark stays as rsdml leaves it (off)
    return device


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "-uno"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info(device: torch.device) -> dict[str, Any]:
    import torchvision

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_at_start": load_average(),
        "git_commit": _git_commit(),
        "allocator": "freed memory kept in network passes" if KEPT_MEMORY else "system",
        "device": str(device),
    }
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = rnd(pages * page / 2**30, 1)
    except (ValueError, OSError):  # pragma: no cover
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=rnd(p.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
    return info


def finish(result: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from rsdml.data.cache import peak_rss_bytes

    result["load_average_at_end"] = load_average()
    result["process_peak_rss_mib"] = rnd(peak_rss_bytes() / 2**20, 1)
    if device.type == "cuda":
        result["cuda_peak_allocated_mib"] = rnd(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


# --------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[int], object], warmup: int, steps: int, device: torch.device,
               images_per_step: int, label: str = "") -> dict[str, Any]:
    """Run ``warmup`` untimed then ``steps`` timed calls of ``step(i)``.

    The mean is the wall time of all timed steps (one device sync before and after) over
    ``steps``, so on CUDA it counts queued work and allows the host to run ahead as in real
    training. ``step_seconds`` are host-side times per step (exact on CPU, approximate on CUDA).
    """
    for i in range(warmup):
        step(i)
        log(f"{label} warm-up {i + 1}/{warmup}")
    sync(device)
    per: list[float] = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    for i in range(steps):
        t = time.perf_counter()
        step(warmup + i)
        per.append(time.perf_counter() - t)
        if len(per) == 1 or (i + 1) % max(1, steps // 5) == 0 or device.type == "cpu":
            log(f"{label} step {i + 1}/{steps}: {per[-1]:.3f}s")
    sync(device)
    total = time.perf_counter() - start
    mean = total / steps
    return {
        "images_per_s": rnd(images_per_step / mean, 2),
        "step_seconds_mean": rnd(mean),
        "step_seconds": [rnd(s) for s in per],
        "steps_timed": steps,
        "warmup_steps": warmup,
        "images_per_step": images_per_step,
        "main_process_cpu_seconds_per_step": rnd((time.process_time() - cpu0) / steps),
    }


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or "images_per_s" not in a or "images_per_s" not in b:
        return None
    return rnd(a["images_per_s"] / b["images_per_s"], 3)


@contextlib.contextmanager
def part(out: dict[str, Any], key: str) -> Iterator[None]:
    """Record a failing part as ``{"error": ...}`` so the other parts' numbers still print."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - reported in the JSON, not hidden
        out[key] = {"error": f"{type(e).__name__}: {e}"}
        log(f"{key} failed: {type(e).__name__}: {e}")


# --------------------------------------------------------------------------- data
def scan(root: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(relative paths, labels, classes) of a class-folder data set, as rsdml scans it."""
    from rsdml.data.scan import scan_image_folder

    root = Path(root)
    if not root.is_dir():
        sys.exit(f"data folder {root} not found; pass --data DIR (one sub-folder per class) or "
                 f"make synthetic data with: python benchmarks/_common.py synth DIR")
    s = scan_image_folder(root, check=False, progress=False)
    return list(s.paths), np.asarray(s.labels), list(s.classes)


def subset(paths: list[str], labels: np.ndarray, n: int | None) -> tuple[list[str], np.ndarray]:
    """``n`` images spread evenly over the sorted list (so every class keeps a share)."""
    if n is None or n >= len(paths):
        return paths, labels
    pick = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in pick], labels[pick]


def aid_split(paths: list[str], labels: np.ndarray, classes: list[str], seed: int,
              labeled_fraction: float = 0.2) -> Split:
    """The paper's transductive split: 20 % labelled per class, the rest test = unlabelled."""
    used = sorted(set(labels.tolist()))
    remap = {c: i for i, c in enumerate(used)}
    labels = np.asarray([remap[int(v)] for v in labels], dtype=np.int64)
    return make_split(paths, labels, [classes[c] for c in used], protocol="transductive",
                      labeled_fraction=labeled_fraction, seed=seed)


def bench_config(data: str | Path, size: int, device: torch.device, cache_dir: str | Path,
                 batch: int, workers: int, seed: int, **kw: Any) -> TrainConfig:
    """hr-s2dml with the paper's optimiser (SGD 0.1 Nesterov, as the reference code and the
    published benchmark numbers), bf16 on CUDA, ResNet-18 from scratch; ``kw``: further
    TrainConfig fields (e.g. ``amp``, ``optimizer``)."""
    kw.setdefault("optimizer", "sgd")
    cfg = TrainConfig(
        data=str(data), backbone="resnet18", pretrained="none", method="hr-s2dml",
        image_size=size, batch_size=batch, unlabeled_batch_size=batch, device=device.type,
        cache="memory", cache_dir=str(cache_dir), workers=workers, seed=seed, quiet=True, **kw,
    )
    from rsdml.training.runner import validate_config

    return validate_config(cfg)


@contextlib.contextmanager
def cache_folder(given: str | None) -> Iterator[Path]:
    """The given cache folder, or a fresh temporary one (so the first build is cold)."""
    if given:
        yield Path(given)
        return
    with tempfile.TemporaryDirectory(prefix="rsdml-bench-cache-") as tmp:
        yield Path(tmp)


def cache_report(build_seconds: float, cold: Any, warm_seconds: float, warm: Any) -> dict[str, Any]:
    """Cold build and warm load of the decoded-image cache, with its memory (cache.py's stats)."""
    return {
        "images": len(warm),
        "size": warm.size,
        "mode": warm.mode,
        "nbytes_mib": rnd(warm.nbytes / 2**20, 1),
        "cold_build_seconds": rnd(build_seconds, 3),
        "cold_build_images_per_s": rnd(len(cold) / build_seconds, 1) if build_seconds else None,
        "warm_load_seconds": rnd(warm_seconds, 3),
        "cold_stats": cold.stats.as_dict(),
        "warm_stats": warm.stats.as_dict(),
        "resident_mib": rnd(warm.stats.resident_bytes / 2**20, 1),
        "peak_rss_mib_after_build": rnd(cold.stats.peak_rss_bytes / 2**20, 1),
        "note": "cold = decode+resize every JPEG (the JPEG files themselves may be in the OS page "
                "cache); warm = read the cache file back (CRC-checked). peak_rss is the process's "
                "peak so far, not the cache alone",
    }


def build_and_reload_cache(root: str | Path, paths: list[str], size: int, cache_dir: Path,
                           workers: int, max_memory_bytes: int = 4 * 2**30):
    """Build the cache (timed, cold when ``cache_dir`` is fresh), drop it, load it again (warm)."""
    from rsdml.data.cache import load_image_cache

    kw = dict(mode="memory", cache_dir=cache_dir, workers=workers, progress=False,
              max_memory_bytes=max_memory_bytes)
    t = time.perf_counter()
    cold = load_image_cache(root, paths, size, **kw)
    build_s = time.perf_counter() - t
    cold_stub = _StatsOnly(cold)
    del cold
    t = time.perf_counter()
    warm = load_image_cache(root, paths, size, **kw)
    warm_s = time.perf_counter() - t
    return warm, cache_report(build_s, cold_stub, warm_s, warm)


class _StatsOnly:
    """What the report needs of a dropped cache (so two copies are never held at once)."""

    def __init__(self, cache: Any) -> None:
        self.stats, self.size, self._n = cache.stats, cache.size, len(cache)

    def __len__(self) -> int:
        return self._n


# --------------------------------------------------------------------------- model steps
class _GivenInputs:
    """Stands in for a trainer's ``inputs`` for one step: ``train`` returns the given batch
    (already on the device, labelled rows first), everything else is the real inputs'."""

    def __init__(self, x: torch.Tensor, real: Any) -> None:
        self.x, self.real = x, real

    def train(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.x

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def model_step(trainer: Any, x: torch.Tensor, n_l: int, read_loss: bool) -> None:
    """The library's ``Trainer.train_step`` (its autocast, train modes, forward of the joined
    labelled + unlabelled batch, method, backward and optimiser step) on the batch ``x``
    instead of one from its input pipeline; the first ``n_l`` rows are the labelled images
    (labels: the first ``n_l`` of the labelled set). ``read_loss`` copies the loss terms to
    the host every step (a device sync on CUDA), as the per-sample pipeline's reference loop
    does."""
    real = trainer.inputs
    trainer.inputs = _GivenInputs(x, real)
    try:
        terms = trainer.train_step(torch.arange(n_l))
    finally:
        trainer.inputs = real
    if read_loss:
        {k: float(v) for k, v in terms.items()}


def to_device(x: torch.Tensor, trainer: Any) -> torch.Tensor:
    """Host batch -> the trainer's device and layout, as rsdml's ImageInputs does it
    (non-blocking from pinned memory on CUDA, channels_last where the session uses it)."""
    if trainer.device.type == "cuda":
        x = x.to(trainer.device, non_blocking=True)
    if getattr(trainer.inputs, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@contextlib.contextmanager
def plain_fp32(trainer: Any) -> Iterator[None]:
    """Run the trainer's model as the reference code runs it: float32, contiguous NCHW, no
    autocast; rsdml's precision and memory layout are restored afterwards."""
    dtype = trainer.autocast_dtype
    cl = bool(getattr(trainer.inputs, "channels_last", False))
    trainer.autocast_dtype = None
    if cl:
        trainer.inputs.channels_last = False
        trainer.model.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        trainer.autocast_dtype = dtype
        if cl:
            trainer.inputs.channels_last = True
            trainer.model.to(memory_format=torch.channels_last)


def precision(trainer: Any) -> dict[str, Any]:
    """What the session really runs: autocast dtype (None = float32) and memory layout."""
    return {"autocast_dtype": str(trainer.autocast_dtype) if trainer.autocast_dtype else None,
            "channels_last": bool(getattr(trainer.inputs, "channels_last", False)),
            "images_on_device": bool(getattr(trainer.inputs, "on_device", False))}


def cached_session(cfg: TrainConfig, split: Split, run_root: Path):
    """rsdml's own Session and Trainer for ``cfg`` (model, cache, inputs, method, optimiser),
    after a timed cold build of the image cache; ``build_session`` then loads it back warm.

    Returns (session, trainer, cache report)."""
    from rsdml.training.run_folder import RunFolder
    from rsdml.training.runner import build_session, load_cache, make_trainer

    log(f"{cfg.image_size}px: building the image cache of {len(split.paths)} images (cold)")
    t = time.perf_counter()
    cold = load_cache(cfg, split)
    build_s = time.perf_counter() - t
    stub = _StatsOnly(cold)
    del cold
    t = time.perf_counter()
    session = build_session(cfg, RunFolder(run_root), split, train=True)
    warm_s = time.perf_counter() - t
    report = cache_report(build_s, stub, warm_s, session.inputs.cache)
    report["warm_load_seconds_note"] = "build_session(): warm cache load + model build"
    return session, make_trainer(session), report


# --------------------------------------------------------------------------- reference pipeline
class PilFolderDataset(torch.utils.data.Dataset):
    """torchvision ImageFolder's loader (PIL open + convert RGB) over rsdml's file list, so the
    reference pipeline decodes exactly the images rsdml caches."""

    def __init__(self, root: str | Path, paths: list[str], labels: np.ndarray,
                 transform: Callable) -> None:
        self.root, self.paths = Path(root), paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        return self.transform(default_loader(str(self.root / self.paths[i]))), int(self.labels[i])


class TwoStreamBatches(torch.utils.data.Sampler):
    """Per step: ``batch`` labelled indices (an epoch's shuffled order, as the reference's
    labelled loader) followed by ``batch`` unlabelled indices (their own shuffled stream)."""

    def __init__(self, labeled: np.ndarray, unlabeled: np.ndarray, batch: int, steps: int,
                 seed: int, full_labeled_batches: bool = False) -> None:
        self.labeled, self.unlabeled = np.asarray(labeled), np.asarray(unlabeled)
        self.batch, self.steps, self.seed = batch, steps, seed
        self.full = full_labeled_batches

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed)

        def stream(pool: np.ndarray, drop_last: bool) -> Iterator[np.ndarray]:
            while True:
                order = rng.permutation(pool)
                stop = len(order) - (len(order) % self.batch if drop_last else 0)
                for s in range(0, max(stop, 1), self.batch):
                    yield order[s:s + self.batch]

        lab = stream(self.labeled, drop_last=self.full)
        unl = stream(self.unlabeled, drop_last=True)
        for _ in range(self.steps):
            yield [int(i) for i in np.concatenate([next(lab), next(unl)])]


def reference_train_loader(root: str | Path, split: Split, size: int, batch: int, steps: int,
                           workers: int, device: torch.device, seed: int,
                           full_batches: bool = False) -> torch.utils.data.DataLoader:
    """The per-sample pipeline of the reference code: every step decodes, resizes and
    colour-jitters each image with PIL in DataLoader worker processes."""
    from rsdml.data.augment import paper_pil_transform

    ds = PilFolderDataset(root, split.paths, split.labels, paper_pil_transform(size, train=True))
    sampler = TwoStreamBatches(split.index("labeled"), split.unlabeled_index(), batch, steps,
                               seed, full_labeled_batches=full_batches)
    return torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
    )


def reference_eval_loader(root: str | Path, paths: list[str], labels: np.ndarray, size: int,
                          batch: int, workers: int,
                          device: torch.device) -> torch.utils.data.DataLoader:
    from rsdml.data.augment import paper_pil_transform

    ds = PilFolderDataset(root, paths, labels, paper_pil_transform(size, train=False))
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers,
                                       pin_memory=device.type == "cuda")


# --------------------------------------------------------------------------- synthetic data
def make_synthetic_folder(root: str | Path, n: int, classes: int = 30, size: int = 150,
                          seed: int = 0) -> Path:
    """``n`` JPEGs (``size`` px, quality 90) in ``classes`` folders: a stand-in for AID where the
    real data cannot travel (the GPU machine). Smooth class-coloured noise, so the JPEGs are of
    realistic size; decode cost per pixel is what matters for speed, not the content."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 215, size=(classes, 3))

    def one(i: int) -> None:
        c = i % classes
        folder = root / f"class_{c:02d}"
        file = folder / f"img_{i:05d}.jpg"
        if file.exists():
            return
        r = np.random.default_rng([seed, i])
        small = r.normal(0, 40, size=(size // 6 + 1, size // 6 + 1, 3))
        up = np.kron(small, np.ones((6, 6, 1)))[:size, :size]
        img = np.clip(base[c] + up + r.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(file, quality=90)

    for c in range(classes):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(usable_cores()) as pool:
        list(pool.map(one, range(n)))
    return root


def _main() -> None:
    ap = argparse.ArgumentParser(description="benchmark helpers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write a synthetic class folder of JPEGs")
    s.add_argument("dir")
    s.add_argument("--n", type=int, default=10000)
    s.add_argument("--classes", type=int, default=30)
    s.add_argument("--size", type=int, default=150)
    args = ap.parse_args()
    t = time.perf_counter()
    make_synthetic_folder(args.dir, args.n, args.classes, args.size)
    log(f"wrote {args.n} JPEGs to {args.dir} in {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    _main()
