"""Emotions from a VLM served on another machine: vLLM's OpenAI-compatible HTTP API.

For robots whose GPU cannot hold the model: the model runs on a GPU server on the robot's
network and this backend sends it the marked images. Same interface, options and results as
``vlm``, and the same plan (``scoring_plan``): the same questions, answer token sequences,
read-out and pixels, so a served model scores what the local backend would score with it.

Pixels: the frame is brought to the model's working resolution once and each person's box
drawn there, letterboxed where the processor centre-crops, from the model's image processor
config (``processor``: a folder or hub id, e.g. ``llava-hf/llava-1.5-7b-hf``, whose 336 x 336
crop is also what is sent). Without it the frame is letterboxed to a square (at most
``image_max_side``), logged once: a centre crop then keeps everyone. ``image_format`` 'png'
(lossless: remote equals local) or 'jpeg' (smaller, 4:4:4).

``score`` (default), per person and frame, on ONE server:

1. the first question as a chat completion carrying the marked image (data URL) and its
   multi-modal ``uuid`` (the content hash): the image's only upload;
2. the other questions in ONE ``/v1/chat/completions/batch`` request naming the image by its
   uuid only (vLLM serves it from its processor cache; a cache miss, HTTP 400, resends it);
3. for answers of several tokens (Llama-2 writes ``' 5'`` as ``['▁', '5']``), ONE more batch of
   continuations: each ends the chat with the assistant text whose tokens are the answer's
   first tokens (``continue_final_message``, checked with the server's tokenizer at
   configure) and asks the log-probs of the next token. No ``prompt_logprobs``: vLLM skips its
   prefix cache for those, and the image + shared text prefix would be prefilled again.

Log-probs come back for the requested token ids (vLLM's ``logprob_token_ids``: exact; every id
must come back, else the person is ERROR ``bad response: ...``) or, on servers without it, the
``top_logprobs`` most likely tokens (approximate; the mass covered is reported). Servers
without the batch route (probed at configure, logged) get one request per question, the image
still uploaded once. Configure renders the chat template twice on the server and tokenizes all
prompts and answers in one or two ``/tokenize`` requests (texts joined by a special token).
``generate``: one chat completion per person, parsed as in ``vlm``.

Several servers: the batch route and image uuids are probed on EACH server (requests pinned
to it; a server that did not answer at configure is probed when it is first used), and all of
a person's requests go to the one server that holds its image.

Faults (``http_pool``): ``deadline_s`` bounds all of a frame's requests, retries and backoff
together (connect has its own ``connect_timeout_s``); persons past it are ERROR
``deadline exceeded: ...``. A transient failure (HTTP 5xx, 429 honouring ``Retry-After``,
connection refused or reset, timeout, a truncated, oversized, non-JSON or wrongly shaped
answer) is retried on the same server with exponential backoff, ``retries`` times, within the
deadline. A server that stops answering leaves the pool (``fail_threshold`` requests without
an answer, or a background health probe without one) and is probed back in every ``down_s``;
a person's own failures (a 5xx for its image) never take a server that answers probes out.
Persons still waiting on a server that left the pool are answered at once when no other
server is up; persons whose requests fail on a server that is out move to another one. ``cancel_calls`` (deactivate) and ``unload`` end every
wait at once (the persons are ERROR ``cancelled: ...``), so a call in flight returns within
moments. Configure retries the same way (per-request ``timeout_s``, no frame deadline); a
server that never answers, or answers in another shape, -> ``ModelLoadError`` naming what was
wrong, with nothing left open. Responses are capped at 16 MiB.

TLS: the system's trust store (``ssl.create_default_context``: a fleet CA added with
``update-ca-certificates`` is trusted) unless ``ca_bundle`` names a CA file; ``verify_tls``
false turns verification off (warned). The API key is read from the environment variable
named by ``api_key_env``, never logged; sending it over plain http to a host other than
loopback is warned; URLs with a user name or password are refused. ``HTTP(S)_PROXY`` /
``NO_PROXY`` are followed (``http_pool.proxy_for``; logged).
"""
from __future__ import annotations

import base64
import collections
import concurrent.futures as cf
import hashlib
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..categories import NUM_CATEGORIES
from ..image_codec import encode_rgb
from ..readout import AnswerPlan, TokenIds
from ..types import BBox, EmotionResult, Status
from . import scoring_plan as sp
from .base import BackendError, EmotionBackend, ModelLoadError
from .http_pool import (BAD_RESPONSE, CANCELLED, MAX_RESPONSE_BYTES, UNREACHABLE, Deadline,
                        RequestFailed, Server, ServerPool, Transport, expect, is_loopback,
                        parse_urls, redact_url, tls_context)
from .vlm import PromptOptions, answer_result

LOG = logging.getLogger(__name__)

IMAGE_FORMATS = ('png', 'jpeg')
READOUTS = ('auto', 'token_ids', 'top_logprobs')
#: texts per batched /tokenize request
TOKENIZE_CHUNK = 256
#: how long past its deadline a call waits for its requests to report their own failure (s)
GRACE_S = 0.5


@dataclass
class RemoteOptions(PromptOptions):
    """Options of the ``remote`` backend (plus ``PromptOptions``, whose ``mode``, ``marking``,
    ``definitions``, ``num_labels``, ``max_new_tokens``, ``parser`` are as in ``vlm`` and
    whose ``score_prompt`` must be 'question'; ``device`` is unused).

    Attributes:
        model: the served model name ('' = the first model the server lists).
        url: base URL ending in /v1, or several (list, or comma separated): several servers.
        api_key_env: name of the environment variable holding the API key ('' = no key).
        timeout_s: the longest one request may wait for its answer (s).
        connect_timeout_s: the longest a connection may take to open, and a health probe to
            be answered (s).
        deadline_s: the longest all of one frame's requests, retries and backoff may take
            together (s, from the first request); persons not answered by then are ERROR.
        max_concurrency: most requests in flight at once (all servers together).
        retries: retries of a request after a transient failure (same server, backoff).
        fail_threshold: requests without an answer in a row (or probes answered with an
            error) after which a server is taken out.
        verify_tls: verify https certificates (keep on).
        ca_bundle: CA bundle file for https ('' = the system's trust store).
        processor: the served model's image processor config (a folder or hub id) for the
            exact pixels; '' = letterbox to a square.
        readout: score mode: 'auto' (probe: 'token_ids' when every server returns the
            log-probs of requested token ids, else 'top_logprobs'), or one of them.
        top_logprobs: how many top log-probs the 'top_logprobs' read-out asks for, 1-20.
        batch: 'auto' (use ``/v1/chat/completions/batch`` where a server has it) or 'off'.
        image_format: 'png' (lossless; default) or 'jpeg'.
        jpeg_quality: JPEG quality of the images sent.
        image_max_side: without ``processor``: the square's side is at most this (pixels).
        max_image_bytes: an encoded image larger than this is sent smaller.
        down_s: a server taken out is probed again (in the background) after this long,
            doubling while it keeps being taken out, at most 16x.
    """

    url: Any = ''
    api_key_env: str = ''
    timeout_s: float = 30.0
    connect_timeout_s: float = 3.0
    deadline_s: float = 10.0
    max_concurrency: int = 16
    retries: int = 3
    fail_threshold: int = 3
    verify_tls: bool = True
    ca_bundle: str = ''
    processor: str = ''
    readout: str = 'auto'
    top_logprobs: int = 20
    batch: str = 'auto'
    image_format: str = 'png'
    jpeg_quality: int = 90
    image_max_side: int = 1344
    max_image_bytes: int = 4_000_000
    down_s: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_prompt != 'question':
            raise ValueError("remote: score_prompt must be 'question' (a chat API cannot "
                             "continue the template's assistant start verbatim)")
        if self.readout not in READOUTS:
            raise ValueError(f'readout must be one of {READOUTS}, got {self.readout!r}')
        if self.batch not in ('auto', 'off'):
            raise ValueError("batch must be 'auto' or 'off'")
        if not 1 <= int(self.top_logprobs) <= 20:
            raise ValueError('top_logprobs must be in 1..20')
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f'image_format must be one of {IMAGE_FORMATS}, '
                             f'got {self.image_format!r}')
        if min(float(self.timeout_s), float(self.connect_timeout_s), float(self.deadline_s),
               float(self.down_s)) <= 0:
            raise ValueError('timeout_s, connect_timeout_s, deadline_s and down_s must be > 0')
        if int(self.max_concurrency) < 1 or int(self.retries) < 0:
            raise ValueError('max_concurrency must be >= 1, retries >= 0')
        if int(self.fail_threshold) < 1:
            raise ValueError('fail_threshold must be >= 1')
        if int(self.image_max_side) < 16 or int(self.max_image_bytes) < 10_000:
            raise ValueError('image_max_side must be >= 16 and max_image_bytes >= 10000')
        self.urls = parse_urls(self.url)


@dataclass
class ServerCaps:
    """What one server offers (probed with requests pinned to it)."""

    batch_route: bool = False
    uuids: bool = False
    exact: bool = True  # returns the log-probs of requested token ids


# -- images -----------------------------------------------------------------------------------
def data_url(data: bytes, fmt: str) -> str:
    return f'data:image/{fmt};base64,' + base64.b64encode(data).decode('ascii')


def image_part(url: str | None, uuid: str = '') -> dict[str, Any]:
    """A chat content part: the image's data URL (and its uuid), or only its uuid (the
    ``image_url`` key must be there, null: vLLM's rule)."""
    part: dict[str, Any] = {'type': 'image_url', 'image_url': {'url': url} if url else None}
    if uuid:
        part['uuid'] = uuid
    return part


def user_message(image: dict[str, Any], text: str) -> dict[str, Any]:
    return {'role': 'user', 'content': [image, {'type': 'text', 'text': text}]}


def assistant_message(text: str) -> dict[str, Any]:
    return {'role': 'assistant', 'content': [{'type': 'text', 'text': text}]}


def _probe_image() -> str:
    """A small grey picture for the configure-time probes."""
    return data_url(encode_rgb(np.full((64, 64, 3), 127, np.uint8), 'png'), 'png')


# -- the read-out plan ------------------------------------------------------------------------
@dataclass
class Conversation:
    """One read-out of one question: the distribution after the question's prompt (``prefix``
    empty: the chat's generation prompt) or after an assistant text whose tokens are
    ``prefix`` (``text``, sent with ``continue_final_message``)."""

    question: int
    position: int
    prefix: TokenIds
    text: str | None
    ids: tuple[int, ...]


@dataclass
class PersonRequests:
    """The requests of one person and what came back."""

    image: bytes
    fmt: str
    uuid: str
    logprobs: dict[int, Mapping[int, float]] = field(default_factory=dict)
    error: RequestFailed | None = None
    text: str = ''
    #: the server its requests go to (the one holding its image), once chosen
    server: Server | None = None

    @property
    def url(self) -> str:
        return data_url(self.image, self.fmt)


def _token_id(token: Any) -> int | None:
    # vLLM with return_tokens_as_token_ids writes 'token_id:123'
    if isinstance(token, str) and token.startswith('token_id:'):
        try:
            return int(token.split(':', 1)[1])
        except ValueError:
            return None
    return None


def first_logprobs(choice: Any) -> dict[int, float]:
    """token id -> log-prob at the first generated position of one chat completion choice.

    Raises:
        RequestFailed: no log-probs in the choice (bad response).
    """
    try:
        first = choice['logprobs']['content'][0]
        entries = [first, *(first.get('top_logprobs') or [])]
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise RequestFailed('bad_response', f'{BAD_RESPONSE}: no log-probabilities in the '
                            'answer', retry=True) from exc
    out: dict[int, float] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        tid, lp = _token_id(entry.get('token')), entry.get('logprob')
        if tid is not None and isinstance(lp, (int, float)):
            out[tid] = max(out.get(tid, -np.inf), float(lp))
    return out


def _check_tokens(body: Mapping[str, Any]) -> None:
    expect('tokens', list, 'POST /tokenize')(body)
    if not all(isinstance(t, int) for t in body['tokens']):
        raise RequestFailed('bad_response', f'{BAD_RESPONSE}: POST /tokenize answered tokens '
                            'that are not integers', retry=True)


class RemoteBackend(EmotionBackend):
    """Emotions from a VLM behind vLLM's OpenAI-compatible API (see the module docstring)."""

    name = 'remote'
    Options = RemoteOptions
    #: unload (and ``cancel_calls``) make a call in flight return at once: every wait of its
    #: requests ends, its persons are ERROR 'cancelled: ...'; no weights are held here
    unload_cancels_calls = True

    def __init__(self, options: RemoteOptions | dict | None = None) -> None:
        super().__init__(options)
        self.options: RemoteOptions
        self.sets_labels = self.options.mode == 'generate'
        self.transport: Transport | None = None
        self.served_model = ''
        self.readout = ''
        self.readout_dropped: list[str] = []
        self.vad_reason = ''
        self.image_processor: Any = None
        self.pixels = ''
        #: per server: batch route, image uuids, exact read-out (probed pinned to it)
        self.caps: dict[Server, ServerCaps] = {}
        self._caps_lock = threading.Lock()
        self._probe_locks: dict[Server, threading.Lock] = {}
        self.configure_requests = 0
        self._texts: list[str] = []
        self._plans: list[AnswerPlan | None] = []
        self._convs: list[Conversation] = []
        #: a special token (id, text) joining texts in one /tokenize request (None: one each)
        self._separator: tuple[int, str] | None = None
        self._specials: list[tuple[int, str]] = []
        #: ask the server to add the tokenizer's special tokens (BOS) to chat prompts
        self._add_special = False
        #: generate mode: force this many new tokens (vLLM's min_tokens; the benchmark)
        self._min_new_tokens = 0
        self._masses: collections.deque = collections.deque(maxlen=1024)
        self._executor: cf.ThreadPoolExecutor | None = None
        #: the deadlines of the calls in flight (``cancel_calls`` ends them)
        self._calls: set[Deadline] = set()
        self._calls_lock = threading.Lock()
        #: the servers that answered at configure (probed then; the others when first used)
        self._answered: list[Server] = []

    @property
    def model_id(self) -> str:
        return self.served_model or self.options.model

    @property
    def batch_route(self) -> bool:
        """Every probed server has /v1/chat/completions/batch."""
        return bool(self.caps) and all(c.batch_route for c in self.caps.values())

    @property
    def uuids(self) -> bool:
        """Every probed server serves images named by uuid."""
        return bool(self.caps) and all(c.uuids for c in self.caps.values())

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
        """Connect: list the served models, render and tokenize the prompts, probe the
        read-out, the batch route and image uuids (on each server).

        Raises:
            ModelLoadError: no URL, no server answers (or answers in another shape: named),
                the model is not served, the processor config cannot be read, a proxy of the
                environment cannot be used, or score mode cannot read yes/no from this
                server. Whatever was opened (HTTP client, threads) is closed again.
        """
        if self._loaded:
            return
        o = self.options
        if not o.urls:
            raise ModelLoadError("backend 'remote' needs backend.url (e.g. "
                                 "'http://gpu-server:8000/v1')")
        self._load_pixels()
        verify = tls_context(bool(o.verify_tls), o.ca_bundle)
        if not verify:
            LOG.warning('remote: TLS certificate verification is OFF (backend.verify_tls false)')
        key = self._api_key()
        for u in o.urls:
            if key and u.startswith('http://') and not is_loopback(u):
                LOG.warning('remote: the API key goes to %s over plain http (readable on the '
                            'network); use https', u)
        loaded = False
        try:
            self._open(key, verify)
            self._configure()
            loaded = True
        except ModelLoadError:
            raise
        except RequestFailed as exc:
            raise ModelLoadError(f'remote backend {", ".join(o.urls)}: {exc.reason}') from exc
        except Exception as exc:  # noqa: BLE001 - anything else: named, nothing left open
            raise ModelLoadError(f'remote backend {", ".join(o.urls)}: configure failed: '
                                 f'{type(exc).__name__}: {exc}') from exc
        finally:
            if not loaded:
                self.unload()
        self.configure_requests = self.transport.stats.requests
        self._loaded = True

    def _open(self, key: str, verify: Any) -> None:
        """The HTTP client (with the environment's proxies) and the request threads."""
        o = self.options
        self.transport = Transport(o.urls, key, o.timeout_s, o.retries, o.max_concurrency,
                                   verify, o.down_s, o.fail_threshold, o.connect_timeout_s)
        self.transport.pool.listeners.append(self._notify_calls)
        for url, proxy in self.transport.proxies.items():
            if proxy:
                LOG.info('remote: %s goes through the proxy %s (from the environment; '
                         'NO_PROXY lists the hosts reached directly)', url, redact_url(proxy))
        self._executor = cf.ThreadPoolExecutor(int(o.max_concurrency),
                                               thread_name_prefix='remote')

    def _configure(self) -> None:
        o = self.options
        self._connect()
        try:
            self._add_special = self._probe_special_tokens()
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

    def _load_pixels(self) -> None:
        o = self.options
        if o.processor:
            try:
                self.image_processor = sp.load_image_processor(o.processor)
            except ValueError as exc:
                raise ModelLoadError(f'backend.processor: {exc}') from exc
            self.pixels = f'as the processor of {o.processor!r}'
        else:
            self.image_processor = None
            self.pixels = (f'letterboxed to a square of at most {o.image_max_side} px (no '
                           'backend.processor: the served model\'s own pixels are unknown)')
            if o.marking == 'red_box':
                LOG.warning('remote: no backend.processor given, so the frame is letterboxed '
                            'to a square (at most %d px) for any served model: a centre crop '
                            'keeps everyone, but the pixels are not exactly those of the local '
                            'backend; set backend.processor to the model folder or hub id',
                            o.image_max_side)

    def _connect(self) -> None:
        """Every server that answers (within ``deadline_s`` each: a silent one does not hold
        configure longer) must list the model; the model name defaults to the first listed."""
        o = self.options
        servers = self.transport.pool.servers
        names: list[list[str] | None] = []
        for server in servers:
            try:
                body = self.transport.request('GET', '/v1/models', server=server,
                                              check=expect('data', list, 'GET /v1/models'),
                                              deadline=Deadline(o.deadline_s))
                names.append([m['id'] for m in body['data']
                              if isinstance(m, dict) and isinstance(m.get('id'), str)])
            except RequestFailed as exc:
                if exc.kind == 'http_4xx':  # it answers, and refuses: a key, a proxy, a path
                    hint = (' (check backend.api_key_env)' if exc.reason[5:8] in ('401', '403')
                            else '')
                    raise ModelLoadError(f'{server.url}: {exc.reason}{hint}') from exc
                LOG.warning('remote: %s does not answer at configure: %s', server.url, exc.reason)
                server.last_error = exc.reason
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
        self._answered = [s for n, s in zip(names, servers) if n is not None]
        LOG.info('remote: model %r on %s', model, ', '.join(o.urls))

    def cancel_calls(self, reason: str = 'the call was cancelled') -> None:
        """End every wait of the calls in flight now (their persons ERROR 'cancelled: ...')."""
        with self._calls_lock:
            calls = list(self._calls)
        for deadline in calls:
            deadline.cancel(reason)

    def _notify_calls(self) -> None:
        """A server went out or came back: the waiting calls look again."""
        with self._calls_lock:
            calls = list(self._calls)
        for deadline in calls:
            deadline.notify()

    def unload(self) -> None:
        self.cancel_calls('the backend was unloaded')
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        with self._caps_lock:
            self.caps.clear()
            self._probe_locks.clear()
        self._answered = []
        super().unload()

    def diagnostics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.transport is not None:
            out.update(self.transport.stats.snapshot())
            for url, state in self.transport.pool.state().items():
                proxy = self.transport.proxies.get(url)
                out[f'server {url}'] = state + (f', via proxy {redact_url(proxy)}' if proxy
                                                else '')
        out['pixels'] = self.pixels
        out['configure_requests'] = self.configure_requests
        out['deadline_s'] = self.options.deadline_s
        if self.options.mode == 'score' and self.readout:
            out['readout'] = self.readout
            out['vad'] = self.vad_reason or 'ok'
            out['batch_route'] = self.batch_route
            out['image_uuids'] = self.uuids
            with self._caps_lock:
                caps = dict(self.caps)
            if len({(c.batch_route, c.uuids) for c in caps.values()}) > 1:
                out['server_capabilities'] = '; '.join(
                    f'{s.url}: batch route {c.batch_route}, uuids {c.uuids}'
                    for s, c in caps.items())
            if self.readout_dropped:
                out['readout_dropped'] = '; '.join(self.readout_dropped)[:400]
            out['continuation_sequences'] = sum(1 for c in self._convs if c.prefix)
            out['requests_per_person'] = self.requests_per_person
            if self.readout == 'top_logprobs' and self._masses:
                out['top_logprobs_mass'] = round(float(np.mean(self._masses)), 4)
        return out

    @property
    def requests_per_person(self) -> int:
        """HTTP requests per person in score mode (without faults; where every server has
        the batch route)."""
        if not self._convs:
            return 0
        if not self.batch_route:
            return len(self._convs)
        roots = sum(1 for c in self._convs if not c.prefix)
        return 1 + int(roots > 1) + int(any(c.prefix for c in self._convs))

    # -- server tokenizer --------------------------------------------------------------------
    def _tokenize_chat(self, messages: list[dict], cont: bool = False) -> list[int]:
        body = self.transport.request('POST', '/tokenize', {
            'model': self.served_model, 'messages': messages,
            'add_generation_prompt': not cont, 'continue_final_message': cont,
            'add_special_tokens': self._add_special}, check=_check_tokens)
        return [int(t) for t in body['tokens']]

    def _tokenize_text(self, text: str, special: bool = False, strs: bool = False) -> Any:
        body = self.transport.request('POST', '/tokenize', {
            'model': self.served_model, 'prompt': text, 'add_special_tokens': special,
            **({'return_token_strs': True} if strs else {})}, check=_check_tokens)
        ids = [int(t) for t in body['tokens']]
        return (ids, list(body.get('token_strs') or [])) if strs else ids

    def _detokenize(self, ids: Sequence[int]) -> str:
        return str(self.transport.request('POST', '/detokenize', {
            'model': self.served_model, 'tokens': list(ids)},
            check=expect('prompt', str, 'POST /detokenize'))['prompt'])

    def _probe_special_tokens(self) -> bool:
        """Whether chat requests must ask the server to add the tokenizer's special tokens.

        vLLM tokenizes a rendered chat without them (the template is expected to write BOS);
        Hugging Face processors add them unless the rendered text already starts with BOS, as
        the local ``vlm`` backend does. Templates without BOS (LLaVA-1.5's) thus reach the
        model without it over vLLM's chat API unless ``add_special_tokens`` is set.
        """
        plain, (special, strs) = (self._tokenize_text('a'),
                                  self._tokenize_text('a', special=True, strs=True))
        self._specials = [(i, s) for i, s in zip(special, strs) if i not in plain]
        if len(special) <= len(plain) or special[-len(plain):] != plain:
            return False
        lead = special[:len(special) - len(plain)]
        chat = self._tokenize_chat([user_message(image_part(_probe_image()), 'Hello')])
        return chat[:len(lead)] != lead

    def _tokenize_many(self, texts: Sequence[str]) -> list[list[int]]:
        """The server's tokenization of each text, in few requests: the texts joined by a
        special token (tokenizers split the text at special tokens first, so each piece is
        tokenized on its own), split back at it; one request per text where that fails."""
        out: list[list[int]] = []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = list(texts[start:start + TOKENIZE_CHUNK])
            got = self._joined(chunk) if self._separator else None
            if got is None:
                futures = [self._executor.submit(self._tokenize_text, t) for t in chunk]
                got = [f.result() for f in futures]
            out += got
        return out

    def _joined(self, texts: list[str]) -> list[list[int]] | None:
        sep_id, sep = self._separator
        ids = self._tokenize_text(sep + sep.join(texts))
        pieces: list[list[int]] = [[]]
        for t in ids:
            if t == sep_id:
                pieces.append([])
            else:
                pieces[-1].append(t)
        pieces = pieces[1:]
        out = []
        for text in texts:  # a separator inside a text splits it too
            n = text.count(sep) + 1
            if len(pieces) < n:
                return None
            joined: list[int] = []
            for k, piece in enumerate(pieces[:n]):
                joined += ([sep_id] if k else []) + piece
            out.append(joined)
            pieces = pieces[n:]
        return out if not pieces else None

    def _find_separator(self) -> None:
        """A special token (BOS, or one the template writes) that tokenizes alone to itself."""
        self._separator = None
        candidates = [s for _, s in self._specials]
        candidates += ['</s>', '<|endoftext|>', '<|im_end|>', '<eos>', '<end_of_turn>']
        for sep in dict.fromkeys(candidates):
            if not sep:
                continue
            try:
                ids = self._tokenize_text(sep)
            except RequestFailed:
                continue
            if len(ids) == 1:
                probe = self._tokenize_text(f'{sep}a b{sep}a b')
                if probe.count(ids[0]) == 2:
                    self._separator = (ids[0], sep)
                    return

    # -- the plan ----------------------------------------------------------------------------
    def _plan_score(self) -> None:
        """Render the template, plan the answers (one batched tokenization), find the
        continuation texts, probe the read-out, the batch route and image uuids."""
        from ..readout import ReadoutError
        o = self.options
        prefix, queries = sp.score_texts(o.marking, o.definitions, o.score_prompt)
        image = image_part(_probe_image())
        marked = [user_message(image, prefix + '\n' + sp.QUERY_MARK)]
        gen_ids = self._tokenize_chat(marked)
        rendered = self._detokenize(gen_ids)
        cont_ids = self._tokenize_chat(marked + [assistant_message(sp.ANSWER_MARK)], cont=True)
        cont_rendered = self._detokenize(cont_ids)
        if self._tokenize_text(rendered) != gen_ids:
            raise ModelLoadError('the server\'s rendered prompt does not tokenize back to its '
                                 'own tokens, so the answer tokens cannot be found; use '
                                 'mode=generate')
        try:
            head, tail = sp.split_rendered(rendered)
            head2, rest = sp.split_rendered(cont_rendered)
            mid, end = sp.split_rendered(rest, sp.ANSWER_MARK)
        except ReadoutError as exc:
            raise ModelLoadError(str(exc)) from exc
        self._find_separator()
        self._texts = [prefix + '\n' + q for q in queries]
        prompts_ = [head + q + tail for q in queries]
        try:
            plans, self.vad_reason, prompt_ids = sp.plan_answers(
                self._tokenize_many, prompts_, NUM_CATEGORIES)
        except ReadoutError as exc:
            raise ModelLoadError(f'{self.served_model!r} on the server: {exc}') from exc
        self._plans, self._convs, dropped = self._conversations(
            plans, prompt_ids, [head2 + q + mid for q in queries], end)
        self.readout_dropped = sorted(set(dropped))
        if self.vad_reason:
            LOG.warning('remote: %s', self.vad_reason)
        self._probe_routes()
        LOG.info('remote: read-out %s (%s); %d conversations per person (%d continuations), '
                 '%s; pixels %s%s', self.readout,
                 'exact' if self.readout == 'token_ids' else 'approximate: top '
                 f'{o.top_logprobs} tokens only', len(self._convs),
                 sum(1 for c in self._convs if c.prefix),
                 f'{self.requests_per_person} requests per person (batch route)'
                 if self.batch_route else 'one request per question (the server has no '
                 '/v1/chat/completions/batch)', self.pixels,
                 f'; left out: {"; ".join(self.readout_dropped)}' if self.readout_dropped
                 else '')

    def _conversations(self, plans: list[AnswerPlan | None], prompt_ids: list[list[int]],
                       cont_heads: list[str], end: str
                       ) -> tuple[list[AnswerPlan | None], list[Conversation], list[str]]:
        """One conversation per read-out position of every plan. A position after answer
        tokens needs an assistant text whose chat ends with exactly those tokens; candidates
        (prefixes of the spellings) are checked in one batched tokenization; sequences through
        a position without one are left out (said in ``readout_dropped``)."""
        wanted: list[tuple[int, TokenIds, str]] = []
        for q, plan in enumerate(plans):
            if plan is None:
                continue
            spellings = [s for group in sp.answer_spellings(sp.question_kinds(
                len(plans))[q])[1] for s in group]
            cands = {''}
            for s in spellings:
                for k in range(1, len(s)):
                    cands.update((s[:k], s[:k].strip()))
            for pos in plan.positions[1:]:
                for c in sorted(cands, key=lambda x: (len(x), x)):
                    wanted.append((q, pos, c))
        texts = [cont_heads[q] + c + end for q, _, c in wanted]
        ids = self._tokenize_many(texts) if texts else []
        found: dict[tuple[int, TokenIds], str] = {}
        for (q, pos, c), got in zip(wanted, ids):
            if (q, pos) not in found and list(got) == prompt_ids[q] + list(pos):
                found[(q, pos)] = c
        new_plans: list[AnswerPlan | None] = []
        convs: list[Conversation] = []
        dropped: list[str] = []
        for q, plan in enumerate(plans):
            if plan is None:
                new_plans.append(None)
                continue
            keep = []
            for name, seqs in zip(plan.outcomes, plan.sequences):
                ok = []
                for seq in seqs:
                    if all((q, tuple(seq[:j])) in found for j in range(1, len(seq))):
                        ok.append(seq)
                    else:
                        dropped.append(f'{name}: tokens {list(seq)} (no assistant text ends '
                                       'the chat with its first tokens)')
                keep.append(ok)
            new = AnswerPlan.from_sequences(plan.outcomes, keep, plan.dropped)
            if q < NUM_CATEGORIES and not all(new.expressible):
                raise ModelLoadError('yes or no cannot be read through the server\'s chat API '
                                     f'({"; ".join(dropped)}); use mode=generate')
            new_plans.append(new)
            for k, pos in enumerate(new.positions):
                convs.append(Conversation(q, k, tuple(pos), found.get((q, tuple(pos))) if pos
                                          else None, tuple(new.requests[k])))
        return new_plans, convs, dropped

    def _probe_routes(self) -> None:
        """The read-out, batch route and image uuids of every server that answered at
        configure, each probed with requests pinned to it (a uuid is only known to the server
        that saw its image); the read-out is exact only when every one of them is."""
        o = self.options
        caps = {s: self._probe_server(s) for s in self._answered}
        exact = all(c.exact for c in caps.values())
        if o.readout == 'token_ids' and not exact:
            bad = ', '.join(s.url for s, c in caps.items() if not c.exact)
            raise ModelLoadError(f'readout token_ids: {bad} did not return the log-probs of '
                                 "the requested token ids; use readout 'top_logprobs' or "
                                 "'auto'")
        self.readout = o.readout if o.readout != 'auto' else (
            'token_ids' if exact else 'top_logprobs')
        with self._caps_lock:
            self.caps = caps

    def _probe_server(self, server: Server, deadline: Deadline | None = None) -> ServerCaps:
        """One server's read-out, batch route and image uuids, every request pinned to it:
        the probe image uploaded under a fresh uuid, then named by that uuid alone."""
        o = self.options
        first = self._convs[0]
        unlikely = self._separator[0] if self._separator else 0
        ids = sorted({*first.ids, unlikely})
        uuid = f'probe-{random.getrandbits(64):016x}'

        def ask(path: str, payload: dict[str, Any]) -> Any:
            return self.transport.request('POST', path, payload, server=server,
                                          deadline=deadline)
        body = ask('/v1/chat/completions', self._payload(
            [self._messages(first, image_part(_probe_image(), uuid))], 'token_ids', ids))
        got = first_logprobs((body.get('choices') or [{}])[0])
        caps = ServerCaps(exact=all(i in got for i in ids))
        method = 'token_ids' if caps.exact else 'top_logprobs'
        named = image_part(None, uuid)
        if o.batch != 'off':
            try:
                ask('/v1/chat/completions/batch', self._payload(
                    [self._messages(first, named)] * 2, method, first.ids, batch=True))
                caps.batch_route = caps.uuids = True
                return caps
            except RequestFailed as exc:
                if exc.kind != 'http_4xx':
                    raise
                if 'cache miss' in exc.reason.lower():
                    caps.batch_route = True  # the route exists; uuids do not work
                else:
                    LOG.warning('remote: %s has no /v1/chat/completions/batch (%s): one '
                                'request per question', server.url, exc.reason)
        try:
            ask('/v1/chat/completions', self._payload([self._messages(first, named)], method,
                                                      first.ids))
            caps.uuids = True
        except RequestFailed as exc:
            if exc.kind != 'http_4xx':
                raise
            LOG.warning('remote: %s does not serve images by uuid (%s): every request '
                        'carries the image', server.url, exc.reason)
        return caps

    def _caps_for(self, server: Server, deadline: Deadline) -> ServerCaps:
        """``server``'s capabilities; probed (pinned to it) when it is first used, for a
        server that did not answer at configure."""
        with self._caps_lock:
            caps = self.caps.get(server)
            lock = self._probe_locks.setdefault(server, threading.Lock())
        if caps is not None:
            return caps
        if not lock.acquire(timeout=max(0.0, deadline.remaining())):
            raise deadline.error() or RequestFailed('deadline', deadline.exceeded(),
                                                    retry=False)
        try:
            with self._caps_lock:
                if server in self.caps:
                    return self.caps[server]
            caps = self._probe_server(server, deadline)
            if self.readout == 'token_ids' and not caps.exact:
                LOG.warning('remote: %s does not return the log-probs of requested token ids '
                            '(readout token_ids): its persons are ERROR', server.url)
            with self._caps_lock:
                self.caps[server] = caps
            return caps
        finally:
            lock.release()

    # -- request bodies ----------------------------------------------------------------------
    def _messages(self, conv: Conversation, image: dict[str, Any]) -> list[dict[str, Any]]:
        msgs = [user_message(image, self._texts[conv.question])]
        if conv.prefix:
            msgs.append(assistant_message(conv.text or ''))
        return msgs

    def _payload(self, messages: list[list[dict]], method: str, ids: Sequence[int],
                 batch: bool = False, cont: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {'model': self.served_model,
                                   'messages': messages if batch else messages[0],
                                   'add_special_tokens': self._add_special,
                                   'max_tokens': 1, 'temperature': 0.0, 'logprobs': True,
                                   'top_logprobs': int(self.options.top_logprobs),
                                   'return_tokens_as_token_ids': True}
        if cont:
            payload.update(add_generation_prompt=False, continue_final_message=True)
        if method == 'token_ids' and ids:
            payload['logprob_token_ids'] = sorted({int(i) for i in ids})
            payload['top_logprobs'] = 1
        return payload

    def _check_choices(self, convs: Sequence[Conversation], body: Mapping[str, Any]
                       ) -> list[dict[int, float]]:
        """Per conversation, its log-probs (choices in ``index`` order); every requested id
        present (token_ids).

        Raises:
            RequestFailed: bad response: another number of choices, an index that is not an
                integer, no log-probs, a requested id missing.
        """
        choices = body.get('choices')
        if not isinstance(choices, list) or len(choices) != len(convs):
            raise RequestFailed('bad_response', f'{BAD_RESPONSE}: {len(choices or [])} answers '
                                f'for {len(convs)} conversations', retry=True)
        index = [c.get('index', 0) if isinstance(c, dict) else None for c in choices]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in index):
            raise RequestFailed('bad_response', f'{BAD_RESPONSE}: answers whose index is not '
                                f'an integer ({index[:4]})', retry=True)
        order = [c for _, c in sorted(zip(index, choices), key=lambda ic: ic[0])]
        out = []
        for conv, choice in zip(convs, order):
            got = first_logprobs(choice)
            if self.readout == 'token_ids':
                missing = [i for i in conv.ids if i not in got]
                if missing:
                    raise RequestFailed('bad_response', f'{BAD_RESPONSE}: the log-probs of '
                                        f'requested token ids {missing[:5]} are missing',
                                        retry=False)
            out.append(got)
        return out

    # -- the three stages --------------------------------------------------------------------
    def marked_images(self, image: np.ndarray, boxes: Sequence[BBox]) -> list[np.ndarray]:
        """The pixels sent for each person (``scoring_plan``: as the local backend's)."""
        o = self.options
        if self.image_processor is not None:
            return sp.marked_images(image, boxes, o.marking, self.image_processor)
        return sp.marked_square(image, boxes, o.marking, o.image_max_side)

    def preprocess(self, image: np.ndarray, boxes: Sequence[BBox]) -> list[PersonRequests]:
        """Mark each person (the frame brought to the working size once) and encode it."""
        o = self.options
        out = []
        for img in self.marked_images(image, boxes):
            side = max(img.shape[:2]) if self.image_processor is not None else o.image_max_side
            data = encode_rgb(img, o.image_format, o.jpeg_quality, side, o.max_image_bytes)
            out.append(PersonRequests(data, o.image_format,
                                      hashlib.sha256(data).hexdigest()[:32]))
        return out

    def forward(self, batch: list[PersonRequests]) -> list[PersonRequests]:
        """Each person's requests on one server, persons concurrently, all within ONE
        deadline (``deadline_s``). Returns when every person is answered, the deadline has
        passed, the call is cancelled (``cancel_calls``, ``unload``), or the persons still
        waiting wait on servers that left the pool (and no other is up); those persons get
        the reason."""
        executor = self._executor
        if executor is None or self.transport is None:
            raise BackendError('remote backend is not loaded')
        work = self._generate if self.options.mode == 'generate' else self._score_person
        deadline = Deadline(self.options.deadline_s)
        with self._calls_lock:
            self._calls.add(deadline)
        futures: dict[cf.Future, PersonRequests] = {}
        try:
            for p in batch:
                futures[executor.submit(self._on_a_server, work, p, deadline)] = p
            for fut in futures:
                fut.add_done_callback(lambda _: deadline.notify())
            transport = self.transport
            deadline.wait(math.inf, until=lambda: _settled(futures, transport), past=GRACE_S)
        except RuntimeError:  # the executor was shut down: unloaded meanwhile
            deadline.cancel('the backend was unloaded')
        finally:
            with self._calls_lock:
                self._calls.discard(deadline)
        for p in batch:
            fut = next((f for f, q in futures.items() if q is p), None)
            if p.error is None:
                p.error = _outcome(fut, p, deadline)
        deadline.cancel('the call returned without it')  # requests left behind stop now
        return batch

    def _on_a_server(self, work: Callable[[PersonRequests, Server, Deadline], None],
                     p: PersonRequests, deadline: Deadline) -> None:
        """``work(p, server, deadline)`` on the least busy server; again on another one when
        that server was taken out meanwhile (its failures were not the person's)."""
        transport = self.transport
        if transport is None:
            raise RequestFailed('cancelled', f'{CANCELLED}: the backend was unloaded',
                                retry=False)
        pool = transport.pool
        tried: list[Server] = []
        while True:
            stop = deadline.error()
            if stop is not None:
                raise stop
            server = pool.acquire(exclude=tried)
            p.server = server
            try:
                work(p, server, deadline)
                return
            except RequestFailed as exc:
                tried.append(server)
                if not (exc.retry and not server.up and pool.usable(tried)):
                    raise
            finally:
                p.server = None
                pool.release(server)

    def _generate(self, p: PersonRequests, server: Server, deadline: Deadline) -> None:
        o = self.options
        from .. import prompts
        text = prompts.build_prompt(o.marking, o.definitions, o.num_labels or None)

        def check(body: Mapping[str, Any]) -> None:
            try:
                body['choices'][0]['message']['content']
            except (KeyError, IndexError, TypeError) as exc:
                raise RequestFailed('bad_response', f'{BAD_RESPONSE}: no answer',
                                    retry=True) from exc
        body = self.transport.request('POST', '/v1/chat/completions', {
            'model': self.served_model, 'messages': [user_message(image_part(p.url), text)],
            'add_special_tokens': self._add_special,
            'max_tokens': int(o.max_new_tokens), 'temperature': 0.0,
            **({'min_tokens': self._min_new_tokens} if self._min_new_tokens else {})},
            server=server, check=check, deadline=deadline)
        p.text = (body['choices'][0]['message']['content'] or '').strip()

    def _ask(self, convs: Sequence[Conversation], p: PersonRequests, server: Server,
             caps: ServerCaps, upload: bool, deadline: Deadline) -> None:
        """One request for ``convs`` (all of one kind: generation prompt or continuation)."""
        image = image_part(p.url if upload or not caps.uuids else None,
                           p.uuid if caps.uuids else '')
        cont = bool(convs[0].prefix)
        ids = sorted({i for c in convs for i in c.ids})
        batch = len(convs) > 1
        path = '/v1/chat/completions/batch' if batch else '/v1/chat/completions'
        payload = self._payload([self._messages(c, image) for c in convs], self.readout, ids,
                                batch=batch, cont=cont)
        got: list = []

        def check(body: Mapping[str, Any]) -> None:
            got[:] = self._check_choices(convs, body)
        self.transport.request('POST', path, payload, server=server, check=check,
                               deadline=deadline)
        for conv, lps in zip(convs, got):
            p.logprobs[self._convs.index(conv)] = lps
            if self.readout == 'top_logprobs' and not conv.prefix:
                self._masses.append(float(np.exp(np.asarray(list(lps.values()))).sum()))

    def _score_person(self, p: PersonRequests, server: Server, deadline: Deadline) -> None:
        """The image once with the first question, then the others naming it by uuid, all on
        ``server`` (the one holding the image)."""
        caps = self._caps_for(server, deadline)
        convs = self._convs
        self._ask(convs[:1], p, server, caps, True, deadline)
        if caps.batch_route:
            groups = [[c for c in convs[1:] if not c.prefix], [c for c in convs if c.prefix]]
        else:
            groups = [[c] for c in convs[1:]]
        for group in groups:
            if not group:
                continue
            try:
                self._ask(group, p, server, caps, False, deadline)
            except RequestFailed as exc:  # the server forgot the image: send it again
                if exc.kind != 'http_4xx' or 'cache miss' not in exc.reason.lower():
                    raise
                self._ask(convs[:1], p, server, caps, True, deadline)
                self._ask(group, p, server, caps, False, deadline)

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
        """Scores and VAD of one person from its answers (``scoring_plan.read_scores``)."""
        positions: dict[int, list[dict[int, float]]] = {}
        for n, conv in enumerate(self._convs):
            got = p.logprobs.get(n, {})
            plan = self._plans[conv.question]
            positions.setdefault(conv.question, [{} for _ in plan.positions])
            # an id outside the top_logprobs read-out: probability 0
            positions[conv.question][conv.position] = {t: got.get(t, -np.inf)
                                                       for t in conv.ids}
        lps = [plan.outcome_logprobs(positions[q]) if plan is not None else None
               for q, plan in enumerate(self._plans)]
        return sp.read_scores(lps, NUM_CATEGORIES)


def _settled(futures: Mapping[cf.Future, PersonRequests], transport: Transport) -> bool:
    """Every person answered, or stuck: waiting on a server that left the pool while a request
    to it is stalled, and no other server is up (with one up, a person whose request fails
    moves there)."""
    now = time.monotonic()
    return all(f.done() or (p.server is not None and not p.server.up
                            and transport.prober.stalled(p.server, now)
                            and not transport.pool.usable([p.server]))
               for f, p in futures.items())


def _outcome(fut: cf.Future | None, p: PersonRequests, deadline: Deadline
             ) -> RequestFailed | None:
    """The failure of a person once its call returned (None: answered)."""
    if fut is not None and fut.done() and not fut.cancelled():
        exc = fut.exception()
        if exc is None or isinstance(exc, RequestFailed):
            return exc
        return RequestFailed('bad_response', f'{type(exc).__name__}: {exc}', retry=False)
    if fut is not None:
        fut.cancel()  # not started yet: never will
    if deadline.cancel_reason:
        return RequestFailed('cancelled', f'{CANCELLED}: {deadline.cancel_reason}', retry=False)
    server = p.server
    if server is not None and not server.up:
        return RequestFailed('unreachable', f'{UNREACHABLE}: {server.url} left the pool while '
                             f'the request waited ({server.last_error})', retry=False)
    return RequestFailed('deadline', deadline.exceeded(), retry=False)


__all__ = ['MAX_RESPONSE_BYTES', 'RemoteBackend', 'RemoteOptions', 'RequestFailed',
           'ServerCaps', 'ServerPool', 'Transport', 'is_loopback', 'parse_urls',
           'tls_context']
