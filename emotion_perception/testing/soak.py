"""Soak runs of the emotion node as a robot runs it: the node process with the project's
config, a camera + tracker whose people come and go (``detection_peer`` ``stream``), and the
node's memory sampled from /proc while it runs.

Each configuration runs in its own ROS domain (``ROS_DOMAIN_ID``), so several run at once
without seeing each other. What a run reports (:class:`SoakResult`): whether the node process
was alive at the end, the peer's accounting of the answers (every detections array answered
exactly once?), the number of track ids used, and the RSS of the node over time with its
slope (MiB per minute, :func:`rss_slope`) after ``warmup_s``, when the per-track caches are full.

Used by ``test/test_soak.py`` and ``bench/bench_soak.py``. The caller sets
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST; hri_msgs must be importable in the subprocesses for
``rep155.publish`` (``testing.ros_interfaces.ensure``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

#: /proc sampling period of the node's RSS (seconds)
SAMPLE_PERIOD_S = 2.0


@dataclasses.dataclass(frozen=True)
class SoakConfig:
    """One node configuration: ``transport`` 'raw' | 'compressed', ``rep155`` publishing (with
    the project's config: bodies, and faces found by the node, ``rep155.faces`` auto; the
    peer counts the face ids it sees, ``face_ids``)."""

    transport: str = 'raw'
    rep155: bool = False

    @property
    def name(self) -> str:
        return f'{self.transport}{"+rep155" if self.rep155 else ""}'


#: the four configurations of issue 25, item 0
CONFIGS = tuple(SoakConfig(t, r) for r in (False, True) for t in ('raw', 'compressed'))


@dataclasses.dataclass
class SoakResult:
    """What one configuration's run showed (see the module docstring)."""

    config: SoakConfig
    alive: bool
    exit_code: int | None
    report: dict
    rss: list[tuple[float, float]]  # (seconds since the node started, MiB)
    warmup_s: float
    log_tail: str

    @property
    def slope_mib_per_min(self) -> float:
        """RSS growth after ``warmup_s`` (MiB/min, :func:`rss_slope`; NaN: too few samples)."""
        return rss_slope(self.rss, self.warmup_s)

    def summary(self) -> dict:
        r = self.report
        first = next((m for t, m in self.rss if t >= self.warmup_s), float('nan'))
        return {'config': self.config.name, 'alive': self.alive, 'sent': r.get('sent'),
                'answered_once': r.get('answered_once'),
                'answered_twice_or_more': r.get('answered_twice_or_more'),
                'unanswered': r.get('unanswered'), 'ids': r.get('ids'),
                'rss_after_warmup_mib': round(first, 1),
                'rss_end_mib': round(self.rss[-1][1], 1) if self.rss else None,
                'rss_max_mib': round(max(m for _, m in self.rss), 1) if self.rss else None,
                'slope_mib_per_min': round(self.slope_mib_per_min, 3)}


def rss_slope(samples: list[tuple[float, float]], after_s: float) -> float:
    """Growth (MiB per minute) of the ``(seconds, MiB)`` samples taken at or after ``after_s``:
    the median RSS of their second half minus that of their first half, over the time between
    the halves' median times; NaN with fewer than 6 samples.

    Why not a fitted line: with the heap trimmed every second (``core.heap``) the RSS of a node
    fed raw frames is a saw-tooth of +-50 MiB around a flat level, and a line through a few
    minutes of it (least squares or Theil-Sen) tilts by several MiB/min either way (measured:
    4.4 MiB/min on a run that ended 3 MiB below where it started). The medians of the two
    halves do not, and a real leak still shows in full: the 5-10 MiB/min creep of issue 25
    measured 6.0 and 9.1 MiB/min this way, the flat compressed runs 0.2.
    """
    pts = np.array([(t, m) for t, m in samples if t >= after_s], dtype=np.float64)
    if len(pts) < 6:
        return float('nan')
    first, second = pts[:len(pts) // 2], pts[len(pts) // 2:]
    minutes = (np.median(second[:, 0]) - np.median(first[:, 0])) / 60.0
    return float((np.median(second[:, 1]) - np.median(first[:, 1])) / minutes)


def rss_mib(pid: int) -> float | None:
    """Resident set size of process ``pid`` (MiB), None when it is gone."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def node_command(config: SoakConfig, extra: dict | None = None) -> list[str]:
    """The emotion node process: the project's config file, autostart, the configuration's
    transport and REP-155 output (``extra``: more ``-p`` parameters)."""
    from ..tools.config import config_dir
    params = {'autostart': 'true', 'image_transport': config.transport,
              'rep155.publish': str(config.rep155).lower(), **(extra or {})}
    cmd = [sys.executable, '-m', 'emotion_perception.nodes.emotion_node', '--ros-args',
           '--params-file', str(config_dir() / 'emotion_node.yaml')]
    for key, value in params.items():
        cmd += ['-p', f'{key}:={value}']
    return cmd


class _Run:
    """One configuration: the node process, the peer process, the RSS sampler."""

    def __init__(self, config: SoakConfig, folder: Path, domain: int, seconds: float,
                 hz: float, id_period_s: float, node_params: dict | None) -> None:
        self.config, self.seconds = config, seconds
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
        self.log = open(folder / f'{config.name}.node.log', 'w+')
        self.node = subprocess.Popen(node_command(config, node_params), env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        self.report_path = folder / f'{config.name}.report.json'
        spec = {'match_timeout_s': 120, 'linger_s': 0.5, 'steps': [
            {'kind': 'stream', 'photo': 'zidane', 'transport': config.transport, 'hz': hz,
             'seconds': seconds, 'id_period_s': id_period_s, 'report': str(self.report_path),
             'answer_timeout_s': 30, 'faces': config.rep155}]}
        spec_path = folder / f'{config.name}.spec.json'
        spec_path.write_text(json.dumps(spec))
        self.peer = subprocess.Popen(
            [sys.executable, '-m', 'emotion_perception.testing.detection_peer', 'publish',
             str(spec_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.rss: list[tuple[float, float]] = []
        self.done = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        while not self.done.is_set():
            mib = rss_mib(self.node.pid)
            if mib is not None and self.node.poll() is None:
                self.rss.append((time.monotonic() - self.started, mib))
            self.done.wait(SAMPLE_PERIOD_S)

    def finish(self, timeout_s: float, warmup_s: float) -> SoakResult:
        try:
            self.peer.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.peer.kill()
            self.peer.wait()
        self.done.set()
        self.sampler.join()
        alive = self.node.poll() is None
        if alive:
            self.node.terminate()
            try:
                self.node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.node.wait()
        try:
            report = json.loads(self.report_path.read_text())
        except (OSError, ValueError):
            report = {}
        self.log.seek(0)
        tail = self.log.read()[-4000:]
        self.log.close()
        return SoakResult(self.config, alive, None if alive else self.node.returncode, report,
                          self.rss, warmup_s, tail)


def run_soak(configs: tuple[SoakConfig, ...] = CONFIGS, seconds: float = 600.0,
             hz: float = 5.0, id_period_s: float = 0.4, warmup_s: float | None = None,
             node_params: dict | None = None, folder: str | None = None) -> list[SoakResult]:
    """Run ``configs`` at once for ``seconds`` each: ``hz`` frames a second of zidane.jpg
    (1280x720, two people) whose track ids change every ``id_period_s``; returns one result
    per configuration. ``warmup_s`` (default: a third of the run) is left out of the RSS
    slope."""
    warmup = seconds / 3.0 if warmup_s is None else warmup_s
    out = Path(folder or tempfile.mkdtemp(prefix='ep_soak_'))
    out.mkdir(parents=True, exist_ok=True)
    domains = random.SystemRandom().sample(range(10, 200), len(configs))
    runs = [_Run(c, out, d, seconds, hz, id_period_s, node_params)
            for c, d in zip(configs, domains)]
    # the peers wait up to 120 s for the nodes' subscriptions, then stream, then wait 30 s
    return [run.finish(seconds + 240.0, warmup) for run in runs]
