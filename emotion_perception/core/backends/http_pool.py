"""HTTP to one or several model servers: a pool with health probes, per-frame deadlines,
retries of transient failures on the same server, capped JSON bodies, TLS, proxies, counters.

Used by the ``remote`` backend (vLLM's OpenAI-compatible API).

* Every failure of a request (refused, reset, timeout, HTTP 5xx / 429 / 4xx, a truncated,
  undecodable, oversized, non-JSON or wrongly shaped answer, a closed client) becomes one
  ``RequestFailed`` in one place (``Transport._attempt``), counted once; the transient ones are
  retried on the same server with exponential backoff.
* A ``Deadline`` bounds all of a frame's requests, retries and backoff together (connect, read
  and backoff waits are cut to the time left) and ends them at once when cancelled (unload,
  deactivate); connect has its own short timeout.
* Server health: a server that does not answer (refused, reset, its read timeout)
  ``fail_threshold`` requests in a row is taken out. Any failed request, and a request left
  unanswered for longer than the connect timeout, makes the background ``HealthProber`` ask
  the server (``GET /v1/models``, bounded by the connect timeout): no answer takes it out (at
  once while a request to it is stalled as long, else at the second probe in a row),
  ``fail_threshold`` 5xx answers in a row too. Servers out are probed in the background
  every ``down_s`` (doubling while they keep being taken out, at most 16x) and put back on
  the first good answer. The failure of one request (an image the server rejects with a 5xx)
  never takes a server that answers its probes out of the pool.
* Proxies: ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` and ``NO_PROXY`` are followed as
  Python's ``urllib`` reads them (``proxy_for``); URLs carrying a user name or password are
  refused (they would reach logs); proxy URLs are logged without theirs.

ROS-free; needs ``httpx``.
"""
from __future__ import annotations

import collections
import ipaddress
import json
import math
import random
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from .base import BackendError, ModelLoadError

#: person reasons (EmotionResult.reason) of the transport failures
UNREACHABLE = 'server unreachable'
TIMEOUT = 'timeout'
BAD_RESPONSE = 'bad response'
DEADLINE = 'deadline exceeded'
CANCELLED = 'cancelled'
#: error kinds counted in diagnostics
ERROR_KINDS = ('unreachable', 'timeout', 'http_4xx', 'http_5xx', 'http_429', 'bad_response',
               'deadline', 'cancelled')
#: kinds where the server gave no answer at all (counted toward ``fail_threshold``)
NO_ANSWER = ('unreachable', 'timeout')
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


# -- URLs and proxies -------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """``url`` without the user name and password of its authority (``***@host``)."""
    parts = urlsplit(url)
    if '@' not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc='***@' + parts.netloc.rsplit('@', 1)[1]))


def parse_urls(url: Any) -> list[str]:
    """Base URLs (ending in /v1) from a string (comma/space separated) or a list of strings.

    Raises:
        ValueError: not an http(s) URL, or one carrying a user name or password (it would end
            up in logs and diagnostics: the key belongs in ``api_key_env``).
    """
    items = url.replace(',', ' ').split() if isinstance(url, str) else list(url or [])
    urls = [str(u).strip().rstrip('/') for u in items if str(u).strip()]
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ('http', 'https') or not parts.netloc:
            raise ValueError(f'backend url {redact_url(u)!r} is not an http(s) URL (e.g. '
                             "'http://gpu-server:8000/v1')")
        if '@' in parts.netloc:
            raise ValueError(f'backend url {redact_url(u)!r} carries a user name or password, '
                             'which would be shown in logs and diagnostics: put the key in an '
                             'environment variable and name it in backend.api_key_env')
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


def proxy_for(url: str, env: Mapping[str, str] | None = None) -> str:
    """The proxy URL requests to ``url`` go through, '' for none: ``<SCHEME>_PROXY`` (else
    ``ALL_PROXY``) from the environment unless ``NO_PROXY`` names the host (or a domain it is
    in, or ``*``), upper or lower case, as Python's ``urllib`` reads them."""
    proxies = (urllib.request.getproxies_environment() if env is None else
               {k[:-6].lower(): v for k, v in env.items() if k.lower().endswith('_proxy') and v})
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme) or proxies.get('all') or ''
    if proxy and urllib.request.proxy_bypass_environment(parts.netloc, proxies):
        return ''
    return proxy if not proxy or '://' in proxy else f'http://{proxy}'


# -- the time a frame may take ----------------------------------------------------------------
class Deadline:
    """The time left to one call's requests (``seconds`` None: no limit) and its cancellation.
    Every wait of those requests (connect, read, backoff, waiting for the persons) is cut to
    the time left and ends at once on ``cancel``."""

    def __init__(self, seconds: float | None = None, name: str = 'backend.deadline_s') -> None:
        self.seconds, self.name = seconds, name
        self.end = math.inf if seconds is None else time.monotonic() + float(seconds)
        self.cond = threading.Condition()
        self.cancel_reason = ''

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def cancel(self, reason: str) -> None:
        with self.cond:
            self.cancel_reason = self.cancel_reason or reason
            self.cond.notify_all()

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait(self, seconds: float, until: Callable[[], bool] = lambda: False,
             past: float = 0.0) -> None:
        """Sleep ``seconds`` at most: less when the deadline (plus ``past`` s) comes first,
        ``cancel`` is called or ``until()`` turns true (re-checked on ``notify``)."""
        end = time.monotonic() + max(0.0, min(seconds, self.remaining() + past))
        with self.cond:
            while not self.cancel_reason and not until():
                left = end - time.monotonic()
                if left <= 0:
                    return
                self.cond.wait(min(left, 0.5))  # ``until`` may also change unnotified

    def error(self, last: RequestFailed | None = None) -> RequestFailed | None:
        """The failure to answer with now: cancelled, or past the deadline; None: go on."""
        if self.cancel_reason:
            return RequestFailed('cancelled', f'{CANCELLED}: {self.cancel_reason}', retry=False)
        if self.remaining() <= 0:
            return RequestFailed('deadline', self.exceeded(last), retry=False)
        return None

    def exceeded(self, last: RequestFailed | None = None) -> str:
        """The reason of a person past the deadline (with the last failure, if any)."""
        why = f' (last: {last.reason})' if last is not None and last.kind != 'deadline' else ''
        return f'{DEADLINE}: no answer within {self.name}={self.seconds:g} s{why}'


# -- servers ----------------------------------------------------------------------------------
@dataclass(eq=False)
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
    #: why the last health probe failed ('' = it answered); failed probes in a row
    probe_error: str = ''
    probe_failures: int = 0
    #: requests waiting for an answer: token -> monotonic start
    waits: dict = field(default_factory=dict)

    @property
    def root(self) -> str:
        """The server root (vLLM's /tokenize, /metrics, /health live there, not under /v1)."""
        return self.url[:-3] if self.url.endswith('/v1') else self.url


class ServerPool:
    """Servers balanced by least in-flight work, taken out and put back (module docstring).
    ``listeners`` are called (without arguments) whenever a server goes out or comes back."""

    def __init__(self, urls: Sequence[str], down_s: float = 1.0, fail_threshold: int = 3
                 ) -> None:
        if not urls:
            raise ValueError('no server URL')
        self.servers = [Server(u) for u in urls]
        self.down_s = float(down_s)
        self.fail_threshold = int(fail_threshold)
        self.listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._seq = 0

    def usable(self, exclude: Sequence[Server] = ()) -> bool:
        with self._lock:
            return any(s.up for s in self.servers if s not in exclude)

    def acquire(self, exclude: Sequence[Server] = ()) -> Server:
        """The up server with the least work in flight (its in-flight count taken).

        Raises:
            RequestFailed: every server (not in ``exclude``) is out of the pool.
        """
        with self._lock:
            up = [s for s in self.servers if s.up and s not in exclude]
            if not up:
                out = [s for s in self.servers if s not in exclude] or self.servers
                raise RequestFailed('unreachable', f'{UNREACHABLE}: ' + '; '.join(
                    f'{s.url} is out of the pool ({s.last_error})' for s in out), retry=False)
            best = min(s.in_flight for s in up)
            server = random.choice([s for s in up if s.in_flight == best])
            server.in_flight += 1
            return server

    def release(self, server: Server) -> None:
        with self._lock:
            server.in_flight -= 1

    def begin(self, server: Server) -> int:
        """A request to ``server`` starts waiting for its answer; returns its token."""
        with self._lock:
            self._seq += 1
            server.waits[self._seq] = time.monotonic()
            return self._seq

    def end(self, server: Server, token: int) -> None:
        with self._lock:
            server.waits.pop(token, None)

    def oldest_wait(self, server: Server) -> float:
        """Since when (monotonic) the oldest unanswered request to ``server`` waits."""
        with self._lock:
            return min(server.waits.values(), default=math.inf)

    def succeeded(self, server: Server) -> None:
        """A request answered: the server is well."""
        with self._lock:
            server.requests += 1
            was_up = server.up
            server.up, server.failures, server.outs = True, 0, 0
        if not was_up:
            self._changed()

    def answered(self, server: Server) -> None:
        """A 4xx: the server works, the request was wrong."""
        self.succeeded(server)
        with self._lock:
            server.errors += 1

    def failed(self, server: Server, kind: str, error: str) -> None:
        """A failed request; ``fail_threshold`` in a row without any answer (``NO_ANSWER``)
        take the server out. Other failures only count (the prober decides)."""
        with self._lock:
            server.requests += 1
            server.errors += 1
            if kind not in NO_ANSWER:
                return
            server.failures += 1
            if server.failures < self.fail_threshold or not server.up:
                return
        self.take_out(server, error)

    def take_out(self, server: Server, error: str) -> None:
        """Out of the pool for ``down_s`` x 2^(times out in a row - 1), at most 16x."""
        with self._lock:
            server.last_error = error
            if not server.up:
                return
            server.up = False
            server.outs += 1
            server.down_until = time.monotonic() + self.down_s * min(
                16, 2 ** max(0, server.outs - 1))
        self._changed()

    def probed(self, server: Server, error: str = '', answered: bool = True,
               stalled: bool = False) -> None:
        """A health probe's outcome (``error`` '' = a good answer). No answer takes the server
        out at once when a request to it is stalled too (``stalled``: unanswered for longer
        than the probe may take), else at the second such probe in a row; ``fail_threshold``
        error answers in a row too. A server out stays out (probed again later) until a good
        answer brings it back."""
        if not error:
            with self._lock:
                server.probe_error, server.probe_failures = '', 0
                back = not server.up
                server.up, server.failures = True, 0
            if back:
                self._changed()
            return
        with self._lock:
            server.probe_error = error
            server.probe_failures += 1
            if not server.up:
                server.down_until = time.monotonic() + self.down_s * min(
                    16, 2 ** max(0, server.outs - 1))
                return
            strikes = self.fail_threshold if answered else (1 if stalled else 2)
            if server.probe_failures < strikes:
                return  # probed again at once (HealthProber)
        self.take_out(server, f'{error}; probed in the background')

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()

    def state(self) -> dict[str, str]:
        with self._lock:
            return {s.url: ('up' if s.up else f'down ({s.last_error})') + f', {s.in_flight} '
                    f'in flight, {s.requests} requests, {s.errors} errors' for s in self.servers}


class RequestStats:
    """Request counters of the backend (thread-safe)."""

    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.retries = 0
        self.uploads = 0
        self.bytes_sent = 0
        self.probes = 0
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
            elif what == 'probe':
                self.probes += 1
            else:
                self.errors[what] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = np.asarray(self._latency, dtype=np.float64)
            out: dict[str, Any] = {'requests': self.requests, 'in_flight': self.in_flight,
                                   'retries': self.retries, 'image_uploads': self.uploads,
                                   'bytes_sent': self.bytes_sent, 'health_probes': self.probes}
            for kind in ERROR_KINDS:
                out[f'errors.{kind}'] = self.errors.get(kind, 0)
            if lat.size:
                for p in (50, 90, 99):
                    out[f'latency_ms.p{p}'] = round(float(np.percentile(lat, p)), 1)
            return out


def _error_message(body: bytes) -> str:
    """The server's error message (OpenAI/vLLM JSON bodies), shortened."""
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


def expect(key: str, kind: type | tuple[type, ...], what: str) -> Callable[[Any], None]:
    """A ``check`` for ``Transport.request``: the answer has ``key`` of type ``kind``."""
    def check(body: Mapping[str, Any]) -> None:
        if not isinstance(body.get(key), kind):
            raise RequestFailed('bad_response', f'{BAD_RESPONSE}: {what} answered without '
                                f'{key!r} (keys: {sorted(body)[:8]})', retry=True)
    return check


# -- transport --------------------------------------------------------------------------------
class Transport:
    """JSON POST/GET over a ``ServerPool``: connect and read timeouts, deadlines, retries on
    the same server, capped bodies, counters, proxies, the background health prober."""

    def __init__(self, urls: Sequence[str], api_key: str = '', timeout_s: float = 30.0,
                 retries: int = 3, max_concurrency: int = 16, verify: Any = True,
                 down_s: float = 1.0, fail_threshold: int = 3,
                 connect_timeout_s: float = 3.0) -> None:
        """Raises ``ModelLoadError`` when a proxy of the environment cannot be used."""
        import httpx
        self._httpx = httpx
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.connect_timeout_s = float(connect_timeout_s)
        self.backoff_s = 0.1
        self.proxies = {u: proxy_for(u) for u in urls}
        self.client = self._client(api_key, max_concurrency, verify)
        self.pool = ServerPool(urls, down_s, fail_threshold)
        self.stats = RequestStats()
        self.prober = HealthProber(self)

    def _client(self, api_key: str, max_concurrency: int, verify: Any) -> Any:
        httpx = self._httpx
        headers = {'Authorization': f'Bearer {api_key}'} if api_key else {}
        limits = httpx.Limits(max_connections=max(4, int(max_concurrency) * 2),
                              max_keepalive_connections=max(4, int(max_concurrency)))
        mounts = {}
        for url, proxy in self.proxies.items():
            if not proxy:
                continue
            parts = urlsplit(url)
            try:
                mounts[f'{parts.scheme}://{parts.netloc}'] = httpx.HTTPTransport(
                    proxy=proxy, verify=verify, limits=limits)
            except (ImportError, ValueError) as exc:
                raise ModelLoadError(f'the proxy {redact_url(proxy)} (from the environment, '
                                     f'for {url}) cannot be used: {exc}') from exc
        return httpx.Client(headers=headers, verify=verify, limits=limits, trust_env=False,
                            mounts=mounts, timeout=httpx.Timeout(
                                self.timeout_s, connect=self.connect_timeout_s))

    def close(self) -> None:
        self.prober.stop()
        self.client.close()

    def _timeout(self, deadline: Deadline | None) -> Any:
        left = deadline.remaining() if deadline is not None else math.inf
        read = min(self.timeout_s, left)
        return self._httpx.Timeout(read, connect=min(self.connect_timeout_s, read))

    def _once(self, server: Server, method: str, path: str, body: bytes | None,
              deadline: Deadline | None) -> Any:
        """One request to ``server``; returns the parsed JSON body."""
        url = server.url + path[3:] if path.startswith('/v1/') else server.root + path
        headers = {'Content-Type': 'application/json'} if body is not None else {}
        with self.client.stream(method, url, content=body, headers=headers,
                                timeout=self._timeout(deadline)) as r:
            size = int(r.headers.get('content-length') or 0)
            if size > MAX_RESPONSE_BYTES:
                raise RequestFailed('bad_response', f'{BAD_RESPONSE}: a body of {size} bytes, '
                                    f'over the {MAX_RESPONSE_BYTES} byte cap ({server.url})',
                                    retry=True)
            chunks, total = [], 0
            for chunk in r.iter_bytes():
                total += len(chunk)
                if total > MAX_RESPONSE_BYTES:
                    raise RequestFailed('bad_response', f'{BAD_RESPONSE}: body over the '
                                        f'{MAX_RESPONSE_BYTES} byte cap ({server.url})',
                                        retry=True)
                if deadline is not None and deadline.remaining() <= 0:
                    raise self._httpx.ReadTimeout('the deadline passed while reading')
                chunks.append(chunk)
            return self._parse(server, r.status_code, r.headers, b''.join(chunks))

    @staticmethod
    def _parse(server: Server, status: int, headers: Mapping[str, str], data: bytes) -> Any:
        if status == 429:
            raise RequestFailed('http_429', f'HTTP 429 ({server.url}): {_error_message(data)}',
                                retry=True, retry_after=_retry_after(headers))
        if status >= 500:
            raise RequestFailed('http_5xx', f'HTTP {status} ({server.url}): '
                                f'{_error_message(data)}', retry=True,
                                retry_after=_retry_after(headers))
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

    def _attempt(self, server: Server, method: str, path: str, body: bytes | None,
                 check: Callable[[Any], None] | None, deadline: Deadline | None) -> Any:
        """One attempt: the parsed, checked answer; EVERY failure as a ``RequestFailed``."""
        httpx = self._httpx
        try:
            answer = self._once(server, method, path, body, deadline)
            if check is not None:
                check(answer)
            return answer
        except RequestFailed:
            raise
        except httpx.TimeoutException as exc:
            if deadline is not None and deadline.remaining() <= 0.01:
                raise RequestFailed('deadline', f'{deadline.exceeded()} ({server.url})',
                                    retry=False) from exc
            raise RequestFailed('timeout', f'{TIMEOUT} (no answer within {self.timeout_s:g} '
                                f's, {server.url})', retry=True) from exc
        except httpx.TransportError as exc:  # refused, reset, truncated body, TLS refused
            detail = ' '.join(str(exc).split())[:200]
            hint = ('; if the server\'s certificate is signed by your own CA, set '
                    'backend.ca_bundle to that CA file' if 'CERTIFICATE_VERIFY_FAILED' in detail
                    else '')
            raise RequestFailed('unreachable', f'{UNREACHABLE} ({server.url}: '
                                f'{type(exc).__name__}: {detail}{hint})', retry=True) from exc
        except Exception as exc:  # noqa: BLE001 - one path: a broken or unexpected answer
            if self.client.is_closed:
                raise RequestFailed('cancelled', f'{CANCELLED}: the backend was unloaded',
                                    retry=False) from exc
            raise RequestFailed('bad_response', f'{BAD_RESPONSE}: {type(exc).__name__}: '
                                f'{exc} ({server.url})'[:400], retry=True) from exc

    def request(self, method: str, path: str, payload: Any = None,
                server: Server | None = None, check: Any = None,
                deadline: Deadline | None = None) -> Any:
        """``method`` ``path`` (``/v1/...`` under the base URL, else under the server root) on
        ``server`` (else the least busy one), retried there after transient failures.

        Args:
            check: ``body -> None``, raising for an answer of the wrong shape (retried like a
                transient failure).
            deadline: bounds every wait of this request and its retries; cancels them.

        Raises:
            RequestFailed: the last failure once the retries are spent (a 4xx, the deadline
                or a cancel at once).
        """
        body = None if payload is None else json.dumps(payload).encode()
        upload = body is not None and b'"data:image/' in body
        own = server is None
        target = server or self.pool.acquire()
        try:
            return self._with_retries(target, method, path, body, upload, check, deadline)
        finally:
            if own:
                self.pool.release(target)

    def _with_retries(self, target: Server, method: str, path: str, body: bytes | None,
                      upload: bool, check: Any, deadline: Deadline | None) -> Any:
        last: RequestFailed | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.count('retry')
                wait = self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                if deadline is not None:
                    deadline.wait(max(wait, last.retry_after))
                else:
                    time.sleep(max(wait, last.retry_after))
            stop = deadline.error(last) if deadline is not None else None
            if stop is not None:
                raise stop
            self.stats.start(len(body or b''), upload)
            t0 = time.perf_counter()
            token = self.pool.begin(target)
            try:
                answer = self._attempt(target, method, path, body, check, deadline)
            except RequestFailed as exc:
                self.stats.done(time.perf_counter() - t0, exc.kind)
                self._count_failure(target, exc)
                last = exc
                if not exc.retry:
                    raise
                continue
            finally:
                self.pool.end(target, token)
            self.stats.done(time.perf_counter() - t0)
            self.pool.succeeded(target)
            return answer
        assert last is not None
        raise last

    def _count_failure(self, server: Server, exc: RequestFailed) -> None:
        if exc.kind == 'http_4xx':
            self.pool.answered(server)
        elif exc.kind != 'cancelled':
            self.pool.failed(server, exc.kind, exc.reason)
            self.prober.suspect(server)

    def probe(self, server: Server) -> tuple[str, bool]:
        """Ask ``server`` whether it answers (``GET /v1/models``, every timeout the connect
        timeout): ('', True) for an answer below 500; else (why not, whether it answered)."""
        httpx = self._httpx
        self.stats.count('probe')
        url = server.url + '/models' if server.url.endswith('/v1') else server.url + '/v1/models'
        try:
            r = self.client.get(url, timeout=httpx.Timeout(self.connect_timeout_s))
        except httpx.TimeoutException:
            return f'health probe: no answer within {self.connect_timeout_s:g} s', False
        except Exception as exc:  # noqa: BLE001 - refused, reset, closed: it does not answer
            return f'health probe: {type(exc).__name__}', False
        return (f'health probe: HTTP {r.status_code}', True) if r.status_code >= 500 else \
            ('', True)


class HealthProber:
    """A background thread that probes servers (``Transport.probe``): those out of the pool
    when they are due, those suspected (a failed request), and those with a request waiting
    longer than the connect timeout; it ends with ``stop``."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._cond = threading.Condition()
        self._suspects: set[int] = set()
        self._probed_at: dict[int, float] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name='remote-health', daemon=True)
        self._thread.start()

    def suspect(self, server: Server) -> None:
        with self._cond:
            self._suspects.add(id(server))
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _due(self, now: float) -> list[Server]:
        """Under the lock: the servers to probe now (one whose last probe failed: at once)."""
        pool = self.transport.pool
        quiet = max(self.transport.connect_timeout_s, pool.down_s)
        due = []
        for s in pool.servers:
            last = self._probed_at.get(id(s), -math.inf)
            if not s.up:
                due += [s] if s.down_until <= now else []
            elif s.probe_failures or (now - last >= quiet and (
                    id(s) in self._suspects or self.stalled(s, now))):
                due.append(s)
        return due

    def stalled(self, server: Server, now: float) -> bool:
        """A request to ``server`` has waited longer than a health probe may take."""
        return now - self.transport.pool.oldest_wait(server) > self.transport.connect_timeout_s

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                due = self._due(time.monotonic())
                if not due:
                    self._cond.wait(0.25)
                    continue
                for s in due:
                    self._suspects.discard(id(s))
            for s in due:
                error, answered = self.transport.probe(s)
                with self._cond:
                    if self._stopped:
                        return
                    self._probed_at[id(s)] = now = time.monotonic()
                self.transport.pool.probed(s, error, answered, self.stalled(s, now))


__all__ = ['BAD_RESPONSE', 'CANCELLED', 'DEADLINE', 'Deadline', 'ERROR_KINDS', 'HealthProber',
           'MAX_RESPONSE_BYTES', 'RequestFailed', 'RequestStats', 'Server', 'ServerPool',
           'TIMEOUT', 'Transport', 'UNREACHABLE', 'expect', 'is_loopback', 'parse_urls',
           'proxy_for', 'redact_url', 'tls_context']
