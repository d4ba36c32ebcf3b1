"""The teacher's request path: what each request carries, and what each answer means.

One place builds a request to an endpoint (its URL and query, its headers with the credentials
read from the endpoint's config: never from a client object's fields), and one place reads what
went wrong (`classify`), in three classes:

- `endpoint`: nothing sent there can succeed (401, 403, 404, 405, 407, a quota used up, a
  certificate that does not verify, a host that does not resolve after every retry): the run stops;
- `request`: this request is bad (400, 413, 422, other 4xx): it is quarantined, the run goes on;
- `transient`: later may work (408, 409, 429, 5xx, timeouts, resets, cut bodies): retried, waiting
  as long as the provider asks (`retry-after`, `retry-after-ms`, `x-ratelimit-reset-*`).

Error answers become the openai client's public exception for their status, built here (not with
the client's private helper), so code that catches openai's errors works on ours too.
"""

from __future__ import annotations

import email.utils
import functools
import importlib
import json
import platform
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
import openai

from factory.teacher.config import Endpoint

# the HTTP library under the openai client (httpx, or httpx2 in newer releases): its exceptions take its Response
_httpx = importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])

Kind = Literal["transient", "request", "endpoint"]
TRANSIENT_STATUS = {408, 409, 429}
ENDPOINT_STATUS = {401, 403, 404, 405, 407}
STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
    404: openai.NotFoundError, 409: openai.ConflictError, 422: openai.UnprocessableEntityError,
    429: openai.RateLimitError}
USER_AGENT = f"AsyncOpenAI/Python {openai.__version__}"
# the platform headers the openai client sends with every request (its retry count and timeout ones excepted)
PLATFORM = {"X-Stainless-Lang": "python", "X-Stainless-Package-Version": openai.__version__,
            "X-Stainless-OS": {"Linux": "Linux", "Darwin": "MacOS", "Windows": "Windows"}.get(platform.system(),
                                                                                               f"Other:{platform.system()}"),
            "X-Stainless-Arch": {"x86_64": "x64", "AMD64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
                platform.machine(), f"other:{platform.machine()}"),
            "X-Stainless-Runtime": platform.python_implementation(), "X-Stainless-Runtime-Version": platform.python_version(),
            "X-Stainless-Async": "async:asyncio"}
JSON_BODY = {"Content-Type": "application/json"}
LIMIT_HEADERS = re.compile(r"^(x-ratelimit-|retry-after|anthropic-ratelimit-)", re.I)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's TLS context (the CA bundle openai's client verifies with), made once: loading the
    bundle costs ~50 ms of CPU, more than a hundred requests."""
    return _httpx.create_ssl_context()


def credentials(ep: Endpoint, key: str | None) -> dict[str, str]:
    """The header that carries the endpoint's key: `Authorization: Bearer KEY`, or the provider's own
    header named by `auth_header` (e.g. Azure OpenAI's `api-key: KEY`); none without a key."""
    if not key:
        return {}
    if ep.auth_header.lower() == "authorization":
        return {"Authorization": f"Bearer {key}"}
    return {ep.auth_header: key}


def request_headers(ep: Endpoint, key: str | None) -> dict[str, str]:
    """Every header a request to `ep` carries: what the openai client sends, the config's extra
    headers, and the credentials last (an extra header never replaces them). A request with a body
    adds `JSON_BODY`."""
    return {"Accept": "application/json", "User-Agent": USER_AGENT, **PLATFORM, **ep.headers, **credentials(ep, key)}


def url(ep: Endpoint, path: str) -> str:
    """`base_url` + path, with the endpoint's query parameters (e.g. Azure's api-version)."""
    u = f"{ep.base_url.rstrip('/')}/{path.lstrip('/')}"
    return f"{u}?{urlencode(ep.query)}" if ep.query else u


def session(ep: Endpoint, key: str | None, connections: int, timeout_s: float) -> aiohttp.ClientSession:
    """A pooled session for one endpoint (keep-alive connections up to `connections`), every request
    carrying `request_headers`."""
    conn = aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=None, ssl=tls_context())
    return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 cookie_jar=aiohttp.DummyCookieJar(), headers=request_headers(ep, key))


def status_error(status: int, headers: Any, body: bytes, method: str, where: str) -> openai.APIStatusError:
    """The openai exception for an error answer, as the openai client raises it: the same class, message
    ("Error code: N - <the provider's error.message>"), `.body` (the `error` object, else the whole
    answer), `.code` and `.response` (tests/teacher/test_wire.py compares them)."""
    text = body.decode("utf-8", "replace").strip()
    parsed: Any = text
    message = f"Error code: {status}"
    try:
        parsed = json.loads(text)
    except ValueError:
        pass
    else:
        err = parsed.get("error", parsed) if isinstance(parsed, dict) else None
        said = err.get("message") if isinstance(err, dict) else None
        if isinstance(said, str) and said:
            message += f" - {said}"
    data = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    response = _httpx.Response(status, headers=list(headers.items()), content=body,
                               request=_httpx.Request(method, where))
    cls = STATUS_ERRORS.get(status) or (openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return cls(message, response=response, body=data)


def duration_s(text: str) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "20ms", "1h2m3.5s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text or "")
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def retry_after_s(headers: Any) -> float | None:
    """Seconds the provider asks to wait: `retry-after-ms`, `retry-after` (seconds or an HTTP date),
    else OpenAI's `x-ratelimit-reset-requests/-tokens` (of the limit that ran out, if they say)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    val = headers.get("retry-after")
    if val:
        try:
            return max(0.0, float(val))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(val)
            except (TypeError, ValueError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - time.time())
    resets = {}
    for kind in ("requests", "tokens"):
        reset = duration_s(headers.get(f"x-ratelimit-reset-{kind}") or "")
        if reset is not None:
            resets[kind] = reset
    spent = [resets[k] for k in resets if headers.get(f"x-ratelimit-remaining-{k}") == "0"]
    return max(spent or resets.values()) if resets else None


def limits_seen(headers: Any) -> dict[str, str]:
    """The rate-limit headers of an answer (for `factory teacher check`)."""
    return {k.lower(): v for k, v in (headers or {}).items() if LIMIT_HEADERS.match(k)}


@dataclass(frozen=True)
class Verdict:
    """What a failed request means: `reason` (e.g. http_401, timeout), its class, the wait asked for."""

    reason: str
    kind: Kind
    wait: float | None = None
    status: int | None = None

    @property
    def retryable(self) -> bool:
        return self.kind == "transient"


def _chain(exc: BaseException) -> list[BaseException]:
    seen, out = exc, []
    while seen is not None and len(out) < 8:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


def refused(exc: BaseException) -> bool:
    """The connection could not be opened at all (nothing listens there), not dropped after."""
    return any(isinstance(e, ConnectionRefusedError) or type(e).__name__ == "ConnectError" for e in _chain(exc))


def classify(exc: BaseException) -> Verdict:
    """The one place that says what an exception from a request means (see the module's docstring)."""
    chain = _chain(exc)
    if any(isinstance(e, (ssl.SSLCertVerificationError, aiohttp.ClientConnectorCertificateError)) for e in chain):
        return Verdict("tls", "endpoint")
    if any(type(e).__name__ in ("ClientConnectorDNSError", "gaierror") for e in chain):
        return Verdict("dns", "transient")  # may be a blip: endpoint-fatal once retries run out
    if isinstance(exc, (openai.APITimeoutError, TimeoutError)):
        return Verdict("timeout", "transient")
    if isinstance(exc, (openai.APIConnectionError, aiohttp.ClientError, ConnectionError)):
        return Verdict("connection", "transient")
    if isinstance(exc, openai.APIStatusError):
        st = exc.status_code
        wait = retry_after_s(exc.response.headers) if exc.response is not None else None
        if st == 429 and error_code(exc) == "insufficient_quota":  # OpenAI: the account's quota is spent
            return Verdict("http_429_insufficient_quota", "endpoint", None, st)
        if st in TRANSIENT_STATUS or st >= 500:
            return Verdict(f"http_{st}", "transient", wait, st)
        return Verdict(f"http_{st}", "endpoint" if st in ENDPOINT_STATUS else "request", None, st)
    if isinstance(exc, (openai.APIResponseValidationError, ValueError, KeyError, TypeError, IndexError, AttributeError)):
        return Verdict("malformed", "transient")  # json.JSONDecodeError is a ValueError
    return Verdict(type(exc).__name__, "request")


def error_code(exc: openai.APIStatusError) -> str | None:
    """The provider's error code (`error.code`, else `error.type`) of an error answer."""
    body = exc.body if isinstance(exc.body, dict) else {}
    code = body.get("code") or body.get("type")
    return str(code) if code else None


def server_message(exc: BaseException, n: int = 200) -> str:
    """The provider's own message of an error answer (`error.message`), else the exception's text."""
    body = getattr(exc, "body", None)
    msg = next((body[k] for k in ("message", "detail", "error") if isinstance(body.get(k), str)), None) \
        if isinstance(body, dict) else body if isinstance(body, str) else None
    return str(msg or exc).replace("\n", " ")[:n]
