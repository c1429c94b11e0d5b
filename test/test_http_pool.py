"""The remote backend's HTTP layer without a server: URLs, proxies, the image encoder, the
server pool's health rules, deadlines, and the options it shares with the local backends.
(Everything that talks to a server is in test_remote.py, against a real vLLM.)"""
import collections
import threading
import time

import cv2
import numpy as np
import pytest

from emotion_perception.core.backends import create_backend
from emotion_perception.core.backends.http_pool import (Deadline, RequestFailed, ServerPool,
                                                        parse_urls, proxy_for, redact_url)
from emotion_perception.core.image_codec import encode_rgb


def test_urls_with_a_user_name_or_password_are_refused_and_never_shown():
    assert parse_urls('http://a:8000/v1, https://b/v1') == ['http://a:8000/v1', 'https://b/v1']
    secret = 'sk-0123456789abcdef'
    with pytest.raises(ValueError, match='api_key_env') as err:
        parse_urls(f'https://robot:{secret}@gpu-server:8000/v1')
    assert secret not in str(err.value) and '***@gpu-server:8000' in str(err.value)
    with pytest.raises(ValueError) as err:  # through the backend options (node configure)
        create_backend('remote', {'url': [f'http://{secret}@10.0.0.2/v1']})
    assert secret not in str(err.value)
    with pytest.raises(ValueError, match='not an http'):
        parse_urls(f'ftp://u:{secret}@host/v1')
    assert redact_url('http://u:p@proxy:3128') == 'http://***@proxy:3128'
    assert redact_url('http://proxy:3128') == 'http://proxy:3128'


def test_proxies_follow_the_environment_as_urllib_reads_it():
    url, tls = 'http://gpu-server:8000/v1', 'https://gpu-server:8443/v1'
    assert proxy_for(url, {}) == ''
    env = {'HTTP_PROXY': 'http://proxy:3128', 'HTTPS_PROXY': 'proxy:3129'}
    assert proxy_for(url, env) == 'http://proxy:3128'
    assert proxy_for(tls, env) == 'http://proxy:3129'  # scheme-less: http:// (as curl)
    assert proxy_for(tls, {'all_proxy': 'http://all:1'}) == 'http://all:1'  # lower case too
    for no_proxy in ('gpu-server', '.gpu-server', 'other,gpu-server', '*'):
        assert proxy_for(url, {**env, 'NO_PROXY': no_proxy}) == '', no_proxy
    assert proxy_for(url, {**env, 'NO_PROXY': 'server'}) == 'http://proxy:3128'  # not a suffix
    # loopback is proxied unless NO_PROXY names it (as curl and urllib do); the tests' conftest
    # names it, so test traffic stays direct whatever proxy the machine has
    assert proxy_for('http://127.0.0.1:8000/v1', env) == 'http://proxy:3128'
    assert proxy_for('http://127.0.0.1:8000/v1', {**env, 'no_proxy': '127.0.0.1'}) == ''


def test_one_image_encoder_for_uploads_and_compressed_messages():
    img = np.zeros((300, 600, 3), np.uint8)
    img[:, :300] = (255, 0, 0)  # left half red (RGB)
    data = encode_rgb(img, 'jpeg', 90, max_side=200)
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)
    assert back.shape == (100, 200, 3)  # long side capped, aspect kept
    assert back[50, 20, 0] > 200 and back[50, 20, 2] < 60  # still red: channel order kept
    png = cv2.imdecode(np.frombuffer(encode_rgb(img, 'png', max_side=600), np.uint8),
                       cv2.IMREAD_COLOR)
    assert np.array_equal(cv2.cvtColor(png, cv2.COLOR_BGR2RGB), img)  # lossless
    noisy = np.random.default_rng(0).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    assert len(encode_rgb(noisy, 'jpeg', 95, max_side=2000, max_bytes=100_000)) <= 100_000
    # a thin red line keeps its colour with 4:4:4 (4:2:0 smears it into its surroundings)
    line = np.full((64, 64, 3), 200, np.uint8)
    line[:, 31] = (255, 0, 0)
    smear = [np.abs(cv2.imdecode(np.frombuffer(encode_rgb(line, 'jpeg', 90, chroma=c),
                                               np.uint8), cv2.IMREAD_COLOR)[:, 31, ::-1]
                    .astype(int) - (255, 0, 0)).max() for c in ('444', '420')]
    assert smear[0] < smear[1]
    with pytest.raises(ValueError, match="unknown compressed format 'webp'"):
        encode_rgb(img, 'webp')
    with pytest.raises(ValueError, match=r'\(H, W, 3\) uint8'):
        encode_rgb(img[..., 0])
    pytest.importorskip('sensor_msgs.msg')
    from emotion_perception.ros.image_conversion import rgb_to_compressed
    msg = rgb_to_compressed(img, 'jpeg', 90)  # the ROS message wraps the same encoder
    assert bytes(msg.data) == encode_rgb(img, 'jpeg', 90, chroma='420')
    assert msg.format == 'rgb8; jpeg compressed bgr8'


def test_a_server_leaves_the_pool_when_it_stops_answering_not_for_one_requests_errors():
    pool = ServerPool(['http://a/v1', 'http://b/v1'], down_s=0.05, fail_threshold=3)
    a, b = pool.servers
    changes = []
    pool.listeners.append(lambda: changes.append((a.up, b.up)))
    for _ in range(10):  # one person's image rejected with a 5xx, again and again
        pool.failed(a, 'http_5xx', 'HTTP 500: cannot process this image')
        pool.failed(a, 'bad_response', 'bad response: not JSON')
        pool.failed(a, 'deadline', 'deadline exceeded')
    assert a.up and a.errors == 30  # counted, but the server answers: it stays
    pool.failed(a, 'unreachable', 'refused')
    pool.failed(a, 'timeout', 'timeout')
    pool.succeeded(a)  # an answer in between: the count starts again
    pool.failed(a, 'unreachable', 'refused')
    pool.failed(a, 'unreachable', 'refused')
    assert a.up
    pool.failed(a, 'unreachable', 'refused')  # three requests in a row without an answer
    assert not a.up and changes == [(False, True)]
    for _ in range(5):  # out: everything goes to b
        s = pool.acquire()
        assert s is b
        pool.release(s)
    # the health prober's word: a probe without an answer takes b out at once while a request
    # to it is stalled too, else at the second in a row (a probe that met one slow moment is
    # not enough); error answers only after fail_threshold in a row
    pool.probed(b, 'health probe: HTTP 503', answered=True)
    pool.probed(b, 'health probe: HTTP 503', answered=True)
    assert b.up
    pool.probed(b)
    pool.probed(b, 'health probe: no answer within 3 s', answered=False)
    assert b.up
    pool.probed(b)  # it answered again: the count starts over
    pool.probed(b, 'health probe: no answer within 3 s', answered=False)
    assert b.up
    pool.probed(b, 'health probe: no answer within 3 s', answered=False)
    assert not b.up
    pool.probed(b)
    assert b.up
    pool.probed(b, 'health probe: no answer within 3 s', answered=False, stalled=True)
    assert not b.up
    with pytest.raises(RequestFailed, match='server unreachable.*out of the pool.*no answer'):
        pool.acquire()
    pool.probed(a, 'health probe: ConnectError', answered=False)  # still out
    assert not a.up
    pool.probed(a)  # it answers again: back in
    assert a.up and pool.acquire() is a and changes[-1] == (True, False)


def test_a_deadline_bounds_waits_and_a_cancel_ends_them_at_once():
    d = Deadline(0.3)
    t0 = time.monotonic()
    d.wait(5.0)  # a backoff of 5 s is cut to the time left
    assert 0.25 < time.monotonic() - t0 < 1.0
    err = d.error(RequestFailed('http_5xx', 'HTTP 503 (x)', retry=True))
    assert err.kind == 'deadline'
    assert err.reason == 'deadline exceeded: no answer within backend.deadline_s=0.3 s ' \
        '(last: HTTP 503 (x))'
    d = Deadline(60.0)
    threading.Timer(0.2, d.cancel, args=('the backend was unloaded',)).start()
    t0 = time.monotonic()
    d.wait(30.0)
    assert time.monotonic() - t0 < 2.0
    assert d.error().reason == 'cancelled: the backend was unloaded'
    d = Deadline(None)  # configure: no deadline, waits run their length
    flag = []
    threading.Timer(0.1, lambda: (flag.append(1), d.notify())).start()
    d.wait(30.0, until=lambda: bool(flag))
    assert flag and d.error() is None


def test_remote_options_are_the_prompt_options_plus_the_servers():
    """One set of prompt options and checks for vlm, caption_llm and remote."""
    from emotion_perception.core.backends.remote import RemoteOptions
    from emotion_perception.core.backends.vlm import PromptModelOptions, PromptOptions
    assert issubclass(RemoteOptions, PromptOptions)
    assert issubclass(PromptModelOptions, PromptOptions)
    shared = {'mode': 'generate', 'num_labels': -1}
    for name in ('vlm', 'remote'):
        with pytest.raises(ValueError, match='num_labels >= 0'):
            create_backend(name, shared)
        with pytest.raises(ValueError, match='max_new_tokens must be >= 1'):
            create_backend(name, {'max_new_tokens': 0})
        with pytest.raises(ValueError, match='marking must be one of'):
            create_backend(name, {'marking': 'blue_box'})
    with pytest.raises(ValueError, match="score_prompt must be 'question'"):
        create_backend('remote', {'score_prompt': 'prefill'})
    with pytest.raises(ValueError, match='unknown option.*dtype'):  # a local model's option
        create_backend('remote', {'dtype': 'bfloat16'})
    with pytest.raises(ValueError, match='deadline_s'):
        create_backend('remote', {'deadline_s': 0})
    opts = create_backend('remote', {'url': 'http://gpu:8000/v1'}).options
    assert opts.deadline_s <= 10 and opts.connect_timeout_s < opts.timeout_s


def test_score_prompts_tokenize_each_prompt_once():
    from emotion_perception.testing import real_tokenizers
    reason = real_tokenizers.missing_reason('llava')
    if reason:
        pytest.skip(reason)
    from emotion_perception.core.backends._prefix_scoring import ScorePrompts
    from emotion_perception.core.backends.scoring_plan import score_texts
    tok = real_tokenizers.load('llava')
    calls: collections.Counter = collections.Counter()

    def tokenize(text):
        calls[text] += 1
        return tok(text, add_special_tokens=True)['input_ids']
    prefix, queries = score_texts()
    head, tail = f'USER: <image>\n{prefix}\n', ' ASSISTANT:'
    built = ScorePrompts.build(tokenize, head, tail, queries, 26, tok.unk_token_id)
    prompts = [head + q + tail for q in queries]
    assert all(calls[p] == 1 for p in prompts), max(calls[p] for p in prompts)
    assert max(calls.values()) == 1
    for p, suffix in zip(prompts, built.suffixes):  # the prompt = head tokens + its suffix
        ids = tokenize(p)
        assert tuple(ids[len(ids) - len(suffix):]) == suffix


def test_the_deadline_and_timeouts_are_node_parameters_and_process_flags():
    """Documented node parameters with the backend's defaults in config/emotion_node.yaml, and
    `process` / `evaluate` flags."""
    pytest.importorskip('rclpy')
    import argparse

    import yaml

    from emotion_perception.core.backends.remote import RemoteOptions
    from emotion_perception.nodes.emotion_node import BACKEND_PARAMS
    from emotion_perception.tools import process
    from emotion_perception.tools.config import config_dir
    specs = {s.name: s for s in BACKEND_PARAMS}
    yaml_backend = yaml.safe_load((config_dir() / 'emotion_node.yaml').read_text())[
        '/**/emotion_node']['ros__parameters']['backend']
    defaults = RemoteOptions()
    for name in ('deadline_s', 'connect_timeout_s', 'timeout_s'):
        spec = specs[f'backend.{name}']
        assert spec.description.startswith('remote: '), name
        assert yaml_backend[name] == spec.default == getattr(defaults, name), name
    assert defaults.deadline_s <= 10
    parser = argparse.ArgumentParser()
    process.add_backend_arguments(parser)
    over = process.backend_overrides(parser.parse_args(['--deadline-s', '4',
                                                        '--connect-timeout-s', '1.5']))
    assert over['backend.deadline_s'] == 4.0 and over['backend.connect_timeout_s'] == 1.5
