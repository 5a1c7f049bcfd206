"""``rsdml label``: a labelling page over an image folder (FastAPI on uvicorn, like ``rsdml serve``).

The page shows the images to label next (a suggestions CSV, else ``rsdml suggest``'s default
choice computed at start: TypiClust, or with ``--run`` and labels the uncertain images spread
over the classes), takes a class typed or picked (a new name makes a new class), labels many at once by
searching with an image and ticking results, skips and undoes. The search re-ranks with Rocchio
relevance feedback over the whole folder, so a re-rank brings in images that were not among the
first results. With ``--predictions`` (``rsdml predict``), a review view lists the least
certain predictions; accepting or correcting one writes its label.

Every change goes through :class:`rsdml.labelling.labels.LabelStore` (journal, fsync, atomic CSV)
before the request is answered: an acknowledged label survives a killed server. Undo is per
tab: each page sends its own client id (header ``X-Rsdml-Client``), and undo reverts only that
tab's changes (and only where nobody changed the image since).

The Host check, the body limit, the thumbnails' trusted-file policy (symlinks followed as
written, as training reads them), the error answers and the page's head come from
:mod:`rsdml.retrieval.web`, shared with ``rsdml serve``.

Endpoints::

    GET  /                    the page (static files of this package; nothing external)
    GET  /api/state           classes with counts, labelled count, the queue, the review list
    GET  /api/labels          every label (path -> class)
    POST /api/label           {"ids": [...], "class": "..."}: label them (durable on answer)
    POST /api/unlabel         {"id": I}
    POST /api/undo            revert the last change made from this tab (X-Rsdml-Client)
    GET  /api/similar?id=I&k  the k images most like image I (cosine), I left out
    POST /api/rerank          {"id", "relevant", "non_relevant", "k"}: Rocchio, whole folder
    GET  /api/images/{id}     a JPEG thumbnail
"""

from __future__ import annotations

import csv
import io
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, Field

from rsdml.errors import RsdmlError
from rsdml.labelling.labels import LabelStore, class_counts
from rsdml.retrieval.feedback import rocchio
from rsdml.retrieval.index import ExactIndex
from rsdml.retrieval.web import (
    LOOPBACK_HOSTS,
    ThumbnailCache,
    bind,
    create_base_app,
    file_below,
    host_names,
    quiet_signals,
    shown_address,
    warn_if_reachable,
)

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

    def progress(self) -> dict[str, Any]:
        """How far the suggestions are: their number, how many are labelled or skipped, and
        whether they are done (the queue then goes on in folder order)."""
        labels = self.store.snapshot()
        total = len(self.suggestions)
        done = sum(1 for p in self.suggestions if p in labels or p in self.skipped)
        return {"total": total, "done": done, "finished": total > 0 and done >= total}


def read_review(path: str | Path, images: set[str]) -> list[Review]:
    """The rows of ``rsdml predict``'s CSV (least certain first); a file whose paths are not
    under the data folder is refused (:func:`rsdml.labelling.labels.check_under_data`)."""
    from rsdml.labelling.labels import check_under_data

    path = Path(path)
    if not path.is_file():
        raise RsdmlError(f"--predictions {path} does not exist; make it with `rsdml predict "
                         "RUN DATA --out FILE.csv`")
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
        out = [Review(r["path"], r["class"], float(r["probability"]), float(r["knn_agreement"]))
               for r in rows]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as e:
        raise RsdmlError(f"--predictions {path} is not a predictions CSV ({type(e).__name__}); "
                         "make it with `rsdml predict`") from None
    check_under_data([r.path for r in out], images, f"--predictions {path}",
                     "make it again with `rsdml predict RUN DATA` for this folder")
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


class Thumbnails(ThumbnailCache):
    """JPEG thumbnails of the folder's images (serve's file policy and cache)."""

    def __init__(self, root: Path, paths: list[str], keep: int = 4096) -> None:
        super().__init__(THUMB_PX, MAX_PIXELS, keep=keep)
        self.root, self.paths = root, paths

    def file_of(self, i: int) -> Path:
        return file_below(self.root, self.paths[i], f"image {i}")  # serve's policy


#: The header a page sends its client id in (one per tab): undo reverts that tab's changes.
CLIENT = Header("", alias="X-Rsdml-Client", max_length=64)


def create_label_app(s: LabelSession, *,
                     allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """The page and its JSON API over one :class:`LabelSession` (``allowed_hosts``: the Host
    header names answered, as ``rsdml serve``'s)."""
    app = create_base_app("rsdml label", "label.html", allowed_hosts=allowed_hosts)
    thumbs = Thumbnails(s.root, s.paths)

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
                "suggestions": s.progress(),
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
    def post_label(req: LabelRequest, client: str = CLIENT) -> dict[str, Any]:
        paths = [s.paths[check_id(i)] for i in req.ids]
        changed = s.store.set_many(paths, req.cls, client=client)
        return {"saved": changed, **state()}

    @app.post("/api/unlabel")
    def post_unlabel(req: IdRequest, client: str = CLIENT) -> dict[str, Any]:
        s.store.remove(s.paths[check_id(req.id)], client=client)
        return state()

    @app.post("/api/skip")
    def post_skip(req: IdRequest) -> dict[str, Any]:
        s.skipped.add(s.paths[check_id(req.id)])
        return state()

    @app.post("/api/undo")
    def post_undo(client: str = CLIENT) -> dict[str, Any]:
        undone = s.store.undo(client=client)
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

    from rsdml.geo.page import add_map_routes

    add_map_routes(app, s)  # a tile folder (`rsdml tile`): the map view, tiles in context
    return app


def open_session(data: str | Path, labels_file: str | Path, *, run: str | Path | None = None,
                 suggestions: str | Path | None = None, predictions: str | Path | None = None,
                 device: str = "auto", quiet: bool = False,
                 log: Callable[[str], None] = print) -> LabelSession:
    """Everything ``rsdml label`` needs before it listens (one-line errors come now)."""
    from rsdml.labelling.labels import check_under_data
    from rsdml.labelling.suggest import choose, read_suggestions
    from rsdml.training.archive_vectors import archive_images, run_vectors, trunk_vectors

    order = read_suggestions(suggestions) if suggestions else []  # bad files fail before
    if predictions and not Path(predictions).is_file():           # the features are computed
        raise RsdmlError(f"--predictions {predictions} does not exist; make it with `rsdml "
                         "predict RUN DATA --out FILE.csv`")
    if order:
        _, images = archive_images(data)
        check_under_data(order, images, f"--suggestions {suggestions}",
                         "make them again with `rsdml suggest DATA` for this folder")
    vec = run_vectors(run, data, device=None if device == "auto" else device, quiet=quiet) \
        if run is not None else trunk_vectors(data, device=device, quiet=quiet)
    review = read_review(predictions, set(vec.paths)) if predictions else []
    store = LabelStore(labels_file, vec.paths)
    if not order:  # nothing given: `rsdml suggest`'s default choice among the unlabelled images
        labels = store.snapshot()
        n = min(200, len(vec.paths) - sum(p in labels for p in vec.paths))
        if n > 0:
            log(f"rsdml: choosing {n} images to label first, as `rsdml suggest` would "
                "(`rsdml suggest --strategy` for other choices)")
            order = [vec.paths[i] for i in choose(vec, labels, n)[0]]
    return LabelSession(vec.root, vec.paths, vec.vectors, store, order, review)


def serve_labelling(session: LabelSession, *, host: str = "127.0.0.1", port: int = 8001,
                    sock: socket.socket | None = None,
                    log: Callable[[str], None] = print) -> None:
    """Serve until interrupted on ``sock`` (``rsdml label`` binds it before any work, so a
    busy port fails at once), else on a socket bound to ``host:port`` now."""
    import uvicorn

    try:
        sock = sock if sock is not None else bind(host, port, backlog=256)
        bound_host, shown, bound_port = shown_address(sock)
        warn_if_reachable(sock, log, "the page has no authentication and writes your labels "
                                     "file")
        app = create_label_app(session, allowed_hosts=host_names(bound_host))
        log(f"rsdml: labelling {session.root} ({len(session.paths)} images) into "
            f"{session.store.path} on http://{shown}:{bound_port}/ (Ctrl+C stops)")
        config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5)
        with quiet_signals():
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        session.store.close()
