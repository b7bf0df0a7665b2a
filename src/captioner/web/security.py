"""Who may use the server, and what a browser may do with its pages: one ASGI middleware.

- Host check: a request must name this server by an allowed host (loopback
  names, the address it listens on, and any `--allowed-host`), so a web page
  elsewhere cannot reach a server on 127.0.0.1 by DNS rebinding.
- Token: with a token set, every /api/ route needs it, as `Authorization:
  Bearer TOKEN` (scripts) or the HttpOnly SameSite=Strict cookie that
  `POST /api/session` sets (the page, whose images cannot send headers).
  The page itself, its static files and the API docs need none. A token
  shorter than MIN_TOKEN_CHARS is refused at start.
- Session cookie: its issue time and an HMAC of it keyed by the token (so the
  token never sits in the browser's cookie jar); it expires after
  SESSION_SECONDS (Max-Age, and checked here). It is `Secure` when the request
  came over https: directly, or through a TLS proxy whose X-Forwarded-Proto
  uvicorn trusts (one on this machine by default; FORWARDED_ALLOW_IPS names
  others). A proxy nobody trusts cannot make an http request look secure.
- Guessing: a client address that sent WRONG_TOKEN_LIMIT different wrong
  tokens (or cookies) within WRONG_TOKEN_WINDOW seconds is answered 429 with
  Retry-After, whatever token it sends, until the oldest of them is that old.
  The same wrong one again is no new guess: a page's many requests with its
  cookie from before the server's token changed lock nobody out.
- Cross-site requests: a POST whose Origin is another site is refused.
- Headers on every answer: a strict Content-Security-Policy (inline scripts
  only by the hash of what the page serves, as the API docs need),
  `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import re
import time
from collections import deque
from typing import Literal

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CaptionerError

COOKIE = "captioner_session"
MIN_TOKEN_CHARS = 16
SESSION_SECONDS = 12 * 3600
CLOCK_SKEW = 60
"""Seconds a session cookie's issue time may lie in the future (a clock set back a little)."""
WRONG_TOKEN_LIMIT = 10
WRONG_TOKEN_WINDOW = 60.0
CLIENTS_KEPT = 10_000
"""Client addresses whose wrong tokens are remembered at most (the stale ones are forgotten first)."""
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = ("default-src 'none'; script-src 'self'{scripts}; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self'; connect-src 'self'; font-src 'self'; manifest-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"DENY"), (b"cross-origin-opener-policy", b"same-origin"),
           (b"cross-origin-resource-policy", b"same-origin")]
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
NEEDS_TOKEN = "This server needs its access token: send `Authorization: Bearer TOKEN`, or enter it on the page."
WRONG_TOKEN = "The access token is wrong: use the one `captioner serve` was started with (--token or CAPTIONER_TOKEN)."
SESSION_EXPIRED = "The page's session has expired: enter the access token again."
TOO_MANY = "Too many wrong access tokens came from this address; try again in {wait} s."
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="captioner"'}
Credentials = Literal["none", "token", "expired", "wrong"]


def check_token(token: str | None) -> None:
    """Refuse (CaptionerError) a token short enough to guess."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise CaptionerError(f"the access token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} (make "
                             "one with: python -c 'import secrets; print(secrets.token_urlsafe())')")


def check_exposure(host: str, token: str | None, public: bool, allowed_host: list[str]) -> None:
    """Refuse (CaptionerError) to serve, without a token, what others could reach, unless `public` says so.

    A non-loopback `host` shows the gallery to the network; `--allowed-host '*'`
    on loopback lets any web site's page read the server through its visitors'
    browsers by DNS rebinding (that page's Origin equals the Host it sends, so
    only the host check stops it).
    """
    check_token(token)
    if token is not None or public:
        return
    how = "set an access token (CAPTIONER_TOKEN=... or --token), or add --public to serve without one on purpose"
    if not is_loopback(host):
        raise CaptionerError(f"serving on {host} would show every gallery photo and caption to anyone on the "
                             f"network: {how}")
    if "*" in allowed_host:
        raise CaptionerError("--allowed-host '*' would let any web site read this server through its visitors' "
                             f"browsers (by DNS rebinding): {how}")


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only reaches this machine."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """A Host header's (or an Origin's) host, lower case, without its port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def session_value(token: str, issued: int) -> str:
    """The cookie's value: its issue time (Unix seconds) and an HMAC of it keyed by the token."""
    mac = hmac.new(token.encode(), f"captioner page session {issued}".encode(), hashlib.sha256)
    return f"{issued}.{mac.hexdigest()}"


def bearer(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def presented(headers: Headers) -> tuple[str, str] | None:
    """("bearer", token) or ("cookie", the session cookie's value) that the request carries, the header first."""
    given = bearer(headers)
    if given is not None:
        return "bearer", given
    cookies = dict(part.strip().partition("=")[::2] for part in headers.get("cookie", "").split(";") if "=" in part)
    return ("cookie", cookies[COOKIE]) if COOKIE in cookies else None


def credentials(given: tuple[str, str] | None, token: str, now: float) -> Credentials:
    """What `presented` found is: nothing, the token (or a live session cookie), an expired cookie, or wrong."""
    if given is None:
        return "none"
    kind, value = given
    if kind == "bearer":
        return "token" if hmac.compare_digest(value.encode(), token.encode()) else "wrong"
    issued = value.partition(".")[0]
    if not re.fullmatch(r"[0-9]{1,12}", issued) \
            or not hmac.compare_digest(value.encode(), session_value(token, int(issued)).encode()):
        return "wrong"
    return "token" if -CLOCK_SKEW <= now - int(issued) <= SESSION_SECONDS else "expired"


class WrongTokens:
    """The different wrong tokens (or cookies) each client address sent in the last `window` seconds, by time
    and fingerprint (never the guess itself); at `limit` of them, the address waits. Used from the event
    loop's thread only."""

    def __init__(self, limit: int = WRONG_TOKEN_LIMIT, window: float = WRONG_TOKEN_WINDOW):
        self.limit = limit
        self.window = window
        self._guesses: dict[str, deque[tuple[float, bytes]]] = {}

    def add(self, client: str, guess: str, now: float | None = None) -> None:
        """Count `guess` against `client`, unless it already sent the same one within the window."""
        now = time.monotonic() if now is None else now
        fingerprint = hashlib.sha256(guess.encode()).digest()[:16]
        guesses = self._guesses.get(client, ())
        if any(f == fingerprint and t > now - self.window for t, f in guesses):
            return
        if len(self._guesses) >= CLIENTS_KEPT:
            self._forget(now)
        self._guesses.setdefault(client, deque(maxlen=self.limit)).append((now, fingerprint))

    def wait(self, client: str, now: float | None = None) -> int:
        """Whole seconds until `client` may send a token again (0: now)."""
        now = time.monotonic() if now is None else now
        guesses = self._guesses.get(client, ())
        if len(guesses) < self.limit or guesses[0][0] <= now - self.window:
            return 0
        return max(1, math.ceil(guesses[0][0] + self.window - now))

    def _forget(self, now: float) -> None:
        """Drop the addresses whose latest guess is out of the window, else the half that guessed first."""
        recent = {c: g for c, g in self._guesses.items() if g[-1][0] > now - self.window}
        if len(recent) >= CLIENTS_KEPT:
            recent = dict(sorted(recent.items(), key=lambda item: item[1][-1][0])[len(recent) // 2:])
        self._guesses = recent


class Guard:
    """ASGI middleware enforcing the rules above; `token=None` leaves the API open (loopback use)."""

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: frozenset[str],
                 max_wrong_tokens: int = WRONG_TOKEN_LIMIT):
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.wrong_tokens = WrongTokens(max_wrong_tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            status, detail, extra = refusal
            await JSONResponse({"detail": detail}, status, headers=extra)(scope, receive, with_headers(send))
            return
        await self.app(scope, receive, with_headers(send))

    def refusal(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        """(status, sentence, headers) for a request this server must not answer, else None."""
        headers = Headers(scope=scope)
        host = host_name(headers.get("host", ""))
        if "*" not in self.allowed_hosts and not is_loopback(host) and host not in self.allowed_hosts:
            return 421, (f"This server does not answer to the host name {host or '(none)'}; start it with "
                         f"`captioner serve --allowed-host {host or 'NAME'}` to allow it."), {}
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin is not None \
                and origin.split("://", 1)[-1].lower() != headers.get("host", "").lower():
            return 403, "Requests from other web sites are refused: use the page this server serves.", {}
        if scope["method"] not in SAFE_METHODS and headers.get("sec-fetch-site") == "cross-site":
            return 403, "Requests from other web sites are refused: use the page this server serves.", {}
        if self.token is not None and scope["path"].startswith("/api/"):
            return self.token_refusal(headers, (scope.get("client") or ("",))[0], scope["path"])
        return None

    def token_refusal(self, headers: Headers, client: str, path: str) -> tuple[int, str, dict[str, str]] | None:
        """Why an /api/ request's credentials do not open it (`POST /api/session` asks for the token itself)."""
        given = presented(headers)
        found = credentials(given, self.token, time.time())
        wait = self.wrong_tokens.wait(client) if given is not None else 0
        if wait:
            return 429, TOO_MANY.format(wait=wait), {"Retry-After": str(wait)}
        if found == "wrong":
            self.wrong_tokens.add(client, given[1])
            return 401, WRONG_TOKEN, CHALLENGE
        if found == "expired":
            return 401, SESSION_EXPIRED, CHALLENGE
        if found == "none" and path != "/api/session":
            return 401, NEEDS_TOKEN, CHALLENGE
        return None


def with_headers(send: Send) -> Send:
    """`send`, adding the security headers to the answer; an HTML answer's CSP allows its own inline scripts."""
    start: Message | None = None
    body = b""

    async def sending(message: Message) -> None:
        nonlocal start, body
        if message["type"] == "http.response.start":
            start = message
            if not _is_html(message):
                await send(_secured(message, b""))
            return
        if message["type"] != "http.response.body" or start is None or not _is_html(start):
            await send(message)
            return
        body += message.get("body", b"")  # an HTML page is small: hold it to hash its inline scripts
        if not message.get("more_body", False):
            await send(_secured(start, body))
            await send({"type": "http.response.body", "body": body})

    return sending


def _is_html(start: Message) -> bool:
    return any(k == b"content-type" and v.startswith(b"text/html") for k, v in start["headers"])


def _secured(start: Message, html: bytes) -> Message:
    hashes = "".join(f" 'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'"
                     for s in INLINE_SCRIPT.findall(html))
    headers = [(k, v) for k, v in start["headers"] if k not in {h for h, _ in HEADERS} | {b"content-security-policy"}]
    return start | {"headers": headers + HEADERS + [(b"content-security-policy", CSP.format(scripts=hashes).encode())]}


def allowed_hosts(listen: str, extra: list[str]) -> frozenset[str]:
    """The host names the server answers to besides loopback: the address it listens on and `extra`."""
    names = {host_name(h) if h != "*" else "*" for h in extra}
    if listen not in ("0.0.0.0", "::", ""):
        names.add(host_name(listen) if ":" not in listen else listen.lower())
    return frozenset(names)
