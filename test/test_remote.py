"""The remote backend against a REAL serving engine: vLLM's CPU build (``make vllm``) serving a
tiny random LLaVA-1.5 saved in the hub's layout, with the real Llama-2 SentencePiece tokenizer
and the LLaVA-1.5 chat template, on 127.0.0.1.

The reference is the local ``vlm`` backend on the same folder: the frames are 56 x 56, the
tiny model's input size, so both engines see the same pixels (no resize on either side) and
the images go as PNG (lossless) where scores are compared.
"""
import threading
import time

import cv2
import numpy as np
import pytest

from emotion_perception.core.backends import ModelLoadError, create_backend
from emotion_perception.core.backends.remote import encode_image, parse_urls
from emotion_perception.core.types import BBox, Status
from emotion_perception.testing import vllm_server as vs
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


def remote(url, **options):
    backend = create_backend('remote', {'url': url, 'timeout_s': 60.0, **options})
    backend.load()
    return backend


@pytest.fixture(scope='module')
def local(vllm_server):
    backend = create_backend('vlm', {'model': str(vllm_server.model_dir), 'device': 'cpu'})
    backend.load()
    yield backend
    backend.unload()


@pytest.fixture(scope='module')
def second_server(vllm_server):
    """A second server of the same model that needs an API key (killed and restarted here)."""
    server = vs.VLLMServer(vllm_server.model_dir, name='tiny-llava',
                           extra=['--api-key', KEY])
    server.start()
    yield server
    server.stop()


# -- no server needed ----------------------------------------------------------------------------
def test_urls_and_images_without_a_server():
    assert parse_urls('http://a:8000/v1, https://b/v1') == ['http://a:8000/v1', 'https://b/v1']
    assert parse_urls(['http://a:8000/v1/']) == ['http://a:8000/v1']
    with pytest.raises(ValueError, match='not an http'):
        parse_urls('gpu-server:8000')
    img = np.zeros((300, 600, 3), np.uint8)
    img[:, :300] = (255, 0, 0)  # left half red (RGB)
    url = encode_image(img, 'jpeg', 90, max_side=200)
    assert url.startswith('data:image/jpeg;base64,')
    import base64
    raw = np.frombuffer(base64.b64decode(url.split(',', 1)[1]), np.uint8)
    back = cv2.cvtColor(cv2.imdecode(raw, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert back.shape == (100, 200, 3)  # long side capped, aspect kept
    assert back[50, 20, 0] > 200 and back[50, 20, 2] < 60  # still red: channel order kept
    noisy = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    capped = encode_image(noisy, 'jpeg', 95, max_side=2000, max_bytes=100_000)
    assert len(base64.b64decode(capped.split(',', 1)[1])) <= 100_000


def test_server_down_at_configure_is_a_load_error():
    port = vs.free_port()  # nothing listens there
    backend = create_backend('remote', {'url': f'http://127.0.0.1:{port}/v1', 'retries': 0})
    with pytest.raises(ModelLoadError, match='server unreachable'):
        backend.load()
    with pytest.raises(ModelLoadError, match='needs backend.url'):
        create_backend('remote', {}).load()


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


# -- one real server -----------------------------------------------------------------------------
def test_score_equals_the_local_vlm_backend(vllm_server, local):
    backend = remote(vllm_server.url, image_format='png')
    try:
        got = backend.predict(frame(), BOXES)
        want = local.predict(frame(), BOXES)
        diag = backend.diagnostics()
    finally:
        backend.unload()
    assert [r.status for r in got] == [Status.OK, Status.OK], [r.reason for r in got]
    assert backend.model_id == 'tiny-llava'
    # exact read-out, and Llama-2's digits ' 5' -> ['▁', '5'] read by teacher forcing
    assert diag['readout'] == 'token_ids' and diag['vad'] == 'ok'
    assert diag['continuation_sequences'] >= 30
    assert diag['errors.unreachable'] == diag['errors.http_4xx'] == 0 and diag['requests'] > 100
    for g, w in zip(got, want):
        assert np.abs(g.scores - w.scores).max() < 1e-3, np.abs(g.scores - w.scores).max()
        assert np.abs(np.subtract(g.vad, w.vad)).max() < 1e-3, (g.vad, w.vad)
        assert g.labels == w.labels
    # the two persons differ (a wrong image per request would show here)
    assert np.abs(got[0].scores - got[1].scores).max() > 1e-4


def test_top_logprobs_readout_reads_the_servers_top_tokens(vllm_server):
    """The approximate read-out (servers without requested ids) parses the real server's
    top_logprobs: the same log-probs as the exact read-out asks for by id; the mass they cover
    is reported. (The whole vocabulary, top_logprobs -1, crashes vLLM 0.32's output handler on
    a checkpoint whose vocabulary is padded past the tokenizer's, as llava-hf's is.)"""
    from emotion_perception.core.backends.remote import _user_message
    backend = remote(vllm_server.url, image_format='png', readout='top_logprobs')
    try:
        assert backend.diagnostics()['readout'] == 'top_logprobs'
        image = backend.preprocess(frame(), BOXES[:1])[0].image_url
        messages = [_user_message(image, backend._questions[0].text)]
        post = backend.transport.request
        top = backend._root_logprobs(post('POST', '/v1/chat/completions', backend._root_payload(
            messages, 'top_logprobs', [])), 'top_logprobs')
        exact = backend._root_logprobs(post('POST', '/v1/chat/completions', backend._root_payload(
            messages, 'token_ids', sorted(top))), 'token_ids')
        result = backend.predict(frame(), BOXES[:1])[0]
        diag = backend.diagnostics()
    finally:
        backend.unload()
    assert 20 <= len(top) <= 21  # the top 20 and the sampled token
    for tid, lp in top.items():
        assert abs(lp - exact[tid]) < 1e-5, (tid, lp, exact[tid])
    assert 0 < float(np.exp(list(top.values())).sum()) <= 1 + 1e-6
    assert 0 < diag['top_logprobs_mass'] <= 1 + 1e-6
    # a random model rarely puts yes/no in its top 20: then the person says so, it is not 0.5
    if result.status != Status.OK:
        assert result.reason.startswith('answer not readable: neither yes nor no')


def test_generate_equals_the_local_vlm_backend(vllm_server):
    opts = {'mode': 'generate', 'max_new_tokens': 6}
    backend = remote(vllm_server.url, image_format='png', **opts)
    local = create_backend('vlm', {'model': str(vllm_server.model_dir), 'device': 'cpu', **opts})
    local.load()
    try:
        got = backend.predict(frame(), BOXES)
        want = local.predict(frame(), BOXES)
    finally:
        backend.unload()
        local.unload()
    assert all(r.status in (Status.OK, Status.SKIPPED) for r in got), [r.reason for r in got]
    assert all(r.text for r in got)
    assert [r.text for r in got] == [r.text for r in want]  # greedy: the same answer


def test_jpeg_images_by_default_scored_on_the_decoded_pixels(vllm_server, local, monkeypatch):
    """The default JPEG: the server scores the pixels it decodes. The local backend, given the
    same decoded images (PIL, as vLLM decodes them), gives the same scores."""
    import base64
    import io

    from PIL import Image
    backend = remote(vllm_server.url)
    try:
        sent = [p.image_url for p in backend.preprocess(frame(), BOXES)]
        got = backend.predict(frame(), BOXES)
    finally:
        backend.unload()
    assert all(u.startswith('data:image/jpeg;base64,') for u in sent)
    decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(',', 1)[1])))
                          .convert('RGB')) for u in sent]
    monkeypatch.setattr(local, 'marked_images', lambda image, boxes: decoded)
    want = local.predict(frame(), BOXES)
    assert all(r.status == Status.OK for r in got)
    for g, w in zip(got, want):
        assert np.abs(g.scores - w.scores).max() < 1e-3, np.abs(g.scores - w.scores).max()


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
    dets, out, diag = run_bag(bag, {'backend.name': 'remote', 'backend.url': [vllm_server.url],
                                    'reuse.enabled': False})
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
    assert int(diag['backend.requests']) >= 29 * len(ok)
    assert int(diag['backend.errors.unreachable']) == 0


def test_process_cli_with_the_remote_backend(vllm_server, tmp_path):
    """`emotion-perception process IMAGE --backend remote --url URL` as users run it."""
    import json

    from emotion_perception.core.model_files import sample_image_paths
    from emotion_perception.tools.cli import main as cli_main
    out = tmp_path / 'out'
    assert cli_main(['process', str(sample_image_paths()['astronaut']), '--output', str(out),
                     '--no-progress', '--no-images', '--backend', 'remote', '--url',
                     vllm_server.url, '--model', 'tiny-llava', '--timeout-s', '60']) == 0
    rows = [json.loads(line) for line in (out / 'emotions.jsonl').read_text().splitlines()]
    assert rows and all(r['status'] == 'ok' and r['backend'] == 'remote' for r in rows), rows
    assert all(r['model'] == 'tiny-llava' and len(r['scores']) == 26 for r in rows)


def test_bench_remote_prints_every_table(vllm_server, tmp_path):
    """bench/bench_remote.py against the session's server (any URL works the same): every
    table printed, the persons answered, the cache counters read from /metrics."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, str(repo / 'bench' / 'bench_remote.py'), '--url', vllm_server.url,
         '--frames', '1', '--persons', '2', '--concurrency', '1,4', '--new-tokens', '4',
         '--json', str(out)], cwd=repo, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for title in ('### 1. ms per person, score vs generate', '### 2. score mode throughput',
                  '### 3. server caches'):
        assert title in proc.stdout, proc.stdout[-2000:]
    report = json.loads(out.read_text())
    assert set(report['throughput_persons_per_s']) == {'1', '4'}
    assert report['prefix_cache_hit_rate'] != 'n/a'  # /metrics counters were read
    assert '| score | ' in proc.stdout and 'ok 2 |' in proc.stdout  # table 1: both OK
    assert '| 2/2 |' in proc.stdout  # table 2


# -- a second server: keys, killed, restarted ----------------------------------------------------
def test_api_key_from_the_environment_never_shown(vllm_server, second_server, monkeypatch,
                                                  caplog):
    with pytest.raises(ModelLoadError, match='HTTP 401'):
        remote(second_server.url)
    with pytest.raises(ModelLoadError, match=f'{KEY_ENV}.*not set'):
        remote(second_server.url, api_key_env=KEY_ENV)
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level('DEBUG')
    backend = remote(second_server.url, api_key_env=KEY_ENV, image_format='png')
    try:
        assert backend.predict(frame(), BOXES[:1])[0].status == Status.OK
        shown = str(backend.diagnostics()) + caplog.text + repr(backend.options)
    finally:
        backend.unload()
    assert KEY not in shown


def test_two_servers_one_killed_and_brought_back(vllm_server, second_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)  # the first server accepts any key
    backend = remote([vllm_server.url, second_server.url], api_key_env=KEY_ENV,
                     image_format='png', down_s=0.2)
    try:
        first = backend.predict(frame(), BOXES)
        assert all(r.status == Status.OK for r in first)
        pool = {s.url: s for s in backend.transport.pool.servers}
        assert all(s.requests > 20 for s in pool.values())  # both took their share
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
        assert pool[second_server.url].requests > before + 5
        assert backend.diagnostics()[f'server {second_server.url}'].startswith('up')
    finally:
        backend.unload()


def test_server_killed_mid_run_then_restarted(second_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = remote(second_server.url, api_key_env=KEY_ENV, image_format='png', down_s=0.2,
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
