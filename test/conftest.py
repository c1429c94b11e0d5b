"""Test-wide environment: DDS on loopback in a random domain, no model hub, few threads.

Set before anything imports rclpy (pytest imports conftest.py first).
"""
import os
import random
from pathlib import Path

os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random().randint(10, 200)))
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['TRANSFORMERS_OFFLINE'] = '1'
os.environ['YOLO_OFFLINE'] = '1'
os.environ.setdefault('OMP_NUM_THREADS', '2')

import pytest  # noqa: E402

from emotion_perception.testing import shared  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: takes more than ~20 s (excluded by make test-fast)')
    config.addinivalue_line('markers', 'ros: needs rclpy and the generated messages')
    _check_expected_environment()


def _rclpy_version() -> str | None:
    from importlib import metadata
    for dist in ('ros-rclpy', 'rclpy'):  # PyPI wheels; apt / colcon installs
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _check_expected_environment() -> None:
    """``EP_EXPECT_RCLPY=9.1.2`` (``make test-kilted``): refuse to run unless that rclpy is
    the one installed and emotion_perception is the installed copy (built with that ROS's
    rosidl), not the source tree with the other venv's generated messages."""
    expected = os.environ.get('EP_EXPECT_RCLPY')
    if not expected:
        return
    got = _rclpy_version()
    if got != expected:
        raise pytest.UsageError(f'EP_EXPECT_RCLPY={expected} but rclpy {got} is installed')
    import emotion_perception
    source = Path(__file__).resolve().parents[1] / 'emotion_perception'
    where = Path(emotion_perception.__file__).resolve()
    if where.parent == source:
        raise pytest.UsageError(f'EP_EXPECT_RCLPY is set but emotion_perception comes from the '
                                f'source tree ({where}); run from outside it (make test-kilted)')


def pytest_report_header(config):
    return f'rclpy {_rclpy_version()}'


def _skip_reason(report) -> str:
    """The reason of a skipped test's report ('Skipped: ' removed)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason[len('Skipped: '):] if reason.startswith('Skipped: ') else reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With EP_REQUIRE_SHARED=1 (.ci/run, when ../shared exists) a test that skips because it
    needs ../shared (``testing.shared.skip_reason``) fails instead."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and shared.required()):
        return
    reason = _skip_reason(report)
    if shared.is_shared_skip(reason):
        report.outcome = 'failed'
        report.longrepr = (f'{shared.REQUIRE_ENV}=1 (../shared is there) but this test skipped: '
                           f'{reason}')


def skip_summary(reports) -> list[str]:
    """Skipped test reports -> lines: per reason (most skips first), how many and in which test
    files; the ../shared ones marked (.ci/run fails on them where ../shared exists)."""
    by_reason: dict[str, dict[str, int]] = {}
    for report in reports:
        path = report.nodeid.split('::', 1)[0] or report.location[0]
        files = by_reason.setdefault(_skip_reason(report).strip(), {})
        files[path] = files.get(path, 0) + 1
    lines = []
    for reason, files in sorted(by_reason.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        mark = (f' [fails with {shared.REQUIRE_ENV}=1]' if shared.is_shared_skip(reason)
                else '')
        lines.append(f'{sum(files.values())} skipped{mark}: {reason}')
        lines.append('    in ' + ', '.join(f'{p} ({n})' for p, n in sorted(files.items())))
    return lines


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """The last lines of a run: which test files skipped tests, and why (:func:`skip_summary`);
    also appended to the file ``$EP_SKIP_REPORT`` names (``make test`` prints it at its end,
    for both of its pytest runs)."""
    result = yield
    reporter = session.config.pluginmanager.get_plugin('terminalreporter')
    if reporter is None:
        return result
    lines = skip_summary(reporter.stats.get('skipped', []))
    if lines:
        reporter.write_sep('=', 'skipped, by reason')
        for line in lines:
            reporter.write_line(line)
    target = os.environ.get('EP_SKIP_REPORT')
    if target:
        head = f'pytest with rclpy {_rclpy_version()}: '
        with open(target, 'a') as out:
            out.write(head + (f'{len(reporter.stats.get("skipped", []))} skipped\n'
                              if lines else 'nothing skipped\n'))
            out.writelines(f'  {line}\n' for line in lines)
    return result


@pytest.fixture(scope='session')
def tiny_vlm_dir(tmp_path_factory):
    """``tiny_vlm_dir(family, **shape)``: a folder with a tiny random VLM of ``family`` built
    with the family's REAL tokenizer and template (cached per session); skips the test when the
    real tokenizer files are missing (``make`` fetches them)."""
    from emotion_perception.testing import tiny_models
    cache: dict = {}

    def build(family: str, **kwargs):
        reason = tiny_models.missing_reason(family)
        if reason:
            pytest.skip(reason)
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = family + ''.join(f'_{k}{v}' for k, v in sorted(kwargs.items()))
            cache[key] = tiny_models.build_tiny_vlm(
                family, tmp_path_factory.mktemp('tiny_vlm') / name, **kwargs)
        return cache[key]
    return build


#: the tiny LLaVA the vLLM tests serve: real Llama-2 SPM tokenizer and LLaVA-1.5 template, text
#: head size 64 (vLLM's CPU attention has no kernel for the 8 of the default tiny shape), and a
#: vocabulary exactly the tokenizer's (see ``build_tiny_vlm(pad_vocab=)``)
VLLM_TINY_LLAVA = dict(hidden=256, heads=4, kv_heads=4, intermediate=512, pad_vocab=False)


@pytest.fixture(scope='session')
def vllm_server(tiny_vlm_dir):
    """A real vLLM server (``make vllm``) serving the tiny LLaVA on 127.0.0.1, shared by the
    session. Skipped when the vLLM venv is missing, unless EP_VLLM_PYTHON is set (``make test``
    sets it): then a server that does not start is an error."""
    from emotion_perception.testing import vllm_server as vs
    reason = vs.missing_reason()
    if reason:
        if os.environ.get('EP_VLLM_PYTHON'):
            pytest.fail(f'EP_VLLM_PYTHON is set but {reason}')
        pytest.skip(reason)
    model = tiny_vlm_dir('llava', **VLLM_TINY_LLAVA)
    server = vs.VLLMServer(model, name='tiny-llava')
    server.start()
    server.model_dir = model
    yield server
    server.stop()
