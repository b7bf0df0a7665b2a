"""The web app's HTTP side: the page, the JSON API, and `serve` (what `captioner serve` runs)."""
from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline  # /docs with Swagger UI served from the package, not a CDN

from ..captioning import Captioner
from ..version import __version__
from .indexed import Verified
from .routes import STATIC, router
from .schema import ERRORS
from .security import WRONG_TOKEN_LIMIT, Guard, allowed_hosts, check_exposure, check_token
from .thumbnails import ThumbnailCache
from .uploads import DEFAULT_MAX_UPLOAD_BYTES, UploadLimit
from .worker import DEFAULT_MAX_QUEUE, CaptionWorker, QueueFull

if TYPE_CHECKING:
    import torch

    from ..gallery import Gallery


def create_app(captioner: Captioner, gallery: Gallery | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_batch: int = 8,
               max_queue: int = DEFAULT_MAX_QUEUE, token: str | None = None,
               allowed_hosts: frozenset[str] = frozenset(), max_wrong_tokens: int = WRONG_TOKEN_LIMIT) -> FastAPI:
    """The app around one loaded captioner (and optionally a gallery), shared by every request.

    With `token` (at least 16 characters), every /api/ route needs it (see `security`), and a client
    address that sent `max_wrong_tokens` wrong ones in a minute waits; the server answers only
    to loopback host names and `allowed_hosts` ("*": any).

    Photos are captioned by one worker thread, up to `max_batch` together; when
    `max_queue` photos already wait, a request is refused with 503 and Retry-After.
    Uploads above `max_upload_bytes` are refused with 413.
    """
    check_token(token)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with tempfile.TemporaryDirectory(prefix="captioner-uploads-") as uploads:
            app.state.uploads = Path(uploads)
            app.state.worker = CaptionWorker(captioner, max_batch, max_queue)
            try:
                yield
            finally:
                app.state.worker.close()

    app = FastAPIOffline(title="captioner", version=__version__, lifespan=lifespan, responses=ERRORS,
                         description="Caption photos, see where each word looked, find similar photos and search "
                                     "a gallery by description. The page is at `/`.")
    app.add_middleware(UploadLimit, limit=max_upload_bytes)
    app.add_exception_handler(Exception, server_error)
    app.add_exception_handler(QueueFull, busy)
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts,  # added last: it runs first
                       max_wrong_tokens=max_wrong_tokens)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.captioner, app.state.gallery, app.state.token = captioner, gallery, token
    app.state.max_upload_bytes, app.state.thumbnails = max_upload_bytes, ThumbnailCache()
    app.state.verified = Verified()  # video files hashed once, then served by range
    app.include_router(router)
    return app


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    """Any failure a route did not expect: a 500 with a sentence (never a traceback); the server goes on."""
    return JSONResponse({"detail": f"The server failed on this request ({type(exc).__name__}); it goes on serving: "
                                   "try again, and report it if it keeps happening."}, 500)


async def busy(request: Request, exc: QueueFull) -> JSONResponse:
    return JSONResponse({"detail": f"The server is busy captioning other photos; try again in {exc.retry_after} s."},
                        503, headers={"Retry-After": str(exc.retry_after)})


def serve(model: str | Path | None = None, gallery: str | Path | None = None, host: str = "127.0.0.1",
          port: int = 8000, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_queue: int = DEFAULT_MAX_QUEUE,
          token: str | None = None, public: bool = False, allowed_host: list[str] | None = None,
          device: str | torch.device = "auto") -> None:
    """Load the model (default: the shipped one) on `device` and the gallery once, then serve the app until
    interrupted.

    A `host` other than loopback, or `allowed_host` '*', needs a `token` (of at least 16 characters), or
    `public` to serve without one on purpose (see `security.check_exposure`). Behind a TLS proxy on another
    machine, name it in FORWARDED_ALLOW_IPS (uvicorn's setting) so its X-Forwarded-Proto and -For count.
    """
    import uvicorn

    check_exposure(host, token, public, allowed_host or [])
    captioner = Captioner.load(model, device=device)
    opened = None
    if gallery is not None:
        from ..gallery import Gallery

        opened = Gallery.open(gallery, captioner=captioner)
    app = create_app(captioner, opened, max_upload_bytes, max_queue=max_queue, token=token,
                     allowed_hosts=allowed_hosts(host, allowed_host or []))
    access = "the page asks for the access token once" if token else "no access token"
    print(f"captioner: serving on http://{host}:{port}/ (API docs at /docs; {access}); Ctrl+C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
