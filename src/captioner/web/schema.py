"""What the web API answers: its error bodies as documented in the OpenAPI schema, its parameters, and the JSON
of a caption and of a gallery photo or video scene (documented by the models below)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Path as PathParam
from fastapi import Query
from pydantic import BaseModel, Field

from ..captioning import Caption

if TYPE_CHECKING:
    from ..gallery import Match

SIMILAR_K = 8
NO_GALLERY = "This server has no gallery; start it with `captioner serve --db DB` to find similar photos."


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
VIDEO = CHANGED | {
    200: {"description": "the whole video file", "content": {"video/*": {}}},
    206: {"description": "the bytes the Range header asked for (Content-Range says which)", "content": {"video/*": {}}},
    416: problem("a Range the file cannot satisfy (Content-Range: bytes */SIZE gives its size)")}


class Item(BaseModel):
    """A gallery photo or video scene: never its path on the server, only its id and file name."""

    id: int
    name: str = Field(description="the photo's or the scene's video's file name")
    caption: str
    score: float
    url: str = Field(description="the photo's file (a scene: its video, from the video route)")
    thumbnail: str = Field(description="the photo, or the scene's keyframe, at most 320 pixels wide and high (WebP)")
    video: str | None = Field(None, description="a scene's video, served with range requests (absent for a photo)")
    start: float | None = Field(None, description="a scene's start in its video, seconds (absent for a photo)")
    end: float | None = Field(None, description="a scene's end in its video, seconds (absent for a photo)")


class Found(Item):
    weak: bool = Field(description="it scores no better than the worst 5% of dev captions with their own photo")
    matched_by: str = Field(description="the part of the score that counted most: caption, photo or tags")


class SearchAnswer(BaseModel):
    query: str
    weak: bool = Field(description="every result is weak: nothing matches well")
    results: list[Found]


class SimilarAnswer(BaseModel):
    photo: Item = Field(description="the photo or scene asked about")
    by: str
    results: list[Item]


NOT_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""The schema's pattern for a search: a character that Python's str.strip() keeps, spelled out, since JSON Schema
reads `\\S` by ECMAScript's rules, whose white space is not Python's (U+0085 and U+001C-1F are not, U+FEFF is)."""

PhotoId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a gallery photo's id")]
SceneId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a gallery video scene's id")]
K = Annotated[int, Query(ge=1, le=50, description="how many photos to return")]


def caption_json(c: Caption, name: str, photo_id: int | None) -> dict:
    """A caption as the API returns it (`id`: the gallery photo's, None for an upload).

    Attention maps are flattened row by row, one per word and one for the end of the sentence. `caption`
    is the model's sentence; `said` is how the page shows and reads it, with its `doubt` in words (0: said
    plainly, 1: "probably ...", 2: "I am not sure; it may be ...", as its `confidence` says; None: the model
    is not calibrated); `tags` are what the encoder recognises.
    """
    attention = None
    if c.attention is not None:
        side = c.attention.shape[-1]
        attention = {"grid": side, "maps": c.attention.reshape(len(c.attention), side * side).round(4).tolist()}
    return {"id": photo_id, "name": name, "caption": c.text, "score": round(c.score, 4), "words": c.words,
            "alternatives": [{"caption": text, "score": round(score, 4)} for text, score in c.alternatives],
            "attention": attention, "tags": [t.to_json() for t in c.tags], "confidence":
            None if c.confidence is None else round(c.confidence, 3), "doubt": c.doubt, "said": c.said,
            "warning": c.warning}


def match_json(m: Match) -> dict:
    """A gallery photo or video scene as the API returns it (`Item`)."""
    out = {"id": m.id, "name": m.path.name, "caption": m.caption, "score": round(float(m.score), 4),
           "url": f"/api/photo/{m.id}", "thumbnail": f"/api/photo/{m.id}/thumbnail"}
    if m.scene:
        out |= {"url": f"/api/video/{m.id}", "video": f"/api/video/{m.id}", "start": round(m.start, 3),
                "end": round(m.end, 3)}
    return out
