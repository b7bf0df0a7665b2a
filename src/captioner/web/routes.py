"""The web app's routes: the page, the session, health, captioning an upload, and the gallery's photos, video
scenes (their videos served in ranges, to play a scene from its start), similar photos and search. What a route
needs comes from the app's state (see `app.create_app`)."""
from __future__ import annotations

import asyncio
import mimetypes
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse

from ..captioning import Caption
from ..data.images import PhotoError
from ..version import __version__
from .indexed import byte_range, checked_chunks, open_indexed, private_copy, span
from .schema import (
    CHANGED,
    NO_GALLERY,
    NOT_BLANK,
    SIMILAR_K,
    VIDEO,
    K,
    PhotoId,
    SceneId,
    SearchAnswer,
    SimilarAnswer,
    caption_json,
    match_json,
    problem,
)
from .security import (
    CHALLENGE,
    COOKIE,
    NEEDS_TOKEN,
    SESSION_SECONDS,
    WRONG_TOKEN,
    bearer,
    credentials,
    presented,
    session_value,
)
from .uploads import UPLOAD_BODY, receive_upload
from .worker import QueueFull

if TYPE_CHECKING:
    from ..gallery import Gallery, Match

STATIC = Path(__file__).parent / "static"

router = APIRouter()


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


def need_gallery(request: Request) -> Gallery:
    if request.app.state.gallery is None:
        raise HTTPException(404, NO_GALLERY)
    return request.app.state.gallery


async def gallery_item(request: Request, photo_id: int) -> Match:
    """The gallery's photo or video scene with this id; 404 if none."""
    match = await run_in_threadpool(need_gallery(request).photo, photo_id)
    if match is None:
        raise HTTPException(404, f"The gallery has no photo {photo_id}.")
    return match


async def gallery_photo(request: Request, photo_id: int) -> Match:
    """The gallery's photo with this id; 404 if none, or if it is a video scene (whose file is not a photo)."""
    match = await gallery_item(request, photo_id)
    if match.scene:
        raise HTTPException(404, f"Gallery item {photo_id} is a scene of the video {match.path.name}, not a photo: "
                                 f"play it from /api/video/{photo_id}.")
    return match


async def similar_to(request: Request, photo: Caption | int, k: int = SIMILAR_K, by: str = "both") -> list[dict]:
    """Gallery photos like `photo` (the gallery leaves the photo itself out)."""
    return [match_json(m) for m in await run_in_threadpool(request.app.state.gallery.similar, photo, k=k, by=by)]


def thumbnail_of(request: Request, match: Match) -> bytes:
    """The photo's thumbnail, cached by its indexed hash (a scene's: its keyframe, kept in the gallery), once its
    file is checked to be the one indexed."""
    open_indexed(match).close()
    if match.scene:
        return request.app.state.gallery.keyframe(match.id)
    return request.app.state.thumbnails.get(match.indexed.sha256,
                                            lambda: private_copy(match, request.app.state.uploads))


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.post("/api/session", status_code=204, response_class=Response,
             summary="Exchange the access token (Authorization: Bearer) for the page's session cookie",
             responses={401: problem("the token is missing or wrong")})
async def session(request: Request) -> Response:
    """Sets an HttpOnly SameSite=Strict cookie that stands for the token for 12 hours, `Secure` when the
    request came over https (see `security`); without a server token, nothing."""
    response, token = Response(status_code=204), request.app.state.token
    if token is None:
        return response
    now = int(time.time())
    if bearer(request.headers) is None or credentials(presented(request.headers), token, now) != "token":
        raise HTTPException(401, WRONG_TOKEN if bearer(request.headers) is not None else NEEDS_TOKEN, CHALLENGE)
    response.set_cookie(COOKIE, session_value(token, now), max_age=SESSION_SECONDS, httponly=True,
                        samesite="strict", path="/", secure=request.url.scheme == "https")
    return response


@router.get("/api/health", summary="Whether the server is up, its captioning worker and queue, and what it offers",
            responses={503: problem("the captioning worker has stopped")})
async def health(request: Request, response: Response) -> dict:
    state = request.app.state
    worker = state.worker.health()
    if not worker["alive"]:
        response.status_code = 503
    return {"status": "ok" if worker["alive"] else "worker stopped", "version": __version__,
            "encoder": state.captioner.model.encoder, "worker": worker,
            "gallery_photos": None if state.gallery is None else await run_in_threadpool(len, state.gallery),
            "max_upload_bytes": state.max_upload_bytes}


@router.post("/api/caption", summary="Caption an uploaded photo", openapi_extra={"requestBody": UPLOAD_BODY},
             responses={413: problem("the photo is larger than the upload limit"),
                        415: problem("the file's type is not a photo"),
                        503: problem("too many photos are waiting: retry after the Retry-After seconds")})
async def caption(request: Request) -> dict:
    """The caption, the beam's alternatives, each word's attention map and (with a gallery) similar photos."""
    worker = request.app.state.worker
    if not worker.has_room():  # before reading the upload: a full queue costs the server nothing more
        raise QueueFull(worker.retry_after())
    upload = await receive_upload(request, request.app.state.uploads, request.app.state.max_upload_bytes)
    try:
        c = await caption_file(request, upload.path, upload.name)
        body = caption_json(c, upload.name, None)
        if request.app.state.gallery is not None:  # while the file is there: the gallery leaves out its own copy
            body["similar"] = await similar_to(request, c)
    finally:
        upload.path.unlink(missing_ok=True)
    return body


@router.get("/api/photo/{photo_id}/caption", summary="Caption a gallery photo (to explore from it)",
            responses=CHANGED)
async def caption_gallery_photo(request: Request, photo_id: PhotoId) -> dict:
    """The same answer as `POST /api/caption`, for a photo already in the gallery."""
    match = await gallery_photo(request, photo_id)
    path = await run_in_threadpool(private_copy, match, request.app.state.uploads)
    try:
        c = await caption_file(request, path, match.path.name)
    finally:
        path.unlink(missing_ok=True)
    return caption_json(c, match.path.name, match.id) | {"similar": await similar_to(request, match.id)}


@router.get("/api/similar", summary="Gallery photos and scenes that look like, or are described like, a gallery "
            "photo or video scene", responses={200: {"model": SimilarAnswer, "description": "the photo asked about "
                                                     "and the most similar ones"}})
async def similar(request: Request,
                  id: Annotated[int, Query(ge=1, le=2**63 - 1, description="a gallery photo's or scene's id")],
                  k: K = SIMILAR_K, by: Literal["both", "visual", "caption"] = "both") -> dict:
    match = await gallery_item(request, id)
    return {"photo": match_json(match), "by": by, "results": await similar_to(request, id, k, by)}


@router.get("/api/search", summary="Gallery photos and video scenes matching a description",
            responses={200: {"model": SearchAnswer, "description": "the best matches, best first"}})
async def search(request: Request, q: Annotated[str, Query(max_length=500, description="what the photos show (not "
                                                           "blank)", json_schema_extra={"pattern": NOT_BLANK})],
                 k: K = SIMILAR_K) -> dict:  # a blank q is refused below
    g = need_gallery(request)
    if not q.strip():
        raise HTTPException(422, "Type a few words that describe the photos you are looking for.")
    found = await run_in_threadpool(g.search, q, k=k)
    return {"query": q, "weak": bool(found) and all(m.weak for m in found),
            "results": [match_json(m) | {"weak": m.weak, "matched_by": m.matched_by} for m in found]}


@router.get("/api/photo/{photo_id}", summary="A gallery photo's file, as the gallery indexed it",
            response_class=FileResponse, responses=CHANGED)
async def photo(request: Request, photo_id: PhotoId) -> StreamingResponse:
    match = await gallery_photo(request, photo_id)
    chunks = await run_in_threadpool(checked_chunks, match)
    media = mimetypes.guess_type(match.path.name)[0] or "application/octet-stream"
    return StreamingResponse(chunks, media_type=media, headers={"Content-Length": str(match.indexed.size),
                                                                "Cache-Control": "private, max-age=3600"})


@router.get("/api/photo/{photo_id}/thumbnail", summary="A gallery photo, or a video scene's keyframe, at most 320 "
            "pixels wide and high (WebP)", response_class=Response, responses=CHANGED)
async def photo_thumbnail(request: Request, photo_id: PhotoId) -> Response:
    match = await gallery_item(request, photo_id)
    try:
        data = await run_in_threadpool(thumbnail_of, request, match)
    except PhotoError as exc:  # about the private copy: name the photo instead
        raise HTTPException(422, str(exc).replace(str(exc.path), match.path.name, 1)) from None
    return Response(data, media_type="image/webp", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/api/video/{scene_id}", summary="A gallery video scene's video file, whole or in the byte range asked "
            "for (to play the scene from its start)", response_class=Response, responses=VIDEO)
async def video(request: Request, scene_id: SceneId,
                wanted: Annotated[str | None, Header(alias="Range", description="bytes=FIRST-LAST, bytes=FIRST- "
                                                     "or bytes=-COUNT (RFC 9110); without it, the whole file")] = None
                ) -> StreamingResponse:
    """Only a file the gallery indexed as a video, while it is the one indexed (see `indexed`)."""
    match = await gallery_item(request, scene_id)
    if not match.scene:
        raise HTTPException(404, f"Gallery item {scene_id} is a photo, not a video scene: its file is "
                                 f"/api/photo/{scene_id}.")
    size = match.indexed.size
    f = await run_in_threadpool(request.app.state.verified.open, match)
    try:
        asked = byte_range(wanted, size)
    except HTTPException:
        f.close()
        raise
    first, last = asked or (0, size - 1)
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(last - first + 1),
               "Cache-Control": "private, max-age=3600"}
    if asked:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    media = mimetypes.guess_type(match.path.name)[0] or "application/octet-stream"
    return StreamingResponse(span(f, first, last), status_code=206 if asked else 200, media_type=media,
                             headers=headers)
