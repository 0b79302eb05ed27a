"""The ASGI guard in front of the app: API key and body size, checked before anything reads
the body."""

from __future__ import annotations

import hmac

from .errors import APIError


class Guard:
    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.key = api_key.encode() if api_key is not None else None
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key is not None and scope["path"].startswith("/v1/"):
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            # compare_digest: the time taken does not depend on where the keys differ
            good = hmac.compare_digest(token.strip(), self.key)
            if not (scheme.lower() == b"bearer" and good):
                err = APIError(
                    401,
                    "missing or incorrect API key: send 'Authorization: Bearer "
                    "KEY' with the key given to `lmgen serve --api-key`",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await err.response()(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
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
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await too_big.response()(scope, receive, send)
            body.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()  # afterwards: the disconnect, when it comes

        await self.app(scope, replay, send)
