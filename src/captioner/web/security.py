"""Who may use the server, and what a browser may do with its pages: one ASGI middleware.

- Host check: a request must name this server by an allowed host (loopback
  names, the address it listens on, and any `--allowed-host`), so a web page
  elsewhere cannot reach a server on 127.0.0.1 by DNS rebinding.
- Token: with a token set, every /api/ route needs it, as `Authorization:
  Bearer TOKEN` (scripts) or the HttpOnly SameSite=Strict cookie that
  `POST /api/session` sets (the page, whose images cannot send headers).
  The page itself, its static files and the API docs need none.
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
import re

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "captioner_session"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = ("default-src 'none'; script-src 'self'{scripts}; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; font-src 'self'; manifest-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"DENY"), (b"cross-origin-opener-policy", b"same-origin"),
           (b"cross-origin-resource-policy", b"same-origin")]
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
NEEDS_TOKEN = "This server needs its access token: send `Authorization: Bearer TOKEN`, or enter it on the page."
WRONG_TOKEN = "The access token is wrong: use the one `captioner serve` was started with (--token or CAPTIONER_TOKEN)."


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


def session_value(token: str) -> str:
    """The cookie's value: derived from the token, so the token itself never sits in the browser's cookie jar."""
    return hmac.new(token.encode(), b"captioner page session", hashlib.sha256).hexdigest()


def bearer(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def has_token(headers: Headers, token: str) -> bool:
    """Whether the request carries the token (header) or the page's session cookie."""
    given = bearer(headers)
    if given is not None:
        return hmac.compare_digest(given.encode(), token.encode())
    cookies = dict(part.strip().partition("=")[::2] for part in headers.get("cookie", "").split(";") if "=" in part)
    return hmac.compare_digest(cookies.get(COOKIE, "").encode(), session_value(token).encode())


class Guard:
    """ASGI middleware enforcing the rules above; `token=None` leaves the API open (loopback use)."""

    def __init__(self, app: ASGIApp, token: str | None, allowed_hosts: frozenset[str]):
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts

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
        if self.token is not None and scope["path"].startswith("/api/") and scope["path"] != "/api/session" \
                and not has_token(headers, self.token):
            given = bearer(headers) is not None or COOKIE in headers.get("cookie", "")
            return 401, WRONG_TOKEN if given else NEEDS_TOKEN, {"WWW-Authenticate": 'Bearer realm="captioner"'}
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
