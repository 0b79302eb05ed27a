"""The ASGI guard in front of the app, checked before anything reads or parses the body:

- the Host header, when the server is bound to loopback: only loopback names (and the hosts
  given with `--allowed-host`) are served, so a web page the user visits cannot reach the
  server through DNS rebinding (its requests carry the attacker's host name);
- the API key on /v1 and the tokenizer routes (one `Authorization` header, compared in
  constant time);
- the Host header's syntax (RFC 3986's `host [":" port]`, RFC 9112: a malformed one is a 400),
  whether or not the host is checked;
- the body: at most `max_body_bytes`, and UTF-8 (JSON's only encoding); a JSON body is decoded
  once here, so that what no request model can describe is refused with its own message,
  whatever the models look like: nesting deeper than MAX_JSON_DEPTH, a number longer than
  MAX_NUMBER_DIGITS, a lone surrogate (`"\\ud800"`, which JSON's \\u escapes can write but
  UTF-8 cannot) in any string or field name.
"""

from __future__ import annotations

import hmac
import ipaddress
import itertools
import json
import re

from lmgen.errors import ConfigError

from .errors import APIError

LOOPBACK_NAMES = ("localhost",)
KEYED_PATHS = ("/tokenize", "/detokenize", "/tokenizer_info")  # vLLM's, outside /v1


def needs_key(path: str) -> bool:
    return path.startswith("/v1/") or path in KEYED_PATHS


# RFC 3986 §3.2.2: host = IP-literal / IPv4address / reg-name, and §3.2.3: port = *DIGIT
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_IPV_FUTURE = re.compile(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+")
_PORT = re.compile(r"[0-9]*")


def parse_host(host: str) -> str | None:
    """A `Host` header's host, lowercased and without the port (`[::1]:8000` -> `::1`), or
    None when the header is not `host [":" port]` in RFC 3986's syntax: `[::1].evil.example`,
    `a b`, `[::1`, `x:80:80`, a non-ASCII byte."""
    if not host.isascii():
        return None
    if host.startswith("["):
        end = host.find("]")
        literal, rest = host[1:end], host[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and _PORT.fullmatch(rest[1:]))):
            return None
        if _IPV_FUTURE.fullmatch(literal):
            return literal.lower()
        try:  # IPv6address (no zone: RFC 6874's "%25" zones are not for Host headers)
            return ipaddress.IPv6Address(literal).compressed if "%" not in literal else None
        except ValueError:
            return None
    name, colon, port = host.partition(":")
    if colon and not _PORT.fullmatch(port):
        return None
    return name.lower() if _REG_NAME.fullmatch(name) else None


def host_name(host: str) -> str:
    """An allowed host as given to `--allowed-host` (`my.box`, `my.box:8000`, `[::1]`) ->
    the name compared with Host headers; ConfigError when it is not a host."""
    name = parse_host(host.strip())
    if not name:
        raise ConfigError(
            f"--allowed-host takes a host name or address, got {host!r}", "allowed_host"
        )
    return name


def is_loopback_name(name: str) -> bool:
    name = name.removesuffix(".")  # "localhost." is the same name, fully qualified
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
        """Whether a well-formed Host header (see parse_host) is served."""
        name = parse_host(host)
        return name is not None and (self.any or is_loopback_name(name) or name in self.extra)


# -- the JSON body -----------------------------------------------------------------------------

MAX_JSON_DEPTH = 64  # arrays and objects in one another; requests need a handful
# digits in a JSON number: every integer of up to 308 digits converts to a float (float64
# ends near 1.8e308); the largest a field takes has 20
MAX_NUMBER_DIGITS = 308


def _digits(literal: str) -> int:
    return sum(c.isdigit() for c in literal)


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[{}\[\]:,]|[^\s{}\[\]:,"]+')


def _shown(text: str) -> str:
    """A name or path for a message: lone surrogates as \\udxxx escapes, short."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 60 else text[:57] + "..."


def _where(text: str, stop) -> tuple[str | None, int] | None:
    """Scans the JSON `text` token by token until `stop(token, depth)` holds; returns the
    top-level field it is in (None outside one) and the character offset; None if it never
    does. Only for the error paths: a Python loop over the tokens."""
    depth, field, key, after_colon = 0, None, None, False
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if depth == 1 and tok.startswith('"') and not after_colon:
            key = tok
        elif depth == 1 and tok == ":":
            after_colon = True
            try:
                field = json.loads(key)
            except ValueError:
                field = None
        elif depth == 1 and tok == ",":
            after_colon, field = False, None
        if tok in "{[":
            depth += 1
        elif tok in "]}":
            depth -= 1
        if stop(tok, depth):
            return (field if isinstance(field, str) else None), m.start()
    return None


def _lone_surrogate(text: str) -> tuple[int, str] | None:
    """(position, "U+D800") of the first lone surrogate in `text`, or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start, f"U+{ord(text[e.start]):04X}"


def _unicode_error(text: str, path: str, field: str | None, is_name: bool) -> APIError | None:
    found = _lone_surrogate(text)
    if found is None:
        return None
    at, char = found
    if not is_name:
        what = f"text is not valid Unicode: a lone surrogate {char} at character {at}"
        return APIError(
            400, f"{what} of {_shown(path)!r}" if path else what, param=field, code="invalid_value"
        )
    what = f"a field name is not valid Unicode: a lone surrogate {char} at character {at}"
    if path:  # a key inside a field (logit_bias, a JSON schema, ...)
        return APIError(
            400, f"{what} of a name in {_shown(path)!r}", param=field, code="invalid_value"
        )
    return APIError(400, f"{what} of the name {text[:60]!r}", code="invalid_parameter_name")


def check_json(obj) -> APIError | None:
    """The first thing in a decoded body that no field can take: nesting deeper than
    MAX_JSON_DEPTH, a lone surrogate in a string or a field name."""
    stack = [(obj, 1, None, "")]  # (value, depth, top-level field, path)
    while stack:
        value, depth, field, path = stack.pop()
        if isinstance(value, str):
            err = _unicode_error(value, path, field, False)
            if err is not None:
                return err
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            return APIError(
                400,
                f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} deep "
                f"({f'in {field!r}' if field else f'at {_shown(path)!r}'})",
                param=field,
                code="nesting_too_deep",
            )
        is_dict = isinstance(value, dict)
        items = list(value.items() if is_dict else enumerate(value))
        for k, _ in items if is_dict else ():
            err = _unicode_error(k, path, field, True)
            if err is not None:
                return err
        for k, v in reversed(items):  # depth first, in the document's order
            if isinstance(v, dict | list | str):
                sub = (f"{path}.{k}" if path else k) if is_dict else f"{path}[{k}]"
                top = k if is_dict and depth == 1 else field
                stack.append((v, depth + 1, top, sub))
    return None


_LONG_DIGITS = re.compile(rf"[0-9]{{{MAX_NUMBER_DIGITS + 1}}}")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800-\udfff, paired or not
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # unrolled: 3x faster than (a|b)*
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _depth(text: str) -> int:
    """How deep arrays and objects nest in the JSON `text` (at C speed: strings cut out by a
    regex, the brackets summed by accumulate)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _too_deep(text: str) -> APIError:
    field, at = _where(text, lambda tok, depth: depth > MAX_JSON_DEPTH) or (None, len(text))
    where = f"in {field!r}" if field else f"at character {at}"
    return APIError(
        400,
        f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} deep ({where})",
        param=field,
        code="nesting_too_deep",
    )


def _long_number(text: str) -> APIError | None:
    found = _where(text, lambda tok, _: tok[0] != '"' and _digits(tok) > MAX_NUMBER_DIGITS)
    if found is None:
        return None  # the long run of digits is inside a string
    field, at = found
    digits = _digits(_TOKEN.match(text, at).group())
    where = f"in {field!r}" if field else f"at character {at}"
    return APIError(
        400,
        f"a number {where} has {digits:,} digits; JSON numbers here may have at most "
        f"{MAX_NUMBER_DIGITS} digits (what a float can hold)",
        param=field,
        code="number_too_large",
    )


def decode_error(body: bytes) -> APIError | None:
    """None when `body` (UTF-8, no byte order mark) is JSON with nothing that no field can
    take; else the 400 to answer. Whatever this decoder refuses is refused here, so the app
    only ever parses a body checked here (FastAPI's own decoder would take UTF-16 and UTF-32,
    whose surrogates this check would not have seen). The checks cost a few regex scans of the
    text; the slow paths run only when those find something."""
    text = body.decode("utf-8")
    if _LONG_DIGITS.search(text):
        err = _long_number(text)
        if err is not None:
            return err
    try:
        obj = json.loads(text)
    except RecursionError:
        return _too_deep(text)
    except ValueError as e:  # JSONDecodeError, or Python's own limits
        return APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json")
    if _depth(text) > MAX_JSON_DEPTH:
        return _too_deep(text)
    if _SURROGATE_ESCAPE.search(text):  # raw UTF-8 cannot hold a surrogate: only an escape
        return check_json(obj)
    return None


def is_json(headers: dict) -> bool:
    """Whether FastAPI reads this body as JSON: application/json or application/*+json (the
    check FastAPI makes; without a Content-Type it reads no JSON at all)."""
    kind = headers.get(b"content-type")
    if kind is None:
        return False
    main = kind.decode("latin-1").split(";")[0].strip().lower()
    return main == "application/json" or (
        main.startswith("application/") and main.endswith("+json")
    )


def as_json(scope: dict) -> dict:
    """`scope` with its Content-Type said to be application/json. Every body of this API is
    JSON, and curl's `-d` sends JSON as application/x-www-form-urlencoded: a body that parses
    as JSON is taken whatever its Content-Type says (as llama.cpp's server takes it), after
    the same checks as any other (FastAPI would otherwise read it as no JSON at all)."""
    headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


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
        if body:
            # RFC 8259 §8.1: a parser may ignore a byte order mark; the app never sees one
            body = body.removeprefix(b"\xef\xbb\xbf")
            err = decode_error(body)
            if err is not None:
                return await err.response()(scope, receive, send)
            if not is_json(headers):
                scope = as_json(scope)
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
        hosts = [v.decode("latin-1") for k, v in raw if k == b"host"]
        if len(hosts) > 1 or (hosts and hosts[0] and parse_host(hosts[0]) is None):
            # RFC 9112 §3.2: a 400 for more than one Host, or one that is not a host
            shown = hosts[0][:100] if len(hosts) == 1 else f"{len(hosts)} Host headers"
            return APIError(
                400,
                f"malformed Host header {shown!r}: send one `host[:port]` (RFC 3986)"
                if len(hosts) == 1
                else f"the request has {shown}; send exactly one",
                code="invalid_host",
            )
        if self.hosts is not None:
            host = hosts[0] if hosts else ""
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
