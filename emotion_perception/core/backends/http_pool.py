"""HTTP to one or several model servers: a pool with health, retries of transient failures on
the same server, capped JSON bodies, TLS with the system trust store, request counters.

Used by the ``remote`` backend (vLLM's OpenAI-compatible API). A transient failure (HTTP 5xx,
429 honouring ``Retry-After``, connection refused or reset, timeout, a truncated, oversized or
non-JSON answer, an answer of the wrong shape) is retried on the same server with exponential
backoff; a server is taken out only after ``fail_threshold`` consecutive failures, for
``down_s`` (doubling, at most 16x), then probed back in. ROS-free; needs ``httpx``.
"""
from __future__ import annotations

import collections
import ipaddress
import json
import random
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np

from .base import BackendError, ModelLoadError

#: person reasons (EmotionResult.reason) of the transport failures
UNREACHABLE = 'server unreachable'
TIMEOUT = 'timeout'
BAD_RESPONSE = 'bad response'
#: error kinds counted in diagnostics
ERROR_KINDS = ('unreachable', 'timeout', 'http_4xx', 'http_5xx', 'http_429', 'bad_response')
#: largest response body read (bytes); a larger one is a bad response
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: longest wait a server's Retry-After may ask (s)
MAX_RETRY_AFTER_S = 10.0


class RequestFailed(BackendError):
    """One HTTP request failed (after its retries). ``kind`` is one of ``ERROR_KINDS``;
    ``reason`` is what a person's result says; ``retry``: a transient failure."""

    def __init__(self, kind: str, reason: str, retry: bool, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.kind, self.reason, self.retry = kind, reason, retry
        self.retry_after = retry_after


def parse_urls(url: Any) -> list[str]:
    """Base URLs (ending in /v1) from a string (comma/space separated) or a list of strings."""
    items = url.replace(',', ' ').split() if isinstance(url, str) else list(url or [])
    urls = [str(u).strip().rstrip('/') for u in items if str(u).strip()]
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ('http', 'https') or not parts.netloc:
            raise ValueError(f'backend url {u!r} is not an http(s) URL (e.g. '
                             "'http://gpu-server:8000/v1')")
    return urls


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ''
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- transport: servers, requests, counters ---------------------------------------------------
@dataclass
class Server:
    """One server of the pool and its health."""

    url: str
    in_flight: int = 0
    up: bool = True
    failures: int = 0
    outs: int = 0
    down_until: float = 0.0
    requests: int = 0
    errors: int = 0
    last_error: str = ''

    @property
    def root(self) -> str:
        """The server root (vLLM's /tokenize, /metrics, /health live there, not under /v1)."""
        return self.url[:-3] if self.url.endswith('/v1') else self.url


class ServerPool:
    """Servers balanced by least in-flight work. A server is taken out after
    ``fail_threshold`` consecutive failures for ``down_s`` (doubling, at most 16x), then the
    next caller probes it (alone, while other servers are up); a success puts it back."""

    def __init__(self, urls: Sequence[str], down_s: float = 1.0, fail_threshold: int = 3
                 ) -> None:
        if not urls:
            raise ValueError('no server URL')
        self.servers = [Server(u) for u in urls]
        self.down_s = float(down_s)
        self.fail_threshold = int(fail_threshold)
        self._lock = threading.Lock()

    def usable(self, exclude: Sequence[Server] = ()) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(s.up or s.down_until <= now for s in self.servers if s not in exclude)

    def acquire(self, exclude: Sequence[Server] = ()) -> Server:
        """A server for the next piece of work (its in-flight count taken).

        Raises:
            RequestFailed: every server is out and none is due for a probe.
        """
        now = time.monotonic()
        with self._lock:
            pool = [s for s in self.servers if s not in exclude]
            up = [s for s in pool if s.up]
            due = [s for s in pool if not s.up and s.down_until <= now]
            idle = [s for s in due if s.in_flight == 0]
            # a server due for a probe gets the next request alone while others are up;
            # with none up, everyone tries the due ones (rather than failing at once)
            usable = idle[:1] if idle and up else (up or due)
            if not usable:
                last = min(self.servers, key=lambda s: s.down_until)
                raise RequestFailed('unreachable', f'{UNREACHABLE} ({last.last_error})',
                                    retry=False)
            best = min(s.in_flight for s in usable)
            server = random.choice([s for s in usable if s.in_flight == best])
            server.in_flight += 1
            return server

    def release(self, server: Server) -> None:
        with self._lock:
            server.in_flight -= 1

    def succeeded(self, server: Server) -> None:
        with self._lock:
            server.requests += 1
            server.up, server.failures, server.outs = True, 0, 0

    def failed(self, server: Server, error: str) -> None:
        """A transient failure; ``fail_threshold`` in a row take the server out."""
        with self._lock:
            server.requests += 1
            server.errors += 1
            server.failures += 1
            server.last_error = error
            if server.failures >= self.fail_threshold:
                if server.up or server.down_until <= time.monotonic():
                    server.outs += 1
                server.up = False
                server.down_until = time.monotonic() + self.down_s * min(
                    16, 2 ** max(0, server.outs - 1))

    def answered(self, server: Server) -> None:
        """A 4xx: the server works, the request was wrong."""
        self.succeeded(server)
        with self._lock:
            server.errors += 1

    def state(self) -> dict[str, str]:
        with self._lock:
            return {s.url: ('up' if s.up else 'down') + f', {s.in_flight} in flight, '
                    f'{s.requests} requests, {s.errors} errors' for s in self.servers}


class RequestStats:
    """Request counters of the backend (thread-safe)."""

    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.retries = 0
        self.uploads = 0
        self.bytes_sent = 0
        self.errors: collections.Counter = collections.Counter()
        self._latency: collections.deque = collections.deque(maxlen=window)

    def start(self, nbytes: int = 0, upload: bool = False) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.bytes_sent += nbytes
            self.uploads += int(upload)

    def done(self, latency_s: float, kind: str = '') -> None:
        with self._lock:
            self.in_flight -= 1
            if kind:
                self.errors[kind] += 1
            else:
                self._latency.append(latency_s * 1e3)

    def count(self, what: str) -> None:
        with self._lock:
            if what == 'retry':
                self.retries += 1
            else:
                self.errors[what] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = np.asarray(self._latency, dtype=np.float64)
            out: dict[str, Any] = {'requests': self.requests, 'in_flight': self.in_flight,
                                   'retries': self.retries, 'image_uploads': self.uploads,
                                   'bytes_sent': self.bytes_sent}
            for kind in ERROR_KINDS:
                out[f'errors.{kind}'] = self.errors.get(kind, 0)
            if lat.size:
                for p in (50, 90, 99):
                    out[f'latency_ms.p{p}'] = round(float(np.percentile(lat, p)), 1)
            return out


def _error_message(body: bytes) -> str:
    """The server's error message (OpenAI/vLLM JSON bodies), shortened."""
    import json
    try:
        data = json.loads(body)
        msg = data.get('error', data) if isinstance(data, dict) else data
        msg = msg.get('message', msg) if isinstance(msg, dict) else msg
    except ValueError:
        msg = body.decode('utf-8', 'replace')
    return ' '.join(str(msg).split())[:300]


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(headers.get('retry-after', '0'))))
    except ValueError:
        return 0.0


def tls_context(verify_tls: bool, ca_bundle: str = '') -> Any:
    """``False`` (no verification), or an ``ssl.SSLContext`` with the system's trust store
    (OpenSSL's default paths: what ``update-ca-certificates`` maintains) or ``ca_bundle``.

    Raises:
        ModelLoadError: ``ca_bundle`` cannot be read.
    """
    if not verify_tls:
        return False
    try:
        return ssl.create_default_context(cafile=ca_bundle or None)
    except (OSError, ssl.SSLError) as exc:
        raise ModelLoadError(f'backend.ca_bundle {ca_bundle!r}: {exc}') from exc


class Transport:
    """JSON POST/GET over a ``ServerPool``: timeouts, retries on the same server, capped
    bodies, counters."""

    def __init__(self, urls: Sequence[str], api_key: str = '', timeout_s: float = 30.0,
                 retries: int = 3, max_concurrency: int = 16, verify: Any = True,
                 down_s: float = 1.0, fail_threshold: int = 3) -> None:
        import httpx
        self._httpx = httpx
        headers = {'Authorization': f'Bearer {api_key}'} if api_key else {}
        limits = httpx.Limits(max_connections=max(4, int(max_concurrency) * 2),
                              max_keepalive_connections=max(4, int(max_concurrency)))
        self.client = httpx.Client(headers=headers, timeout=float(timeout_s), verify=verify,
                                   limits=limits, trust_env=False)
        self.pool = ServerPool(urls, down_s, fail_threshold)
        self.stats = RequestStats()
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.backoff_s = 0.1

    def close(self) -> None:
        self.client.close()

    def _once(self, server: Server, method: str, path: str, body: bytes | None) -> Any:
        """One request to ``server``; returns the parsed JSON body."""
        httpx = self._httpx
        url = server.url + path[3:] if path.startswith('/v1/') else server.root + path
        try:
            headers = {'Content-Type': 'application/json'} if body is not None else {}
            with self.client.stream(method, url, content=body, headers=headers) as r:
                size = int(r.headers.get('content-length') or 0)
                if size > MAX_RESPONSE_BYTES:
                    raise RequestFailed('bad_response', f'{BAD_RESPONSE}: a body of {size} '
                                        f'bytes, over the {MAX_RESPONSE_BYTES} byte cap '
                                        f'({server.url})', retry=True)
                chunks, total = [], 0
                for chunk in r.iter_bytes():
                    total += len(chunk)
                    if total > MAX_RESPONSE_BYTES:
                        raise RequestFailed('bad_response', f'{BAD_RESPONSE}: body over the '
                                            f'{MAX_RESPONSE_BYTES} byte cap ({server.url})',
                                            retry=True)
                    chunks.append(chunk)
                data = b''.join(chunks)
                status, rheaders = r.status_code, r.headers
        except httpx.TimeoutException as exc:
            raise RequestFailed('timeout', f'{TIMEOUT} (after {self.timeout_s:g} s, '
                                f'{server.url})', retry=True) from exc
        except httpx.TransportError as exc:  # refused, reset, truncated body
            raise RequestFailed('unreachable', f'{UNREACHABLE} ({server.url}: '
                                f'{type(exc).__name__})', retry=True) from exc
        if status == 429:
            raise RequestFailed('http_429', f'HTTP 429 ({server.url}): {_error_message(data)}',
                                retry=True, retry_after=_retry_after(rheaders))
        if status >= 500:
            raise RequestFailed('http_5xx', f'HTTP {status} ({server.url}): '
                                f'{_error_message(data)}', retry=True,
                                retry_after=_retry_after(rheaders))
        if status >= 400:
            raise RequestFailed('http_4xx', f'HTTP {status}: {_error_message(data)}',
                                retry=False)
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise RequestFailed('bad_response', f'{BAD_RESPONSE}: not JSON ({server.url})',
                                retry=True) from exc
        if not isinstance(parsed, dict):
            raise RequestFailed('bad_response', f'{BAD_RESPONSE}: not a JSON object '
                                f'({server.url})', retry=True)
        return parsed

    def request(self, method: str, path: str, payload: Any = None,
                server: Server | None = None, check: Any = None) -> Any:
        """``method`` ``path`` (``/v1/...`` under the base URL, else under the server root) on
        ``server`` (else the least busy one), retried there after transient failures.

        Args:
            check: ``body -> None``, raising ``RequestFailed`` for an answer of the wrong
                shape (retried like a transient failure when its ``retry`` is set).

        Raises:
            RequestFailed: the last failure once the retries are spent (a 4xx at once).
        """
        body = None if payload is None else json.dumps(payload).encode()
        upload = body is not None and b'"data:image/' in body
        own = server is None
        target = server or self.pool.acquire()
        last: RequestFailed | None = None
        try:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.stats.count('retry')
                    wait = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                    time.sleep(max(wait, last.retry_after if last else 0.0))
                self.stats.start(len(body or b''), upload)
                t0 = time.perf_counter()
                try:
                    answer = self._once(target, method, path, body)
                    if check is not None:
                        check(answer)
                except RequestFailed as exc:
                    self.stats.done(time.perf_counter() - t0, exc.kind)
                    last = exc
                    if not exc.retry:
                        if exc.kind == 'http_4xx':
                            self.pool.answered(target)
                        raise
                    self.pool.failed(target, exc.reason)
                    continue
                self.stats.done(time.perf_counter() - t0)
                self.pool.succeeded(target)
                return answer
        finally:
            if own:
                self.pool.release(target)
        assert last is not None
        raise last


__all__ = ['BAD_RESPONSE', 'ERROR_KINDS', 'MAX_RESPONSE_BYTES', 'RequestFailed', 'RequestStats',
           'Server', 'ServerPool', 'TIMEOUT', 'Transport', 'UNREACHABLE', 'is_loopback',
           'parse_urls', 'tls_context']
