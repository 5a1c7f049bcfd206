"""The web skeleton that ``rsdml serve`` and ``rsdml label`` share: one home for their safety
policy, so that a fix made for one page holds for the other.

- :class:`HostCheck`: a request whose Host header is not an allowed name is answered 400 (a
  page on another origin can rebind its name to 127.0.0.1 and then read or write a loopback
  service as its own origin).
- :class:`BodyLimit`: request bodies above a limit are answered 413 while they stream in.
- :func:`file_below`: the trusted-file policy of thumbnails: a path relative to an image folder
  as written (no ``..``, not absolute), not resolved, so a folder of symlinks is shown through
  its links exactly as it is indexed and trained on.
- :func:`create_base_app`: the FastAPI app with both middlewares, one-line user errors (400),
  the static files and the page (its Content-Security-Policy: nothing loaded from elsewhere).
- :func:`bind`: the listening socket, bound before any slow work so a busy port fails at once.
"""

from __future__ import annotations

import io
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rsdml.errors import RsdmlError

STATIC = Path(__file__).with_name("static")
#: The page may load nothing from elsewhere (it must work offline, and a CDN sees every user).
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'")
#: Host header names a loopback-bound server answers (anything else may be DNS rebinding).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def file_below(root: str | Path, rel: str, what: str) -> Path:
    """The file ``rel`` below the image folder ``root``, or 404. Containment is checked on
    the path as written (relative, no ``..``), not after following links: a folder of
    symlinks is indexed and trained on through its links, so its thumbnails are shown through
    them too. ``what`` names the image in the error ("image 3")."""
    p = PurePosixPath(str(rel))
    if p.is_absolute() or not p.parts or ".." in p.parts:
        raise HTTPException(404, f"{what} has no path inside its image folder")
    path = Path(root) / p
    if not path.is_file():
        raise HTTPException(404, f"the file of {what} is not on this machine")
    return path


def create_base_app(title: str, page: str, *, allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
                    body_limit: int = 1024 * 1024, **fastapi: object) -> FastAPI:
    """A FastAPI app with the Host check (outermost), the body limit, RsdmlError answered 400
    with its one line, ``/static`` and ``/`` serving ``page`` (a file of ``static/``)."""
    # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN (offline they are
    # blank, online the CDN sees every visit); /openapi.json is the same content.
    app = FastAPI(title=title, docs_url=None, redoc_url=None, **fastapi)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(HostCheck, allowed=allowed_hosts)  # outermost: checked first

    @app.exception_handler(RsdmlError)
    async def _user_error(request: Request, e: RsdmlError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.get("/", include_in_schema=False)
    def _page() -> FileResponse:
        return FileResponse(STATIC / page, headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket on ``host:port`` (connections wait in its backlog until the server
    runs), or a one-line error naming the fix."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as e:
        raise RsdmlError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another "
                         "--port or --host") from None
    return sock


def shown_address(sock: socket.socket) -> tuple[str, str, int]:
    """(bound host, host as written in a URL, port) of a bound socket."""
    bound_host, bound_port = sock.getsockname()[:2]
    return bound_host, f"[{bound_host}]" if ":" in bound_host else bound_host, bound_port


def warn_if_reachable(sock: socket.socket, log: Callable[[str], None], what: str) -> None:
    """One line when the socket is reachable from other machines (no authentication)."""
    bound = sock.getsockname()[0]
    if not bound.startswith(("127.", "::1")):
        log(f"rsdml: warning: listening on {bound}, reachable from other machines; {what}")


class BodyLimit:
    """ASGI middleware: a request body above ``limit`` bytes is answered 413 -- by its
    Content-Length before anything is read, or while it streams in (chunked uploads)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and message["type"].startswith("http.response"):
                if not started:
                    started = True
                    await _too_large(self.limit)(scope, receive, send)
                return  # whatever the app answered to the cut-off body is replaced
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, guarded)
        if over and not started:
            await _too_large(self.limit)(scope, receive, send)


def host_of(header: str) -> str:
    """The host name of a Host header, without the port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """ASGI middleware: a request whose Host header is not an allowed name is answered 400.
    A web page can make a browser resolve its own name to 127.0.0.1 (DNS rebinding) and then
    read a loopback service as its own origin; the Host header still carries that page's name.
    ``"*"`` allows every name."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = {h.strip("[]").lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        host = host_of(dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1"))
        if host not in self.allowed:
            await JSONResponse({"detail": f"Host {host!r} is not served here; open the page by "
                                          "an allowed name (rsdml serve --allow-host)"},
                               status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body larger than {limit:,} bytes; send a smaller "
                                   "image"}, status_code=413)


@contextmanager
def quiet_signals() -> Iterator[None]:
    """uvicorn re-raises the signal that stopped it after restoring the handlers it found;
    a no-op there makes Ctrl+C / SIGTERM a clean exit instead of rsdml's training message."""
    from rsdml.signals import stop_signals_to

    with stop_signals_to(lambda *_: None):
        yield


def host_names(bound: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host header names a server bound to address ``bound`` answers: the loopback names
    for a loopback address, the address and this machine's names for another one, any name
    for a wildcard address unless ``extra`` (``--allow-host``) lists the names."""
    import ipaddress
    import socket

    try:
        ip = ipaddress.ip_address(bound.strip("[]"))
    except ValueError:
        return [bound, *extra]
    if ip.is_loopback:
        return [*LOOPBACK_HOSTS, *extra]
    if ip.is_unspecified:
        return list(extra) or ["*"]
    return [str(ip), socket.gethostname(), socket.getfqdn(), *extra]


class ThumbnailCache:
    """JPEG thumbnails of a page's images in a bounded LRU (a page shows the same ones again);
    one for ``rsdml serve`` and ``rsdml label``, which say which file an id is (``file_of``,
    under the shared file policy) and how large a thumbnail and a readable image may be."""

    def __init__(self, px: int, max_pixels: int, max_bytes: int | None = None,
                 keep: int = 4096) -> None:
        self.px, self.max_pixels, self.max_bytes, self.keep = px, max_pixels, max_bytes, keep
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def file_of(self, i: int) -> Path:
        raise NotImplementedError

    def get(self, i: int) -> bytes:
        with self._lock:
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
        data = self._render(self.file_of(i))
        with self._lock:
            self._cache[i] = data
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return data

    def _render(self, path: Path) -> bytes:
        from PIL import Image

        from rsdml.data.imageio import ImageReadError, read_rgb

        try:
            rgb = read_rgb(path, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        except ImageReadError as e:
            raise HTTPException(404, f"this image cannot be shown ({e.detail})") from None
        im = Image.fromarray(rgb)
        im.thumbnail((self.px, self.px), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue()
