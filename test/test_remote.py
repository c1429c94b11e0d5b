"""The remote backend against a REAL serving engine: vLLM's CPU build (``make vllm``) serving a
tiny random LLaVA-1.5 saved in the hub's layout, with the real Llama-2 SentencePiece tokenizer,
the LLaVA-1.5 chat template and a CLIP image processor that centre-crops (as
llava-hf/llava-1.5-7b-hf's does), on 127.0.0.1.

The reference is the local ``vlm`` backend on the same folder, on real photographs of both
aspect ratios with people at the frame's edges (zidane.jpg 1280x720, bus.jpg 810x1080): with
the model's processor config (``processor``) and PNG the server sees the local backend's pixels.
Faults are injected by ``testing.fault_proxy`` between the backend and the real server: broken
answers, a link that goes silent (a Wi-Fi drop), one image the server rejects; TLS with a CA of
the test's own making; proxies from the environment; two servers over many configures.
"""
import shutil
import ssl
import subprocess
import threading
import time

import cv2
import numpy as np
import pytest

from emotion_perception.core.backends import ModelLoadError, create_backend
from emotion_perception.core.backends.http_pool import ERROR_KINDS
from emotion_perception.core.backends.remote import (MAX_RESPONSE_BYTES, is_loopback,
                                                     tls_context)
from emotion_perception.core.backends.scoring_plan import square_plan
from emotion_perception.core.model_files import sample_image_paths
from emotion_perception.core.types import BBox, Status
from emotion_perception.testing import vllm_server as vs
from emotion_perception.testing.fault_proxy import Fault, FaultProxy
from emotion_perception.testing.sample_people import PEOPLE
from test_vlm_node import bag, run_bag  # noqa: F401  (the replayed bag of the vlm node test)

pytestmark = pytest.mark.slow

BOXES = [BBox(4, 6, 30, 50), BBox(24, 2, 54, 54)]
KEY_ENV = 'EP_TEST_VLLM_KEY'
KEY = 'sk-test-0123456789'


def frame(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (7, 7, 3), dtype=np.uint8), (56, 56),
                     interpolation=cv2.INTER_LINEAR)
    return img


def photo(name: str) -> tuple[np.ndarray, list[BBox]]:
    """A sample photograph (RGB) and its hand-annotated people."""
    img = cv2.cvtColor(cv2.imread(str(sample_image_paths()[name])), cv2.COLOR_BGR2RGB)
    return img, [BBox(*p.box) for p in PEOPLE[name]]


def remote(url, **options):
    """A loaded remote backend; generous timeouts (2 shared CPU cores) unless given."""
    backend = create_backend('remote', {'url': url, 'timeout_s': 60.0, 'deadline_s': 120.0,
                                        **options})
    backend.load()
    return backend


def chat(wire) -> int:
    """Chat requests a proxy saw (not the health prober's GET /v1/models, which a request
    waiting longer than the connect timeout on a busy CPU may cause)."""
    return wire.paths['/v1/chat/completions'] + wire.paths['/v1/chat/completions/batch']


def ok(results) -> bool:
    return all(r.status == Status.OK for r in results)


def max_diff(got, want) -> float:
    assert [r.status for r in got] == [Status.OK] * len(got), [r.reason for r in got]
    return max(max(float(np.abs(g.scores - w.scores).max()),
                   float(np.abs(np.subtract(g.vad, w.vad)).max())) for g, w in zip(got, want))


@pytest.fixture(scope='module')
def local(vllm_server):
    backend = create_backend('vlm', {'model': str(vllm_server.model_dir), 'device': 'cpu'})
    backend.load()
    yield backend
    backend.unload()


@pytest.fixture(scope='module')
def exact(vllm_server):
    """The remote backend with the served model's processor config and PNG images."""
    backend = remote(vllm_server.url, processor=str(vllm_server.model_dir))
    yield backend
    backend.unload()


@pytest.fixture(scope='module')
def second_server(tiny_vlm_dir):
    """A second server of the same model that needs an API key (killed and restarted here);
    it does not need the first one (tests that use only this one start only this one)."""
    from conftest import VLLM_TINY_LLAVA
    import os
    if vs.missing_reason():
        if os.environ.get('EP_VLLM_PYTHON'):
            pytest.fail(f'EP_VLLM_PYTHON is set but {vs.missing_reason()}')
        pytest.skip(vs.missing_reason())
    server = vs.VLLMServer(tiny_vlm_dir('llava', **VLLM_TINY_LLAVA), name='tiny-llava',
                           extra=['--api-key', KEY])
    server.start()
    yield server
    server.stop()


# -- no server needed ----------------------------------------------------------------------------
def test_square_plan_and_tls_context_without_a_server(tmp_path):
    """(URLs, proxies, the image encoder and the pool's rules: test_http_pool.py.)"""
    assert is_loopback('http://127.0.0.1:8000/v1') and is_loopback('http://localhost/v1')
    assert not is_loopback('http://gpu-server:8000/v1') and not is_loopback('http://10.0.0.2/v1')
    # letterbox to a square: the whole 1280x720 frame is inside the centre of the square
    plan = square_plan(720, 1280, 336)
    assert plan.size == (336, 336) and plan.offset == (0, 74)
    assert plan.box(BBox(1150, 0, 1280, 720)).x2 == pytest.approx(336)
    # TLS: the system trust store (what update-ca-certificates maintains), or the CA file
    ctx = tls_context(True)
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert tls_context(False) is False
    with pytest.raises(ModelLoadError, match='ca_bundle'):
        tls_context(True, str(tmp_path / 'missing.pem'))


def test_server_down_at_configure_is_a_load_error():
    port = vs.free_port()  # nothing listens there
    backend = create_backend('remote', {'url': f'http://127.0.0.1:{port}/v1', 'retries': 0})
    with pytest.raises(ModelLoadError, match='server unreachable'):
        backend.load()
    with pytest.raises(ModelLoadError, match='needs backend.url'):
        create_backend('remote', {}).load()
    with pytest.raises(ModelLoadError, match='processor.*no such folder'):
        create_backend('remote', {'url': f'http://127.0.0.1:{port}/v1',
                                  'processor': '/nonexistent/model'}).load()


def test_node_stays_unconfigured_when_the_server_is_down():
    pytest.importorskip('rclpy')
    from rclpy.parameter import Parameter

    from emotion_perception.nodes.emotion_node import EmotionNode
    from emotion_perception.testing.ros_harness import RosHarness
    port = vs.free_port()
    with RosHarness() as harness:
        node = harness.add(EmotionNode(context=harness.context, parameter_overrides=[
            Parameter('backend.name', value='remote'),
            Parameter('backend.url', value=[f'http://127.0.0.1:{port}/v1']),
            Parameter('backend.retries', value=0)]))
        assert node.trigger_configure().name == 'FAILURE'
        assert node.lifecycle_state == 'unconfigured'
        assert 'server unreachable' in node.failure_reason
        # verify_tls is read-only like url and ca_bundle: no run-time switch to unverified
        result = node.set_parameters([Parameter('backend.verify_tls', value=False)])[0]
        assert not result.successful


# -- one real server -----------------------------------------------------------------------------
@pytest.mark.parametrize('name', ['zidane', 'bus'])
def test_remote_equals_local_on_photos_with_one_upload_per_person(vllm_server, local, exact,
                                                                  name):
    """Landscape (persons at both edges) and portrait photos: the server sees the local
    backend's letterboxed pixels; per person 3 requests, ONE image upload, < 512 KiB."""
    img, boxes = photo(name)
    with FaultProxy(vllm_server.url) as proxy:
        exact.transport.pool.servers[0].url = proxy.url  # count what goes over the wire
        try:
            got = exact.predict(img, boxes)
        finally:
            exact.transport.pool.servers[0].url = vllm_server.url
        wire = proxy.reset_counts()
    want = local.predict(img, boxes)
    assert max_diff(got, want) < 1e-3
    assert np.abs(got[0].scores - got[1].scores).max() > 1e-4  # persons differ
    # one plan: the answer sequences found with the server's tokenizer are the local ones
    assert exact._plans == list(local._score.plans)
    diag = exact.diagnostics()
    assert diag['readout'] == 'token_ids' and diag['vad'] == 'ok' and diag['batch_route']
    assert diag['continuation_sequences'] >= 1  # Llama-2's digits: ['▁', '5']
    assert chat(wire) == 3 * len(boxes) and wire.uploads == len(boxes), wire
    assert wire.paths['/v1/chat/completions/batch'] == 2 * len(boxes)
    assert wire.bytes_in / len(boxes) < 512 * 1024


def test_configure_in_a_handful_of_requests(vllm_server):
    with FaultProxy(vllm_server.url) as proxy:
        backend = remote(proxy.url, processor=str(vllm_server.model_dir))
        backend.unload()
        wire = proxy.reset_counts()
    assert wire.requests <= 20, wire.paths
    assert wire.paths['/tokenize'] <= 12


def test_without_processor_the_frame_is_letterboxed_and_jpeg_is_close(vllm_server, local,
                                                                      exact, caplog):
    """No processor config: a grey letterbox square (everyone kept), logged; JPEG: measured."""
    img, boxes = photo('zidane')
    caplog.set_level('WARNING')
    square = remote(vllm_server.url)
    jpeg = remote(vllm_server.url, processor=str(vllm_server.model_dir), image_format='jpeg')
    try:
        assert 'no backend.processor given' in caplog.text
        sent = square.marked_images(img, boxes)
        assert sent[0].shape == (1280, 1280, 3) and (sent[0][:200] == 127).all()
        assert all(r.status == Status.OK for r in square.predict(img, boxes))
        want = local.predict(img, boxes)
        # JPEG: the same working-size pixels up to JPEG's error; what that changes in the
        # scores is measured by bench_remote (a random 56-px model is very sensitive to it)
        sent = jpeg.preprocess(img, boxes)[0]
        assert sent.image[:3] == b'\xff\xd8\xff'
        decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(sent.image, np.uint8),
                                            cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        lossless = exact.marked_images(img, boxes)[0]
        assert decoded.shape == lossless.shape
        assert np.abs(decoded.astype(int) - lossless).mean() < 4
        assert all(r.status == Status.OK for r in jpeg.predict(img, boxes))
        assert max_diff(exact.predict(img, boxes), want) < 1e-3
    finally:
        square.unload()
        jpeg.unload()


def test_server_without_the_batch_route_gets_one_request_per_question(vllm_server, local):
    img, boxes = photo('zidane')
    backend = remote(vllm_server.url, processor=str(vllm_server.model_dir), batch='off')
    try:
        with FaultProxy(vllm_server.url) as proxy:
            backend.transport.pool.servers[0].url = proxy.url
            got = backend.predict(img, boxes[:1])
            wire = proxy.reset_counts()
        n = len(backend._convs)
    finally:
        backend.unload()
    assert max_diff(got, local.predict(img, boxes[:1])) < 1e-3
    assert chat(wire) == n and wire.uploads == 1  # the image still once


def test_a_forgotten_image_is_sent_again(vllm_server, local, exact, monkeypatch):
    """The batch names an image the server does not have (HTTP 400 'Cache miss'): the image
    is uploaded again and the person is answered."""
    img, boxes = photo('bus')
    # pixels no earlier test sent (the uuid is the image's hash: a known image is a cache hit)
    img[:200, :200] = np.random.default_rng(time.time_ns()).integers(0, 255, 3, dtype=np.uint8)
    real_ask = exact._ask
    calls = []

    def ask(convs, p, server, caps, upload, deadline):
        calls.append(upload)
        if upload and len(calls) == 1:  # the first upload goes under another uuid
            uuid, p.uuid = p.uuid, 'x' + p.uuid[1:]
            try:
                return real_ask(convs, p, server, caps, upload, deadline)
            finally:
                p.uuid = uuid
        return real_ask(convs, p, server, caps, upload, deadline)
    monkeypatch.setattr(exact, '_ask', ask)
    got = exact.predict(img, boxes[:1])
    assert calls[:3] == [True, False, True]  # upload, cache miss, upload again
    assert max_diff(got, local.predict(img, boxes[:1])) < 1e-3


FAULTS = [Fault('503', 7), Fault('429', 5, retry_after=0.2), Fault('reset', 4),
          Fault('slow', 6, slow_s=4.0), Fault('truncate', 5), Fault('oversize', 6),
          Fault('badjson', 4), Fault('badgzip', 5), Fault('badindex', 5, path='/v1/chat')]


@pytest.mark.parametrize('fault', FAULTS, ids=[f.kind for f in FAULTS])
def test_transient_faults_cost_no_person(vllm_server, local, fault):
    """Every N-th request broken, from configure on: every array answered, nobody lost, the
    same scores as without the fault. A body that does not decode (gzip) and an answer whose
    index is not an integer go through the same path as the others: counted and retried."""
    img, boxes = photo('zidane')
    with FaultProxy(vllm_server.url, [fault]) as proxy:
        backend = remote(proxy.url, processor=str(vllm_server.model_dir), down_s=0.2,
                         timeout_s=2.0 if fault.kind == 'slow' else 60.0, deadline_s=120.0)
        try:
            results = [backend.predict(img, boxes) for _ in range(2)]
            diag = backend.diagnostics()
        finally:
            backend.unload()
    assert fault.injected >= 2
    want = local.predict(img, boxes)
    for got in results:
        assert max_diff(got, want) < 1e-3
    assert diag['retries'] >= fault.injected - 1
    assert sum(diag[f'errors.{k}'] for k in ERROR_KINDS) >= fault.injected - 1


def test_persistent_faults_are_errors_with_their_reason(vllm_server):
    img, boxes = photo('zidane')
    with FaultProxy(vllm_server.url) as proxy:
        backend = remote(proxy.url, processor=str(vllm_server.model_dir), down_s=0.2,
                         retries=1)
        try:
            proxy.faults = [Fault('dropid', 1, path='/v1/chat')]
            got = backend.predict(img, boxes)
            assert [r.status for r in got] == [Status.ERROR] * 2
            assert all(r.reason.startswith('bad response: the log-probs of requested token '
                                           'ids') for r in got), [r.reason for r in got]
            assert backend.diagnostics()['errors.bad_response'] >= 2
            proxy.faults = [Fault('503', 1, path='/v1/chat')]
            got = backend.predict(img, boxes)
            assert all(r.status == Status.ERROR and 'HTTP 503' in r.reason for r in got)
            proxy.faults = []
            time.sleep(3.5)  # past the backoff: probed back in
            assert all(r.status == Status.OK for r in backend.predict(img, boxes))
        finally:
            backend.unload()
        proxy.faults = [Fault('503', 1)]
        with pytest.raises(ModelLoadError, match='HTTP 503'):
            remote(proxy.url, retries=1)


def test_one_persons_rejected_image_does_not_take_the_only_server_out(vllm_server):
    """The server rejects one person's image with a 5xx, frame after frame (retried each time):
    that person is ERROR with the reason, the server stays in the pool for everyone else."""
    img, boxes = photo('zidane')
    with FaultProxy(vllm_server.url) as proxy:
        backend = remote(proxy.url, processor=str(vllm_server.model_dir))
        try:
            bad = backend.preprocess(img, boxes[:1])[0].uuid  # what its requests carry
            proxy.faults = [Fault('503', 1, path='/v1/chat', body=bad.encode())]
            for _ in range(3):  # the person alone in view: nothing but its failures
                got = backend.predict(img, boxes[:1])[0]
                assert got.status == Status.ERROR and 'HTTP 503' in got.reason, got.reason
            assert backend.diagnostics()['retries'] >= 3 * backend.options.retries
            other = backend.predict(img, boxes[1:])[0]
            assert other.status == Status.OK, other.reason
            assert backend.diagnostics()[f'server {proxy.url}'].startswith('up')
        finally:
            backend.unload()


def test_a_failed_configure_names_what_was_wrong_and_leaves_nothing_open(vllm_server,
                                                                         monkeypatch):
    """A 200 of the wrong shape (a server of another API), or any unexpected error: a
    ModelLoadError naming it, the HTTP client closed, no thread left running."""
    from emotion_perception.core.backends import remote as remote_module
    made = []

    class Recording(remote_module.Transport):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
    monkeypatch.setattr(remote_module, 'Transport', Recording)
    before = {t.ident for t in threading.enumerate()}

    def left_running() -> list[str]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = [t.name for t in threading.enumerate()
                     if t.ident not in before and t.name.startswith('remote')]
            if not names:
                return []
            time.sleep(0.05)
        return names
    with FaultProxy(vllm_server.url, [Fault('shape', 1, path='/tokenize')]) as proxy:
        backend = create_backend('remote', {'url': proxy.url, 'retries': 1})
        with pytest.raises(ModelLoadError, match="POST /tokenize answered without 'tokens'"):
            backend.load()
    assert made[-1].client.is_closed and backend.transport is None
    assert backend._executor is None and left_running() == []
    monkeypatch.setattr(remote_module.RemoteBackend, '_plan_score', lambda self: {}['plan'])
    backend = create_backend('remote', {'url': vllm_server.url})
    with pytest.raises(ModelLoadError, match="configure failed: KeyError: 'plan'"):
        backend.load()
    assert made[-1].client.is_closed and left_running() == []


# -- a silent link (Wi-Fi drop), deadlines, cancel -------------------------------------------------
def cut_on_next_chat(proxy) -> None:
    """The link goes silent as the next chat request leaves (the frame's first request)."""
    proxy.silent_when = lambda path, body: path.startswith('/v1/chat')


def test_a_silent_link_costs_seconds_not_minutes(vllm_server):
    """The only server's link holds every request open without answering (default timeouts):
    the frame in flight is answered within the deadline with the reason, the server leaves the
    pool (background probe), frames during the outage are answered at once, and answers
    resume within seconds of the link coming back."""
    img, boxes = photo('zidane')
    with FaultProxy(vllm_server.url) as proxy:
        backend = create_backend('remote', {'url': proxy.url,
                                            'processor': str(vllm_server.model_dir)})
        backend.load()
        deadline_s = backend.options.deadline_s
        try:
            assert ok(backend.predict(img, boxes))
            cut_on_next_chat(proxy)
            t0 = time.monotonic()
            got = backend.predict(img, boxes)
            in_flight = time.monotonic() - t0
            print(f'frame in flight when the link went silent: {in_flight:.1f} s')
            assert in_flight < deadline_s + 1.5
            assert all(r.status == Status.ERROR and r.reason.startswith(
                ('server unreachable', 'deadline exceeded')) for r in got), [r.reason for r in got]
            assert all(r.status == Status.ERROR for r in got)
            diag = backend.diagnostics()
            assert diag[f'server {proxy.url}'].startswith('down (health probe: no answer')
            for _ in range(3):  # during the outage: at once, with the reason
                t0 = time.monotonic()
                during = backend.predict(img, boxes)
                assert time.monotonic() - t0 < 1.0
                assert all('out of the pool (health probe: no answer' in r.reason
                           for r in during), [r.reason for r in during]
            proxy.silent = False
            back = time.monotonic()
            while not ok(backend.predict(img, boxes)):
                assert time.monotonic() - back < 10, 'answers did not resume'
                time.sleep(0.1)
            print(f'answers again {time.monotonic() - back:.1f} s after the link came back')
            assert time.monotonic() - back < 8
            assert backend.diagnostics()['health_probes'] >= 2
        finally:
            backend.unload()


def test_a_slow_server_is_cut_at_the_deadline_and_stays_in_the_pool(vllm_server):
    """Answers that come after the frame's deadline: persons ERROR 'deadline exceeded' at the
    deadline; the server answers its health probe, so it stays in the pool."""
    img, boxes = photo('zidane')
    with FaultProxy(vllm_server.url) as proxy:
        backend = remote(proxy.url, processor=str(vllm_server.model_dir))
        try:
            backend.options.deadline_s = 2.0
            proxy.faults = [Fault('slow', 1, path='/v1/chat', slow_s=4.0)]
            t0 = time.monotonic()
            got = backend.predict(img, boxes)
            took = time.monotonic() - t0
            assert took < 2.0 + 1.5, took
            assert all(r.status == Status.ERROR and r.reason.startswith(
                'deadline exceeded: no answer within backend.deadline_s=2 s') for r in got), \
                [r.reason for r in got]
            proxy.faults = []
            time.sleep(4.0)  # the held answers come back (and are dropped); probes answered
            assert backend.diagnostics()[f'server {proxy.url}'].startswith('up')
            backend.options.deadline_s = 120.0
            assert ok(backend.predict(img, boxes))
        finally:
            backend.unload()


def test_cancel_and_unload_end_a_call_in_flight_at_once(vllm_server):
    """``cancel_calls`` (deactivate) while requests hang on a silent link, and ``unload``
    during a backoff (a 429 asking for 10 s): the call returns within a second, its persons
    ERROR 'cancelled: ...'."""
    img, boxes = photo('zidane')

    def in_thread(backend, wait_for) -> tuple[dict, threading.Thread]:
        got: dict = {}

        def run() -> None:
            got['results'] = backend.predict(img, boxes)
            got['done'] = time.monotonic()
        worker = threading.Thread(target=run)
        worker.start()
        end = time.monotonic() + 60
        while not wait_for() and time.monotonic() < end:
            time.sleep(0.01)
        return got, worker
    with FaultProxy(vllm_server.url) as proxy:
        backend = remote(proxy.url, processor=str(vllm_server.model_dir))
        try:
            cut_on_next_chat(proxy)
            got, worker = in_thread(backend, lambda: proxy.counts.held >= 1)
            t0 = time.monotonic()
            backend.cancel_calls('the node is stopping (deactivate)')
            worker.join(10)
            assert got['done'] - t0 < 1.0
            assert [r.reason for r in got['results']] == \
                ['cancelled: the node is stopping (deactivate)'] * 2
            assert backend.loaded  # cancel_calls keeps the backend
        finally:
            proxy.silent = False
            backend.unload()
    with FaultProxy(vllm_server.url) as proxy:
        backend = remote(proxy.url, processor=str(vllm_server.model_dir))
        proxy.faults = [Fault('429', 1, path='/v1/chat', retry_after=10.0)]
        got, worker = in_thread(backend, lambda: backend.diagnostics().get('retries', 0) >= 1)
        t0 = time.monotonic()
        backend.unload()
        worker.join(10)
        assert got['done'] - t0 < 1.0
        assert [r.reason for r in got['results']] == ['cancelled: the backend was unloaded'] * 2


def test_oversized_answers_are_refused_with_a_clear_reason(vllm_server):
    img, boxes = photo('zidane')
    with FaultProxy(vllm_server.url) as proxy:
        backend = remote(proxy.url, processor=str(vllm_server.model_dir), retries=0)
        try:
            proxy.faults = [Fault('oversize', 1, path='/v1/chat')]
            got = backend.predict(img, boxes[:1])[0]
        finally:
            backend.unload()
    assert got.status == Status.ERROR
    assert got.reason.startswith('bad response') and str(MAX_RESPONSE_BYTES) in got.reason


def test_top_logprobs_readout_reads_the_servers_top_tokens(vllm_server, exact):
    """The approximate read-out (servers without requested ids) parses the real server's
    top_logprobs: the same log-probs as the exact read-out; the mass they cover is reported."""
    img, boxes = photo('zidane')
    backend = remote(vllm_server.url, processor=str(vllm_server.model_dir),
                     readout='top_logprobs')
    try:
        assert backend.diagnostics()['readout'] == 'top_logprobs'
        p = backend.preprocess(img, boxes[:1])
        backend.forward(p)
        q = exact.preprocess(img, boxes[:1])
        exact.forward(q)
        result = backend.postprocess(p, None)[0]
        diag = backend.diagnostics()
    finally:
        backend.unload()
    top, ids = p[0].logprobs[0], q[0].logprobs[0]
    assert 20 <= len(top) <= 21  # the top 20 and the sampled token
    shared = set(top) & set(ids)
    for tid in shared:
        assert abs(top[tid] - ids[tid]) < 1e-5, (tid, top[tid], ids[tid])
    assert 0 < diag['top_logprobs_mass'] <= 1 + 1e-6
    if result.status != Status.OK:  # a random model rarely puts yes/no in its top 20
        assert result.reason.startswith('answer not readable: neither yes nor no')


def test_generate_equals_the_local_vlm_backend(vllm_server):
    opts = {'mode': 'generate', 'max_new_tokens': 6}
    img, boxes = photo('bus')
    backend = remote(vllm_server.url, processor=str(vllm_server.model_dir), **opts)
    local = create_backend('vlm', {'model': str(vllm_server.model_dir), 'device': 'cpu', **opts})
    local.load()
    try:
        got = backend.predict(img, boxes[:2])
        want = local.predict(img, boxes[:2])
    finally:
        backend.unload()
        local.unload()
    assert all(r.status in (Status.OK, Status.SKIPPED) for r in got), [r.reason for r in got]
    assert all(r.text for r in got)
    assert [r.text for r in got] == [r.text for r in want]  # greedy: the same answer


def test_http_4xx_is_the_persons_reason_and_the_node_goes_on(vllm_server):
    with pytest.raises(ModelLoadError, match="does not serve model 'nope'"):
        remote(vllm_server.url, model='nope')
    backend = remote(vllm_server.url, image_format='png')
    try:
        backend.served_model = 'removed-model'  # e.g. the server was restarted with another
        results = backend.predict(frame(), BOXES)
        assert len(results) == 2
        assert all(r.status == Status.ERROR and r.reason.startswith('HTTP 404') for r in results)
        diag = backend.diagnostics()
        assert diag['errors.http_4xx'] > 0
        assert diag[f'server {vllm_server.url}'].startswith('up')  # a 4xx is not a dead server
        backend.served_model = 'tiny-llava'
        assert all(r.status == Status.OK for r in backend.predict(frame(), BOXES))
    finally:
        backend.unload()


def test_emotion_node_over_a_replayed_bag_with_the_remote_backend(vllm_server, bag):
    # not a test of the deadline (the silent-link tests are): a loaded 2-core machine may take
    # longer than the default 10 s for one frame's persons on the CPU server
    dets, out, diag = run_bag(bag, {'backend.name': 'remote', 'backend.url': [vllm_server.url],
                                    'reuse.enabled': False, 'backend.deadline_s': 60.0})
    from emotion_perception.msg import PersonEmotion
    assert len(out) == len(dets) >= 1
    answered = [p for m in out for p in m.persons]
    assert answered and len(answered) == sum(len(m.detections) for m in dets)
    # a person takes seconds over HTTP on this CPU: frames that wait behind a newer one are
    # dropped on purpose (latest wins), answered SKIPPED and counted
    ok = [p for p in answered if p.status == PersonEmotion.STATUS_OK]
    dropped_arrays = [m for m in out if any(p.status != PersonEmotion.STATUS_OK
                                            for p in m.persons)]
    assert ok
    for p in answered:
        assert p.backend == 'remote' and p.model == 'tiny-llava'
        if p.status == PersonEmotion.STATUS_OK:
            assert 1.0 <= p.valence <= 10.0 and len(p.scores) == 26
        else:
            assert p.status == PersonEmotion.STATUS_SKIPPED, p.status_reason
            assert p.status_reason.startswith('dropped: stale frame'), p.status_reason
    assert sum(int(v) for k, v in diag.items() if k.startswith('drops.')) == len(dropped_arrays)
    assert diag['backend.readout'] == 'token_ids'
    assert int(diag['backend.requests']) >= 2 * len(ok)
    assert diag['backend.batch_route'] in (True, 'True')
    assert int(diag['backend.errors.unreachable']) == 0


def test_process_cli_with_the_remote_backend(vllm_server, tmp_path):
    """`emotion-perception process IMAGE --backend remote --url URL` as users run it."""
    import json

    from emotion_perception.core.model_files import sample_image_paths
    from emotion_perception.tools.cli import main as cli_main
    out = tmp_path / 'out'
    assert cli_main(['process', str(sample_image_paths()['astronaut']), '--output', str(out),
                     '--no-progress', '--no-images', '--backend', 'remote', '--url',
                     vllm_server.url, '--model', 'tiny-llava', '--timeout-s', '60',
                     '--processor', str(vllm_server.model_dir), '--image-format', 'jpeg']) == 0
    rows = [json.loads(line) for line in (out / 'emotions.jsonl').read_text().splitlines()]
    assert rows and all(r['status'] == 'ok' and r['backend'] == 'remote' for r in rows), rows
    assert all(r['model'] == 'tiny-llava' and len(r['scores']) == 26 for r in rows)


def test_process_cli_answers_within_the_deadline_when_the_link_goes_silent(vllm_server,
                                                                          tmp_path):
    """`process IMAGE --backend remote` as a robot meets a Wi-Fi drop: the link goes silent as
    the frame's first request leaves; the frame is answered (ERROR, with the reason) within
    the default deadline, and the command ends."""
    import json

    from emotion_perception.core.model_files import sample_image_paths
    from emotion_perception.tools.cli import main as cli_main
    out = tmp_path / 'out'
    with FaultProxy(vllm_server.url) as proxy:
        # configure's probes name the uuid 'probe-...'; a person's first request its image hash
        proxy.silent_when = lambda path, body: (path.startswith('/v1/chat')
                                                and b'"uuid": "probe-' not in body)
        assert cli_main(['process', str(sample_image_paths()['astronaut']), '--output',
                         str(out), '--no-progress', '--no-images', '--backend', 'remote',
                         '--url', proxy.url, '--model', 'tiny-llava', '--timeout-s', '60',
                         '--processor', str(vllm_server.model_dir)]) == 0
        after_cut = time.monotonic() - proxy.silenced_at
    rows = [json.loads(line) for line in (out / 'emotions.jsonl').read_text().splitlines()]
    print(f'process: the frame in flight and the rest of the command took {after_cut:.1f} s')
    assert proxy.silenced_at and after_cut < 10 + 3
    assert rows and all(r['status'] == 'error' and r['reason'].startswith(
        ('server unreachable', 'deadline exceeded')) for r in rows), rows


def test_emotion_node_through_a_silent_link(vllm_server):
    """The node on a silent link (real DDS messages, zidane.jpg at 3 Hz): every detections array
    answered, the frames during the outage ERROR with the reason (no 'queue full'), answers
    again within seconds of the link coming back; deactivate with a call hanging returns at
    once."""
    pytest.importorskip('rclpy')
    from emotion_perception.msg import PersonEmotion
    from emotion_perception.ros.image_conversion import numpy_to_image_msg
    from emotion_perception.testing.node_rig import EmotionRig, det_array, header
    from emotion_perception.testing.ros_harness import RosHarness
    img, boxes = photo('zidane')
    rois = [(f'p{i}', (int(b.x1), int(b.y1), int(b.x2 - b.x1), int(b.y2 - b.y1)))
            for i, b in enumerate(boxes)]
    sent: list = []

    def publish(rig, n: int) -> None:
        hdr = header(1000 + n)
        rig.img_pub.publish(numpy_to_image_msg(img, 'rgb8', header=hdr))
        rig.det_pub.publish(det_array(hdr, rois, img.shape[1], img.shape[0]))
        sent.append(1000 + n)

    def run_for(rig, seconds: float, start: int) -> int:
        n = start
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            publish(rig, n)
            n += 1
            time.sleep(1 / 3)
        return n
    with FaultProxy(vllm_server.url) as proxy, RosHarness() as harness:
        rig = EmotionRig(harness, 'remote', keep=lambda m: (time.monotonic(), m), **{
            'backend.url': [proxy.url], 'backend.processor': str(vllm_server.model_dir),
            'backend.timeout_s': 60.0, 'pair_timeout_s': 1.0})
        statuses = lambda since: [(t, p) for t, m in list(rig.out) if t > since  # noqa: E731
                                  for p in m.persons]
        publish(rig, 0)
        assert harness.wait_for(lambda: rig.out, 120)
        cut_on_next_chat(proxy)
        n = run_for(rig, 12.0, 1)  # the link goes silent with the next frame
        proxy.silent = False
        back = time.monotonic()
        run_for(rig, 8.0, n)
        assert harness.wait_for(lambda: len(rig.out) >= len(sent), 30), (len(rig.out), sent)
        answered = statuses(0.0)
        reasons = {p.status_reason for _, p in answered if p.status != PersonEmotion.STATUS_OK}
        assert not any('queue full' in r for r in reasons), reasons
        errors = [p for _, p in answered if p.status == PersonEmotion.STATUS_ERROR]
        assert len(errors) >= 4, reasons
        assert all(p.status_reason.startswith(('server unreachable', 'deadline exceeded'))
                   for p in errors), reasons
        ok_again = [t for t, p in statuses(back) if p.status == PersonEmotion.STATUS_OK]
        assert ok_again and ok_again[0] - back < 8.0, "no answer within 8 s of the link back"
        # deactivate while a frame's requests hang on the silent link
        cut_on_next_chat(proxy)
        publish(rig, n + 100)
        assert harness.wait_for(lambda: proxy.counts.held >= 1, 30)
        t0 = time.monotonic()
        assert rig.node.trigger_deactivate().name == 'SUCCESS'
        took = time.monotonic() - t0
        print(f'node: deactivate with a call hanging on the silent link took {took:.2f} s; '
              f'answers again {ok_again[0] - back:.1f} s after the link came back')
        assert took < 2.0
        assert rig.node.stats.snapshot().get('worker_stop_timeouts', 0) == 0
        proxy.silent = False


@pytest.mark.timeout(1200)
def test_bench_remote_prints_its_table(vllm_server, tmp_path):
    """bench/bench_remote.py against the session's server (any URL works the same): this tree
    through a counting proxy, one table; no git history needed (``--baseline`` is optional)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, str(repo / 'bench' / 'bench_remote.py'), '--url', vllm_server.url,
         '--model-dir', str(vllm_server.model_dir), '--photos', 'zidane', '--concurrency', '4',
         '--silent-s', '8', '--json', str(out)], cwd=tmp_path, capture_output=True, text=True,
        timeout=1100)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert '| HTTP requests per person | 3.0 | <= 3 |' in proc.stdout, proc.stdout
    assert '| image uploads per person | 1.0 | 1 |' in proc.stdout
    assert '| link silent: the frame in flight answered after (s) |' in proc.stdout
    report = json.loads(out.read_text())
    now = report['now']
    assert now['persons_per_s']['4']['ok'] == 2 and now['prefix_cache_hit_rate'] != 'n/a'
    assert now['per_person']['bytes'] < 512 * 1024
    assert now['silent']['in_flight_s'] <= 10 + 2 and now['silent']['resumed_s'] < 8


# -- TLS and proxies ------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tls_files(tmp_path_factory):
    """A CA of the test's own making and a certificate for 127.0.0.1 signed by it (openssl's
    command line tool; nothing from the network)."""
    if shutil.which('openssl') is None:
        pytest.skip('the openssl command line tool is not installed')
    d = tmp_path_factory.mktemp('tls')

    def openssl(*args: str) -> None:
        subprocess.run(['openssl', *args], cwd=d, check=True, capture_output=True)
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out',
            'ca.pem', '-days', '2', '-subj', '/CN=emotion_perception test fleet CA',
            '-addext', 'basicConstraints=critical,CA:TRUE',
            '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out',
            'server.csr', '-subj', '/CN=127.0.0.1')
    (d / 'ext.cnf').write_text('subjectAltName=IP:127.0.0.1,DNS:localhost\n'
                               'basicConstraints=critical,CA:FALSE\n'
                               'keyUsage=critical,digitalSignature,keyEncipherment\n'
                               'extendedKeyUsage=serverAuth\n'
                               'authorityKeyIdentifier=keyid\n')
    openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
            '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf')
    return d


def test_tls_end_to_end_with_a_fleet_ca_and_through_an_https_proxy(vllm_server, tls_files,
                                                                    monkeypatch, caplog):
    """A loopback https server (the fault proxy with TLS in front of the real vLLM) whose
    certificate is signed by a CA of the test's own: accepted with ``ca_bundle``, refused with
    the system store (the reason says what to do), accepted unverified with the warning; and
    reached through HTTPS_PROXY (a CONNECT tunnel) when NO_PROXY does not name it."""
    tls = (str(tls_files / 'server.pem'), str(tls_files / 'server.key'))
    ca = str(tls_files / 'ca.pem')
    with FaultProxy(vllm_server.url, tls=tls) as front:
        assert front.url.startswith('https://127.0.0.1:')
        backend = remote(front.url, ca_bundle=ca)
        try:
            assert ok(backend.predict(frame(), BOXES[:1]))
        finally:
            backend.unload()
        assert front.counts.requests >= 3
        with pytest.raises(ModelLoadError, match='CERTIFICATE_VERIFY_FAILED.*backend.ca_bundle'):
            remote(front.url, retries=0)
        caplog.set_level('WARNING')
        backend = remote(front.url, verify_tls=False)
        backend.unload()
        assert 'TLS certificate verification is OFF' in caplog.text
        with FaultProxy(vllm_server.url) as forward:  # a corporate proxy: CONNECT tunnels
            monkeypatch.setenv('HTTPS_PROXY', f'http://127.0.0.1:{forward.port}')
            for var in ('NO_PROXY', 'no_proxy'):
                monkeypatch.setenv(var, '')
            backend = remote(front.url, ca_bundle=ca)
            try:
                assert ok(backend.predict(frame(), BOXES[:1]))
                line = backend.diagnostics()[f'server {front.url}']
            finally:
                backend.unload()
            assert forward.counts.tunnels >= 1
            assert line.endswith(f'via proxy http://127.0.0.1:{forward.port}'), line


def test_http_proxy_and_no_proxy_from_the_environment(vllm_server, monkeypatch, caplog):
    """HTTP_PROXY carries the requests (logged, in diagnostics); NO_PROXY naming the host keeps
    them direct (as the tests' own loopback traffic is kept direct by conftest)."""
    caplog.set_level('INFO')
    with FaultProxy(vllm_server.url) as forward:
        monkeypatch.setenv('HTTP_PROXY', f'http://127.0.0.1:{forward.port}')
        for var in ('NO_PROXY', 'no_proxy'):
            monkeypatch.setenv(var, '')
        backend = remote(vllm_server.url)
        try:
            assert ok(backend.predict(frame(), BOXES[:1]))
        finally:
            backend.unload()
        assert forward.counts.proxied == forward.counts.requests >= 3
        assert f'goes through the proxy http://127.0.0.1:{forward.port}' in caplog.text
        forward.reset_counts()
        monkeypatch.setenv('no_proxy', 'localhost,127.0.0.1')
        backend = remote(vllm_server.url)
        try:
            assert ok(backend.predict(frame(), BOXES[:1]))
        finally:
            backend.unload()
        assert forward.counts.requests == 0


# -- a second server: keys, killed, restarted ----------------------------------------------------
def test_api_key_from_the_environment_never_shown(second_server, monkeypatch, caplog):
    with pytest.raises(ModelLoadError, match='HTTP 401'):
        remote(second_server.url)
    with pytest.raises(ModelLoadError, match=f'{KEY_ENV}.*not set'):
        remote(second_server.url, api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level('DEBUG')
    backend = remote(second_server.url, api_key_env=KEY_ENV)
    try:
        assert backend.predict(frame(), BOXES[:1])[0].status == Status.OK
        shown = str(backend.diagnostics()) + caplog.text + repr(backend.options)
    finally:
        backend.unload()
    assert KEY not in shown


def test_a_key_over_plain_http_to_another_host_is_warned_before_anything_is_sent(
        monkeypatch, caplog):
    """The warning comes at load, before the first request; nothing leaves loopback here: the
    connection step is replaced by one that fails at once."""
    from emotion_perception.core.backends.remote import RemoteBackend

    def no_network(self):
        raise ModelLoadError('test: not connecting')

    monkeypatch.setattr(RemoteBackend, '_connect', no_network)
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level('WARNING')
    for url, warned in (('http://gpu-server:8000/v1', True), ('https://gpu-server:8000/v1', False),
                        ('http://127.0.0.1:8000/v1', False)):
        caplog.clear()
        backend = create_backend('remote', {'url': url, 'api_key_env': KEY_ENV})
        with pytest.raises(ModelLoadError, match='not connecting'):
            backend.load()
        assert ('over plain http' in caplog.text) == warned, (url, caplog.text)
        assert KEY not in caplog.text


def test_two_servers_one_killed_and_brought_back(vllm_server, second_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)  # the first server accepts any key
    backend = remote([vllm_server.url, second_server.url], api_key_env=KEY_ENV,
                     down_s=0.2)
    try:
        first = backend.predict(frame(), BOXES)
        assert all(r.status == Status.OK for r in first)
        pool = {s.url: s for s in backend.transport.pool.servers}
        assert all(s.requests >= 3 for s in pool.values())  # both took their share
        second_server.stop()
        during = backend.predict(frame(), BOXES)
        # retries went to the live server: nobody lost
        assert all(r.status == Status.OK for r in during), [r.reason for r in during]
        for g, w in zip(during, first):
            assert np.abs(g.scores - w.scores).max() < 1e-3
        assert backend.diagnostics()[f'server {second_server.url}'].startswith('down')
        second_server.start()
        time.sleep(3.5)  # past the longest backoff (16 x down_s)
        before = pool[second_server.url].requests
        for _ in range(2):  # the first request after the backoff probes it back in
            assert all(r.status == Status.OK for r in backend.predict(frame(), BOXES))
        assert pool[second_server.url].requests >= before + 3
        assert backend.diagnostics()[f'server {second_server.url}'].startswith('up')
    finally:
        backend.unload()


def test_server_killed_mid_run_then_restarted(second_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = remote(second_server.url, api_key_env=KEY_ENV, down_s=0.2,
                     retries=1)
    try:
        assert all(r.status == Status.OK for r in backend.predict(frame(), BOXES))
        results: list = []
        worker = threading.Thread(target=lambda: results.extend(
            backend.predict(frame(), BOXES)))
        worker.start()
        deadline = time.monotonic() + 30
        while backend.transport.stats.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        second_server.stop()  # SIGKILL while requests are in flight
        worker.join(120)
        assert len(results) == 2  # every person answered
        assert all(r.status == Status.ERROR for r in results), [r.status for r in results]
        assert all(r.reason.startswith('server unreachable') for r in results), \
            [r.reason for r in results]
        later = backend.predict(frame(), BOXES)  # still down: answered at once
        assert all(r.reason.startswith('server unreachable') for r in later)
        assert backend.diagnostics()['errors.unreachable'] > 0
        second_server.start()
        time.sleep(3.5)
        for _ in range(2):  # the first frame's first request probes the server back in
            back = backend.predict(frame(), BOXES)
        assert all(r.status == Status.OK for r in back), [r.reason for r in back]
        assert backend.loaded  # no reload
    finally:
        backend.unload()


def test_two_servers_one_upload_per_person_over_many_configures(vllm_server, second_server,
                                                                monkeypatch):
    """Two real servers, a fresh configure each time: capabilities probed on each server
    (requests pinned to it), every person's requests on the server holding its image:
    exactly one upload per person, every time (counted by a proxy in front of each)."""
    monkeypatch.setenv(KEY_ENV, KEY)  # the first server accepts any key
    img, boxes = photo('zidane')
    uploads = []
    with FaultProxy(vllm_server.url) as pa, FaultProxy(second_server.url) as pb:
        for n in range(8):
            backend = remote([pa.url, pb.url], api_key_env=KEY_ENV,
                             processor=str(vllm_server.model_dir))
            try:
                pa.reset_counts()
                pb.reset_counts()
                got = backend.predict(img, boxes)
                wa, wb = pa.reset_counts(), pb.reset_counts()
                diag = backend.diagnostics()
            finally:
                backend.unload()
            assert ok(got), [r.reason for r in got]
            assert diag['batch_route'] and diag['image_uuids'], diag
            uploads.append(wa.uploads + wb.uploads)
            assert wa.uploads + wb.uploads == len(boxes), (n, wa, wb)
            # each person: its 3 requests where its image went
            assert chat(wa) == 3 * wa.uploads and chat(wb) == 3 * wb.uploads, (n, wa, wb)
    print(f'uploads per configure ({len(boxes)} persons): {uploads}')
