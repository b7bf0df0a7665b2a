"""The web app's HTTP side: the page, the JSON API, and `serve` (what `captioner serve` runs)."""
from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field  # /docs with Swagger UI served from the package, not a CDN

from ..captioning import Caption, Captioner
from ..data.images import PhotoError
from ..errors import CaptionerError
from ..version import __version__
from .security import (
    COOKIE,
    NEEDS_TOKEN,
    WRONG_TOKEN,
    Guard,
    allowed_hosts,
    bearer,
    has_token,
    is_loopback,
    session_value,
)
from .thumbnails import ThumbnailCache
from .uploads import DEFAULT_MAX_UPLOAD_BYTES, UploadLimit, check_type, display_name, save_upload
from .worker import DEFAULT_MAX_QUEUE, CaptionWorker, QueueFull

if TYPE_CHECKING:
    import torch

    from ..gallery import Gallery, Match

STATIC = Path(__file__).parent / "static"
SIMILAR_K = 8
NO_GALLERY = "This server has no gallery; start it with `captioner serve --gallery DB` to find similar photos."

class Problem(BaseModel):
    """Why a request was refused: one sentence, or (for malformed fields) FastAPI's list of field errors."""

    detail: str | list[dict[str, Any]] = Field(description="the reason, in one sentence")


def problem(description: str) -> dict:
    return {"model": Problem, "description": description}


ERRORS = {400: problem("a malformed request body (not multipart form data)"),
          401: problem("the access token is missing or wrong (a server started with --token)"),
          403: problem("a request from another web site"),
          404: problem("no such photo, or the server has no gallery"),
          421: problem("a host name this server does not answer to"),
          422: problem("a malformed request, or a photo that cannot be read (damaged, a bomb, ...)")}
"""What any route may answer besides its own success, documented in the OpenAPI schema."""

PhotoId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a gallery photo's id")]
K = Annotated[int, Query(ge=1, le=50, description="how many photos to return")]


def create_app(captioner: Captioner, gallery: Gallery | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_batch: int = 8,
               max_queue: int = DEFAULT_MAX_QUEUE, token: str | None = None,
               allowed_hosts: frozenset[str] = frozenset()) -> FastAPI:
    """The app around one loaded captioner (and optionally a gallery), shared by every request.

    With `token`, every /api/ route needs it (see `security`); the server answers only
    to loopback host names and `allowed_hosts` ("*": any).

    Photos are captioned by one worker thread, up to `max_batch` together; when
    `max_queue` photos already wait, a request is refused with 503 and Retry-After.
    Uploads above `max_upload_bytes` are refused with 413.
    """
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
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)  # added last: it runs first
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def caption_file(request: Request, path: Path, name: str) -> Caption:
        """Caption one photo file on the worker; 422 with the captioner's reason when it cannot be read."""
        try:
            c = await asyncio.wrap_future(request.app.state.worker.submit(path))
        except QueueFull:
            raise
        except Exception as exc:
            raise HTTPException(500, f"Captioning {name} failed on the server ({type(exc).__name__}); the server "
                                     "goes on: try again, and report it if it keeps happening.") from exc
        if c.error:
            raise HTTPException(422, c.error.replace(str(path), name, 1))
        c.warning = c.warning.replace(str(path), name, 1)
        return c

    def need_gallery() -> Gallery:
        if gallery is None:
            raise HTTPException(404, NO_GALLERY)
        return gallery

    async def gallery_photo(photo_id: int) -> Match:
        match = await run_in_threadpool(need_gallery().photo, photo_id)
        if match is None:
            raise HTTPException(404, f"The gallery has no photo {photo_id}.")
        return match

    async def similar_to(photo: Caption | int, k: int = SIMILAR_K, by: str = "both") -> list[dict]:
        """Gallery photos like `photo` (the gallery leaves the photo itself out)."""
        return [match_json(m) for m in await run_in_threadpool(gallery.similar, photo, k=k, by=by)]

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.post("/api/session", status_code=204, response_class=Response,
              summary="Exchange the access token (Authorization: Bearer) for the page's session cookie",
              responses={401: problem("the token is missing or wrong")})
    async def session(request: Request) -> Response:
        """Sets an HttpOnly SameSite=Strict cookie that stands for the token; without a server token, nothing."""
        response = Response(status_code=204)
        if token is None:
            return response
        if not has_token(request.headers, token) or bearer(request.headers) is None:
            raise HTTPException(401, WRONG_TOKEN if bearer(request.headers) is not None else NEEDS_TOKEN)
        response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    @app.get("/api/health", summary="Whether the server is up, its captioning worker and queue, and what it offers",
             responses={503: problem("the captioning worker has stopped")})
    async def health(request: Request, response: Response) -> dict:
        worker = request.app.state.worker.health()
        if not worker["alive"]:
            response.status_code = 503
        return {"status": "ok" if worker["alive"] else "worker stopped", "version": __version__,
                "encoder": captioner.model.encoder, "worker": worker,
                "gallery_photos": None if gallery is None else await run_in_threadpool(len, gallery),
                "max_upload_bytes": max_upload_bytes}

    @app.post("/api/caption", summary="Caption an uploaded photo",
              responses={413: problem("the photo is larger than the upload limit"),
                         415: problem("the file's type is not a photo"),
                         503: problem("too many photos are waiting: retry after the Retry-After seconds")})
    async def caption(request: Request, file: Annotated[UploadFile, File(description="the photo")]) -> dict:
        """The caption, the beam's alternatives, each word's attention map and (with a gallery) similar photos."""
        name = display_name(file.filename)
        check_type(file.content_type, name)
        worker = request.app.state.worker
        if not worker.has_room():  # before copying the upload: a full queue costs the server nothing more
            raise QueueFull(worker.retry_after())
        path = await run_in_threadpool(save_upload, file.file, request.app.state.uploads, max_upload_bytes)
        try:
            c = await caption_file(request, path, name)
            body = caption_json(c, name, None)
            if gallery is not None:  # while the file is there: the gallery leaves out its own copy of it
                body["similar"] = await similar_to(c)
        finally:
            path.unlink(missing_ok=True)
        return body

    @app.get("/api/photo/{photo_id}/caption", summary="Caption a gallery photo (to explore from it)")
    async def caption_gallery_photo(request: Request, photo_id: PhotoId) -> dict:
        """The same answer as `POST /api/caption`, for a photo already in the gallery."""
        match = await gallery_photo(photo_id)
        c = await caption_file(request, match.path, match.path.name)
        return caption_json(c, match.path.name, match.id) | {"similar": await similar_to(match.id)}

    @app.get("/api/similar", summary="Gallery photos that look like, or are described like, a gallery photo")
    async def similar(id: Annotated[int, Query(ge=1, le=2**63 - 1, description="a gallery photo's id")], k: K = SIMILAR_K,
                      by: Literal["both", "visual", "caption"] = "both") -> dict:
        match = await gallery_photo(id)
        return {"photo": match_json(match), "by": by, "results": await similar_to(id, k, by)}

    @app.get("/api/search", summary="Gallery photos matching a description")
    async def search(q: Annotated[str, Query(max_length=500, description="what the photos show")],
                     k: K = SIMILAR_K) -> dict:
        g = need_gallery()
        if not q.strip():
            raise HTTPException(422, "Type a few words that describe the photos you are looking for.")
        found = await run_in_threadpool(g.search, q, k=k)
        return {"query": q, "weak": bool(found) and all(m.weak for m in found),
                "results": [match_json(m) | {"weak": m.weak, "matched_by": m.matched_by} for m in found]}

    @app.get("/api/photo/{photo_id}", summary="A gallery photo's file", response_class=FileResponse)
    async def photo(photo_id: PhotoId) -> FileResponse:
        match = await gallery_photo(photo_id)
        if not match.path.is_file():
            raise HTTPException(404, f"Photo {photo_id}'s file {match.path.name} is gone from the disk.")
        return FileResponse(match.path, headers={"Cache-Control": "private, max-age=3600"})

    thumbnails = app.state.thumbnails = ThumbnailCache()

    @app.get("/api/photo/{photo_id}/thumbnail", summary="A gallery photo, at most 320 pixels wide and high (WebP)",
             response_class=Response)
    async def photo_thumbnail(photo_id: PhotoId) -> Response:
        match = await gallery_photo(photo_id)
        if not match.path.is_file():
            raise HTTPException(404, f"Photo {photo_id}'s file {match.path.name} is gone from the disk.")
        try:
            data = await run_in_threadpool(thumbnails.get, match.path)
        except PhotoError as exc:
            raise HTTPException(422, str(exc).replace(str(match.path), match.path.name, 1)) from None
        return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})

    return app


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    """Any failure a route did not expect: a 500 with a sentence (never a traceback); the server goes on."""
    return JSONResponse({"detail": f"The server failed on this request ({type(exc).__name__}); it goes on serving: "
                                   "try again, and report it if it keeps happening."}, 500)


async def busy(request: Request, exc: QueueFull) -> JSONResponse:
    return JSONResponse({"detail": f"The server is busy captioning other photos; try again in {exc.retry_after} s."},
                        503, headers={"Retry-After": str(exc.retry_after)})


def caption_json(c: Caption, name: str, photo_id: int | None) -> dict:
    """A caption as the API returns it (`id`: the gallery photo's, None for an upload).

    Attention maps are flattened row by row, one per word and one for the end of the sentence. `caption`
    is the model's sentence; `said` is how the page shows and reads it, with doubt in words when its
    `confidence` (None: the model is not calibrated) is low; `tags` are what the encoder recognises.
    """
    attention = None
    if c.attention is not None:
        side = c.attention.shape[-1]
        attention = {"grid": side, "maps": c.attention.reshape(len(c.attention), side * side).round(4).tolist()}
    return {"id": photo_id, "name": name, "caption": c.text, "score": round(c.score, 4), "words": c.words,
            "alternatives": [{"caption": text, "score": round(score, 4)} for text, score in c.alternatives],
            "attention": attention, "tags": [t.to_json() for t in c.tags], "confidence":
            None if c.confidence is None else round(c.confidence, 3), "said": c.said, "warning": c.warning}


def match_json(m: Match) -> dict:
    """A gallery photo as the API returns it: never its path on the server, only its id and file name."""
    return {"id": m.id, "name": m.path.name, "caption": m.caption, "score": round(float(m.score), 4),
            "url": f"/api/photo/{m.id}", "thumbnail": f"/api/photo/{m.id}/thumbnail"}


def serve(model: str | Path | None = None, gallery: str | Path | None = None, host: str = "127.0.0.1",
          port: int = 8000, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_queue: int = DEFAULT_MAX_QUEUE,
          token: str | None = None, public: bool = False, allowed_host: list[str] | None = None,
          device: str | torch.device = "auto") -> None:
    """Load the model (default: the shipped one) on `device` and the gallery once, then serve the app until
    interrupted.

    A `host` other than loopback needs a `token`, or `public` to serve every photo to the network on purpose.
    """
    import uvicorn

    if not is_loopback(host) and token is None and not public:
        raise CaptionerError(f"serving on {host} would show every gallery photo and caption to anyone on the "
                             "network: set an access token (CAPTIONER_TOKEN=... or --token), or add --public "
                             "to serve without one on purpose")
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
