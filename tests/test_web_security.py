"""Access control and browser protections, against a live uvicorn on 127.0.0.1: token, Host, Origin, headers."""
from __future__ import annotations

import base64
import hashlib
import re

import httpx
import pytest

from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.web.app import create_app, serve
from captioner.web.security import COOKIE
from webapp import EXAMPLES, LiveServer, examples_gallery, tiny_captioner

TOKEN = "correct-horse-battery-staple"
GALLERY_ROUTES = ["/api/health", "/api/search?q=a+dog", "/api/similar?id=1", "/api/photo/1",
                  "/api/photo/1/thumbnail", "/api/photo/1/caption"]


@pytest.fixture(scope="module")
def url(tiny_model_dir, tmp_path_factory):
    captioner = tiny_captioner(tiny_model_dir)
    gallery = examples_gallery(tmp_path_factory.mktemp("secure-gallery"), captioner)
    with LiveServer(create_app(captioner, gallery, token=TOKEN, allowed_hosts=frozenset({"photos.home"}))) as url:
        yield url


def bearer(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def post_photo(url: str, headers: dict) -> httpx.Response:
    photo = EXAMPLES / "tabby_cat.jpg"
    return httpx.post(f"{url}/api/caption", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                      headers=headers, timeout=60)


@pytest.mark.parametrize("route", GALLERY_ROUTES)
def test_every_api_route_photo_and_thumbnail_needs_the_token(url, route):
    missing = httpx.get(url + route)
    assert missing.status_code == 401
    assert missing.json()["detail"].startswith("This server needs its access token")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(url + route, headers=bearer("guess"))
    assert wrong.status_code == 401 and wrong.json()["detail"].startswith("The access token is wrong")
    assert httpx.get(url + route, headers={"Authorization": TOKEN}).status_code == 401  # not a Bearer header
    assert httpx.get(url + route, headers=bearer(), timeout=60).status_code == 200


def test_captioning_needs_the_token(url):
    assert post_photo(url, {}).status_code == 401
    assert post_photo(url, bearer("guess")).status_code == 401
    assert post_photo(url, bearer()).status_code == 200


def test_the_page_and_its_files_load_without_the_token_to_ask_for_it(url):
    page = httpx.get(url + "/")
    assert page.status_code == 200 and 'id="token-form"' in page.text
    assert httpx.get(url + "/static/app.js").status_code == 200


def test_the_token_buys_an_httponly_strict_cookie_that_opens_photos(url):
    assert httpx.post(url + "/api/session").status_code == 401
    assert httpx.post(url + "/api/session", headers=bearer("guess")).status_code == 401
    r = httpx.post(url + "/api/session", headers=bearer())
    assert r.status_code == 204
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert TOKEN not in cookie
    value = r.cookies[COOKIE]
    assert httpx.get(url + "/api/photo/1/thumbnail", cookies={COOKIE: value}).status_code == 200
    tampered = value[:-1] + ("1" if value.endswith("0") else "0")
    assert httpx.get(url + "/api/photo/1", cookies={COOKIE: tampered}).status_code == 401


@pytest.mark.parametrize("host, status", [("evil.example", 421), ("192.168.1.20:8000", 421),
                                          ("photos.home:8000", 200), ("localhost:8000", 200),
                                          ("127.0.0.1", 200), ("[::1]:8000", 200)])
def test_only_loopback_and_allowed_host_names_are_answered(url, host, status):
    r = httpx.get(url + "/api/health", headers=bearer() | {"Host": host})
    assert r.status_code == status
    if status == 421:
        assert r.json()["detail"].startswith(f"This server does not answer to the host name {host.split(':')[0]}")
        assert httpx.get(url + "/", headers={"Host": host}).status_code == 421  # the page too: no rebinding


def test_posts_from_another_site_are_refused(url):
    own = url.split("://")[1]
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "http://127.0.0.1:1"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):
        r = post_photo(url, bearer() | headers)
        assert r.status_code == 403, headers
        assert r.json()["detail"] == "Requests from other web sites are refused: use the page this server serves."
    assert post_photo(url, bearer() | {"Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"}).status_code == 200


@pytest.mark.parametrize("route", ["/", "/static/app.js", "/api/health", "/api/photo/1", "/docs", "/nowhere"])
def test_every_answer_carries_the_security_headers(url, route):
    for headers in ({}, bearer()):
        r = httpx.get(url + route, headers=headers)
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
        assert csp["frame-ancestors"] == "'none'" and csp["default-src"] == "'none'"
        assert csp["script-src"].startswith("'self'") and "unsafe" not in r.headers["content-security-policy"]


def test_the_api_docs_inline_script_is_allowed_by_its_hash_only(url):
    r = httpx.get(url + "/docs")
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    assert inline
    hashes = {"'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in inline}
    script_src = next(d for d in r.headers["content-security-policy"].split(";") if "script-src" in d).split()[1:]
    assert set(script_src) == {"'self'"} | hashes


def test_serve_refuses_a_network_address_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("CAPTIONER_TOKEN", raising=False)
    with pytest.raises(CaptionerError, match="would show every gallery photo and caption to anyone on the network"):
        serve(host="0.0.0.0")
    assert main(["serve", "--host", "192.168.1.20"]) == 1
    assert "set an access token (CAPTIONER_TOKEN=... or --token), or add --public" in capsys.readouterr().err
