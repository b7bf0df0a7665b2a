"""Questions to a gallery: a photo by id, photos matching a description, photos like a photo.

A video's scenes are items like photos (their path the video's, with the scene's start and end): every question
may answer with them, and `similar` takes one's id as it takes a photo's.

Each query reads the vector indexes and the rows they point to in one
catalogue snapshot, under the catalogue's lock (after catching the vectors up
with that snapshot), so its answer is one committed state of the gallery even
while an indexer commits: an id never vanishes between the vector search and
the row. Slow parts (embedding the query text, captioning a photo, re-ranking)
run outside the lock.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..captioning import Caption
from ..data.images import clock, file_sha256, to_pixels
from ..data.text import clean
from ..errors import CaptionerError
from ..features.cache import encode_photos
from ..models.embedding import RetrievalConfig, photo_vectors, query_vectors, text_logprob
from ..models.sentences import DIM
from ..models.tags import tag_bonus
from .catalogue import Row, vector
from .indexer import absolute

if TYPE_CHECKING:
    from . import Gallery

BY = ("both", "visual", "caption")
GRIDS_KEPT = 2048  # re-encoded photos kept in memory for re-ranking
TAG_POOL = 64  # candidates the vector search gives the tag matching, at least


@dataclass(frozen=True)
class Indexed:
    """A photo's file as the gallery indexed it (what the web app checks before serving it)."""

    sha256: str
    size: int
    mtime_ns: int


@dataclass
class Match:
    id: int
    path: Path
    caption: str
    score: float
    tags: list[dict] = field(default_factory=list)  # {"label", "p", "word"}: what the encoder's classifier saw
    why: dict[str, float] = field(default_factory=dict)  # a search score's parts (see `search`)
    weak: bool = False  # a search match no better than the worst 5% of dev captions with their own photo
    indexed: Indexed | None = None  # the file as indexed: set by `photo`
    scene: int = 0  # a video scene's number (1, 2, ...) in the video at `path`; 0: a photo
    start: float | None = None  # a scene's start and end in its video, seconds
    end: float | None = None

    @property
    def matched_by(self) -> str:
        """The part of a search score that counted most: "caption", "photo" or "tags" ("" for no search)."""
        parts = {k: v for k, v in self.why.items() if k in ("caption", "photo", "tags")}
        return max(parts, key=parts.get) if parts else ""

    @property
    def where(self) -> str:
        """How a person names it: a photo's path; a scene's, its video's and times (clip.mp4 00:00:04.0-00:00:09.5)."""
        return f"{self.path} {clock(self.start)}-{clock(self.end)}" if self.scene else str(self.path)

    def to_json(self) -> dict:
        out = {"id": self.id, "path": str(self.path), "caption": self.caption, "score": round(self.score, 4),
               "tags": [{"word": t["word"], "label": t["label"], "p": round(t["p"], 4)} for t in self.tags]}
        if self.scene:
            out |= {"video": str(self.path), "scene": self.scene, "start": round(self.start, 3),
                    "end": round(self.end, 3)}
        if self.why:
            out |= {"why": {k: round(v, 4) for k, v in self.why.items()}, "matched_by": self.matched_by,
                    "weak": self.weak}
        return out


def _match(row: Row, score: float, why: dict[str, float] | None = None, weak: bool = False) -> Match:
    return Match(row.id, row.path, row.caption, float(score), row.tags, why or {}, weak, scene=row.scene,
                 start=row.start, end=row.end)


def _indexed(where: str, arguments: tuple) -> tuple[str, tuple]:
    return f"SELECT id, path, caption, tags, sha256, scene, scene_start, scene_end, size, mtime_ns FROM photos " \
        f"WHERE caption IS NOT NULL AND {where}", arguments


def _found(r: tuple | None) -> Match | None:
    return replace(_match(Row.of(r[:8]), 1.0), indexed=Indexed(r[4], *r[8:])) if r else None


def photo(g: Gallery, photo_id: int) -> Match | None:
    with g.catalogue.lock:
        r = g.catalogue.conn.execute(*_indexed("id = ?", (int(photo_id),))).fetchone()
    return _found(r)


def scene(g: Gallery, video: str | Path, seconds: float = 0.0) -> Match | None:
    """The scene of the gallery's `video` (a path, as indexed) playing at `seconds` (the last one, after its end),
    or None when the gallery has no scene of it."""
    where = "path = ? AND scene > 0 AND (scene_start <= ? OR scene = 1) ORDER BY scene DESC LIMIT 1"
    with g.catalogue.lock:
        r = g.catalogue.conn.execute(*_indexed(where, (str(absolute(video)), float(seconds)))).fetchone()
    return _found(r)


def search(g: Gallery, text: str, k: int = 8, rerank: bool = False) -> list[Match]:
    """Photos whose captions and image vectors match `text`, best first; a photo tagged with a word of
    `text` ranks higher (by the embedding's tag weight, chosen on dev). With `rerank`, the best candidates
    are re-scored by how likely the captioner finds `text` as their caption (slower: candidates are
    encoded again).

    Each match's `why` holds its score's parts: "caption" (how well its captions say `text`), "photo" (how
    well its image vector does; with a trained embedding), "tags" and, re-ranked, "likelihood"; `weak` is
    set when caption and photo together score below the embedding's weak score.
    """
    if not text.strip():
        raise CaptionerError("the search text is empty")
    cfg = g.embedding.cfg if g.embedding is not None else RetrievalConfig()
    q = query_vectors(g.embedding, [text], device=g.captioner.device)[0]
    words = set(clean(text))
    wanted = max(k, cfg.rerank_pool) if rerank else k
    with g.catalogue.snapshot() as conn:
        g.vectors.catch_up(conn)
        _, ids = g.vectors.text.search(q[None], max(wanted, TAG_POOL))
        found = [int(i) for i in ids[0] if i >= 0]
        rows = g.catalogue.rows(found)
        vectors = g.vectors.text.vectors(found) if found else np.zeros((0, len(q)), np.float32)
    scored = []
    for i, v in zip(found, vectors):  # v: [caption vector, image vector] (the image part with an embedding)
        if i in rows:
            why = {"caption": float(q[:DIM] @ v[:DIM])}
            if len(q) > DIM:
                why["photo"] = float(q[DIM:] @ v[DIM:])
            why["tags"] = tag_bonus(words, rows[i].tags, cfg.tag_weight)
            scored.append((rows[i], why))
    scored = sorted(scored, key=lambda t: -sum(t[1].values()))[:wanted]
    if rerank and scored:
        scored = _rerank(g, text, scored, cfg.rerank_weight)
    judged = g.embedding is not None  # the weak score is chosen with the embedding
    return [_match(r, sum(why.values()), why, judged and why["caption"] + why["photo"] < cfg.weak_score)
            for r, why in scored[:k]]


def _rerank(g: Gallery, text: str, scored: list[tuple[Row, dict]], weight: float) -> list[tuple[Row, dict]]:
    features = _features(g, [r for r, _ in scored])
    kept = [(r, why) for r, why in scored if r.id in features]
    if not kept:
        return scored
    pooled = torch.stack([features[r.id][0] for r, _ in kept])
    grid = torch.stack([features[r.id][1] for r, _ in kept])
    logprob = text_logprob(g.captioner.model, pooled, grid, text)
    return sorted(((r, why | {"likelihood": weight * float(lp)}) for (r, why), lp in zip(kept, logprob)),
                  key=lambda t: -sum(t[1].values()))


def _features(g: Gallery, rows: list[Row]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each photo's (pooled, grid) features as the captioner's decoder reads them (a fine-tuned top's, where the
    model has one): encoded from its file (a video scene's from its keyframe thumbnail), kept for the next queries.

    Kept by id and content hash, so a kept entry is only ever served for the photo it was encoded from, even
    where an id came back for another photo (galleries an older captioner wrote).
    """
    with g.grids_lock:
        todo = [r for r in rows if (r.id, r.sha256) not in g.grids]
    photos, scenes = [r for r in todo if not r.scene], [r for r in todo if r.scene]
    encoded = [([photos[j] for j in ok], pooled, grid, tuned) for ok, pooled, grid, _, _, tuned
               in encode_photos(g.captioner.encoder, [r.path for r in photos], batch_size=16, progress=False)
               ] if photos else []
    if scenes:
        with g.catalogue.lock:
            keyframes = dict(g.catalogue.conn.execute(f"SELECT id, keyframe FROM photos WHERE keyframe IS NOT NULL "
                                                      f"AND id IN ({','.join('?' * len(scenes))})",
                                                      [r.id for r in scenes]))
        scenes = [r for r in scenes if r.id in keyframes]
        size = g.captioner.encoder.spec.input_size
        for b in range(0, len(scenes), 16):
            batch = scenes[b:b + 16]
            pixels = np.stack([to_pixels(Image.open(io.BytesIO(keyframes[r.id])), size) for r in batch])
            encoded.append((batch, *g.captioner.encoder(pixels)))  # [B, D], [B, N, D], a tuned top's or None
    for done, pooled, grid, tuned in encoded:
        pooled, grid = (t.cpu() for t in (tuned or (pooled, grid)))  # the decoder's, kept in host memory
        with g.grids_lock:
            for r, p, gr in zip(done, pooled, grid):
                g.grids[r.id, r.sha256] = (p, gr)
                while len(g.grids) > GRIDS_KEPT:
                    g.grids.popitem(last=False)
    with g.grids_lock:
        return {r.id: g.grids[r.id, r.sha256] for r in rows if (r.id, r.sha256) in g.grids}


def similar(g: Gallery, photo: str | Path | Caption | int, k: int = 8, by: str = "both",
            visual_weight: float = 0.5) -> list[Match]:
    """Gallery photos (and video scenes) most like `photo` (a file, a Caption from this captioner, or a gallery
    id: a photo's or a scene's).

    by="visual" compares image vectors, "caption" caption vectors, "both" a
    blend (`visual_weight` of the visual similarity). The photo itself is left out.
    """
    if by not in BY:
        raise CaptionerError(f"unknown similarity {by!r}: choose one of {', '.join(BY)}")
    given = None if isinstance(photo, int) else _photo_vectors(g, photo)
    with g.catalogue.snapshot() as conn:
        g.vectors.catch_up(conn)
        if given is None:
            row = conn.execute("SELECT visual, text FROM photos WHERE id = ? AND visual IS NOT NULL",
                               (photo,)).fetchone()
            if row is None:
                raise CaptionerError(f"the gallery has no photo with id {photo} (nor a video scene)")
            visual, text, exclude = vector(row[0]), vector(row[1]), {photo}
        else:
            visual, text, digest = given
            exclude = {r[0] for r in conn.execute("SELECT id FROM photos WHERE sha256 = ?", (digest,))}
        ids, score = _blend(g, visual, text, by, visual_weight, k + len(exclude), exclude)
        order = np.argsort(-score)[:k]
        rows = g.catalogue.rows([ids[j] for j in order])
    return [_match(rows[ids[j]], score[j]) for j in order if ids[j] in rows]


def _photo_vectors(g: Gallery, photo: str | Path | Caption) -> tuple[np.ndarray, np.ndarray, str | None]:
    """A photo's image and text vectors as the gallery stores them, and its content hash (None: no file)."""
    if not isinstance(photo, Caption):
        photo = g.captioner.caption([photo])[0]
        if photo.error:
            raise CaptionerError(photo.error)
    visual = photo.vector / max(float(np.linalg.norm(photo.vector)), 1e-8)
    text = photo_vectors(g.embedding, None if photo.embedding is None else photo.embedding[None],
                         [photo.beam_texts], g.captioner.device)[0]
    return visual, text, file_sha256(photo.path) if Path(photo.path).is_file() else None


def _blend(g: Gallery, visual: np.ndarray, text: np.ndarray, by: str, visual_weight: float, wanted: int,
           exclude: set[int]) -> tuple[list[int], np.ndarray]:
    """Candidate ids and their blended similarity (caller holds the snapshot)."""
    caption_part = np.zeros_like(text)
    caption_part[:DIM] = text[:DIM]  # caption vectors only: photo to photo, their captions compared
    weight = {"visual": 1.0, "caption": 0.0, "both": visual_weight}[by]
    candidates: set[int] = set()
    if weight > 0:
        candidates |= {int(i) for i in g.vectors.visual.search(visual[None], wanted * 4 + 32)[1][0] if i >= 0}
    if weight < 1:
        candidates |= {int(i) for i in g.vectors.text.search(caption_part[None], wanted * 4 + 32)[1][0] if i >= 0}
    ids = sorted(candidates - exclude)
    if not ids:
        return [], np.zeros(0)
    score = (weight * (g.vectors.visual.vectors(ids) @ visual) if weight > 0 else 0.0) + \
        ((1 - weight) * (g.vectors.text.vectors(ids) @ caption_part) if weight < 1 else 0.0)
    return ids, np.asarray(score)
