"""Emotions from a VLM served on another machine: vLLM's OpenAI-compatible HTTP API.

For robots whose GPU cannot hold the model: the model runs on a GPU server on the robot's
network (one server, with tensor/data parallelism or several replicas, serves a fleet) and this
backend sends it the marked images. Same interface, options and results as ``vlm``; nodes,
``process`` and ``evaluate`` do not change.

``score`` (default): per person, the 26 category questions and the 3 VAD questions are 29
    concurrent chat-completion requests, each with the same marked image and the same text
    prefix (image first, then the shared category list, the question last), so the server's
    prefix cache reuses the prefix's KV cache and its encoder cache the image; ``max_tokens: 1``,
    ``temperature: 0``. The answers are read with ``core.readout``, the rules of the local
    backend: for each spelling of each answer, the token sequence the model would emit right
    after the prompt (found at configure with the server's ``/tokenize`` of prompt + spelling,
    the prompt being the server's own rendering of the chat, checked to round-trip), and
    ``score = P(yes) / (P(yes) + P(no))``, VAD ``1 + E[d]``. Read-out methods, probed once at
    configure and logged (``diagnostics()['readout']``):

    * ``token_ids`` (exact): the server returns the log-probability of requested token ids
      (vLLM's ``logprob_token_ids``).
    * ``top_logprobs`` (approximate): only the ``top_logprobs`` most likely tokens come back;
      answer tokens outside them get probability 0, and the probability mass the top tokens
      cover is recorded (``diagnostics()['top_logprobs_mass']``).

    Answers of several tokens (SentencePiece writes ``' 5'`` as ``['▁', '5']``) are scored
    exactly by teacher forcing when the server returns prompt log-probabilities (vLLM's
    ``prompt_logprobs``): one more request whose chat ends with the answer as the start of the
    assistant's message (``continue_final_message``), checked with ``/tokenize`` to give exactly
    prompt + answer tokens. Sequences that cannot be sent that way are left out, and said so
    at configure (``diagnostics()['readout_dropped']``).
``generate``: one chat completion per person (the paper's question), parsed as in ``vlm``.

Faults: a server that does not answer at configure -> ``ModelLoadError`` (the node stays
unconfigured with the reason). At run time each request has ``timeout_s`` and at most
``retries`` retries with exponential backoff, on the least busy other server when there are
several; a person whose requests fail is ERROR with the reason (``server unreachable``,
``timeout``, ``HTTP 400: ...``) and the other persons and frames go on; a server that fails is
taken out for a backoff period and probed back in by the next request after it, so a restarted
server is used again without restarting the node. Counters (requests, errors by kind, latency
percentiles, in flight) are in ``diagnostics()``. The API key is read from the environment
variable named by ``api_key_env`` and is never logged. TLS certificates are verified unless
``verify_tls`` is false (or set to a CA bundle file). Images go as JPEG data URLs, their long
side capped at ``image_max_side`` and their size at ``max_image_bytes``.
"""
from __future__ import annotations

import base64
import collections
import concurrent.futures as cf
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np

from .. import prompts
from ..categories import NUM_CATEGORIES
from ..readout import (DIGIT_SPELLINGS, DIGITS, NO_SPELLINGS, YES_NO, YES_SPELLINGS, AnswerPlan,
                       TokenIds, digit_expectation, yes_probability)
from ..types import NAN_VAD, BBox, EmotionResult, Status
from .base import BackendError, BackendOptions, EmotionBackend, ModelLoadError
from .vlm import MODES, PARSERS, answer_result

LOG = logging.getLogger(__name__)

#: person reasons (EmotionResult.reason) of the transport failures
UNREACHABLE = 'server unreachable'
TIMEOUT = 'timeout'
#: error kinds counted in diagnostics
ERROR_KINDS = ('unreachable', 'timeout', 'http_4xx', 'http_5xx', 'bad_response')
IMAGE_FORMATS = ('jpeg', 'png')
READOUTS = ('auto', 'token_ids', 'top_logprobs')


class RequestFailed(BackendError):
    """One HTTP request failed (after its retries). ``kind`` is one of ``ERROR_KINDS``;
    ``reason`` is what a person's result says."""

    def __init__(self, kind: str, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.kind, self.reason, self.retry = kind, reason, retry


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


@dataclass
class RemoteOptions(BackendOptions):
    """Options of the ``remote`` backend (plus ``BackendOptions``; ``device`` is unused).

    Attributes:
        model: the served model name ('' = the first model the server lists).
        url: base URL ending in /v1, or several (list, or comma separated): several servers.
        api_key_env: name of the environment variable holding the API key ('' = no key).
        timeout_s: per-request timeout (connect + read).
        max_concurrency: most requests in flight at once (all servers together).
        retries: retries of a failed request (connection errors, timeouts, HTTP 5xx).
        verify_tls: verify https certificates (keep on).
        ca_bundle: CA bundle file for https ('' = the system's).
        mode, marking, definitions, num_labels, max_new_tokens, parser: as in ``vlm``.
        readout: score mode: 'auto' (probe the server: 'token_ids' when it returns the
            log-probs of requested token ids, else 'top_logprobs'), or one of them.
        top_logprobs: how many top log-probs the 'top_logprobs' read-out asks for, 1-20 (the
            OpenAI API's limit and vLLM's default ``--max-logprobs``; the whole vocabulary,
            -1, crashes vLLM 0.32 on checkpoints whose vocabulary is padded, e.g. llava-hf).
        image_format: 'jpeg' (default) or 'png' (lossless, larger).
        jpeg_quality: JPEG quality of the images sent.
        image_max_side: long side of the images sent is at most this (pixels).
        max_image_bytes: an encoded image larger than this is sent smaller.
        down_s: a failing server is left out for this long (doubling while it keeps failing,
            at most 16x) before a request probes it again.
    """

    url: Any = ''
    api_key_env: str = ''
    timeout_s: float = 30.0
    max_concurrency: int = 16
    retries: int = 2
    verify_tls: bool = True
    ca_bundle: str = ''
    mode: str = 'score'
    marking: str = 'red_box'
    definitions: bool = False
    num_labels: int = 0
    max_new_tokens: int = 64
    parser: str = 'robust'
    score_prompt: str = 'question'
    readout: str = 'auto'
    top_logprobs: int = 20
    image_format: str = 'jpeg'
    jpeg_quality: int = 90
    image_max_side: int = 1344
    max_image_bytes: int = 4_000_000
    down_s: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        if self.marking not in prompts.MARKINGS:
            raise ValueError(f'marking must be one of {prompts.MARKINGS}, got {self.marking!r}')
        if self.parser not in PARSERS:
            raise ValueError(f'parser must be one of {PARSERS}, got {self.parser!r}')
        if self.score_prompt != 'question':
            raise ValueError("remote: score_prompt must be 'question' (a chat API cannot "
                             "continue the template's assistant start verbatim)")
        if self.readout not in READOUTS:
            raise ValueError(f'readout must be one of {READOUTS}, got {self.readout!r}')
        if not 1 <= int(self.top_logprobs) <= 20:
            raise ValueError('top_logprobs must be in 1..20')
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f'image_format must be one of {IMAGE_FORMATS}')
        if float(self.timeout_s) <= 0 or int(self.max_concurrency) < 1 or int(self.retries) < 0:
            raise ValueError('timeout_s must be > 0, max_concurrency >= 1, retries >= 0')
        if int(self.image_max_side) < 16 or int(self.max_image_bytes) < 10_000:
            raise ValueError('image_max_side must be >= 16 and max_image_bytes >= 10000')
        self.urls = parse_urls(self.url)


# -- transport: servers, requests, counters ---------------------------------------------------
@dataclass
class Server:
    """One server of the pool and its health."""

    url: str
    in_flight: int = 0
    up: bool = True
    failures: int = 0
    down_until: float = 0.0
    requests: int = 0
    errors: int = 0
    last_error: str = ''

    @property
    def root(self) -> str:
        """The server root (vLLM's /tokenize, /metrics, /health live there, not under /v1)."""
        return self.url[:-3] if self.url.endswith('/v1') else self.url


class ServerPool:
    """Servers balanced by least in-flight requests; a failing server is taken out for a
    backoff period (``down_s`` doubling, at most 16x) and then gets one probe request."""

    def __init__(self, urls: Sequence[str], down_s: float = 1.0) -> None:
        if not urls:
            raise ValueError('no server URL')
        self.servers = [Server(u) for u in urls]
        self.down_s = float(down_s)
        self._lock = threading.Lock()

    def acquire(self) -> Server:
        """The server for the next request (in-flight count taken).

        Raises:
            RequestFailed: every server is down and none is due for a probe.
        """
        now = time.monotonic()
        with self._lock:
            # a down server whose backoff ran out gets the next request alone (the probe; if
            # it fails, the request is retried elsewhere); else the least busy live server
            due = [s for s in self.servers if not s.up and s.down_until <= now
                   and s.in_flight == 0]
            usable = due[:1] or [s for s in self.servers if s.up]
            if not usable:
                last = min(self.servers, key=lambda s: s.down_until)
                raise RequestFailed('unreachable', f'{UNREACHABLE} ({last.last_error})',
                                    retry=False)
            best = min(s.in_flight for s in usable)
            server = random.choice([s for s in usable if s.in_flight == best])
            server.in_flight += 1
            server.requests += 1
            return server

    def release(self, server: Server, error: str = '') -> None:
        """Return ``server``; ``error`` (a transport/5xx failure) takes it out for a while."""
        with self._lock:
            server.in_flight -= 1
            if not error:
                server.up, server.failures = True, 0
                return
            server.errors += 1
            server.failures += 1
            server.last_error = error
            server.up = False
            server.down_until = time.monotonic() + self.down_s * min(16, 2 ** (server.failures - 1))

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
        self.errors: collections.Counter = collections.Counter()
        self._latency: collections.deque = collections.deque(maxlen=window)

    def start(self) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1

    def done(self, latency_s: float, kind: str = '') -> None:
        with self._lock:
            self.in_flight -= 1
            if kind:
                self.errors[kind] += 1
            else:
                self._latency.append(latency_s * 1e3)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = np.asarray(self._latency, dtype=np.float64)
            out: dict[str, Any] = {'requests': self.requests, 'in_flight': self.in_flight}
            for kind in ERROR_KINDS:
                out[f'errors.{kind}'] = self.errors.get(kind, 0)
            if lat.size:
                for p in (50, 90, 99):
                    out[f'latency_ms.p{p}'] = round(float(np.percentile(lat, p)), 1)
            return out


def _error_message(response: Any) -> str:
    """The server's error message (OpenAI/vLLM JSON bodies), shortened."""
    try:
        body = response.json()
        msg = body.get('error', body) if isinstance(body, dict) else body
        msg = msg.get('message', msg) if isinstance(msg, dict) else msg
    except Exception:  # noqa: BLE001 - not JSON
        msg = response.text
    return ' '.join(str(msg).split())[:300]


class Transport:
    """JSON POST/GET over a ``ServerPool`` with timeouts, bounded retries and counters."""

    def __init__(self, urls: Sequence[str], api_key: str = '', timeout_s: float = 30.0,
                 retries: int = 2, max_concurrency: int = 16, verify: Any = True,
                 down_s: float = 1.0) -> None:
        import httpx
        self._httpx = httpx
        headers = {'Authorization': f'Bearer {api_key}'} if api_key else {}
        limits = httpx.Limits(max_connections=max(4, int(max_concurrency) * 2),
                              max_keepalive_connections=max(4, int(max_concurrency)))
        self.client = httpx.Client(headers=headers, timeout=float(timeout_s), verify=verify,
                                   limits=limits, trust_env=False)
        self.pool = ServerPool(urls, down_s)
        self.stats = RequestStats()
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.backoff_s = 0.1

    def close(self) -> None:
        self.client.close()

    def _once(self, server: Server, method: str, path: str, payload: Any) -> Any:
        """One request to ``server``; returns the parsed JSON body."""
        httpx = self._httpx
        url = server.url + path[3:] if path.startswith('/v1/') else server.root + path
        try:
            r = (self.client.post(url, json=payload) if method == 'POST'
                 else self.client.get(url))
        except httpx.TimeoutException as exc:
            raise RequestFailed('timeout', f'{TIMEOUT} (after {self.timeout_s:g} s, '
                                f'{server.url})', retry=True) from exc
        except httpx.TransportError as exc:
            raise RequestFailed('unreachable', f'{UNREACHABLE} ({server.url}: '
                                f'{type(exc).__name__})', retry=True) from exc
        if r.status_code >= 500:
            raise RequestFailed('http_5xx', f'HTTP {r.status_code} ({server.url}): '
                                f'{_error_message(r)}', retry=True)
        if r.status_code >= 400:
            raise RequestFailed('http_4xx', f'HTTP {r.status_code}: {_error_message(r)}',
                                retry=False)
        try:
            return r.json()
        except ValueError as exc:
            raise RequestFailed('bad_response', f'the server answered no JSON ({server.url})',
                                retry=False) from exc

    def request(self, method: str, path: str, payload: Any = None,
                server: Server | None = None) -> Any:
        """``method`` ``path`` (``/v1/...`` under the base URL, else under the server root) on
        the least busy server (or on ``server``), retried on transport errors and HTTP 5xx.

        Raises:
            RequestFailed: the last failure once the retries are spent (or a 4xx at once).
        """
        last: RequestFailed | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                target = server or self.pool.acquire()
            except RequestFailed as exc:
                self.stats.start()
                self.stats.done(0.0, exc.kind)
                raise
            if server is not None:
                with self.pool._lock:
                    target.in_flight += 1
            self.stats.start()
            t0 = time.perf_counter()
            try:
                body = self._once(target, method, path, payload)
            except RequestFailed as exc:
                self.stats.done(time.perf_counter() - t0, exc.kind)
                # a 4xx answer means the server works; the request was wrong
                self.pool.release(target, exc.reason if exc.retry else '')
                last = exc
                if not exc.retry:
                    raise
                continue
            self.stats.done(time.perf_counter() - t0)
            self.pool.release(target)
            return body
        assert last is not None
        raise last


# -- images -----------------------------------------------------------------------------------
def encode_image(image: np.ndarray, fmt: str = 'jpeg', quality: int = 90, max_side: int = 1344,
                 max_bytes: int = 4_000_000) -> str:
    """RGB uint8 image -> data URL, long side capped at ``max_side``; smaller (quality, then
    size) until it is at most ``max_bytes``."""
    import cv2
    img = image
    scale = max_side / max(img.shape[:2])
    while True:
        if scale < 1.0:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            img = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
        for q in ((quality, 75, 50) if fmt == 'jpeg' else (0,)):
            # 4:4:4: no chroma subsampling, so the red box keeps its colour at its edges
            # (4:2:0 smears a thin red line into its surroundings: up to 106/255 here)
            params = ([cv2.IMWRITE_JPEG_QUALITY, int(q), cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                       cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444] if fmt == 'jpeg' else [])
            ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', bgr, params)
            if not ok:
                raise BackendError(f'cannot encode the image as {fmt}')
            if buf.nbytes <= max_bytes:
                data = base64.b64encode(buf.tobytes()).decode('ascii')
                return f'data:image/{fmt};base64,{data}'
        scale = min(scale, 1.0) * 0.7


def _user_message(image_url: str, text: str) -> dict[str, Any]:
    return {'role': 'user', 'content': [{'type': 'image_url', 'image_url': {'url': image_url}},
                                        {'type': 'text', 'text': text}]}


def _assistant_message(text: str) -> dict[str, Any]:
    return {'role': 'assistant', 'content': [{'type': 'text', 'text': text}]}


#: a small grey picture for the configure-time probes
def _probe_image() -> str:
    return encode_image(np.full((64, 64, 3), 127, np.uint8), 'png')


# -- the read-out plan ------------------------------------------------------------------------
@dataclass
class QuestionPlan:
    """One question of score mode: its text, answer plan, and the continuation requests of
    its answers of several tokens (assistant text -> token sequence)."""

    text: str
    plan: AnswerPlan | None
    continuations: dict[TokenIds, str] = field(default_factory=dict)


@dataclass
class PersonRequests:
    """The requests of one person and what came back."""

    image_url: str
    root: list[Mapping[int, float] | None] = field(default_factory=list)
    sequences: list[dict[TokenIds, list[float]]] = field(default_factory=list)
    mass: list[float] = field(default_factory=list)
    error: RequestFailed | None = None
    text: str = ''


class RemoteBackend(EmotionBackend):
    """Emotions from a VLM behind vLLM's OpenAI-compatible API (see the module docstring)."""

    name = 'remote'
    Options = RemoteOptions
    unload_cancels_calls = True  # unload cancels the requests in flight; no weights here

    def __init__(self, options: RemoteOptions | dict | None = None) -> None:
        super().__init__(options)
        self.options: RemoteOptions
        self.sets_labels = self.options.mode == 'generate'
        self.transport: Transport | None = None
        self.served_model = ''
        self.readout = ''
        self.readout_dropped: list[str] = []
        self.vad_reason = ''
        self._questions: list[QuestionPlan] = []
        #: ask the server to add the tokenizer's special tokens (BOS) to chat prompts
        self._add_special = False
        #: generate mode: force this many new tokens (vLLM's min_tokens; the benchmark)
        self._min_new_tokens = 0
        self._masses: collections.deque = collections.deque(maxlen=1024)
        self._executor: cf.ThreadPoolExecutor | None = None

    @property
    def model_id(self) -> str:
        return self.served_model or self.options.model

    # -- lifecycle ---------------------------------------------------------------------------
    def _api_key(self) -> str:
        name = self.options.api_key_env
        if not name:
            return ''
        key = os.environ.get(name, '')
        if not key:
            raise ModelLoadError(f'backend.api_key_env names {name!r}, but that environment '
                                 'variable is not set')
        return key

    def load(self) -> None:
        """Connect: list the served models, build the read-out plan, probe the read-out method.

        Raises:
            ModelLoadError: no URL, no server answers, the model is not served, or score mode
                cannot read yes/no from this server (the reason says which).
        """
        if self._loaded:
            return
        o = self.options
        if not o.urls:
            raise ModelLoadError("backend 'remote' needs backend.url (e.g. "
                                 "'http://gpu-server:8000/v1')")
        verify: Any = bool(o.verify_tls)
        if verify and o.ca_bundle:
            import ssl
            try:
                verify = ssl.create_default_context(cafile=o.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ModelLoadError(f'backend.ca_bundle {o.ca_bundle!r}: {exc}') from exc
        if not verify:
            LOG.warning('remote: TLS certificate verification is OFF (backend.verify_tls false)')
        self.transport = Transport(o.urls, self._api_key(), o.timeout_s, o.retries,
                                   o.max_concurrency, verify, o.down_s)
        self._executor = cf.ThreadPoolExecutor(int(o.max_concurrency),
                                               thread_name_prefix='remote')
        try:
            self._connect()
            try:
                self._add_special = self._probe_special_tokens(
                    [_user_message(_probe_image(), 'Hello')])
            except RequestFailed as exc:
                if exc.kind != 'http_4xx':
                    raise
                if o.mode == 'score':  # Ollama, llama.cpp's server, the OpenAI API
                    raise ModelLoadError(
                        f'{o.urls[0]} has no vLLM /tokenize ({exc.reason}): score mode needs '
                        'it to find the answer tokens; use mode=generate with this server'
                        ) from exc
                self._add_special = False
            if o.mode == 'score':
                self._plan_score()
        except RequestFailed as exc:
            self.unload()
            raise ModelLoadError(f'remote backend {", ".join(o.urls)}: {exc.reason}') from exc
        except ModelLoadError:
            self.unload()
            raise
        self._loaded = True

    def _connect(self) -> None:
        """Every server must list the model; the model name defaults to the first listed."""
        o = self.options
        servers = self.transport.pool.servers
        names: list[list[str] | None] = []
        for server in servers:
            try:
                body = self.transport.request('GET', '/v1/models', server=server)
                names.append([m['id'] for m in body.get('data', [])])
            except RequestFailed as exc:
                if exc.kind == 'http_4xx':  # it answers, and refuses: a key, a proxy, a path
                    hint = (' (check backend.api_key_env)' if exc.reason[5:8] in ('401', '403')
                            else '')
                    raise ModelLoadError(f'{server.url}: {exc.reason}{hint}') from exc
                LOG.warning('remote: %s does not answer at configure: %s', server.url, exc.reason)
                names.append(None)
        listed = [n for n in names if n is not None]
        if not listed:
            raise RequestFailed('unreachable', 'no server answers ('
                                f'{"; ".join(s.last_error for s in servers)})', retry=False)
        if not any(listed):
            raise ModelLoadError(f'{", ".join(o.urls)} serve no model')
        model = o.model or next(n for n in listed if n)[0]
        for n, server in zip(names, servers):
            if n is not None and model not in n:
                raise ModelLoadError(f'{server.url} does not serve model {model!r} (it serves '
                                     f'{n}); set backend.model to one of them')
        self.served_model = model
        LOG.info('remote: model %r on %s', model, ', '.join(o.urls))

    def unload(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        super().unload()

    def diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.transport is not None:
            out.update(self.transport.stats.snapshot())
            for url, state in self.transport.pool.state().items():
                out[f'server {url}'] = state
        if self.options.mode == 'score' and self.readout:
            out['readout'] = self.readout
            out['vad'] = self.vad_reason or 'ok'
            if self.readout_dropped:
                out['readout_dropped'] = '; '.join(self.readout_dropped)[:400]
            out['continuation_sequences'] = sum(len(q.continuations) for q in self._questions)
            if self.readout == 'top_logprobs' and self._masses:
                out['top_logprobs_mass'] = round(float(np.mean(self._masses)), 4)
        return out

    # -- the prompt and its read-out ----------------------------------------------------------
    def _queries(self) -> tuple[str, list[str]]:
        o = self.options
        prefix = prompts.score_prefix(o.marking, o.definitions, o.score_prompt)
        return prefix, prompts.score_queries(o.marking, score_prompt=o.score_prompt)

    def _tokenize_chat(self, messages: list[dict], cont: bool = False) -> list[int]:
        body = self.transport.request('POST', '/tokenize', {
            'model': self.served_model, 'messages': messages,
            'add_generation_prompt': not cont, 'continue_final_message': cont,
            'add_special_tokens': self._add_special})
        return [int(t) for t in body['tokens']]

    def _tokenize_text(self, text: str, special: bool = False) -> list[int]:
        body = self.transport.request('POST', '/tokenize', {
            'model': self.served_model, 'prompt': text, 'add_special_tokens': special})
        return [int(t) for t in body['tokens']]

    def _probe_special_tokens(self, messages: list[dict]) -> bool:
        """Whether chat requests must ask the server to add the tokenizer's special tokens.

        vLLM tokenizes a rendered chat without them (the template is expected to write BOS);
        Hugging Face processors add them unless the rendered text already starts with BOS, as
        the local ``vlm`` backend does. Templates without BOS (LLaVA-1.5's) thus reach the
        model without it over vLLM's chat API unless ``add_special_tokens`` is set.
        """
        plain, special = self._tokenize_text('a'), self._tokenize_text('a', special=True)
        if len(special) <= len(plain) or special[-len(plain):] != plain:
            return False
        lead = special[:len(special) - len(plain)]
        return self._tokenize_chat(messages)[:len(lead)] != lead

    def _plan_question(self, text: str, kind: str, image_url: str, continuation: bool
                       ) -> QuestionPlan:
        """The answer plan of one question, from the server's own tokenizer and template."""
        messages = [_user_message(image_url, text)]
        ids = self._tokenize_chat(messages)
        prompt = self.transport.request('POST', '/detokenize', {
            'model': self.served_model, 'tokens': ids})['prompt']
        if self._tokenize_text(prompt) != ids:
            raise ModelLoadError('the server\'s rendered prompt does not tokenize back to its '
                                 'own tokens, so the answer tokens cannot be found; use '
                                 'mode=generate')
        outcomes, spellings = ((YES_NO, (YES_SPELLINGS, NO_SPELLINGS)) if kind == 'yes_no'
                               else (DIGITS, DIGIT_SPELLINGS))
        plan = AnswerPlan.for_prompt(self._tokenize_text, prompt, outcomes, spellings)
        kept: list[list[TokenIds]] = []
        dropped = list(plan.dropped)
        conts: dict[TokenIds, str] = {}
        for name, seqs, sp in zip(outcomes, plan.sequences, spellings):
            keep = []
            for seq in seqs:
                if len(seq) == 1:
                    keep.append(seq)
                    continue
                text_for = self._continuation_text(messages, ids, seq, sp) if continuation \
                    else None
                if text_for is None:
                    dropped.append(f'{name}: tokens {list(seq)} (several tokens; '
                                   + ('no assistant text gives them' if continuation else
                                      'the server returns no prompt log-probabilities') + ')')
                    continue
                conts[seq] = text_for
                keep.append(seq)
            kept.append(keep)
        return QuestionPlan(text, AnswerPlan.from_sequences(outcomes, kept, dropped), conts)

    def _continuation_text(self, messages: list[dict], ids: list[int], seq: TokenIds,
                           spellings: Sequence[str]) -> str | None:
        """An assistant text whose chat (continue_final_message) is ``ids + seq``, or None."""
        for sp in spellings:
            for cand in dict.fromkeys((sp, sp.strip())):
                if not cand:
                    continue
                try:
                    got = self._tokenize_chat(messages + [_assistant_message(cand)], cont=True)
                except RequestFailed:
                    return None
                if got == ids + list(seq):
                    return cand
        return None

    def _plan_score(self) -> None:
        """Build the 29 question plans, then probe how log-probs can be read."""
        prefix, queries = self._queries()
        image_url = _probe_image()
        texts = [prefix + '\n' + q for q in queries]
        kinds = ['yes_no'] * NUM_CATEGORIES + ['digits'] * (len(queries) - NUM_CATEGORIES)
        # probes: requested token ids? prompt log-probs?
        self.readout = (self._probe_readout(texts[0], image_url) if self.options.readout == 'auto'
                        else self.options.readout)
        continuation = self._probe_prompt_logprobs(texts[0], image_url)
        futures = [self._executor.submit(self._plan_question, t, k, image_url, continuation)
                   for t, k in zip(texts, kinds)]
        self._questions = [f.result() for f in futures]
        for q in self._questions[:NUM_CATEGORIES]:
            if not all(q.plan.expressible):
                raise ModelLoadError('the server\'s tokenizer cannot write yes and no after the '
                                     f'prompt ({"; ".join(q.plan.dropped)}); use mode=generate')
        self.vad_reason = ''
        for q in self._questions[NUM_CATEGORIES:]:
            if not any(q.plan.expressible):
                self.vad_reason = ('the server\'s tokenizer cannot write any digit 0-9 after '
                                   'the prompt: VAD is not scored (NaN)')
                q.plan = None
        dropped = sorted({d.split(': ', 1)[1] if ': ' in d else d
                          for q in self._questions if q.plan for d in q.plan.dropped})
        self.readout_dropped = dropped
        n_cont = sum(len(q.continuations) for q in self._questions)
        LOG.info('remote: read-out %s (%s); %d answer sequences of several tokens by '
                 'continuation requests%s', self.readout,
                 'exact' if self.readout == 'token_ids' else 'approximate: top '
                 f'{self.options.top_logprobs} tokens only', n_cont,
                 f'; left out: {"; ".join(dropped)}' if dropped else '')
        if self.vad_reason:
            LOG.warning('remote: %s', self.vad_reason)

    def _probe_readout(self, text: str, image_url: str) -> str:
        """'token_ids' when the server returns log-probs of requested ids, else 'top_logprobs'."""
        ids = self._tokenize_text('yes')[:1] or [0]
        payload = self._root_payload([_user_message(image_url, text)], 'token_ids', ids)
        try:
            body = self.transport.request('POST', '/v1/chat/completions', payload)
            got = self._root_logprobs(body, 'token_ids')
            if ids[0] in got:
                return 'token_ids'
        except RequestFailed as exc:
            if exc.kind != 'http_4xx':
                raise
        return 'top_logprobs'

    def _probe_prompt_logprobs(self, text: str, image_url: str) -> bool:
        payload = self._root_payload([_user_message(image_url, text)], self.readout, [])
        payload['prompt_logprobs'] = 0
        try:
            body = self.transport.request('POST', '/v1/chat/completions', payload)
        except RequestFailed as exc:
            if exc.kind != 'http_4xx':
                raise
            return False
        return bool(body.get('prompt_logprobs'))

    # -- request bodies and answers ----------------------------------------------------------
    def _root_payload(self, messages: list[dict], method: str, ids: Sequence[int]
                      ) -> dict[str, Any]:
        payload: dict[str, Any] = {'model': self.served_model, 'messages': messages,
                                   'add_special_tokens': self._add_special,
                                   'max_tokens': 1, 'temperature': 0.0, 'logprobs': True,
                                   'top_logprobs': int(self.options.top_logprobs),
                                   'return_tokens_as_token_ids': True}
        if method == 'token_ids' and ids:
            payload['logprob_token_ids'] = [int(i) for i in ids]
            payload['top_logprobs'] = 1
        return payload

    @staticmethod
    def _token_id(token: str) -> int | None:
        # vLLM with return_tokens_as_token_ids writes 'token_id:123'
        if isinstance(token, str) and token.startswith('token_id:'):
            try:
                return int(token.split(':', 1)[1])
            except ValueError:
                return None
        return None

    def _root_logprobs(self, body: Mapping[str, Any], method: str) -> dict[int, float]:
        """token id -> log-prob of the first answer position of a chat completion."""
        try:
            content = body['choices'][0]['logprobs']['content']
            first = content[0]
        except (KeyError, IndexError, TypeError) as exc:
            raise RequestFailed('bad_response', 'the server returned no log-probabilities',
                                retry=False) from exc
        out: dict[int, float] = {}
        for entry in [first, *(first.get('top_logprobs') or [])]:
            tid = self._token_id(entry.get('token', ''))
            lp = entry.get('logprob')
            if tid is not None and lp is not None:
                out[tid] = max(out.get(tid, -np.inf), float(lp))
        return out

    @staticmethod
    def _prompt_tail_logprobs(body: Mapping[str, Any], seq: TokenIds) -> list[float]:
        """log P(seq[j] | prompt, seq[:j]) from the prompt log-probs of a continuation."""
        rows = body.get('prompt_logprobs') or []
        tail = rows[-len(seq):]
        if len(tail) != len(seq):
            raise RequestFailed('bad_response', 'the server returned no prompt log-probs',
                                retry=False)
        out = []
        for tok, row in zip(seq, tail):
            entry = (row or {}).get(str(tok)) or (row or {}).get(tok)
            if entry is None:
                raise RequestFailed('bad_response', 'prompt log-probs miss an answer token',
                                    retry=False)
            out.append(float(entry['logprob'] if isinstance(entry, Mapping) else entry))
        return out

    # -- the three stages --------------------------------------------------------------------
    def preprocess(self, image: np.ndarray, boxes: Sequence[BBox]) -> list[PersonRequests]:
        """Mark each person and encode the image once per person."""
        o = self.options
        return [PersonRequests(encode_image(prompts.mark_image(image, box, o.marking),
                                            o.image_format, o.jpeg_quality, o.image_max_side,
                                            o.max_image_bytes))
                for box in boxes]

    def forward(self, batch: list[PersonRequests]) -> list[PersonRequests]:
        """All requests of all persons, concurrently (at most ``max_concurrency`` in flight)."""
        if self._executor is None or self.transport is None:
            raise BackendError('remote backend is not loaded')
        if self.options.mode == 'generate':
            futures = {self._executor.submit(self._generate, p): p for p in batch}
        else:
            futures = {}
            for p in batch:
                p.root = [None] * len(self._questions)
                p.sequences = [{} for _ in self._questions]
                for qi, q in enumerate(self._questions):
                    if q.plan is None:
                        continue
                    futures[self._executor.submit(self._ask_root, p, qi)] = p
                    for seq in q.continuations:
                        futures[self._executor.submit(self._ask_sequence, p, qi, seq)] = p
        for fut in cf.as_completed(futures):
            if fut.cancelled():  # unload() during the call (e.g. deactivate, free)
                exc = RequestFailed('bad_response', 'cancelled: the backend was unloaded',
                                    retry=False)
            elif (exc := fut.exception()) is None:
                continue
            elif not isinstance(exc, RequestFailed):
                exc = RequestFailed('bad_response', f'{type(exc).__name__}: {exc}', retry=False)
            person = futures[fut]
            if person.error is None:
                person.error = exc
        return batch

    def _generate(self, p: PersonRequests) -> None:
        o = self.options
        text = prompts.build_prompt(o.marking, o.definitions, o.num_labels or None)
        body = self.transport.request('POST', '/v1/chat/completions', {
            'model': self.served_model, 'messages': [_user_message(p.image_url, text)],
            'add_special_tokens': self._add_special,
            'max_tokens': int(o.max_new_tokens), 'temperature': 0.0,
            **({'min_tokens': self._min_new_tokens} if self._min_new_tokens else {})})
        try:
            p.text = (body['choices'][0]['message']['content'] or '').strip()
        except (KeyError, IndexError, TypeError) as exc:
            raise RequestFailed('bad_response', 'the server returned no answer',
                                retry=False) from exc

    def _ask_root(self, p: PersonRequests, qi: int) -> None:
        if p.error is not None:
            return  # this person already failed: do not load the server further
        q = self._questions[qi]
        payload = self._root_payload([_user_message(p.image_url, q.text)], self.readout,
                                     q.plan.requests[0])
        got = self._root_logprobs(self.transport.request('POST', '/v1/chat/completions',
                                                         payload), self.readout)
        if self.readout == 'top_logprobs':
            self._masses.append(float(np.exp(np.asarray(list(got.values()))).sum()))
        p.root[qi] = got

    def _ask_sequence(self, p: PersonRequests, qi: int, seq: TokenIds) -> None:
        if p.error is not None:
            return
        q = self._questions[qi]
        payload = self._root_payload([_user_message(p.image_url, q.text),
                                      _assistant_message(q.continuations[seq])], self.readout, [])
        payload.update(add_generation_prompt=False, continue_final_message=True,
                       prompt_logprobs=0, top_logprobs=1)
        payload.pop('logprob_token_ids', None)
        body = self.transport.request('POST', '/v1/chat/completions', payload)
        p.sequences[qi][seq] = self._prompt_tail_logprobs(body, seq)

    def postprocess(self, outputs: list[PersonRequests], batch: Any) -> list[EmotionResult]:
        results = []
        for p in outputs:
            if p.error is not None:
                results.append(EmotionResult.failed(Status.ERROR, p.error.reason, self.name,
                                                    self.model_id))
            elif self.options.mode == 'generate':
                results.append(answer_result(p.text, self.options.parser))
            else:
                scores, vad = self.read_person(p)
                unread = int(np.isnan(scores).sum())
                if unread:  # top_logprobs: neither yes nor no among the top tokens
                    results.append(EmotionResult.failed(
                        Status.ERROR, f'answer not readable: neither yes nor no among the '
                        f"server's top {self.options.top_logprobs} log-probs for {unread} "
                        'categories', self.name, self.model_id))
                    continue
                results.append(EmotionResult(scores=scores, vad=vad, status=Status.OK))
        return results

    def read_person(self, p: PersonRequests) -> tuple[np.ndarray, tuple[float, float, float]]:
        """Scores and VAD of one person from its answers (``core.readout``'s formulas)."""
        lps = []
        for qi, q in enumerate(self._questions):
            if q.plan is None:
                lps.append(None)
                continue
            positions: list[dict[int, float]] = [dict() for _ in q.plan.positions]
            root = p.root[qi] or {}
            for tok in q.plan.requests[0]:
                positions[0][tok] = root.get(tok, -np.inf)  # outside top_logprobs: 0
            for seq, values in p.sequences[qi].items():
                for j, (tok, lp) in enumerate(zip(seq, values)):
                    positions[q.plan.position_index(seq[:j])][tok] = lp
            lps.append(q.plan.outcome_logprobs(positions))
        scores = np.array([yes_probability(lp) for lp in lps[:NUM_CATEGORIES]],
                          dtype=np.float32)
        vad = tuple(float(1.0 + digit_expectation(lp)) if lp is not None else float('nan')
                    for lp in lps[NUM_CATEGORIES:])
        if len(vad) != 3:
            vad = NAN_VAD
        return scores, vad


__all__ = ['RemoteBackend', 'RemoteOptions', 'RequestFailed', 'ServerPool', 'Transport',
           'encode_image', 'parse_urls']
