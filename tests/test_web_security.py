"""Access control and browser protections, against a live uvicorn on 127.0.0.1: token, Host, Origin, headers."""
from __future__ import annotations

import base64
import hashlib
import re
import time

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from captioner.captioning import Captioner
from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.web.app import create_app, serve
from captioner.web.security import COOKIE, SESSION_EXPIRED, SESSION_SECONDS, WrongTokens, session_value
from webapp import EXAMPLES, LiveServer, examples_gallery, tiny_captioner

TOKEN = "correct-horse-battery-staple"
GALLERY_ROUTES = ["/api/health", "/api/search?q=a+dog", "/api/similar?id=1", "/api/photo/1",
                  "/api/photo/1/thumbnail", "/api/photo/1/caption"]
PUBLIC_ROUTES = {"/", "/static", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/static-offline-docs"}
"""The only routes outside /api/: the page, its files and the API docs, which the page needs to ask for the token."""
ROUTES = list(iter_route_contexts(create_app(None).routes))  # the app's own and its routers' (web/routes.py)
API_ROUTES = [(method, re.sub(r"\{[^}]+\}", "1", route.path)) for route in ROUTES
              if route.path.startswith("/api/") for method in sorted(route.methods - {"HEAD"})]
"""(method, path) of every /api/ route the app has, path parameters set to 1: walked, so a new route is covered."""


@pytest.fixture(scope="module")
def url(tiny_model_dir, tmp_path_factory):
    captioner = tiny_captioner(tiny_model_dir)
    gallery = examples_gallery(tmp_path_factory.mktemp("secure-gallery"), captioner)
    app = create_app(captioner, gallery, token=TOKEN, allowed_hosts=frozenset({"photos.home"}), max_wrong_tokens=1000)
    with LiveServer(app) as url:
        yield url


@pytest.fixture
def no_model(monkeypatch):
    """`serve` past its checks would load the shipped model and serve until killed: there, it fails at once."""
    monkeypatch.delenv("CAPTIONER_TOKEN", raising=False)

    def load(model=None, **_):
        raise RuntimeError("serve went past its checks")

    monkeypatch.setattr(Captioner, "load", load)


def bearer(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def post_photo(url: str, headers: dict) -> httpx.Response:
    photo = EXAMPLES / "tabby_cat.jpg"
    return httpx.post(f"{url}/api/caption", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                      headers=headers, timeout=60)


@pytest.mark.parametrize("method, route", API_ROUTES)
def test_every_api_route_needs_the_token(url, method, route):
    missing = httpx.request(method, url + route)
    assert missing.status_code == 401
    assert missing.json()["detail"].startswith("This server needs its access token")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.request(method, url + route, headers=bearer("a-guess-of-sixteen-chars"))
    assert wrong.status_code == 401 and wrong.json()["detail"].startswith("The access token is wrong")
    assert httpx.request(method, url + route, headers={"Authorization": TOKEN}).status_code == 401  # not Bearer
    assert httpx.request(method, url + route, headers=bearer(), timeout=60).status_code not in (401, 429)


def test_only_the_page_its_files_and_the_api_docs_are_outside_the_api():
    assert {route.path for route in ROUTES if not route.path.startswith("/api/")} == PUBLIC_ROUTES


@pytest.mark.parametrize("route", GALLERY_ROUTES)
def test_the_token_opens_every_gallery_route_photo_and_thumbnail(url, route):
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


def test_the_session_cookie_expires(url):
    cookie = httpx.post(url + "/api/session", headers=bearer()).headers["set-cookie"]
    assert f"Max-Age={SESSION_SECONDS}" in cookie
    now = int(time.time())
    assert httpx.get(url + "/api/health", cookies={COOKIE: session_value(TOKEN, now - 60)}).status_code == 200
    stale = httpx.get(url + "/api/health", cookies={COOKIE: session_value(TOKEN, now - SESSION_SECONDS - 1)})
    assert stale.status_code == 401 and stale.json()["detail"] == SESSION_EXPIRED
    later = httpx.get(url + "/api/health", cookies={COOKIE: session_value(TOKEN, now + 3600)})  # forged, or a bad clock
    assert later.status_code == 401
    other = httpx.get(url + "/api/health", cookies={COOKIE: session_value("another-token-of-the-same-length", now)})
    assert other.status_code == 401 and other.json()["detail"].startswith("The access token is wrong")


def test_the_cookie_is_secure_when_the_page_came_over_https(url):
    assert "secure" not in httpx.post(url + "/api/session", headers=bearer()).headers["set-cookie"].lower()
    # a TLS proxy on this machine: uvicorn trusts its X-Forwarded-Proto (FORWARDED_ALLOW_IPS names other proxies)
    proxied = httpx.post(url + "/api/session", headers=bearer() | {"X-Forwarded-Proto": "https"})
    assert "; secure" in proxied.headers["set-cookie"].lower()


def test_wrong_tokens_are_limited_per_client_with_retry_after():
    app = create_app(None, token=TOKEN, max_wrong_tokens=3)  # /api/session needs no model
    guesser, neighbour = (TestClient(app, base_url="http://localhost", client=(ip, 50000))
                          for ip in ("10.0.0.1", "10.0.0.2"))
    assert guesser.post("/api/session").status_code == 401  # no token is no guess
    stale = {"Cookie": f"{COOKIE}={session_value('the-token-before-a-restart', int(time.time()))}"}
    for _ in range(5):  # a page's requests with its cookie from before the server's token changed: one guess
        assert guesser.get("/api/health", headers=stale).status_code == 401
    for i in range(2):
        assert guesser.post("/api/session", headers=bearer(f"guess-number-{i}-of-many")).status_code == 401
    for r in (guesser.post("/api/session", headers=bearer("guess-number-3-of-many")),
              guesser.post("/api/session", headers=bearer()),  # even the right token waits, or guessing goes on
              guesser.get("/api/health", headers=bearer())):
        assert r.status_code == 429
        wait = int(r.headers["retry-after"])
        assert 1 <= wait <= 60
        assert r.json()["detail"] == (f"Too many wrong access tokens came from this address; try again in {wait} s.")
    assert neighbour.post("/api/session", headers=bearer()).status_code == 204


def test_wrong_tokens_are_counted_once_each_and_forgotten_after_the_window():
    wrong = WrongTokens(limit=2, window=60.0)
    wrong.add("10.0.0.1", "first-guess", now=0.0)
    wrong.add("10.0.0.1", "first-guess", now=5.0)  # the same guess again
    assert wrong.wait("10.0.0.1", now=5.0) == 0
    wrong.add("10.0.0.1", "second-guess", now=10.0)
    assert wrong.wait("10.0.0.1", now=10.0) == 50 and wrong.wait("10.0.0.2", now=10.0) == 0
    assert wrong.wait("10.0.0.1", now=60.5) == 0  # the first guess is forgotten


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


def test_serve_refuses_a_network_address_without_a_token(no_model, capsys):
    with pytest.raises(CaptionerError, match="would show every gallery photo and caption to anyone on the network"):
        serve(host="0.0.0.0")
    assert main(["serve", "--host", "192.168.1.20"]) == 1
    assert "set an access token (CAPTIONER_TOKEN=... or --token), or add --public" in capsys.readouterr().err


def test_serve_refuses_any_host_name_without_a_token(no_model, capsys):
    """With '*' any host name is answered, a rebinding page's own included: its Origin equals the Host it sends."""
    with pytest.raises(CaptionerError, match=r"--allowed-host '\*' would let any web site"):
        serve(allowed_host=["*"])
    assert main(["serve", "--allowed-host", "photos.home", "--allowed-host", "*"]) == 1
    assert "set an access token (CAPTIONER_TOKEN=... or --token), or add --public" in capsys.readouterr().err
    for allowed in ({"token": TOKEN}, {"public": True}):
        with pytest.raises(RuntimeError, match="went past its checks"):
            serve(allowed_host=["*"], **allowed)


def test_serve_and_the_app_refuse_a_short_token(no_model, capsys):
    with pytest.raises(CaptionerError, match="the access token has 5 characters; use at least 16"):
        serve(token="short")
    with pytest.raises(CaptionerError, match="the access token has 15 characters; use at least 16"):
        create_app(None, token="x" * 15)
    assert main(["serve", "--token", "short"]) == 1
    assert "use at least 16" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="went past its checks"):
        serve(token="x" * 16)
