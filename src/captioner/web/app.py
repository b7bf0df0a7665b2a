"""The web app's HTTP side: the page, the JSON API, and `serve` (what `captioner serve` runs)."""
from __future__ import annotations

import asyncio
import mimetypes
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field  # /docs with Swagger UI served from the package, not a CDN

from ..captioning import Caption, Captioner
from ..data.images import PhotoError
from ..version import __version__
from .indexed import checked_chunks, open_indexed, private_copy
from .security import (
    CHALLENGE,
    COOKIE,
    NEEDS_TOKEN,
    SESSION_SECONDS,
    WRONG_TOKEN,
    WRONG_TOKEN_LIMIT,
    Guard,
    allowed_hosts,
    bearer,
    check_exposure,
    check_token,
    credentials,
    presented,
    session_value,
)
from .thumbnails import ThumbnailCache
from .uploads import DEFAULT_MAX_UPLOAD_BYTES, UPLOAD_BODY, UploadLimit, receive_upload
from .worker import DEFAULT_MAX_QUEUE, CaptionWorker, QueueFull

if TYPE_CHECKING:
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
          422: problem("a malformed request, or a photo that cannot be read (damaged, a bomb, ...)"),
          429: problem("too many wrong access tokens from this address: retry after the Retry-After seconds")}
"""What any route may answer besides its own success, documented in the OpenAPI schema."""
CHANGED = {410: problem("the photo's file is no longer the one the gallery indexed (changed or replaced)")}

NOT_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""The schema's pattern for a search: a character that Python's str.strip() keeps, spelled out, since JSON Schema
reads `\\S` by ECMAScript's rules, whose white space is not Python's (U+0085 and U+001C-1F are not, U+FEFF is)."""

PhotoId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a gallery photo's id")]
K = Annotated[int, Query(ge=1, le=50, description="how many photos to return")]


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
        """Sets an HttpOnly SameSite=Strict cookie that stands for the token for 12 hours, `Secure` when the
        request came over https (see `security`); without a server token, nothing."""
        response = Response(status_code=204)
        if token is None:
            return response
        now = int(time.time())
        if bearer(request.headers) is None or credentials(presented(request.headers), token, now) != "token":
            raise HTTPException(401, WRONG_TOKEN if bearer(request.headers) is not None else NEEDS_TOKEN, CHALLENGE)
        response.set_cookie(COOKIE, session_value(token, now), max_age=SESSION_SECONDS, httponly=True,
                            samesite="strict", path="/", secure=request.url.scheme == "https")
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

    @app.post("/api/caption", summary="Caption an uploaded photo", openapi_extra={"requestBody": UPLOAD_BODY},
              responses={413: problem("the photo is larger than the upload limit"),
                         415: problem("the file's type is not a photo"),
                         503: problem("too many photos are waiting: retry after the Retry-After seconds")})
    async def caption(request: Request) -> dict:
        """The caption, the beam's alternatives, each word's attention map and (with a gallery) similar photos."""
        worker = request.app.state.worker
        if not worker.has_room():  # before reading the upload: a full queue costs the server nothing more
            raise QueueFull(worker.retry_after())
        upload = await receive_upload(request, request.app.state.uploads, max_upload_bytes)
        try:
            c = await caption_file(request, upload.path, upload.name)
            body = caption_json(c, upload.name, None)
            if gallery is not None:  # while the file is there: the gallery leaves out its own copy of it
                body["similar"] = await similar_to(c)
        finally:
            upload.path.unlink(missing_ok=True)
        return body

    @app.get("/api/photo/{photo_id}/caption", summary="Caption a gallery photo (to explore from it)",
             responses=CHANGED)
    async def caption_gallery_photo(request: Request, photo_id: PhotoId) -> dict:
        """The same answer as `POST /api/caption`, for a photo already in the gallery."""
        match = await gallery_photo(photo_id)
        path = await run_in_threadpool(private_copy, match, request.app.state.uploads)
        try:
            c = await caption_file(request, path, match.path.name)
        finally:
            path.unlink(missing_ok=True)
        return caption_json(c, match.path.name, match.id) | {"similar": await similar_to(match.id)}

    @app.get("/api/similar", summary="Gallery photos that look like, or are described like, a gallery photo")
    async def similar(id: Annotated[int, Query(ge=1, le=2**63 - 1, description="a gallery photo's id")], k: K = SIMILAR_K,
                      by: Literal["both", "visual", "caption"] = "both") -> dict:
        match = await gallery_photo(id)
        return {"photo": match_json(match), "by": by, "results": await similar_to(id, k, by)}

    @app.get("/api/search", summary="Gallery photos matching a description")
    async def search(q: Annotated[str, Query(max_length=500, description="what the photos show (not blank)",
                                             json_schema_extra={"pattern": NOT_BLANK})],  # refused below
                     k: K = SIMILAR_K) -> dict:
        g = need_gallery()
        if not q.strip():
            raise HTTPException(422, "Type a few words that describe the photos you are looking for.")
        found = await run_in_threadpool(g.search, q, k=k)
        return {"query": q, "weak": bool(found) and all(m.weak for m in found),
                "results": [match_json(m) | {"weak": m.weak, "matched_by": m.matched_by} for m in found]}

    @app.get("/api/photo/{photo_id}", summary="A gallery photo's file, as the gallery indexed it",
             response_class=FileResponse, responses=CHANGED)
    async def photo(photo_id: PhotoId) -> StreamingResponse:
        match = await gallery_photo(photo_id)
        chunks = await run_in_threadpool(checked_chunks, match)
        media = mimetypes.guess_type(match.path.name)[0] or "application/octet-stream"
        return StreamingResponse(chunks, media_type=media, headers={"Content-Length": str(match.indexed.size),
                                                                    "Cache-Control": "private, max-age=3600"})

    thumbnails = app.state.thumbnails = ThumbnailCache()

    def thumbnail_of(match: Match, uploads: Path) -> bytes:
        """The photo's thumbnail, cached by its indexed hash, once its file is checked to be the one indexed."""
        open_indexed(match).close()
        return thumbnails.get(match.indexed.sha256, lambda: private_copy(match, uploads))

    @app.get("/api/photo/{photo_id}/thumbnail", summary="A gallery photo, at most 320 pixels wide and high (WebP)",
             response_class=Response, responses=CHANGED)
    async def photo_thumbnail(request: Request, photo_id: PhotoId) -> Response:
        match = await gallery_photo(photo_id)
        try:
            data = await run_in_threadpool(thumbnail_of, match, request.app.state.uploads)
        except PhotoError as exc:  # about the private copy: name the photo instead
            raise HTTPException(422, str(exc).replace(str(exc.path), match.path.name, 1)) from None
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
          token: str | None = None, public: bool = False, allowed_host: list[str] | None = None) -> None:
    """Load the model (default: the shipped one) and the gallery once, then serve the app until interrupted.

    A `host` other than loopback, or `allowed_host` '*', needs a `token` (of at least 16 characters), or
    `public` to serve without one on purpose (see `security.check_exposure`). Behind a TLS proxy on another
    machine, name it in FORWARDED_ALLOW_IPS (uvicorn's setting) so its X-Forwarded-Proto and -For count.
    """
    import uvicorn

    check_exposure(host, token, public, allowed_host or [])
    captioner = Captioner.load(model)
    opened = None
    if gallery is not None:
        from ..gallery import Gallery

        opened = Gallery.open(gallery, captioner=captioner)
    app = create_app(captioner, opened, max_upload_bytes, max_queue=max_queue, token=token,
                     allowed_hosts=allowed_hosts(host, allowed_host or []))
    access = "the page asks for the access token once" if token else "no access token"
    print(f"captioner: serving on http://{host}:{port}/ (API docs at /docs; {access}); Ctrl+C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
