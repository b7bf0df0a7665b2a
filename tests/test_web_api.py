"""The web app's JSON API (httpx through FastAPI's TestClient, and a live uvicorn for concurrency), and its worker."""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from captioner.captioning import Caption
from captioner.web.app import create_app
from captioner.web.schema import NO_GALLERY
from captioner.web.worker import CaptionWorker, QueueFull
from conftest import TINY_MAX_LEN, TINY_WORDS
from photos import bomb_png_bytes, gradient, truncated_jpeg_bytes
from webapp import EXAMPLES, LiveServer, examples_gallery, local_client, tiny_captioner


@pytest.fixture(scope="module")
def captioner(tiny_model_dir):
    return tiny_captioner(tiny_model_dir)


@pytest.fixture(scope="module")
def client(captioner):
    with local_client(create_app(captioner)) as client:
        yield client


def jpeg_bytes(width: int = 96, height: int = 64) -> bytes:
    out = io.BytesIO()
    Image.fromarray(gradient(width, height)).save(out, "JPEG", quality=90)
    return out.getvalue()


def post_photo(client, data: bytes, name: str = "photo.jpg", media: str = "image/jpeg"):
    return client.post("/api/caption", files={"file": (name, data, media)})


def test_health_says_what_the_server_offers(client):
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["encoder"] == "efficientnet-lite0"
    assert body["gallery_photos"] is None
    assert body["max_upload_bytes"] == 20 * 1024 * 1024
    assert body["worker"] | {"captioned": 0} == {"alive": True, "queued": 0, "max_queue": 64, "busy_seconds": 0.0,
                                                 "captioned": 0, "failed": 0}


def test_caption_has_words_alternatives_and_one_attention_map_per_word(client):
    r = post_photo(client, (EXAMPLES / "tabby_cat.jpg").read_bytes(), "tabby_cat.jpg")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] is None and body["name"] == "tabby_cat.jpg" and body["warning"] == ""
    assert len(body["words"]) == TINY_MAX_LEN and set(body["words"]) <= set(TINY_WORDS)
    assert body["caption"] == " ".join(body["words"])
    assert body["score"] < 0
    assert len(body["alternatives"]) == 2  # the tiny model's beam of 3, less the caption itself
    assert all(alt["caption"] != body["caption"] and alt["score"] <= body["score"] for alt in body["alternatives"])
    attention = body["attention"]
    assert attention["grid"] == 7
    maps = np.array(attention["maps"])
    assert maps.shape == (TINY_MAX_LEN + 1, 49)  # each word and the end of the sentence
    np.testing.assert_allclose(maps.sum(axis=1), 1.0, atol=1e-2)
    assert "similar" not in body  # no gallery
    assert body["confidence"] is None and body["said"] == body["caption"]  # the tiny model is not calibrated
    assert body["tags"] and all(set(t) == {"label", "p", "word"} for t in body["tags"])
    assert [t["p"] for t in body["tags"]] == sorted((t["p"] for t in body["tags"]), reverse=True)


def test_same_photo_gets_the_same_caption(client):
    data = (EXAMPLES / "rocky_cliff_by_a_lake.jpg").read_bytes()
    first, second = (post_photo(client, data).json() for _ in range(2))
    assert first["caption"] == second["caption"]


@pytest.mark.parametrize("media", ["image/png", "application/octet-stream", ""])
def test_a_png_is_captioned_whatever_type_the_browser_guessed(client, media):
    out = io.BytesIO()
    Image.fromarray(gradient(40, 30)).convert("RGBA").save(out, "PNG")
    r = post_photo(client, out.getvalue(), "pasted.png", media)
    assert r.status_code == 200, r.text
    assert len(r.json()["words"]) == TINY_MAX_LEN


@pytest.mark.parametrize("name, media", [("notes.txt", "text/plain"), ("logo.svg", "image/svg+xml"),
                                         ("clip.mp4", "video/mp4")])
def test_a_file_of_another_type_is_415_naming_it(client, name, media):
    r = post_photo(client, b"<svg></svg>", name, media)
    assert r.status_code == 415
    assert r.json()["detail"] == (f"{name} is {media}, not a photo; send a JPEG, PNG, WebP, GIF, BMP or TIFF.")


@pytest.mark.parametrize("data, phrase", [
    (b"these are my holiday notes, not a photo\n", "notes.jpg: is not a photo in a format captioner reads"),
    (b"", "notes.jpg: is empty"),
    (bomb_png_bytes(), "notes.jpg: declares 3,600 megapixels, more than the 179-megapixel limit"),
])
def test_a_file_that_is_not_a_readable_photo_is_422_with_the_captioners_reason(client, data, phrase):
    r = post_photo(client, data, "notes.jpg")
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail.startswith(phrase)
    assert "upload-" not in detail and "/tmp" not in detail  # the server's temporary file is never named


def ppm_bytes() -> bytes:
    out = io.BytesIO()
    Image.fromarray(gradient(40, 30)).save(out, "PPM")
    return out.getvalue()


def test_only_photo_formats_are_decoded_from_an_upload_or_the_command_line(client, captioner, tmp_path):
    """Pillow reads dozens of formats (EPS through Ghostscript); a photo is opened with its photo decoders only."""
    refused = "is not a photo in a format captioner reads (a JPEG, PNG, WebP, GIF, BMP or TIFF)"
    untyped = post_photo(client, ppm_bytes(), "scan.jpg", "application/octet-stream")
    assert untyped.status_code == 422 and untyped.json()["detail"] == f"scan.jpg: {refused}"
    typed = post_photo(client, ppm_bytes(), "scan.ppm", Image.MIME["PPM"])
    assert typed.status_code == 415
    assert typed.json()["detail"] == f"scan.ppm is {Image.MIME['PPM']}, not a photo; send a JPEG, PNG, WebP, GIF, " \
                                     "BMP or TIFF."
    (tmp_path / "scan.ppm").write_bytes(ppm_bytes())
    [c] = captioner.caption([tmp_path / "scan.ppm"])  # what `captioner caption` and the gallery read through
    assert c.error == f"{tmp_path / 'scan.ppm'}: {refused}" and c.text == ""


def test_a_truncated_photo_is_captioned_with_a_warning_naming_the_upload(client):
    r = post_photo(client, truncated_jpeg_bytes(), "cut.jpg")
    assert r.status_code == 200
    assert r.json()["warning"].startswith("cut.jpg: the file ends early")


def test_the_upload_must_be_in_the_file_field(client):
    r = client.post("/api/caption", files={"photo": ("a.jpg", jpeg_bytes(), "image/jpeg")})
    assert r.status_code == 422
    assert r.json()["detail"] == "Send the photo in the form field `file` (multipart/form-data)."
    for body in ({"content": b"{}", "headers": {"Content-Type": "application/json"}},
                 {"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=x"}}):
        r = client.post("/api/caption", **body)
        assert r.status_code in (400, 422) and isinstance(r.json()["detail"], str)


@pytest.fixture(scope="module")
def small_limit_client(captioner):
    with local_client(create_app(captioner, max_upload_bytes=64 * 1024)) as client:
        yield client


def test_a_photo_above_the_limit_is_413_saying_the_limit(small_limit_client):
    data = jpeg_bytes(300, 300) + bytes(70 * 1024)  # a real JPEG padded past 64 KB (still within the slack)
    r = post_photo(small_limit_client, data)
    assert r.status_code == 413
    assert r.json()["detail"].startswith(f"The photo is {len(data) / 2**20:.3g} MiB, more than the "
                                         "0.0625 MiB limit")
    assert post_photo(small_limit_client, jpeg_bytes()).status_code == 200  # below the limit


def test_a_huge_upload_is_413_before_it_is_read(small_limit_client):
    r = post_photo(small_limit_client, bytes(1024 * 1024))
    assert r.status_code == 413
    assert r.json()["detail"].startswith("The upload is more than the 0.0625 MiB limit")


def test_a_huge_upload_without_a_length_is_cut_off_at_the_limit(small_limit_client):
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def chunks():  # a chunked body: no Content-Length header
        yield head
        for _ in range(64):
            yield bytes(16 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = small_limit_client.post("/api/caption", content=chunks(),
                                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413
    assert r.json()["detail"].startswith("The upload is more than the 0.0625 MiB limit")


@pytest.mark.parametrize("url", ["/api/similar?id=1", "/api/search?q=a+dog", "/api/photo/1",
                                 "/api/photo/1/thumbnail", "/api/photo/1/caption"])
def test_gallery_routes_without_a_gallery_say_how_to_get_one(client, url):
    r = client.get(url)
    assert r.status_code == 404
    assert r.json()["detail"] == NO_GALLERY


def test_the_page_and_the_api_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'aria-live="polite"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/caption", "/api/similar", "/api/search", "/api/health"} <= set(schema["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    scripts = re.findall(r'src="([^"]+)"', docs.text)
    assert scripts and all(src.startswith("/") for src in scripts)  # served here: works with no internet
    assert all(client.get(src).status_code == 200 for src in scripts)


def test_eight_concurrent_clients_all_get_their_own_photos_caption(captioner):
    photos = sorted(EXAMPLES.glob("*.jpg"))
    expected = {p.name: c.text for p, c in zip(photos, captioner.caption(photos))}
    with LiveServer(create_app(captioner)) as url:
        def post(photo: Path) -> tuple[str, httpx.Response]:
            with httpx.Client(base_url=url, timeout=60) as http:
                return photo.name, http.post("/api/caption", files={"file": (photo.name, photo.read_bytes(),
                                                                              "image/jpeg")})

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, [photos[i % len(photos)] for i in range(16)]))
    assert [r.status_code for _, r in answers] == [200] * 16
    for name, r in answers:
        assert r.json()["name"] == name
        assert r.json()["caption"] == expected[name]


class GatedCaptioner:
    """Stands in for Captioner: records each call and holds it until `gate` opens; a path named 'boom' raises.

    A path named 'lost' gets no caption back (a captioner bug the worker must survive).
    """

    model = SimpleNamespace(encoder="gated")

    def __init__(self):
        self.calls: list[list[Path]] = []
        self.entered = threading.Event()  # set once a call is under way
        self.gate = threading.Event()
        self.busy = threading.Lock()
        self.overlapped = False

    def caption(self, paths, batch_size=16):
        if not self.busy.acquire(blocking=False):
            self.overlapped = True
            self.busy.acquire()
        try:
            self.calls.append(list(paths))
            self.entered.set()
            self.gate.wait(timeout=10)
            if any(p.name == "boom" for p in paths):
                raise RuntimeError("out of memory")
            return [Caption(p, text=f"caption of {p.name}") for p in paths if p.name != "lost"]
        finally:
            self.busy.release()


def test_the_worker_batches_waiting_photos_and_answers_each_its_own():
    captioner = GatedCaptioner()
    worker = CaptionWorker(captioner, max_batch=3)
    first = worker.submit(Path("0.jpg"))
    assert captioner.entered.wait(timeout=10)  # the worker is busy with the first photo alone
    later = [worker.submit(Path(f"{i}.jpg")) for i in (1, 2, 3, 4, 2)]
    captioner.gate.set()
    worker.close()
    assert first.result().text == "caption of 0.jpg"
    assert [f.result().text for f in later] == [f"caption of {i}.jpg" for i in (1, 2, 3, 4, 2)]
    # the photos that waited went in batches of at most 3, a photo asked twice captioned once per batch
    assert captioner.calls == [[Path("0.jpg")], [Path("1.jpg"), Path("2.jpg"), Path("3.jpg")],
                               [Path("4.jpg"), Path("2.jpg")]]
    assert not captioner.overlapped


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on():
    captioner = GatedCaptioner()
    worker = CaptionWorker(captioner, max_batch=4)
    worker.submit(Path("block.jpg"))
    assert captioner.entered.wait(timeout=10)
    doomed = [worker.submit(Path("a.jpg")), worker.submit(Path("boom"))]
    captioner.gate.set()
    for future in doomed:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result()
    assert worker.submit(Path("c.jpg")).result().text == "caption of c.jpg"
    worker.close()
    with pytest.raises(RuntimeError, match="stopped"):
        worker.submit(Path("d.jpg"))


def test_the_worker_survives_a_failure_outside_the_captioner():
    captioner = GatedCaptioner()
    captioner.gate.set()
    worker = CaptionWorker(captioner, max_batch=2)
    lost = worker.submit(Path("lost"))
    with pytest.raises(RuntimeError, match="no caption for 1 of 1 photos"):
        lost.result(timeout=10)
    assert worker.submit(Path("next.jpg")).result(timeout=10).text == "caption of next.jpg"
    assert worker.health() | {"busy_seconds": 0.0} == {"alive": True, "queued": 0, "max_queue": 64,
                                                        "busy_seconds": 0.0, "captioned": 1, "failed": 1}
    worker.close()


def test_a_full_queue_refuses_with_a_retry_time_and_takes_photos_again_once_it_drains():
    captioner = GatedCaptioner()
    worker = CaptionWorker(captioner, max_batch=1, max_queue=2)
    first = worker.submit(Path("0.jpg"))
    assert captioner.entered.wait(timeout=10)  # taken off the queue: two places left
    waiting = [worker.submit(Path("1.jpg")), worker.submit(Path("2.jpg"))]
    assert not worker.has_room() and worker.health()["queued"] == 2
    with pytest.raises(QueueFull) as refused:
        worker.submit(Path("3.jpg"))
    assert refused.value.retry_after >= 1
    captioner.gate.set()
    assert [f.result(timeout=10).text for f in [first, *waiting]] == [f"caption of {i}.jpg" for i in range(3)]
    assert worker.submit(Path("3.jpg")).result(timeout=10).text == "caption of 3.jpg"
    worker.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is on purpose
def test_closing_a_worker_that_died_with_a_full_queue_returns_and_fails_what_waited(monkeypatch):
    captioner = GatedCaptioner()
    worker = CaptionWorker(captioner, max_batch=1, max_queue=2)
    worker.submit(Path("0.jpg"))
    assert captioner.entered.wait(timeout=10)
    waiting = [worker.submit(Path("1.jpg")), worker.submit(Path("2.jpg"))]  # the queue is full

    def dies() -> None:
        raise SystemExit  # a thread's way out that nothing catches

    monkeypatch.setattr(worker, "_next_batch", dies)  # the thread dies when it next looks at the queue
    captioner.gate.set()
    worker._thread.join(timeout=10)
    assert not worker.health()["alive"]
    closing = threading.Thread(target=worker.close, daemon=True)
    closing.start()
    closing.join(timeout=10)
    assert not closing.is_alive()
    for future in waiting:
        with pytest.raises(RuntimeError, match="the captioning worker has stopped"):
            future.result(timeout=1)


def test_a_live_server_answers_503_with_retry_after_when_its_queue_is_full_then_serves_again():
    captioner = GatedCaptioner()
    with LiveServer(create_app(captioner, max_batch=1, max_queue=1)) as url, ThreadPoolExecutor(2) as pool:
        def post(name: str) -> httpx.Response:
            return httpx.post(f"{url}/api/caption", files={"file": (name, jpeg_bytes(), "image/jpeg")}, timeout=30)

        def health() -> dict:
            return httpx.get(f"{url}/api/health", timeout=10).json()["worker"]

        first = pool.submit(post, "a.jpg")
        assert captioner.entered.wait(timeout=10)
        second = pool.submit(post, "b.jpg")
        deadline = time.monotonic() + 10
        while health()["queued"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        refused = post("c.jpg")
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["detail"].startswith("The server is busy captioning other photos; try again in ")
        captioner.gate.set()
        assert first.result().status_code == second.result().status_code == 200
        assert post("d.jpg").json()["caption"].startswith("caption of upload-")
        assert health()["captioned"] == 3


def test_a_captioning_failure_is_a_500_sentence_and_the_next_request_is_served():
    captioner = GatedCaptioner()
    captioner.gate.set()
    original = captioner.caption

    def failing_once(paths, batch_size=16):
        if not captioner.calls:
            captioner.calls.append(["failed"])
            raise MemoryError()
        return original(paths, batch_size)

    captioner.caption = failing_once
    with LiveServer(create_app(captioner)) as url:
        r = httpx.post(f"{url}/api/caption", files={"file": ("a.jpg", jpeg_bytes(), "image/jpeg")}, timeout=30)
        assert r.status_code == 500
        assert r.json()["detail"] == ("Captioning a.jpg failed on the server (MemoryError); the server goes on: try "
                                      "again, and report it if it keeps happening.")
        again = httpx.post(f"{url}/api/caption", files={"file": ("a.jpg", jpeg_bytes(), "image/jpeg")}, timeout=30)
        assert again.status_code == 200
        health = httpx.get(f"{url}/api/health").json()
        assert health["status"] == "ok" and health["worker"]["failed"] == 1 and health["worker"]["captioned"] == 1


def open_files() -> list[str]:
    """The paths of the files this process has open now (Linux: /proc/self/fd)."""
    paths = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return paths


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc/self/fd to see open files")
def test_an_upload_goes_only_to_a_private_file_in_the_upload_folder(tmp_path, monkeypatch):
    """Not to the system's temporary folder, where a multipart parser would spool it (past 1 MB), even unnamed."""
    system_temp = tmp_path / "tmp"
    system_temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_temp))
    captioner = GatedCaptioner()
    app = create_app(captioner, max_upload_bytes=4 * 2**20)
    with local_client(app) as client, ThreadPoolExecutor(1) as pool:
        uploads = app.state.uploads
        answer = pool.submit(post_photo, client, jpeg_bytes() + bytes(2 * 2**20))
        assert captioner.entered.wait(timeout=30)  # the worker has the photo: the whole body has been read
        [[photo]] = captioner.calls
        elsewhere = [f for f in open_files() if f.startswith(str(system_temp)) and not f.startswith(str(uploads))]
        assert photo.parent == uploads and photo.stat().st_mode & 0o777 == 0o600
        captioner.gate.set()
        assert answer.result(timeout=30).status_code == 200
        assert elsewhere == [] and list(uploads.iterdir()) == []
        too_big = post_photo(client, bytes(4 * 2**20 + 1))
        assert too_big.status_code == 413 and list(uploads.iterdir()) == []  # a refused upload leaves no file


def test_concurrent_captions_each_get_their_own_photos_warning(captioner, tmp_path):
    cut = []
    for i in range(4):
        cut.append(tmp_path / f"cut{i}.jpg")
        cut[-1].write_bytes(truncated_jpeg_bytes())
    fine = EXAMPLES / "tabby_cat.jpg"

    def caption(i: int) -> list[Caption]:
        return captioner.caption([cut[i % 4], fine, cut[(i + 1) % 4]], batch_size=1)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(caption, range(12)))
    for i, captions in enumerate(results):
        assert [c.warning.split(":")[0] for c in captions] == [str(cut[i % 4]), "", str(cut[(i + 1) % 4])]


# ---- with a gallery of the six example photos ----

@pytest.fixture(scope="module")
def gallery(captioner, tmp_path_factory):
    return examples_gallery(tmp_path_factory.mktemp("web-gallery"), captioner)


@pytest.fixture(scope="module")
def gallery_client(captioner, gallery):
    with local_client(create_app(captioner, gallery)) as client:
        yield client


def photo_id(gallery, name: str) -> int:
    return next(i for i in range(1, 7) if gallery.photo(i).path.name == name)


def assert_matches(results, k: int, leaving_out: str | None = None, search: bool = False):
    assert len(results) == k
    for m in results:
        assert set(m) == {"id", "name", "caption", "score", "url", "thumbnail"} | (  # never a server path
            {"weak", "matched_by"} if search else set())
        assert m["url"] == f"/api/photo/{m['id']}" and m["thumbnail"] == f"/api/photo/{m['id']}/thumbnail"
        assert len(m["caption"].split()) == TINY_MAX_LEN
        assert m["name"] != leaving_out
    scores = [m["score"] for m in results]
    assert scores == sorted(scores, reverse=True)


def test_health_counts_the_gallery(gallery_client):
    assert gallery_client.get("/api/health").json()["gallery_photos"] == 6


def test_an_uploaded_photo_comes_with_similar_gallery_photos(gallery_client):
    body = post_photo(gallery_client, jpeg_bytes()).json()
    assert_matches(body["similar"], 6)


def test_an_uploaded_copy_of_a_gallery_photo_is_not_similar_to_itself(gallery_client):
    body = post_photo(gallery_client, (EXAMPLES / "tabby_cat.jpg").read_bytes(), "my cat.jpg").json()
    assert_matches(body["similar"], 5, leaving_out="tabby_cat.jpg")


def test_similar_to_a_gallery_photo(gallery_client, gallery):
    cat = photo_id(gallery, "tabby_cat.jpg")
    body = gallery_client.get(f"/api/similar?id={cat}").json()
    assert body["photo"]["id"] == cat and body["photo"]["name"] == "tabby_cat.jpg" and body["by"] == "both"
    assert_matches(body["results"], 5, leaving_out="tabby_cat.jpg")
    for by in ("visual", "caption"):
        assert_matches(gallery_client.get(f"/api/similar?id={cat}&k=2&by={by}").json()["results"], 2, "tabby_cat.jpg")


@pytest.mark.parametrize("query, status, detail", [
    ("id=999", 404, "The gallery has no photo 999."),
    ("id=1&by=colour", 422, None),
    ("id=1&k=0", 422, None),
    ("id=one", 422, None),
])
def test_similar_refuses_what_it_cannot_answer(gallery_client, query, status, detail):
    r = gallery_client.get(f"/api/similar?{query}")
    assert r.status_code == status
    if detail:
        assert r.json()["detail"] == detail


def test_search_finds_a_photo_by_its_caption(gallery_client, gallery):
    tripod = gallery.photo(photo_id(gallery, "man_with_camera_on_tripod.jpg"))
    body = gallery_client.get("/api/search", params={"q": tripod.caption, "k": 3}).json()
    assert body["query"] == tripod.caption
    assert_matches(body["results"], 3, search=True)
    assert body["results"][0]["id"] == tripod.id
    assert body["weak"] is False and not any(r["weak"] for r in body["results"])  # no embedding: none is weak


def test_search_says_when_nothing_matches_well(tiny_model_dir, tmp_path):
    """With an embedding whose weak score no match reaches, every result is weak, and so is the answer."""
    import shutil

    from captioner.models.embedding import Embedding, RetrievalConfig, save

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    save(model, Embedding(RetrievalConfig(width=32, heads=2, weak_score=2.5), 1280, 49))
    captioner = tiny_captioner(model)
    gallery = examples_gallery(tmp_path / "gallery", captioner)
    with local_client(create_app(captioner, gallery)) as client:
        body = client.get("/api/search", params={"q": "a spreadsheet of quarterly sales", "k": 3}).json()
    assert body["weak"] is True and len(body["results"]) == 3
    assert all(r["weak"] and r["matched_by"] in ("caption", "photo", "tags") for r in body["results"])
    gallery.close()


def test_a_blank_search_asks_for_words(gallery_client):
    r = gallery_client.get("/api/search", params={"q": "   "})
    assert r.status_code == 422
    assert r.json()["detail"] == "Type a few words that describe the photos you are looking for."


def test_a_search_is_blank_exactly_when_the_schema_says_so(gallery_client):
    """The schema's pattern is read by JSON Schema's (ECMAScript's) rules, as schemathesis reads it; the server
    strips Python's white space: they must agree on each white-space character of either."""
    import jsonschema_rs

    [q] = [p for p in gallery_client.get("/openapi.json").json()["paths"]["/api/search"]["get"]["parameters"]
           if p["name"] == "q"]
    valid = jsonschema_rs.validator_for(q["schema"]).is_valid
    for text in [" ", "\x85", "\x1f", "\u2028 \u3000", "\xa0", "\ufeff", "a"]:
        refused = gallery_client.get("/api/search", params={"q": text}).status_code == 422
        assert refused == (not valid(text)), repr(text)


def test_gallery_photos_are_served_by_id(gallery_client, gallery):
    cat = gallery.photo(photo_id(gallery, "tabby_cat.jpg"))
    r = gallery_client.get(f"/api/photo/{cat.id}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == (EXAMPLES / "tabby_cat.jpg").read_bytes()
    thumb = gallery_client.get(f"/api/photo/{cat.id}/thumbnail")
    assert thumb.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(thumb.content)) as img:
        assert max(img.size) == 320
    assert gallery_client.get("/api/photo/999").json()["detail"] == "The gallery has no photo 999."


@pytest.mark.parametrize("url", ["/api/photo/..%2F..%2F..%2Fetc%2Fpasswd", "/api/photo/%2Fetc%2Fpasswd",
                                 "/api/photo/1%2F..%2F..%2Fetc%2Fpasswd", "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
                                 "/static/../app.py", "/api/photo/-1"])
def test_no_file_outside_the_gallery_is_ever_served(gallery_client, url):
    r = gallery_client.get(url)
    assert r.status_code in (404, 422)
    assert b"root:" not in r.content and b"def create_app" not in r.content


def test_a_gallery_photo_can_be_explored_like_an_upload(gallery_client, gallery):
    cat = gallery.photo(photo_id(gallery, "tabby_cat.jpg"))
    body = gallery_client.get(f"/api/photo/{cat.id}/caption").json()
    assert body["id"] == cat.id and body["name"] == "tabby_cat.jpg"
    assert body["caption"] == cat.caption  # the same captioner, the same caption as when indexed
    assert len(body["attention"]["maps"]) == TINY_MAX_LEN + 1
    assert_matches(body["similar"], 5, leaving_out="tabby_cat.jpg")


def test_a_gallery_photo_gone_from_disk_is_a_clear_error(captioner, tmp_path):
    gallery = examples_gallery(tmp_path, captioner)
    (tmp_path / "photos" / "cup_of_coffee.jpg").unlink()
    cup = photo_id(gallery, "cup_of_coffee.jpg")
    with local_client(create_app(captioner, gallery)) as client:
        assert client.get(f"/api/photo/{cup}").json()["detail"] == (
            f"Photo {cup}'s file cup_of_coffee.jpg is gone from the disk.")
        assert client.get(f"/api/photo/{cup}/thumbnail").json()["detail"] == (
            f"Photo {cup}'s file cup_of_coffee.jpg is gone from the disk.")
        assert client.get(f"/api/photo/{cup}/caption").json()["detail"] == (
            f"Photo {cup}'s file cup_of_coffee.jpg is gone from the disk.")


def replace_with_another_photo(photo: Path, tmp_path: Path) -> None:
    photo.write_bytes((EXAMPLES / "tabby_cat.jpg").read_bytes())


def replace_with_a_link_forging_size_and_time(photo: Path, tmp_path: Path) -> None:
    """A link to a private file given the photo's size and modification time (any owner of a file can set them)."""
    st = photo.stat()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"password=hunter2\n".ljust(st.st_size, b"#"))
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    photo.unlink()
    photo.symlink_to(secret)


def replace_with_a_folder(photo: Path, tmp_path: Path) -> None:
    photo.unlink()
    photo.mkdir()


def replace_with_a_pipe(photo: Path, tmp_path: Path) -> None:
    photo.unlink()
    os.mkfifo(photo)  # opening it to read would wait for a writer forever


@pytest.mark.parametrize("replace", [replace_with_another_photo, replace_with_a_link_forging_size_and_time,
                                     replace_with_a_folder, replace_with_a_pipe])
def test_a_gallery_photo_is_served_only_as_it_was_indexed(captioner, tmp_path, replace):
    gallery = examples_gallery(tmp_path, captioner)
    cup = photo_id(gallery, "cup_of_coffee.jpg")
    replace(tmp_path / "photos" / "cup_of_coffee.jpg", tmp_path)
    with local_client(create_app(captioner, gallery)) as client:
        for route in ("", "/thumbnail", "/caption"):
            r = client.get(f"/api/photo/{cup}{route}")
            assert r.status_code == 410, route
            assert r.json()["detail"] == (f"Photo {cup}'s file cup_of_coffee.jpg is no longer the one the gallery "
                                          "indexed; index its folder again (captioner index) to show it.")


def test_a_cached_thumbnail_costs_no_hash_of_the_original(captioner, tmp_path, monkeypatch):
    gallery = examples_gallery(tmp_path, captioner)
    cup = photo_id(gallery, "cup_of_coffee.jpg")
    cat = photo_id(gallery, "tabby_cat.jpg")
    with local_client(create_app(captioner, gallery)) as client:
        made = lambda: client.app.state.thumbnails.made  # noqa: E731
        first = client.get(f"/api/photo/{cup}/thumbnail")
        assert first.status_code == 200 and made() == 1
        assert client.get(f"/api/photo/{cat}/thumbnail").content != first.content and made() == 2

        def no_hashing(*args, **kwargs):
            raise AssertionError("a cached thumbnail hashed its original")

        monkeypatch.setattr(hashlib, "file_digest", no_hashing)
        monkeypatch.setattr(hashlib, "sha256", no_hashing)
        again = client.get(f"/api/photo/{cup}/thumbnail")
        assert again.status_code == 200 and again.content == first.content and made() == 2
