"""The web app's HTTP side: the page, the JSON API, and `serve` (what `captioner serve` runs)."""
from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import FastAPI, File, HTTPException, Path as PathParam, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline  # /docs with Swagger UI served from the package, not a CDN

from captioner import __version__
from captioner.api import Caption, Captioner

from .thumbnails import thumbnail
from .uploads import DEFAULT_MAX_UPLOAD_BYTES, UploadLimit, check_type, display_name, save_upload, too_large
from .worker import CaptionWorker

if TYPE_CHECKING:
    from captioner.gallery import Gallery, Match

STATIC = Path(__file__).parent / "static"
SIMILAR_K = 8
NO_GALLERY = "This server has no gallery; start it with `captioner serve --gallery DB` to find similar photos."

PhotoId = Annotated[int, PathParam(description="a gallery photo's id")]
K = Annotated[int, Query(ge=1, le=50, description="how many photos to return")]


def create_app(captioner: Captioner, gallery: Gallery | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_batch: int = 8) -> FastAPI:
    """The app around one loaded captioner (and optionally a gallery), shared by every request.

    Photos are captioned by one worker thread, up to `max_batch` together; uploads
    above `max_upload_bytes` are refused with 413.
    """
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with tempfile.TemporaryDirectory(prefix="captioner-uploads-") as uploads:
            app.state.uploads = Path(uploads)
            app.state.worker = CaptionWorker(captioner, max_batch)
            try:
                yield
            finally:
                app.state.worker.close()

    app = FastAPIOffline(title="captioner", version=__version__, lifespan=lifespan,
                         description="Caption photos, see where each word looked, find similar photos and search "
                                     "a gallery by description. The page is at `/`.")
    app.add_middleware(UploadLimit, limit=max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def caption_file(request: Request, path: Path, name: str) -> Caption:
        """Caption one photo file on the worker; 422 with the captioner's reason when it cannot be read."""
        c = await asyncio.wrap_future(request.app.state.worker.submit(path))
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

    @app.get("/api/health", summary="Whether the server is up, and what it offers")
    async def health() -> dict:
        return {"status": "ok", "version": __version__, "encoder": captioner.model.encoder,
                "gallery_photos": None if gallery is None else len(gallery),
                "max_upload_bytes": max_upload_bytes}

    @app.post("/api/caption", summary="Caption an uploaded photo",
              responses={413: {"description": "the photo is larger than the upload limit"},
                         415: {"description": "the file's type is not a photo"},
                         422: {"description": "the file cannot be read as a photo (damaged, a bomb, ...)"}})
    async def caption(request: Request, file: Annotated[UploadFile, File(description="the photo")]) -> dict:
        """The caption, the beam's alternatives, each word's attention map and (with a gallery) similar photos."""
        name = display_name(file.filename)
        check_type(file.content_type, name)
        data = await file.read()
        if len(data) > max_upload_bytes:
            raise too_large(max_upload_bytes, len(data))
        path = save_upload(data, request.app.state.uploads)
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
    async def similar(id: Annotated[int, Query(description="a gallery photo's id")], k: K = SIMILAR_K,
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
        return {"query": q, "results": [match_json(m) for m in found]}

    @app.get("/api/photo/{photo_id}", summary="A gallery photo's file", response_class=FileResponse)
    async def photo(photo_id: PhotoId) -> FileResponse:
        match = await gallery_photo(photo_id)
        if not match.path.is_file():
            raise HTTPException(404, f"Photo {photo_id}'s file {match.path.name} is gone from the disk.")
        return FileResponse(match.path, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/photo/{photo_id}/thumbnail", summary="A gallery photo, at most 320 pixels wide and high (WebP)",
             response_class=Response)
    async def photo_thumbnail(photo_id: PhotoId) -> Response:
        match = await gallery_photo(photo_id)
        try:
            data = await run_in_threadpool(thumbnail, match.path)
        except (OSError, ValueError) as exc:
            raise HTTPException(404, f"Photo {photo_id}'s file {match.path.name} cannot be read.") from exc
        return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})

    return app


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
          port: int = 8000, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    """Load the model (default: the shipped one) and the gallery once, then serve the app until interrupted."""
    import uvicorn

    captioner = Captioner.load(model)
    opened = None
    if gallery is not None:
        from captioner.gallery import Gallery

        opened = Gallery.open(gallery, captioner=captioner)
    app = create_app(captioner, opened, max_upload_bytes)
    print(f"captioner: serving on http://{host}:{port}/ (API docs at /docs); Ctrl+C stops", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
