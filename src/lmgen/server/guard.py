"""The ASGI guard in front of the app, checked before anything reads or parses the body:

- the Host header, when the server is bound to loopback: only loopback names (and the hosts
  given with `--allowed-host`) are served, so a web page the user visits cannot reach the
  server through DNS rebinding (its requests carry the attacker's host name);
- the API key on /v1 and the tokenizer routes (one `Authorization` header, compared in
  constant time);
- the body: at most `max_body_bytes`, and UTF-8 (JSON's only encoding).
"""

from __future__ import annotations

import hmac
import ipaddress

from .errors import APIError

LOOPBACK_NAMES = ("localhost",)
KEYED_PATHS = ("/tokenize", "/detokenize", "/tokenizer_info")  # vLLM's, outside /v1


def needs_key(path: str) -> bool:
    return path.startswith("/v1/") or path in KEYED_PATHS


def host_name(host: str) -> str:
    """`Host` header -> the name without the port: `[::1]:8000` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def is_loopback_name(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """Which Host headers are served: loopback names, plus `extra` ("*" = any)."""

    def __init__(self, extra: list[str] | tuple[str, ...] = ()):
        self.any = "*" in extra
        self.extra = {host_name(h) for h in extra if h != "*"}

    def allows(self, host: str) -> bool:
        name = host_name(host)
        return self.any or is_loopback_name(name) or name in self.extra


class Guard:
    def __init__(
        self, app, api_key: str | None, max_body_bytes: int, hosts: HostCheck | None = None
    ):
        self.app = app
        self.key = api_key.encode() if api_key is not None else None
        self.max_body = max_body_bytes
        self.hosts = hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        err = self.check_headers(scope)
        if err is not None:
            return await err.response()(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        too_big = APIError(
            413, f"the request body is larger than {self.max_body} bytes", code="request_too_large"
        )
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await APIError(400, "invalid Content-Length").response()(
                    scope, receive, send
                )
            if int(length) > self.max_body:
                return await too_big.response()(scope, receive, send)
        chunks, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await too_big.response()(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            err = APIError(
                400,
                f"the request body is not valid JSON: it is not UTF-8 (byte 0x{body[e.start]:02x} "
                f"at offset {e.start})",
                code="invalid_json",
            )
            return await err.response()(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: the disconnect, when it comes

        await self.app(scope, replay, send)

    def check_headers(self, scope) -> APIError | None:
        raw = scope.get("headers") or []
        if self.hosts is not None:
            hosts = [v for k, v in raw if k == b"host"]
            host = hosts[0].decode("latin-1") if len(hosts) == 1 else ""
            if not self.hosts.allows(host):
                return APIError(
                    421,
                    f"this server does not answer for the host {host[:100]!r}: it serves "
                    "loopback names and the hosts given with `lmgen serve --allowed-host`",
                    code="invalid_host",
                )
        auth = [v for k, v in raw if k == b"authorization"]
        if len(auth) > 1:
            return APIError(
                400,
                f"the request has {len(auth)} Authorization headers; send exactly one",
                code="invalid_authorization",
            )
        if self.key is not None and needs_key(scope["path"]):
            scheme, _, token = (auth[0] if auth else b"").partition(b" ")
            # compare_digest: the time taken does not depend on where the keys differ
            good = hmac.compare_digest(token.strip(), self.key)
            if not (scheme.lower() == b"bearer" and good):
                return APIError(
                    401,
                    "missing or incorrect API key: send 'Authorization: Bearer "
                    "KEY' with the key given to `lmgen serve --api-key`",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return None
