"""Tests that need ../shared skip without it: the end of a run lists every skip by reason, and
where ../shared is there (``.ci/run`` sets EP_REQUIRE_SHARED=1) such a skip is a failure.

pytest runs in a subprocess on a scratch folder holding a copy of test/conftest.py (its hooks)
and tests that skip in the ways the suite does (a ``skipif`` mark with ``ros_interfaces``'
reason, ``pytest.skip`` inside a test, an ordinary skip); ``.ci/run`` runs with a ``make`` on
PATH that records its environment instead of building.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SUITE = '''
import pytest
from emotion_perception.testing import shared

needs = pytest.mark.skipif(True, reason=shared.skip_reason('interface packages missing'))


@needs
def test_marked():
    pass


def test_inside():
    pytest.skip(shared.skip_reason('no launch/launch_ros'))


def test_other():
    pytest.skip('the vLLM venv is missing')


def test_passes():
    pass
'''


def run_pytest(tmp_path: Path, require: bool, report: Path | None = None
               ) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / 'test' / 'conftest.py', tmp_path / 'conftest.py')
    (tmp_path / 'pytest.ini').write_text('[pytest]\n')
    (tmp_path / 'test_needs_shared.py').write_text(SUITE)
    (tmp_path / 'test_plain.py').write_text(
        'import pytest\n\n\ndef test_plain():\n    pytest.skip("the vLLM venv is missing")\n')
    env = {k: v for k, v in os.environ.items() if k not in ('EP_REQUIRE_SHARED',
                                                            'EP_SKIP_REPORT')}
    if require:
        env['EP_REQUIRE_SHARED'] = '1'
    if report is not None:
        env['EP_SKIP_REPORT'] = str(report)
    return subprocess.run([sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-q',
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def summary_lines(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if 'skipped, by reason' in line)
    return lines[start + 1:]


def test_the_end_of_a_run_lists_the_skips_by_reason(tmp_path):
    report = tmp_path / 'skips.txt'
    report.write_text('an earlier run\n')
    proc = run_pytest(tmp_path, require=False, report=report)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '1 passed, 4 skipped' in proc.stdout
    lines = summary_lines(proc.stdout)
    # the last lines of the run; make test's file gets them appended
    assert proc.stdout.rstrip().endswith(lines[-1])
    got = report.read_text().splitlines()
    assert got[0] == 'an earlier run' and got[2:] == [f'  {line}' for line in lines]
    assert got[1].startswith('pytest with rclpy ') and got[1].endswith(': 4 skipped')
    # the most frequent reason first, with the files and the number of skips in each
    assert lines[0] == '2 skipped: the vLLM venv is missing'
    assert lines[1].strip() == 'in test_needs_shared.py (1), test_plain.py (1)'
    shared = [line for line in lines if 'needs ../shared' in line]
    assert sorted(shared) == [
        '1 skipped [fails with EP_REQUIRE_SHARED=1]: needs ../shared: interface packages '
        'missing',
        '1 skipped [fails with EP_REQUIRE_SHARED=1]: needs ../shared: no launch/launch_ros']


def test_with_require_shared_those_skips_fail_and_the_others_still_skip(tmp_path):
    proc = run_pytest(tmp_path, require=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # a skipif mark skips in setup: failing there is pytest's "error"
    assert '1 failed, 1 passed, 2 skipped, 1 error' in proc.stdout
    failed = sorted(line.split(' ')[:2] for line in proc.stdout.splitlines()
                    if line.startswith(('FAILED', 'ERROR')))
    assert failed == [['ERROR', 'test_needs_shared.py::test_marked'],
                      ['FAILED', 'test_needs_shared.py::test_inside']]
    assert 'EP_REQUIRE_SHARED=1 (../shared is there) but this test skipped: needs ../shared: ' \
        'no launch/launch_ros' in proc.stdout
    assert summary_lines(proc.stdout)[0] == '2 skipped: the vLLM venv is missing'


def run_ci(tmp_path: Path, with_shared: bool) -> str:
    """.ci/run in a copy of the repository's layout (``repo/.ci/run``, ``../shared`` or not)
    with a fake ``make`` that records EP_REQUIRE_SHARED and its arguments."""
    repo = tmp_path / 'repo'
    (repo / '.ci').mkdir(parents=True)
    shutil.copy(ROOT / '.ci' / 'run', repo / '.ci' / 'run')
    if with_shared:
        (tmp_path / 'shared' / 'ros2_interfaces').mkdir(parents=True)
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    log = tmp_path / 'make.log'
    (bin_dir / 'make').write_text(
        f'#!/bin/sh\necho "${{EP_REQUIRE_SHARED:-unset}} $*" >> {log}\n')
    (bin_dir / 'make').chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != 'EP_REQUIRE_SHARED'}
    env['PATH'] = f'{bin_dir}{os.pathsep}{env["PATH"]}'
    proc = subprocess.run(['bash', str(repo / '.ci' / 'run')], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text()


def test_ci_requires_the_shared_tests_where_shared_is_there(tmp_path):
    assert run_ci(tmp_path / 'with', True).splitlines() == ['1 test', '1 check-robot-pins']
    assert run_ci(tmp_path / 'without', False).splitlines() == ['unset test',
                                                                 'unset check-robot-pins']
