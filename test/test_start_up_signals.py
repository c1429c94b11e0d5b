"""SIGINT / SIGTERM at any moment of a node process's start-up (issue 18, item 4): imports,
node creation, autostart's configure, a model load that never returns, between transitions,
active. Each ends the process with exit code 0, no traceback, within 5 s (``ros2 launch``
escalates SIGINT to SIGTERM after 5 s).

Real ``emotion_node`` processes, started through the executable's entry point
(``nodes.entry``, as ``ros2 run`` does) or ``python -m``; a signal is sent a given time after the
process installed its handlers (seen in /proc: SIGTERM becomes caught), or when a line of its
log appears. Run a few at a time to keep the wall time modest.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from emotion_perception.testing.fake_backends import FakeBackend, SlowLoadBackend, spec

pytestmark = pytest.mark.ros

EXIT_WITHIN_S = 5.0
ENTRY = ('from emotion_perception.nodes.entry import emotion_node; import sys; '
         'sys.exit(emotion_node())')
PARALLEL = 4


def _command(how, backend, name):
    ros_args = ['--ros-args', '-r', f'__node:={name}', '-r', f'__ns:=/sig_{os.getpid()}',
                '-p', 'autostart:=true', '-p', f'backend.name:={spec(backend)}']
    if how == 'entry':
        return [sys.executable, '-c', ENTRY, *ros_args]
    return [sys.executable, '-m', 'emotion_perception.nodes.emotion_node', *ros_args]


def _sigterm_caught(pid):
    """True once the process has a handler for SIGTERM (Python leaves it SIG_DFL; the node's
    entry point installs one before its heavy imports)."""
    try:
        status = open(f'/proc/{pid}/status').read()
    except OSError:
        return False
    caught = int(status.split('SigCgt:')[1].split()[0], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


class Run:
    def __init__(self, i, how, sig, when, backend=FakeBackend):
        self.case = f'{how} {sig.name} at {when}'
        self.sig, self.when = sig, when
        self.proc = subprocess.Popen(_command(how, backend, f'sig_node_{i}'),
                                     env=dict(os.environ), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.log: list[str] = []
        self.reader = threading.Thread(target=lambda: self.log.extend(self.proc.stdout),
                                       daemon=True)
        self.reader.start()
        self.signalled_at = None
        self.exit_s = None
        self.rc = None
        self.thread = threading.Thread(target=self._drive, daemon=True)
        self.thread.start()

    def _wait(self, predicate, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.proc.poll() is None:
            if predicate():
                return True
            time.sleep(0.002)
        return predicate()

    def _drive(self):
        assert self._wait(lambda: _sigterm_caught(self.proc.pid), 60), self.case
        if isinstance(self.when, float):
            time.sleep(self.when)
        else:  # a log line
            self._wait(lambda: any(self.when in line for line in self.log), 120)
        self.signalled_at = time.monotonic()
        self.proc.send_signal(self.sig)
        try:
            self.rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.rc = self.proc.wait()
        self.exit_s = time.monotonic() - self.signalled_at

    def check(self):
        self.thread.join(90)
        self.reader.join(5)
        text = ''.join(self.log)
        assert self.rc == 0, (self.case, self.rc, text[-3000:])
        assert self.exit_s < EXIT_WITHIN_S, (self.case, self.exit_s, text[-3000:])
        for bad in ('Traceback', 'KeyboardInterrupt', 'RCLError', 'Exception in thread'):
            assert bad not in text, (self.case, text[-3000:])
        return text


DELAYS = [0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.7]
CASES = ([('entry', signal.SIGINT, d, FakeBackend) for d in DELAYS]
         + [('module', signal.SIGTERM, d, FakeBackend) for d in DELAYS[::2]]
         + [('entry', signal.SIGTERM, 'configured:', FakeBackend),  # between the transitions
            ('module', signal.SIGINT, ': active', FakeBackend),
            ('entry', signal.SIGINT, 'load blocked', SlowLoadBackend),  # load never returns
            ('module', signal.SIGTERM, 'load blocked', SlowLoadBackend)])


def test_a_signal_at_any_moment_of_start_up_exits_0_quietly_within_5_s():
    results = []
    for start in range(0, len(CASES), PARALLEL):
        runs = [Run(start + i, how, sig, when, backend) for i, (how, sig, when, backend)
                in enumerate(CASES[start:start + PARALLEL])]
        for run in runs:
            run.check()
            results.append((run.case, round(run.exit_s, 2)))
    print('\n' + '\n'.join(f'{case}: exit 0 after {s} s' for case, s in results))
    assert len(results) == len(CASES)
