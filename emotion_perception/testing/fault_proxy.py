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
  loses a requested token id).

Loopback only: it binds 127.0.0.1 and forwards only to a loopback upstream.
"""
from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ('503', '429', 'reset', 'slow', 'truncate', 'oversize', 'badjson', 'dropid')


@dataclass
class Fault:
    """Inject ``kind`` on every ``every``-th request whose path starts with ``path``."""

    kind: str
    every: int = 1
    path: str = '/'
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


class FaultProxy:
    """``FaultProxy(upstream_url).start()``; ``url`` is the proxied base URL (with /v1 when
    the upstream's has it); ``faults`` may be replaced between requests; ``reset_counts()``."""

    def __init__(self, upstream: str, faults: list[Fault] | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ('127.0.0.1', 'localhost', '::1'):
            raise ValueError('the fault proxy forwards to loopback only')
        self.up_host, self.up_port = parts.hostname, parts.port or 80
        self.suffix = parts.path.rstrip('/')
        self.faults: list[Fault] = list(faults or [])
        self.counts = Counts()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy._handle(self, 'GET')

            def do_POST(self) -> None:
                proxy._handle(self, 'POST')

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}{self.suffix}'

    def start(self) -> 'FaultProxy':
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
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

    def _pick(self, path: str) -> Fault | None:
        with self._lock:
            chosen = None
            for f in self.faults:
                if path.startswith(f.path):
                    f.seen += 1
                    if chosen is None and f.seen % f.every == 0:
                        f.injected += 1
                        chosen = f
            return chosen

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        n = int(h.headers.get('Content-Length') or 0)
        body = h.rfile.read(n) if n else b''
        with self._lock:
            self.counts.requests += 1
            self.counts.bytes_in += len(body)
            self.counts.uploads += int(b'"data:image/' in body)
            self.counts.paths[h.path.split('?')[0]] += 1
        fault = self._pick(h.path)
        kind = fault.kind if fault else ''
        if kind in ('503', '429'):
            data = json.dumps({'error': {'message': f'injected {kind}', 'code': int(kind)}}
                              ).encode()
            h.send_response(int(kind))
            if kind == '429':
                h.send_header('Retry-After', f'{fault.retry_after:g}')
            h.send_header('Content-Type', 'application/json')
            h.send_header('Content-Length', str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        if kind == 'reset':
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        if kind == 'oversize':
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
            return
        if kind == 'badjson':
            data = b'{"choices": [ not json'
            h.send_response(200)
            h.send_header('Content-Type', 'application/json')
            h.send_header('Content-Length', str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        status, headers, data = self._forward(method, h.path, body, h.headers)
        if kind == 'slow':
            time.sleep(fault.slow_s)
        if kind == 'dropid':
            data = _drop_one_id(data)
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

    def _forward(self, method: str, path: str, body: bytes, headers) -> tuple:
        conn = http.client.HTTPConnection(self.up_host, self.up_port, timeout=600)
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
