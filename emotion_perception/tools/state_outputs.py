"""Writing how each person felt over a run: states.jsonl, events.jsonl, timelines/<track>.png.

``process`` computes the states in-process (``StateRecorder``: ``core.state`` + this writer);
``demo`` receives them from the emotion node and writes them with the same ``StateWriter``.

* ``states.jsonl``: one object per person per frame: ``frame``, then ``PersonState.to_dict()``
  (``stamp``, ``track_id``, smoothed ``scores`` by category name as in emotions.jsonl,
  ``labels``, ``label_since``, ``vad``, ``confidence``, ``observations``, ``first_seen``,
  ``last_observed``).
* ``events.jsonl``: one object per event: ``frame`` (null for events decided without a frame),
  then ``StateEvent.to_dict()`` (``stamp``, ``track_id``, ``category``, ``kind``: onset | offset
  | left, ``score``, ``reason``).
* ``timelines/<track_id>.png``: per tracked person, the raw scores (dots: fresh results only) and
  the smoothed scores (lines) of the categories that were ever on, onsets (up triangles) and
  offsets (down triangles) marked, ``left`` as a dashed vertical line, and the confidence below.
  Drawn with matplotlib's Agg canvas (no display needed). Untracked persons get none.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.categories import EMOTIC_CATEGORIES, NUM_CATEGORIES
from ..core.state import EmotionStates, EventKind, FrameStates, PersonState, StateEvent
from ..core.types import EmotionResult, PersonDetection, Status

#: at most this many categories are drawn per timeline (those ever on, highest scores first)
MAX_PLOTTED = 8


@dataclass
class _Series:
    """What a timeline shows of one track."""

    stamps: list[float] = field(default_factory=list)
    raw: list[np.ndarray] = field(default_factory=list)       # (26,) float32, NaN unless OK
    smoothed: list[np.ndarray] = field(default_factory=list)  # (26,) float32
    confidence: list[float] = field(default_factory=list)
    ever_on: set[str] = field(default_factory=set)
    events: list[StateEvent] = field(default_factory=list)


def safe_name(track_id: str) -> str:
    """A file name for ``track_id`` (characters other than letters, digits, '-', '_', '.' become
    '_'; never empty, never a dot name)."""
    name = re.sub(r'[^A-Za-z0-9_.-]', '_', track_id)[:100]
    return name if name.strip('.') else f'_{name}'


class StateWriter:
    """Writes states and events as they come and the timelines at :meth:`close`.

    Args:
        output: the run's folder (created if needed).
        thresholds: the per-category thresholds (26,), drawn as dotted lines; None = not drawn.
        timelines: False = no pictures (the JSON lines only).
    """

    def __init__(self, output: Path, thresholds: np.ndarray | None = None,
                 timelines: bool = True) -> None:
        output.mkdir(parents=True, exist_ok=True)
        self.output = output
        self.thresholds = thresholds
        self.timelines = timelines
        self._states = open(output / 'states.jsonl', 'w')
        self._events = open(output / 'events.jsonl', 'w')
        self._series: dict[str, _Series] = {}
        self.rows = 0
        self.event_rows = 0

    def write_frame(self, frame: Any, results: Sequence[EmotionResult | None],
                    states: Sequence[PersonState], events: Sequence[StateEvent]) -> None:
        """One frame: the persons' raw results (None: unknown) and states, and its events."""
        for res, state in zip(results, states):
            self._states.write(json.dumps({'frame': frame, **state.to_dict()}) + '\n')
            self.rows += 1
            if state.track_id and self.timelines:
                series = self._series.setdefault(state.track_id, _Series())
                raw = (np.asarray(res.scores, np.float32) if res is not None
                       and res.status == Status.OK else np.full(NUM_CATEGORIES, np.nan,
                                                                np.float32))
                series.stamps.append(state.stamp_s)
                series.raw.append(raw)
                series.smoothed.append(np.asarray(state.scores, np.float32))
                series.confidence.append(state.confidence)
                series.ever_on.update(state.labels)
        self.write_events(frame, events)

    def write_events(self, frame: Any, events: Sequence[StateEvent]) -> None:
        for event in events:
            self._events.write(json.dumps({'frame': frame, **event.to_dict()}) + '\n')
            self.event_rows += 1
            if self.timelines and event.track_id in self._series:
                self._series[event.track_id].events.append(event)
        self._states.flush()
        self._events.flush()

    def close_files(self) -> None:
        """Close states.jsonl and events.jsonl (again: no-op)."""
        self._states.close()
        self._events.close()

    def close(self) -> list[Path]:
        """Close the files and draw the timelines; returns the pictures written."""
        self.close_files()
        if not self.timelines or not self._series:
            return []
        folder = self.output / 'timelines'
        folder.mkdir(exist_ok=True)
        paths = []
        for track_id, series in self._series.items():
            path = folder / f'{safe_name(track_id)}.png'
            draw_timeline(track_id, series, path, self.thresholds)
            paths.append(path)
        return paths


class StateRecorder:
    """The per-person states of a stream of frames, computed here and written (``process``)."""

    def __init__(self, states: EmotionStates, writer: StateWriter) -> None:
        self.states = states
        self.writer = writer

    def add(self, frame: Any, stamp_s: float, detections: Sequence[PersonDetection],
            results: Sequence[EmotionResult], rgb: np.ndarray | None = None) -> FrameStates:
        """One frame's persons (``rgb``: its image, (H, W, 3) uint8, for the identity check
        of ``StateOptions.identity_check``; None: not checked)."""
        out = self.states.update_frame([d.track_id for d in detections], results, stamp_s,
                                       image=rgb, boxes=[d.bbox for d in detections])
        self.writer.write_frame(frame, results, out.states, out.events)
        return out


def _plotted(series: _Series) -> tuple[list[int], str]:
    """Category indices to draw (ever on, highest smoothed score first) and a note."""
    smoothed = np.nan_to_num(np.array(series.smoothed), nan=0.0)
    peak = smoothed.max(axis=0) if len(smoothed) else np.zeros(NUM_CATEGORIES)
    if series.ever_on:
        cats = sorted((EMOTIC_CATEGORIES.index(c) for c in series.ever_on), key=lambda i: -peak[i])
        note = '' if len(cats) <= MAX_PLOTTED else f' ({len(cats) - MAX_PLOTTED} more not drawn)'
        return cats[:MAX_PLOTTED], note
    return [int(i) for i in np.argsort(-peak, kind='stable')[:3]], ' (no label was on: top 3)'


def draw_timeline(track_id: str, series: _Series, path: Path,
                  thresholds: np.ndarray | None = None) -> None:
    """One track's timeline picture (see the module docstring) into ``path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    t0 = series.stamps[0]
    t = np.array(series.stamps) - t0
    raw, smooth = np.array(series.raw), np.array(series.smoothed)
    cats, note = _plotted(series)
    fig = Figure(figsize=(10, 5), dpi=100, layout='constrained')
    FigureCanvasAgg(fig)
    ax, conf = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    colors = [f'C{k}' for k in range(10)]
    handles = []
    for k, i in enumerate(cats):
        color, name = colors[k % 10], EMOTIC_CATEGORIES[i]
        ax.plot(t, raw[:, i], linestyle='none', marker='o', markersize=4, fillstyle='none',
                alpha=0.7, color=color)
        handles += ax.plot(t, smooth[:, i], linewidth=2, color=color, label=name)
        if thresholds is not None:
            ax.axhline(float(thresholds[i]), linestyle=':', linewidth=0.8, color=color)
        for kind, marker in ((EventKind.ONSET, '^'), (EventKind.OFFSET, 'v')):
            hits = [e for e in series.events if e.kind == kind and e.category == name]
            if hits:
                ax.scatter([e.stamp_s - t0 for e in hits], [e.score for e in hits], s=70,
                           marker=marker, color=color, edgecolors='black', zorder=5)
    for e in series.events:
        if e.kind == EventKind.LEFT:
            ax.axvline(e.stamp_s - t0, color='black', linestyle='--', linewidth=1)
            ax.annotate(f'left ({e.reason})', (e.stamp_s - t0, 1.02), fontsize=8,
                        annotation_clip=False)
    handles += [Line2D([], [], linestyle='none', marker='o', fillstyle='none', color='gray',
                       label='raw (fresh results)'),
                Line2D([], [], color='gray', linewidth=2, label='smoothed'),
                Line2D([], [], linestyle='none', marker='^', color='gray', label='onset'),
                Line2D([], [], linestyle='none', marker='v', color='gray', label='offset')]
    ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel('score')
    fresh = int(np.isfinite(raw[:, 0]).sum())
    ax.set_title(f'track {track_id}: {len(t)} frames, {fresh} fresh results{note}')
    conf.fill_between(t, series.confidence, step='post', color='gray', alpha=0.5)
    conf.set_ylim(0, 1.05)
    conf.set_ylabel('confidence')
    conf.set_xlabel(f'seconds since the first frame of the track (stamp {t0:.3f})')
    if math.isfinite(float(t[-1])) and t[-1] <= 0:
        ax.set_xlim(-0.5, 0.5)
    fig.savefig(path)
