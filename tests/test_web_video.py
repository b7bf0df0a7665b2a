"""Video scenes in the web API: found by search and similar with their times and keyframes, and their video served
with HTTP range requests behind the token and the security headers, only while it is the file indexed."""
from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from captioner.gallery import Gallery
from captioner.web.app import create_app
from test_gallery_video import film
from webapp import EXAMPLES, local_client, tiny_captioner

TOKEN = "video-test-token-0123"


def video_gallery(folder, captioner) -> Gallery:
    """Two example photos and a 9 s video of three others, indexed, opened for reading."""
    media = folder / "media"
    media.mkdir()
    for name in ("cup_of_coffee.jpg", "astronaut_in_orange_spacesuit.jpg"):
        (media / name).write_bytes((EXAMPLES / name).read_bytes())
    film(media / "clip.mp4")
    with Gallery.create(folder / "g.db", captioner=captioner) as writer:
        writer.index([media], progress=False)
    return Gallery.open(folder / "g.db", captioner=captioner)


@pytest.fixture(scope="module")
def captioner(tiny_model_dir):
    return tiny_captioner(tiny_model_dir)


@pytest.fixture(scope="module")
def gallery(captioner, tmp_path_factory):
    return video_gallery(tmp_path_factory.mktemp("video-gallery"), captioner)


@pytest.fixture(scope="module")
def client(captioner, gallery):
    with local_client(create_app(captioner, gallery, token=TOKEN)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


def scenes_of(gallery) -> list:
    return [m for m in (gallery.photo(i) for i in range(1, 20)) if m is not None and m.scene]


def test_search_and_similar_answer_with_scenes_their_times_and_keyframes(client, gallery):
    scene = scenes_of(gallery)[1]
    found = client.get("/api/search", params={"q": scene.caption, "k": 20}).json()["results"]
    got = next(m for m in found if m["id"] == scene.id)
    assert got | {"score": 0, "weak": False, "matched_by": ""} == {
        "id": scene.id, "name": "clip.mp4", "caption": scene.caption, "score": 0, "url": f"/api/video/{scene.id}",
        "thumbnail": f"/api/photo/{scene.id}/thumbnail", "video": f"/api/video/{scene.id}",
        "start": round(scene.start, 3), "end": round(scene.end, 3), "weak": False, "matched_by": ""}
    assert {"video", "start", "end"}.isdisjoint(next(m for m in found if m["name"] == "cup_of_coffee.jpg"))
    thumb = client.get(got["thumbnail"])
    assert thumb.headers["content-type"] == "image/webp" and thumb.content == gallery.keyframe(scene.id)
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 320
    similar = client.get("/api/similar", params={"id": scene.id, "k": 4}).json()
    assert similar["photo"]["video"] == f"/api/video/{scene.id}" and len(similar["results"]) == 4
    assert scene.id not in {m["id"] for m in similar["results"]}
    r = client.get(f"/api/photo/{scene.id}")
    assert r.status_code == 404 and f"play it from /api/video/{scene.id}" in r.json()["detail"]
    assert client.get(f"/api/photo/{scene.id}/caption").status_code == 404
    photo = next(m for m in found if m["name"] == "cup_of_coffee.jpg")
    r = client.get(f"/api/video/{photo['id']}")
    assert r.status_code == 404 and "is a photo, not a video scene" in r.json()["detail"]
    assert client.get("/api/video/999").status_code == 404


def test_the_video_route_serves_ranges(client, gallery):
    scene = scenes_of(gallery)[0]
    data = scene.path.read_bytes()
    size = len(data)
    url = f"/api/video/{scene.id}"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert (whole.headers["accept-ranges"], whole.headers["content-length"], whole.headers["content-type"]) == (
        "bytes", str(size), "video/mp4")
    assert "media-src 'self'" in whole.headers["content-security-policy"]
    assert whole.headers["x-content-type-options"] == "nosniff"
    for asked, first, last in [("bytes=10-99", 10, 99), ("bytes=100-", 100, size - 1), ("bytes=-50", size - 50,
                               size - 1), (f"bytes={size - 5}-{size + 1000}", size - 5, size - 1),
                               ("bytes=-999999999", 0, size - 1)]:
        r = client.get(url, headers={"Range": asked})
        assert r.status_code == 206, asked
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}", asked
        assert r.headers["content-length"] == str(last - first + 1) and r.content == data[first:last + 1], asked
    for bad in [f"bytes={size}-", "bytes=50-10", "bytes=-0", "bytes=x-y", "bytes=-"]:
        r = client.get(url, headers={"Range": bad})
        assert r.status_code == 416, bad
        assert r.headers["content-range"] == f"bytes */{size}" and "is not within the file's" in r.json()["detail"]
    assert client.get(url, headers={"Range": "bytes=0-1,5-9"}).content == data  # several ranges: the whole file
    refused = client.get(url, headers={"Authorization": "", "Range": "bytes=0-9"})
    assert refused.status_code == 401 and "access token" in refused.json()["detail"]
    assert client.get(url, headers={"Authorization": "Bearer wrong-token-0000000"}).status_code == 401


def test_a_video_is_hashed_once_and_served_only_while_it_is_the_one_indexed(captioner, tmp_path):
    gallery = video_gallery(tmp_path, captioner)
    scene = scenes_of(gallery)[0]
    with local_client(create_app(captioner, gallery)) as client:
        for asked in ("bytes=0-99", "bytes=100-199", "bytes=-10"):
            assert client.get(f"/api/video/{scene.id}", headers={"Range": asked}).status_code == 206
        assert client.app.state.verified.hashed == 1  # the first request hashed the file; the others knew it
        st = scene.path.stat()
        data = bytearray(scene.path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte changed, size and modification time put back
        scene.path.write_bytes(bytes(data))
        os.utime(scene.path, ns=(st.st_atime_ns, st.st_mtime_ns))
        r = client.get(f"/api/video/{scene.id}", headers={"Range": "bytes=0-99"})
        assert r.status_code == 410 and "is no longer the one the gallery indexed" in r.json()["detail"]
        scene.path.unlink()
        assert client.get(f"/api/video/{scene.id}").status_code == 404
        assert client.get(f"/api/photo/{scene.id}/thumbnail").status_code == 404
