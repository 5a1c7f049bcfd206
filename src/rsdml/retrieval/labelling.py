"""``rsdml label``: a labelling page over an image folder (FastAPI on uvicorn, like ``rsdml serve``).

The page shows the images to label next (a suggestions CSV, else TypiClust's choice computed at
start), takes a class typed or picked (a new name makes a new class), labels many at once by
searching with an image and ticking results, skips and undoes. The search re-ranks with Rocchio
relevance feedback over the whole folder, so a re-rank brings in images that were not among the
first results. With ``--predictions`` (``rsdml predict``), a review view lists the least
certain predictions; accepting or correcting one writes its label.

Every change goes through :class:`rsdml.data.labels.LabelStore` (journal, fsync, atomic CSV)
before the request is answered: an acknowledged label survives a killed server.

Endpoints::

    GET  /                    the page (static files of this package; nothing external)
    GET  /api/state           classes with counts, labelled count, the queue, the review list
    GET  /api/labels          every label (path -> class)
    POST /api/label           {"ids": [...], "class": "..."}: label them (durable on answer)
    POST /api/unlabel         {"id": I}
    POST /api/undo            revert the last change
    GET  /api/similar?id=I&k  the k images most like image I (cosine), I left out
    POST /api/rerank          {"id", "relevant", "non_relevant", "k"}: Rocchio, whole folder
    GET  /api/images/{id}     a JPEG thumbnail
"""

from __future__ import annotations

import csv
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from rsdml.data.labels import LabelStore, class_counts
from rsdml.errors import RsdmlError
from rsdml.retrieval.feedback import rocchio
from rsdml.retrieval.index import ExactIndex

STATIC = Path(__file__).with_name("static")
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'")
MAX_K = 200
THUMB_PX = 192
MAX_PIXELS = 50_000_000


@dataclass
class Review:
    """One prediction to review (``rsdml predict``'s CSV row)."""

    path: str
    predicted: str
    probability: float
    knn_agreement: float


@dataclass
class LabelSession:
    """What the page works on: the folder's images and vectors, the labels, the queues."""

    root: Path
    paths: list[str]
    vectors: np.ndarray  # unit rows
    store: LabelStore
    suggestions: list[str] = field(default_factory=list)
    review: list[Review] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ids = {p: i for i, p in enumerate(self.paths)}
        self.index = ExactIndex(self.vectors, normalized=True)
        self.skipped: set[str] = set()

    def queue(self, n: int = 50) -> list[str]:
        """The next images to label: suggestions not labelled or skipped, in order; then
        (when they run out) every other unlabelled image in folder order."""
        labels = self.store.snapshot()
        out = [p for p in self.suggestions
               if p not in labels and p not in self.skipped and p in self.ids][:n]
        if len(out) < n:
            seen = set(out)
            out += [p for p in self.paths if p not in labels and p not in self.skipped
                    and p not in seen][: n - len(out)]
        return out


def read_review(path: str | Path, images: set[str]) -> list[Review]:
    """The rows of ``rsdml predict``'s CSV (least certain first), images of this folder only."""
    path = Path(path)
    if not path.is_file():
        raise RsdmlError(f"--predictions {path} does not exist; make it with `rsdml predict "
                         "RUN DATA --out FILE.csv`")
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
        out = [Review(r["path"], r["class"], float(r["probability"]), float(r["knn_agreement"]))
               for r in rows if r.get("path") in images]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as e:
        raise RsdmlError(f"--predictions {path} is not a predictions CSV ({type(e).__name__}); "
                         "make it with `rsdml predict`") from None
    return out


class LabelRequest(BaseModel):
    ids: list[int] = Field(..., min_length=1, max_length=5000)
    cls: str = Field(..., alias="class", min_length=1, max_length=100)


class IdRequest(BaseModel):
    id: int = Field(..., ge=0)


class RerankRequest(BaseModel):
    id: int = Field(..., ge=0)
    relevant: list[int] = Field(default_factory=list, max_length=1000)
    non_relevant: list[int] = Field(default_factory=list, max_length=1000)
    k: int = Field(60, ge=1, le=MAX_K)


class Thumbnails:
    """JPEG thumbnails, kept in a bounded LRU (the page shows the same ones again)."""

    def __init__(self, root: Path, paths: list[str], keep: int = 4096) -> None:
        self.root, self.paths, self.keep = root.resolve(), paths, keep
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, i: int) -> bytes:
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        data = self._render(i)
        with self._lock:
            self._cache[i] = data
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return data

    def _render(self, i: int) -> bytes:
        from PIL import Image

        from rsdml.data.imageio import ImageReadError, read_rgb

        path = (self.root / self.paths[i]).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise HTTPException(404, f"the file of image {i} is not on this machine")
        try:
            rgb = read_rgb(path, max_pixels=MAX_PIXELS)
        except ImageReadError as e:
            raise HTTPException(404, f"this image cannot be shown ({e.detail})") from None
        im = Image.fromarray(rgb)
        im.thumbnail((THUMB_PX, THUMB_PX), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue()


def create_label_app(s: LabelSession) -> FastAPI:
    """The page and its JSON API over one :class:`LabelSession`."""
    app = FastAPI(title="rsdml label", docs_url=None, redoc_url=None)
    thumbs = Thumbnails(s.root, s.paths)

    @app.exception_handler(RsdmlError)
    async def _user_error(request: Request, e: RsdmlError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    def check_id(i: int) -> int:
        if not 0 <= i < len(s.paths):
            raise HTTPException(404, f"no image {i}: ids are 0..{len(s.paths) - 1}")
        return i

    def item(p: str, labels: dict[str, str], score: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": s.ids[p], "path": p, "label": labels.get(p)}
        if score is not None:
            out["score"] = round(float(score), 4)
        return out

    def state() -> dict[str, Any]:
        labels = s.store.snapshot()
        review = [{**item(r.path, labels), "predicted": r.predicted,
                   "probability": r.probability, "knn_agreement": r.knn_agreement}
                  for r in s.review if r.path not in labels][:100]
        return {"classes": [{"name": c, "count": n} for c, n in class_counts(labels).items()],
                "labelled": len(labels), "total": len(s.paths), "file": str(s.store.path),
                "queue": [item(p, labels) for p in s.queue()], "review": review,
                "recent": [item(p, labels) for p in list(labels)[-12:][::-1]]}

    def hits(q: np.ndarray, k: int, exclude: int) -> list[dict[str, Any]]:
        labels = s.store.snapshot()
        scores, ids = s.index.search(q[None, :], k + 1, normalized=True)
        return [item(s.paths[j], labels, sc) for sc, j in zip(scores[0], ids[0])
                if j != exclude][:k]

    @app.get("/api/state")
    def get_state() -> dict[str, Any]:
        return state()

    @app.get("/api/labels")
    def get_labels() -> dict[str, str]:
        return s.store.snapshot()

    @app.post("/api/label")
    def post_label(req: LabelRequest) -> dict[str, Any]:
        paths = [s.paths[check_id(i)] for i in req.ids]
        changed = s.store.set_many(paths, req.cls)
        return {"saved": changed, **state()}

    @app.post("/api/unlabel")
    def post_unlabel(req: IdRequest) -> dict[str, Any]:
        s.store.remove(s.paths[check_id(req.id)])
        return state()

    @app.post("/api/skip")
    def post_skip(req: IdRequest) -> dict[str, Any]:
        s.skipped.add(s.paths[check_id(req.id)])
        return state()

    @app.post("/api/undo")
    def post_undo() -> dict[str, Any]:
        undone = s.store.undo()
        return {"undone": [{"id": s.ids[p], "path": p, "label": c} for p, c in undone],
                **state()}

    @app.get("/api/similar")
    def similar(id: int = Query(..., ge=0), k: int = Query(60, ge=1, le=MAX_K)) -> dict[str, Any]:
        i = check_id(id)
        return {"query": i, "results": hits(s.vectors[i], k, i)}

    @app.post("/api/rerank")
    def rerank(req: RerankRequest) -> dict[str, Any]:
        i = check_id(req.id)
        rel = [check_id(j) for j in req.relevant]
        non = [check_id(j) for j in req.non_relevant]
        q = rocchio(s.vectors[i], s.vectors[rel], s.vectors[non])
        return {"query": i, "results": hits(q, req.k, i)}

    @app.get("/api/images/{image_id}")
    def image(image_id: int = PathParam(..., ge=0)) -> Response:
        return Response(thumbs.get(check_id(image_id)), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "label.html", headers={"Content-Security-Policy": PAGE_CSP})

    from rsdml.geo.page import add_map_routes

    add_map_routes(app, s)  # a tile folder (`rsdml tile`): the map view, tiles in context
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def open_session(data: str | Path, labels_file: str | Path, *, run: str | Path | None = None,
                 suggestions: str | Path | None = None, predictions: str | Path | None = None,
                 device: str = "auto", quiet: bool = False,
                 log: Callable[[str], None] = print) -> LabelSession:
    """Everything ``rsdml label`` needs before it listens (one-line errors come now)."""
    from rsdml.training.archive_vectors import run_vectors, trunk_vectors
    from rsdml.training.suggest import read_suggestions, suggest

    order = read_suggestions(suggestions) if suggestions else []  # bad files fail before
    if predictions and not Path(predictions).is_file():           # the features are computed
        raise RsdmlError(f"--predictions {predictions} does not exist; make it with `rsdml "
                         "predict RUN DATA --out FILE.csv`")
    vec = run_vectors(run, data, device=None if device == "auto" else device, quiet=quiet) \
        if run is not None else trunk_vectors(data, device=device, quiet=quiet)
    store = LabelStore(labels_file, vec.paths)
    if not order:  # nothing given: TypiClust's choice among the unlabelled images
        labels = store.snapshot()
        lab = np.asarray([i for i, p in enumerate(vec.paths) if p in labels], np.int64)
        n = min(200, len(vec.paths) - len(lab))
        if n > 0:
            log(f"rsdml: choosing {n} images to label first (typiclust; `rsdml suggest` "
                "for other choices)")
            order = [vec.paths[i] for i in suggest(vec.vectors, lab, n, strategy="typiclust")]
    review = read_review(predictions, set(vec.paths)) if predictions else []
    return LabelSession(vec.root, vec.paths, vec.vectors, store, order, review)


def serve_labelling(session: LabelSession, *, host: str = "127.0.0.1", port: int = 8001,
                    log: Callable[[str], None] = print) -> None:
    """Bind the port (a one-line error if it cannot be), then serve until interrupted."""
    import socket

    import uvicorn

    from rsdml.signals import stop_signals_to

    app = create_label_app(session)
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(256)
    except OSError as e:
        raise RsdmlError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another "
                         "--port or --host") from None
    bound_host, bound_port = sock.getsockname()[:2]
    if not bound_host.startswith(("127.", "::1")):
        log(f"rsdml: warning: listening on {bound_host}, reachable from other machines; the "
            "page has no authentication and writes your labels file")
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log(f"rsdml: labelling {session.root} ({len(session.paths)} images) into "
        f"{session.store.path} on http://{shown}:{bound_port}/ (Ctrl+C stops)")
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5)
    try:
        with stop_signals_to(lambda *_: None):
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        session.store.close()
