"""A counting, fault-injecting HTTP proxy on 127.0.0.1 in front of a real server (tests, bench).

Every request is forwarded to ``upstream`` (e.g. a vLLM server started by ``vllm_server``) and
counted: requests per path, bytes received, image uploads (bodies holding a ``data:image/``
URL). Faults are injected on every ``every``-th matching request (``every=1``: all of them):

* ``503`` / ``429``: that status with a JSON error (429 with ``Retry-After: retry_after``);
* ``reset``: the connection is closed without an answer (TCP RST);
* ``slow``: the answer is held ``slow_s`` seconds (past the client's timeout);
* ``truncate``: the status line and headers of the real answer, then half its body, then close;
* ``oversize``: 200 with a body of ``oversize_bytes`` (over the client's cap);
* ``badjson``: 200 with a body that is not JSON;
* ``dropid``: the real answer with one log-prob entry removed from every choice (a server that
  loses a requested token id);
* ``shape``: 200 with a JSON object of another shape (``{"unexpected": true}``);
* ``badgzip``: 200 with ``Content-Encoding: gzip`` and a body that is not gzip;
* ``badindex``: the real answer with every choice's ``index`` replaced by a string.

A fault may also be limited to requests whose body contains ``body`` (e.g. one person's image
uuid: a server that rejects one image).

A whole link can be cut at run time: ``proxy.silent = True`` (a Wi-Fi drop) makes the proxy
accept connections and read requests but answer nothing, for new requests and for those in
flight (their answers are lost), until ``proxy.silent = False``; requests held meanwhile are
then closed without an answer (``counts.held``). ``silent_when``, a function of (path, body),
cuts the link at the first request for which it returns True (that request is held too).

It is also a forward proxy for ``HTTP_PROXY`` (absolute-form request lines: ``counts.proxied``)
and ``HTTPS_PROXY`` (``CONNECT`` tunnels: ``counts.tunnels``), to a loopback target only, and
serves https with ``tls=(certfile, keyfile)``.

Loopback only: it binds 127.0.0.1 and forwards only to loopback.
"""
from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

FAULTS = ('503', '429', 'reset', 'slow', 'truncate', 'oversize', 'badjson', 'dropid', 'shape',
          'badgzip', 'badindex')
LOOPBACK = ('127.0.0.1', 'localhost', '::1')


@dataclass
class Fault:
    """Inject ``kind`` on every ``every``-th request whose path starts with ``path`` (and
    whose body contains ``body``)."""

    kind: str
    every: int = 1
    path: str = '/'
    body: bytes = b''
    slow_s: float = 5.0
    retry_after: float = 1.0
    oversize_bytes: int = 17 * 1024 * 1024
    seen: int = 0
    injected: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ValueError(f'fault kind must be one of {FAULTS}, got {self.kind!r}')
        if self.every < 1:
            raise ValueError('every must be >= 1')


@dataclass
class Counts:
    requests: int = 0
    uploads: int = 0
    bytes_in: int = 0
    paths: Counter = field(default_factory=Counter)
    #: requests held unanswered while the link was silent
    held: int = 0
    #: requests that came as a forward proxy's (absolute URL) / CONNECT tunnels opened
    proxied: int = 0
    tunnels: int = 0


class FaultProxy:
    """``FaultProxy(upstream_url).start()``; ``url`` is the proxied base URL (with /v1 when
    the upstream's has it); ``faults`` may be replaced between requests; ``silent`` switched
    at any time; ``reset_counts()``."""

    def __init__(self, upstream: str, faults: list[Fault] | None = None,
                 tls: tuple[str, str] | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in LOOPBACK:
            raise ValueError('the fault proxy forwards to loopback only')
        self.up_host, self.up_port = parts.hostname, parts.port or 80
        self.suffix = parts.path.rstrip('/')
        self.faults: list[Fault] = list(faults or [])
        self.counts = Counts()
        self._lock = threading.Lock()
        self._link = threading.Event()  # set: the link is up (not silent)
        self._link.set()
        self._stopped = False
        self.silent_when: Callable[[str, bytes], bool] | None = None
        self.silenced_at = 0.0  # monotonic time silent_when cut the link
        self.server = _QuietServer(('127.0.0.1', 0), _handler(self))
        self.server.daemon_threads = True
        self.scheme = 'http'
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = 'https'
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f'{self.scheme}://127.0.0.1:{self.port}{self.suffix}'

    @property
    def silent(self) -> bool:
        """True while the link is cut: requests are read and held, nothing is answered."""
        return not self._link.is_set()

    @silent.setter
    def silent(self, value: bool) -> None:
        if value:
            self._link.clear()
        else:
            self._link.set()

    def start(self) -> 'FaultProxy':
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._link.set()  # held requests end
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> 'FaultProxy':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset_counts(self) -> Counts:
        with self._lock:
            old, self.counts = self.counts, Counts()
        return old

    def _pick(self, path: str, body: bytes) -> Fault | None:
        with self._lock:
            chosen = None
            for f in self.faults:
                if path.startswith(f.path) and f.body in body:
                    f.seen += 1
                    if chosen is None and f.seen % f.every == 0:
                        f.injected += 1
                        chosen = f
            return chosen

    def _hold(self, h: BaseHTTPRequestHandler) -> bool:
        """While the link is silent: hold the request (answer nothing) until it is back, then
        close the connection. True when the request was held."""
        if self._link.is_set():
            return False
        with self._lock:
            self.counts.held += 1
        self._link.wait()
        h.close_connection = True
        return True

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        n = int(h.headers.get('Content-Length') or 0)
        body = h.rfile.read(n) if n else b''
        target = (self.up_host, self.up_port)
        if h.path.startswith('http://'):  # used as HTTP_PROXY: the request names its target
            parts = urlsplit(h.path)
            if parts.hostname not in LOOPBACK:
                return self._reply(h, 403, b'{"error": "loopback only"}')
            target = (parts.hostname, parts.port or 80)
            h.path = parts.path + (f'?{parts.query}' if parts.query else '')
            with self._lock:
                self.counts.proxied += 1
        with self._lock:
            self.counts.requests += 1
            self.counts.bytes_in += len(body)
            self.counts.uploads += int(b'"data:image/' in body)
            self.counts.paths[h.path.split('?')[0]] += 1
        if self.silent_when is not None and self.silent_when(h.path, body):
            self.silent_when, self.silent = None, True
            self.silenced_at = time.monotonic()
        if self._hold(h):
            return
        fault = self._pick(h.path, body)
        kind = fault.kind if fault else ''
        if kind and self._inject(h, fault):
            return
        status, headers, data = self._forward(target, method, h.path, body, h.headers)
        if kind == 'slow':
            time.sleep(fault.slow_s)
        if self._hold(h):  # the link went silent while the server worked: the answer is lost
            return
        if kind == 'dropid':
            data = _drop_one_id(data)
        if kind == 'badindex':
            data = _bad_index(data)
        h.send_response(status)
        for k, v in headers:
            if k.lower() not in ('content-length', 'transfer-encoding', 'connection', 'date',
                                 'server'):
                h.send_header(k, v)
        h.send_header('Content-Length', str(len(data)))
        h.end_headers()
        try:
            h.wfile.write(data[:len(data) // 2] if kind == 'truncate' else data)
        except OSError:
            pass
        if kind == 'truncate':
            h.close_connection = True

    def _inject(self, h: BaseHTTPRequestHandler, fault: Fault) -> bool:
        """Answer with ``fault`` instead of the server; False for the faults that need the
        server's answer first (slow, truncate, dropid)."""
        kind = fault.kind
        if kind in ('503', '429'):
            data = json.dumps({'error': {'message': f'injected {kind}', 'code': int(kind)}}
                              ).encode()
            extra = {'Retry-After': f'{fault.retry_after:g}'} if kind == '429' else {}
            self._reply(h, int(kind), data, extra)
        elif kind == 'reset':
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            h.close_connection = True
            h.connection.close()
        elif kind == 'oversize':
            h.send_response(200)
            h.send_header('Content-Type', 'application/json')
            h.send_header('Content-Length', str(fault.oversize_bytes))
            h.end_headers()
            chunk = b' ' * 65536
            try:
                for _ in range(fault.oversize_bytes // len(chunk)):
                    h.wfile.write(chunk)
            except OSError:
                pass
            h.close_connection = True
        elif kind == 'badjson':
            self._reply(h, 200, b'{"choices": [ not json')
        elif kind == 'shape':
            self._reply(h, 200, b'{"unexpected": true}')
        elif kind == 'badgzip':
            self._reply(h, 200, b'this is not gzip', {'Content-Encoding': 'gzip'})
        else:
            return False
        return True

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, data: bytes,
               headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header('Content-Type', 'application/json')
        h.send_header('Content-Length', str(len(data)))
        h.end_headers()
        try:
            h.wfile.write(data)
        except OSError:
            pass

    def _forward(self, target: tuple[str, int], method: str, path: str, body: bytes,
                 headers) -> tuple:
        conn = http.client.HTTPConnection(*target, timeout=600)
        try:
            fwd = {k: v for k, v in headers.items()
                   if k.lower() in ('content-type', 'authorization', 'accept')}
            conn.request(method, path, body=body or None, headers=fwd)
            r = conn.getresponse()
            return r.status, r.getheaders(), r.read()
        except OSError as exc:
            data = json.dumps({'error': {'message': f'proxy: upstream {exc}'}}).encode()
            return 502, [('Content-Type', 'application/json')], data
        finally:
            conn.close()

    def _tunnel(self, h: BaseHTTPRequestHandler) -> None:
        """``CONNECT host:port`` (used as HTTPS_PROXY): bytes relayed both ways."""
        host, _, port = h.path.rpartition(':')
        if host.strip('[]') not in LOOPBACK or not port.isdigit():
            return self._reply(h, 403, b'{"error": "loopback only"}')
        try:
            upstream = socket.create_connection((host.strip('[]'), int(port)), timeout=10)
        except OSError:
            return self._reply(h, 502, b'{"error": "upstream refused"}')
        with self._lock:
            self.counts.tunnels += 1
        h.send_response(200, 'Connection established')
        h.end_headers()
        h.close_connection = True
        socks = [h.connection, upstream]
        try:
            while not self._stopped:
                ready, _, _ = select.select(socks, [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is h.connection else h.connection).sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """Clients that go away (a reset, a timeout, TLS refused) are expected here."""
        import sys
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _handler(proxy: FaultProxy) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            proxy._handle(self, 'GET')

        def do_POST(self) -> None:
            proxy._handle(self, 'POST')

        def do_CONNECT(self) -> None:
            proxy._tunnel(self)
    return Handler


def _bad_index(data: bytes) -> bytes:
    """Every choice's ``index`` replaced by a string."""
    try:
        body = json.loads(data)
        for choice in body.get('choices', []):
            choice['index'] = 'first'
        return json.dumps(body).encode()
    except (ValueError, AttributeError, TypeError):
        return data


def _drop_one_id(data: bytes) -> bytes:
    """Remove one requested id (the last top_logprobs entry that is not the sampled token)
    of the first position of every choice."""
    try:
        body = json.loads(data)
        for choice in body.get('choices', []):
            first = choice['logprobs']['content'][0]
            tops = first['top_logprobs']
            others = [e for e in tops if e.get('token') != first.get('token')]
            if others:
                tops.remove(others[-1])
        return json.dumps(body).encode()
    except (ValueError, KeyError, IndexError, TypeError):
        return data


__all__ = ['FAULTS', 'Counts', 'Fault', 'FaultProxy']
