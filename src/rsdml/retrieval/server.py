"""``rsdml serve``: an index behind HTTP (FastAPI on uvicorn) and a one-page search UI.

Endpoints (docs/retrieval.md has the details)::

    GET  /                      the search page (static files shipped in this package)
    POST /api/search?k=10       multipart upload ``file``: the k nearest indexed images
    GET  /api/search?id=I&k=10  the k nearest to indexed image I (itself left out)
    POST /api/rerank            Rocchio relevance feedback (rsdml.retrieval.feedback)
    GET  /api/images/{id}       a JPEG thumbnail of indexed image ``id``
    GET  /api/info, /healthz    what is served / liveness
    GET  /openapi.json          the OpenAPI schema (no /docs page: Swagger UI loads from a CDN)

Uploads are decoded by the model's own :class:`~rsdml.data.preprocess.Preprocess` (the run's
bands, size and normalisation), exactly as ``rsdml search --image`` and evaluation decode.

Safety: requests name images by index id only, never by a path; a request whose Host header
is not one of ``allowed_hosts`` is answered 400 (DNS rebinding); an upload is admitted to the
queue before its body is read, refused above ``max_upload_bytes`` (413, counted while the body
streams in), above ``max_pixels`` or ``max_decoded_bytes`` (413, from the header, before
decoding) and when it is not an image (415); at most ``workers`` requests compute at a time and
``queue`` more wait, any further one is answered 503 at once. Thumbnails are read only from the
image folders the user allowed (see :func:`thumbnail_roots`), never from a folder an index file
alone names.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from rsdml.data.preprocess import Preprocess
from rsdml.errors import RsdmlError
from rsdml.retrieval.archive import ArchiveIndex, Hit
from rsdml.retrieval.feedback import ALPHA, BETA, GAMMA, rocchio
from rsdml.retrieval.web import (
    LOOPBACK_HOSTS,
    PAGE_CSP,
    STATIC,
    BodyLimit,
    HostCheck,
    ThumbnailCache,
    bind,
    create_base_app,
    file_below,
    host_names,
    host_of,
    quiet_signals,
    shown_address,
    warn_if_reachable,
)

__all__ = ["LOOPBACK_HOSTS", "PAGE_CSP", "STATIC", "BodyLimit", "HostCheck", "Limits",
           "create_app", "host_names", "host_of", "serve"]

_MULTIPART_SLACK = 64 * 1024  # boundary lines and part headers around the uploaded file


@dataclass(frozen=True)
class Limits:
    """What one request may cost; ``rsdml serve`` options set them."""

    max_upload_bytes: int = 20 * 1024 * 1024
    #: width x height; a 20 MB PNG can decode to gigabytes (a decompression bomb)
    max_pixels: int = 50_000_000
    #: height x width x bands x bytes per sample: a small multi-band TIFF passes the pixel
    #: check and still allocates every band
    max_decoded_bytes: int = 256 * 1024 * 1024
    workers: int = 2
    queue: int = 16
    max_k: int = 100
    thumbnail_px: int = 192
    max_feedback: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_decoded_bytes", "workers", "max_k",
                     "thumbnail_px"):
            if getattr(self, name) < 1:
                raise RsdmlError(f"--{name.replace('_', '-')} must be at least 1")
        if self.queue < 0:
            raise RsdmlError("--queue must be 0 or more")
        if self.workers + self.queue > 32:
            raise RsdmlError("--workers + --queue must be at most 32 (each waits in a thread)")


class Admission:
    """A bounded queue in front of the workers: ``workers`` compute, ``queue`` more wait, the
    rest are turned away at once (503) instead of piling up threads and memory."""

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self.active = 0
        self._lock = threading.Lock()
        self._workers = threading.Semaphore(workers)

    def try_enter(self) -> bool:
        with self._lock:
            if self.active >= self.capacity:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.active -= 1

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Wait for a worker (in a pool thread), then compute."""
        with self._workers:
            return fn(*args)


class Embedder:
    """The index's model, loaded once per process (query.model_for caches it), with a lock:
    one forward pass at a time keeps memory flat and torch's threads for that pass."""

    def __init__(self, index: ArchiveIndex, run_dir: str | None, device: str | None) -> None:
        self.index, self.run_dir, self.device = index, run_dir, device
        self._lock = threading.Lock()

    def load(self) -> Any:
        from rsdml.retrieval.query import model_for

        return model_for(self.index.identity, self.run_dir, self.device)

    @property
    def preprocess(self) -> Preprocess:
        """How the model turns a file into its input (the run's bands, size, statistics)."""
        return self.load().preprocess

    @property
    def image_size(self) -> int:
        return int(self.index.identity.image_size)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        from rsdml.retrieval.query import embed_pixels

        loaded = self.load()
        with self._lock:
            return embed_pixels(loaded, pixels)


class Thumbnails(ThumbnailCache):
    """JPEG thumbnails of indexed images (a page shows the same ones again after every
    re-rank). ``roots``: the numbers of the index's image folders that may be read (see
    :func:`rsdml.retrieval.trusted.allowed_roots`)."""

    def __init__(self, index: ArchiveIndex, px: int, max_pixels: int, roots: set[int],
                 max_bytes: int | None = None, keep: int = 4096) -> None:
        super().__init__(px, max_pixels, max_bytes, keep)
        self.index, self.roots = index, roots

    def file_of(self, i: int) -> Path:
        """The image file of entry ``i``: its relative path below an allowed image folder.

        Containment is checked on the path as written (no ``..``, not absolute), not after
        following links: a folder of symlinks is indexed and trained on through its links, so
        its thumbnails are shown through them too."""
        e = self.index.entries[i]
        roots = self.index.roots
        r = e.get("root", 0)
        if not isinstance(r, int) or not 0 <= r < len(roots):
            raise HTTPException(404, f"image {i} has no image folder on this machine")
        if r not in self.roots:
            raise HTTPException(404, f"the image folder of image {i} is not served; start rsdml "
                                     f"serve with --images {roots[r]} to show it")
        return file_below(roots[r], str(e["path"]), f"image {i}")  # the shared policy


class RerankRequest(BaseModel):
    """Rocchio feedback: the original query (an index id or the vector /api/search returned
    for an upload) and the ids marked relevant / not relevant."""

    id: int | None = Field(None, ge=0, description="query by indexed image (left out of results)")
    vector: list[float] | None = Field(None, max_length=4096,
                                       description="query vector from POST /api/search")
    relevant: list[int] = Field(default_factory=list, max_length=1000)
    non_relevant: list[int] = Field(default_factory=list, max_length=1000)
    k: int = Field(10, ge=1)
    alpha: float = Field(ALPHA, ge=0, le=100, description="weight of the original query")
    beta: float = Field(BETA, ge=0, le=100, description="weight of the relevant mean")
    gamma: float = Field(GAMMA, ge=0, le=100, description="weight of the non-relevant mean")


_UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "PNG, JPEG or TIFF"}}}}}}}


def _hits_json(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"rank": r, "id": h.id, "score": round(h.score, 6), "path": h.path, "class": h.cls}
            for r, h in enumerate(hits, 1)]


def create_app(index: ArchiveIndex, *, limits: Limits | None = None, run_dir: str | None = None,
               device: str | None = None,
               embedder: Callable[[np.ndarray], np.ndarray] | None = None,
               preprocess: Preprocess | None = None,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
               images: Iterable[str | Path] = ()) -> FastAPI:
    """The service over one open index. ``embedder`` (pixels -> vector) defaults to the index's
    model and ``preprocess`` to that model's (tests pass their own embedder to hold a worker
    busy; with it, ``preprocess`` defaults to 8-bit RGB at the index's image size).
    ``allowed_hosts``: the Host header names answered; ``images``: image folders thumbnails
    may be read from besides those this user indexed."""
    from rsdml.retrieval.trusted import allowed_roots

    limits = limits or Limits()
    model = Embedder(index, run_dir, device) if embedder is None else None
    embed = embedder if embedder is not None else model
    assert embed is not None
    admission = Admission(limits.workers, limits.queue)
    thumbs = Thumbnails(index, limits.thumbnail_px, limits.max_pixels,
                        allowed_roots(index.roots, images), limits.max_decoded_bytes)
    classes = sorted({e.get("class") for e in index.entries if e.get("class") is not None})
    # Thumbnails are cached by URL for an hour; a rebuilt index can give an id to another
    # image, so the page adds this per-process revision to their URLs.
    revision = uuid.uuid4().hex[:12]

    app = create_base_app("rsdml serve", "index.html", allowed_hosts=allowed_hosts,
                          body_limit=limits.max_upload_bytes + _MULTIPART_SLACK, version="1",
                          description="Search an rsdml index by image upload or by indexed image.")
    app.state.index, app.state.limits, app.state.admission = index, limits, admission

    def input_preprocess() -> Preprocess:
        if preprocess is not None:
            return preprocess
        if model is not None:
            return model.preprocess
        return Preprocess(int(index.identity.image_size))

    @contextlib.asynccontextmanager
    async def admitted() -> AsyncIterator[None]:
        """A place in the bounded queue, or 503 at once."""
        if not admission.try_enter():
            raise HTTPException(503, f"busy: {limits.workers} searches running and "
                                     f"{limits.queue} waiting; retry shortly",
                                headers={"Retry-After": "1"})
        try:
            yield
        finally:
            admission.leave()

    async def compute(fn: Callable[..., Any], *args: Any) -> Any:
        async with admitted():
            return await run_in_threadpool(admission.run, fn, *args)

    def check_k(k: int) -> int:
        if k > limits.max_k:
            raise HTTPException(422, f"k={k} is above this server's limit of {limits.max_k}")
        return k

    def check_id(i: int) -> int:
        if not 0 <= i < len(index):
            raise HTTPException(404, f"no image with id {i} (ids run from 0 to {len(index) - 1})")
        return i

    def decode(data: bytes) -> np.ndarray:
        """The upload as the model's pixels, decoded by the model's own preprocessing."""
        from rsdml.data.imageio import ImageReadError

        with tempfile.TemporaryDirectory(prefix="rsdml-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                return input_preprocess().read(path, max_pixels=limits.max_pixels,
                                               max_bytes=limits.max_decoded_bytes)
            except ImageReadError as e:
                detail = e.detail.replace(str(path), "upload")
                if e.kind == "too_large":
                    raise HTTPException(413, f"image too large: {detail}") from None
                if e.kind == "unsupported" or "asks for band" in detail:
                    raise HTTPException(415, f"not an image this model can read ({detail})"
                                        ) from None
                raise HTTPException(415, f"not an image rsdml can read ({detail}); send a "
                                         "PNG, JPEG or TIFF") from None
            except RsdmlError as e:  # e.g. too few bands for the run's band selection
                raise HTTPException(415, str(e).replace(str(path), "upload")) from None

    def by_upload(data: bytes, k: int) -> dict[str, Any]:
        vec = np.asarray(embed(decode(data)), dtype=np.float32)
        hits = index.search(vec, k)
        q = vec / max(float(np.linalg.norm(vec)), 1e-12)
        return {"query": {"id": None}, "vector": [round(float(x), 7) for x in q],
                "results": _hits_json(hits)}

    def by_id(i: int, k: int) -> dict[str, Any]:
        hits = index.search(index.vectors[i], k, exclude=i)
        e = index.entries[i]
        return {"query": {"id": i, "path": e["path"], "class": e.get("class")},
                "results": _hits_json(hits)}

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness: the index is loaded."""
        return {"status": "ok", "images": len(index)}

    @app.get("/api/info", tags=["service"])
    def info() -> dict[str, Any]:
        """What is served: size, kind, classes, model and limits (the page reads this)."""
        ident = index.identity
        return {"images": len(index), "kind": index.kind, "classes": classes,
                "model": {"backbone": ident.backbone, "image_size": ident.image_size,
                          "embedding_dim": ident.embedding_dim,
                          "input": input_preprocess().describe()},
                "limits": asdict(limits),
                "rocchio": {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA},
                "revision": revision}

    @app.post("/api/search", tags=["search"], openapi_extra=_UPLOAD_BODY)
    async def search_upload(request: Request, k: int = Query(10, ge=1)) -> JSONResponse:
        """The k indexed images nearest to an uploaded image (multipart field ``file``: PNG,
        JPEG or TIFF), and its unit query vector. The request takes its place in the queue
        (or is answered 503) before its body is read."""
        check_k(k)
        async with admitted():
            try:
                form = await request.form(max_files=1, max_fields=8)
            except Exception:  # not multipart, or a malformed body
                raise HTTPException(422, "send the image as multipart/form-data field "
                                         "'file'") from None
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise HTTPException(422, "send the image as multipart/form-data field 'file'")
            data = await file.read(limits.max_upload_bytes + 1)
            if len(data) > limits.max_upload_bytes:
                raise HTTPException(413, f"upload larger than {limits.max_upload_bytes:,} bytes")
            if not data:
                raise HTTPException(400, "the uploaded file is empty")
            return JSONResponse(await run_in_threadpool(admission.run, by_upload, data, k))

    @app.get("/api/search", tags=["search"])
    async def search_id(id: int = Query(..., ge=0, description="index id of the query image"),
                        k: int = Query(10, ge=1)) -> JSONResponse:
        """The k indexed images nearest to indexed image ``id``, itself left out."""
        # JSONResponse directly: FastAPI's encoder would walk every value again (0.14 ms here,
        # half a search by id)
        return JSONResponse(await compute(by_id, check_id(id), check_k(k)))

    @app.post("/api/rerank", tags=["search"])
    async def rerank(req: RerankRequest) -> JSONResponse:
        """Rocchio: q' = alpha q + beta mean(relevant) - gamma mean(non_relevant), normalised,
        searched again (the query image itself left out)."""
        check_k(req.k)
        if (req.id is None) == (req.vector is None):
            raise HTTPException(422, "give exactly one query: id or vector")
        for i in (*req.relevant, *req.non_relevant):
            check_id(i)
        if req.id is not None:
            q = index.vectors[check_id(req.id)]
        else:
            q = np.asarray(req.vector, dtype=np.float32)
            if q.shape[0] != index.vectors.shape[1] or not np.all(np.isfinite(q)):
                raise HTTPException(422, f"vector must hold {index.vectors.shape[1]} finite "
                                         "numbers (as POST /api/search returned it)")

        def run() -> dict[str, Any]:
            new = rocchio(q, index.vectors[req.relevant], index.vectors[req.non_relevant],
                          alpha=req.alpha, beta=req.beta, gamma=req.gamma)
            hits = index.search(new, req.k, exclude=req.id)
            return {"query": {"id": req.id}, "vector": [round(float(x), 7) for x in new],
                    "results": _hits_json(hits)}

        return JSONResponse(await compute(run))

    @app.get("/api/images/{image_id}", tags=["images"],
             responses={200: {"content": {"image/jpeg": {}}}}, response_class=Response)
    async def image(image_id: int = PathParam(..., ge=0),
                    v: str | None = Query(None, max_length=64,
                                          description="cache key (/api/info's revision)")
                    ) -> Response:
        """A JPEG thumbnail of indexed image ``image_id`` (by id only; no paths accepted)."""
        data = await compute(thumbs.get, check_id(image_id))
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    return app


def serve(index_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          limits: Limits | None = None, run_dir: str | None = None, device: str | None = None,
          allow_hosts: Sequence[str] = (), images: Sequence[str] = (),
          log: Callable[[str], None] = print) -> None:
    """Open the index, load its model, bind the port (errors are one line before anything
    runs), then serve until interrupted."""
    import uvicorn

    from rsdml.retrieval.trusted import allowed_roots

    limits = limits or Limits()
    index = ArchiveIndex.open(index_dir)
    for folder in images:
        if not Path(folder).is_dir():
            raise RsdmlError(f"--images {folder} is not a folder; give the image folder the "
                             "index was built from")
    Embedder(index, run_dir, device).load()  # a missing run fails now, not on the first upload
    sock = bind(host, port)  # connections wait in the backlog from now on, before uvicorn runs
    bound_host, shown, bound_port = shown_address(sock)
    hosts = host_names(bound_host, allow_hosts)
    app = create_app(index, limits=limits, run_dir=run_dir, device=device, allowed_hosts=hosts,
                     images=images)
    hidden = [r for i, r in enumerate(index.roots) if i not in allowed_roots(index.roots, images)]
    if hidden:
        log(f"rsdml: thumbnails of {', '.join(hidden)} are not shown: this user did not index "
            "that folder on this machine; pass --images FOLDER to show them")
    warn_if_reachable(sock, log, "the service has no authentication")
    log(f"rsdml: serving {index_dir} ({len(index)} images, {index.kind}) on "
        f"http://{shown}:{bound_port}/ (Ctrl+C stops)")
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5,
                            limit_concurrency=limits.workers + limits.queue + 64,
                            timeout_graceful_shutdown=1)
    with quiet_signals():
        uvicorn.Server(config).run(sockets=[sock])
