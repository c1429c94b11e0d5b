"""``emotion-perception evaluate``: a backend on EMOTIC with the paper's protocol and EMOTIC's mAP.

Every annotated person of the split goes through the backend with its ground-truth body box
(persons of one image are predicted together, ``--batch-size`` boxes per call, the image read
once). Predictions are appended to ``OUTPUT/predictions.jsonl`` one image at a time (flushed),
so an interrupted run continues where it stopped and a finished run recomputes nothing (error
records are retried only with ``--retry-errors``). Then it writes:

* ``metrics.json``: macro precision / recall / F1, Hamming loss, subset accuracy, each with a
  95 % bootstrap interval; AP per category and mAP (from the scores); VAD MAE; the config.
* ``report.md``: our row next to the paper's Table I, per-category table, plots.
* ``ap_per_category.png``, ``pr_curves.png``, ``label_frequency.png``.

With ``--tune-thresholds-on val`` it also predicts (or reuses) ``OUTPUT/val/predictions.jsonl``,
picks per-category F1-maximising thresholds, writes ``OUTPUT/thresholds.json`` (usable as any
backend's ``thresholds`` option) and reports the test metrics with them as well.

Persons the backend skipped (e.g. no face found) or failed on count as predicting nothing
(all scores 0): the paper's protocol scores every annotated person.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core import metrics as M
from ..core.categories import EMOTIC_CATEGORIES, NUM_CATEGORIES, VAD_NAMES, thresholds_array
from ..core.emotic import FORMATS, SPLITS, EmoticPerson, load_emotic
from .process import add_backend_arguments, backend_overrides

LOG = logging.getLogger('emotion_perception.evaluate')

PREDICTIONS = 'predictions.jsonl'
RUN_FILE = 'run.json'
METRICS_FILE = 'metrics.json'
REPORT_FILE = 'report.md'
THRESHOLDS_FILE = 'thresholds.json'
#: options that change what the backend predicts: a resumed run must use the same values
PROMPT_KEYS: tuple[str, ...] = ('dtype', 'quantization', 'quantization_library', 'marking',
                                'definitions', 'num_labels', 'max_new_tokens',
                                'caption_max_new_tokens', 'score_prompt')
IDENTITY_KEYS: tuple[str, ...] = ('backend', 'model', 'llm', 'mode', 'adapter', 'parser', 'split',
                                  'format', *PROMPT_KEYS)
#: stop after this many images in a row failed as a whole (a broken model, not a bad image)
MAX_CONSECUTIVE_FAILURES = 20
OK_STATUSES = ('ok', 'cached')

#: Table I of Etesam et al. (arXiv 2405.08992), EMOTIC test, in % (P, R, F1, Hamming, subset acc).
PAPER_TABLE_I: tuple[tuple[str, float, float, float, float, float], ...] = (
    ('Majority', 11.41, 23.08, 15.01, 17.24, 0.76),
    ('NarraCap + GPT-4', 25.50, 33.37, 26.67, 21.26, 0.82),
    ('CLIP zero-shot', 21.77, 28.58, 16.97, 31.72, 0.00),
    ('LLaVA zero-shot', 33.78, 21.38, 22.86, 15.02, 0.99),
    ('GPT-4V*', 37.48, 38.35, 34.47, 16.95, 0.67),
    ('EMOTIC baseline (trained CNN)', 25.02, 35.07, 28.83, 19.35, 2.73),
    ('LLaVA-F (fine-tuned, val aug)', 38.71, 39.52, 36.83, 14.13, 2.90),
)
#: EMOTIC mAP (%) reported by earlier work, for the report.
MAP_ANCHORS: tuple[tuple[str, float], ...] = (
    ('Kosti et al. (EMOTIC baseline)', 27.38), ('EmotiCon', 35.48),
    ('Xenos et al. 2024 (VLLM context descriptions)', 38.52))


# -- arguments ---------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    p = subparsers.add_parser(
        'evaluate', help='evaluate a backend on EMOTIC (paper metrics + mAP), tune thresholds',
        description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--data', required=True, metavar='ROOT',
                   help='EMOTIC root: Annotations/Annotations.mat or {train,val,test}.csv, '
                        'and emotic/<folder>/<image>')
    p.add_argument('--split', default='test', choices=SPLITS)
    p.add_argument('--output', required=True, metavar='DIR', help='results folder (resumable)')
    p.add_argument('--format', default='auto', choices=FORMATS, help='annotation source')
    add_backend_arguments(p)  # the same backend options as `process` (and the node)
    p.set_defaults(backend='face_baseline', batch_size=8, device='auto')
    p.add_argument('--limit', type=int, default=None, metavar='N',
                   help='first N persons only (of each split, the tuning split too)')
    p.add_argument('--sample', type=int, default=None, metavar='SEED',
                   help='shuffle the persons with SEED before --limit (a random subset)')
    p.add_argument('--bootstrap', type=int, default=10_000, metavar='ROUNDS',
                   help='bootstrap rounds for the 95%% intervals (0: none)')
    p.add_argument('--bootstrap-seed', type=int, default=0)
    p.add_argument('--tune-thresholds-on', default=None, metavar='SPLIT',
                   help="split (e.g. 'val') to tune F1-maximising thresholds on, or a "
                        'predictions.jsonl already made on it')
    p.add_argument('--retry-errors', action='store_true',
                   help='predict again the persons recorded with status error')
    p.add_argument('--no-plots', action='store_true', help='skip the PNG plots')
    p.set_defaults(func=main)


# -- backend -----------------------------------------------------------------------------------
def backend_options(args: argparse.Namespace, backend_cls: type) -> dict[str, Any]:
    """Backend options from the command line; refuses ones the backend does not have."""
    from .config import refuse_foreign_options
    fields = {f.name for f in dataclasses.fields(backend_cls.Options)}
    given = {k: v for k, v in backend_overrides(args).items()
             if k not in ('backend.name', 'backend.device', 'backend.batch_size')}
    refuse_foreign_options(args.backend, fields, given)
    opts: dict[str, Any] = {'device': args.device}
    opts.update({k.split('.', 1)[1]: v for k, v in given.items() if v is not None})
    if 'batch_size' in fields:
        opts['batch_size'] = args.batch_size
    return opts


class LazyBackend:
    """Creates and loads the backend on first use, so a finished run never loads a model."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        from ..core.backends import backend_class
        self.name = name
        self.cls = backend_class(name)
        self.options = options
        self._backend = None

    def get(self) -> Any:
        if self._backend is None:
            backend = self.cls(self.options)
            t0 = time.perf_counter()
            backend.load()
            LOG.info('loaded backend %s (%s) in %.1f s', self.name, backend.model_id or 'default',
                     time.perf_counter() - t0)
            self._backend = backend
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.unload()
            self._backend = None


# -- predictions file --------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 6)


def person_record(person: EmoticPerson, result: Any | None = None, *, status: str = '',
                  reason: str = '', sets_labels: bool = False) -> dict[str, Any]:
    """One predictions.jsonl object for ``person`` (from an ``EmotionResult`` or a failure)."""
    rec: dict[str, Any] = {'image': person.image_key, 'person': person.person,
                           'bbox': person.bbox.xyxy()}
    if result is not None:
        d = result.to_dict()
        rec.update(scores=d['scores'], labels=d['labels'], vad=d['vad'], status=d['status'],
                   reason=d['reason'], text=d['text'], latency_ms=d['latency_ms'],
                   backend=d['backend'], model=d['model'])
    else:
        rec.update(scores={n: None for n in EMOTIC_CATEGORIES}, labels=[],
                   vad={n: None for n in VAD_NAMES}, status=status, reason=reason, text='',
                   latency_ms=None)
    rec['sets_labels'] = bool(sets_labels)
    rec['true_labels'] = list(person.labels)
    rec['true_vad'] = dict(zip(VAD_NAMES, person.vad))
    return rec


def read_predictions(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(image, person) -> record; the last record of a key wins.

    A partly written last line (the run was killed mid-write) is cut off the file.
    """
    out: dict[tuple[str, int], dict[str, Any]] = {}
    if not path.is_file():
        return out
    data = path.read_bytes()
    if data and not data.endswith(b'\n'):
        keep = data.rfind(b'\n') + 1
        LOG.warning('%s: dropping a partly written last line (%d bytes)', path, len(data) - keep)
        with path.open('r+b') as f:
            f.truncate(keep)
        data = data[:keep]
    for lineno, line in enumerate(data.decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[(rec['image'], int(rec['person']))] = rec
        except (ValueError, KeyError, TypeError) as exc:
            LOG.warning('%s:%d: unreadable record skipped (%s)', path, lineno, exc)
    return out


def group_by_image(persons: Sequence[EmoticPerson]) -> list[list[EmoticPerson]]:
    """Persons grouped by image, images in order of first appearance."""
    groups: dict[str, list[EmoticPerson]] = {}
    for p in persons:
        groups.setdefault(p.image_key, []).append(p)
    return list(groups.values())


def _read_rgb(path: Path) -> np.ndarray | None:
    import cv2
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])


def predict_split(persons: Sequence[EmoticPerson], backend: LazyBackend | Callable[[], Any],
                  path: Path, batch_size: int = 8, retry_errors: bool = False,
                  progress: bool = True) -> dict[tuple[str, int], dict[str, Any]]:
    """Predict every person not yet in ``path`` (append + flush per image); all records.

    Args:
        persons: the persons to evaluate.
        backend: ``LazyBackend`` (or a callable returning a loaded backend), used only when
            some person still needs a prediction.
        path: the predictions.jsonl (created; earlier records reused).
        batch_size: boxes per ``predict`` call.
        retry_errors: predict again the persons recorded with status 'error'.
        progress: show a tqdm bar.

    Returns:
        (image, person) -> record, for (at least) every person of ``persons``.

    Raises:
        BackendError: ``MAX_CONSECUTIVE_FAILURES`` images in a row failed entirely.
    """
    from tqdm import tqdm

    from ..core.backends.base import BackendError

    if batch_size < 1:
        raise ValueError(f'--batch-size must be >= 1, got {batch_size}')
    get_backend = backend.get if isinstance(backend, LazyBackend) else backend
    records = read_predictions(path)

    def pending(p: EmoticPerson) -> bool:
        rec = records.get(p.key)
        return rec is None or (retry_errors and rec.get('status') == 'error')

    todo = [[p for p in group if pending(p)] for group in group_by_image(persons)]
    todo = [g for g in todo if g]
    n_todo = sum(len(g) for g in todo)
    LOG.info('%s: %d persons, %d already predicted, %d to go (%d images)', path,
             len(persons), len(persons) - n_todo, n_todo, len(todo))
    if not n_todo:
        return records
    path.parent.mkdir(parents=True, exist_ok=True)
    failures_in_a_row = 0
    with path.open('a') as f, tqdm(total=n_todo, unit='person', disable=not progress,
                                   desc=path.parent.name or 'predict') as bar:
        for group in todo:
            image = _read_rgb(group[0].image_path)
            new: list[dict[str, Any]] = []
            if image is None:
                new = [person_record(p, status='error',
                                     reason=f'cannot read image {p.image_path}') for p in group]
            else:
                model = get_backend()
                for start in range(0, len(group), batch_size):
                    chunk = group[start:start + batch_size]
                    try:
                        results = model.predict(image, [p.bbox for p in chunk])
                    except Exception as exc:  # one image must not end a 7000-person run
                        LOG.warning('%s: backend failed: %s', chunk[0].image_key, exc)
                        new += [person_record(p, status='error', reason=f'backend failed: {exc}')
                                for p in chunk]
                        continue
                    new += [person_record(p, r, sets_labels=model.sets_labels)
                            for p, r in zip(chunk, results)]
            f.write(''.join(json.dumps(r) + '\n' for r in new))
            f.flush()
            for r in new:
                records[(r['image'], r['person'])] = r
            bar.update(len(group))
            all_failed = all(r['status'] == 'error' for r in new)
            failures_in_a_row = failures_in_a_row + 1 if all_failed else 0
            if failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                raise BackendError(
                    f'{failures_in_a_row} images in a row failed (last: {new[-1]["reason"]}); '
                    f'stopping. Fix the cause and rerun with --retry-errors')
    n_err = sum(records[p.key].get('status') == 'error' for p in persons)
    if n_err:
        LOG.warning('%d persons have status error (counted as no labels); rerun with '
                    '--retry-errors to predict them again', n_err)
    return records


# -- metrics -----------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalArrays:
    """Ground truth and predictions of N persons as arrays (category order: EMOTIC)."""

    y_true: np.ndarray          # (N, 26) bool
    scores: np.ndarray          # (N, 26) float32, 0 where the backend gave no score
    text_labels: np.ndarray     # (N, 26) bool, labels the backend chose itself
    sets_labels: np.ndarray     # (N,) bool: use text_labels for this person
    ok: np.ndarray              # (N,) bool: status ok/cached
    true_vad: np.ndarray        # (N, 3)
    pred_vad: np.ndarray        # (N, 3), NaN where missing
    statuses: list[str]

    def predictions(self, thresholds: np.ndarray) -> np.ndarray:
        """(N, 26) bool labels: the backend's own where it sets labels, else thresholded scores."""
        by_score = M.apply_thresholds(self.scores, thresholds) & self.ok[:, None]
        return np.where(self.sets_labels[:, None], self.text_labels & self.ok[:, None], by_score)


def to_arrays(persons: Sequence[EmoticPerson], records: dict[tuple[str, int], dict[str, Any]]
              ) -> EvalArrays:
    """Align the records with ``persons``; every person must have a record."""
    missing = [p.key for p in persons if p.key not in records]
    if missing:
        raise ValueError(f'{len(missing)} persons have no prediction (first: {missing[0]})')
    n = len(persons)
    index = {name: i for i, name in enumerate(EMOTIC_CATEGORIES)}
    # scores stay float32 (as backends give them), so thresholds tuned on them survive a round
    # trip through thresholds.json -> thresholds_array (float32) exactly
    arr = EvalArrays(np.zeros((n, NUM_CATEGORIES), bool),
                     np.zeros((n, NUM_CATEGORIES), np.float32),
                     np.zeros((n, NUM_CATEGORIES), bool), np.zeros(n, bool), np.zeros(n, bool),
                     np.zeros((n, 3)), np.full((n, 3), np.nan), [])
    for i, p in enumerate(persons):
        rec = records[p.key]
        arr.y_true[i] = p.label_vector()
        arr.true_vad[i] = p.vad
        status = str(rec.get('status', 'error'))
        arr.statuses.append(status)
        arr.ok[i] = status in OK_STATUSES
        if arr.ok[i]:
            scores = rec.get('scores') or {}
            arr.scores[i] = [scores.get(c) if scores.get(c) is not None else 0.0
                             for c in EMOTIC_CATEGORIES]
            arr.sets_labels[i] = bool(rec.get('sets_labels', False))
            for name in rec.get('labels', []):
                if name in index:
                    arr.text_labels[i, index[name]] = True
            vad = rec.get('vad') or {}
            arr.pred_vad[i] = [vad.get(d) if vad.get(d) is not None else np.nan
                               for d in VAD_NAMES]
    return arr


def label_metrics_with_ci(y_true: np.ndarray, y_pred: np.ndarray, rounds: int, seed: int
                          ) -> dict[str, dict[str, Any]]:
    """LABEL_METRICS name -> {'value': v, 'ci95': [lo, hi] or None}."""
    point = M.label_metrics(y_true, y_pred)
    ci = M.bootstrap_ci(y_true, y_pred, rounds, seed) if rounds > 0 else {}
    return {name: {'value': point[name], 'ci95': list(ci[name]) if name in ci else None}
            for name in M.LABEL_METRICS}


def _opt(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def compute_metrics(arr: EvalArrays, thresholds: np.ndarray, rounds: int, seed: int
                    ) -> dict[str, Any]:
    """All metrics of one split (see the module docstring); JSON-serialisable."""
    y_pred = arr.predictions(thresholds)
    out: dict[str, Any] = {'n': int(len(arr.statuses)),
                           'status_counts': dict(Counter(arr.statuses))}
    out.update(label_metrics_with_ci(arr.y_true, y_pred, rounds, seed))
    ap = M.per_category_ap(arr.y_true, arr.scores)
    out['ap'] = {c: _opt(v) for c, v in zip(EMOTIC_CATEGORIES, ap)}
    out['mAP'] = _opt(M.mean_average_precision(ap))
    prec, rec, f1, support = M.per_category_prf(arr.y_true, y_pred)
    out['per_category'] = {c: {'precision': float(prec[i]), 'recall': float(rec[i]),
                               'f1': float(f1[i]), 'support': int(support[i]),
                               'predicted': int(y_pred[:, i].sum())}
                           for i, c in enumerate(EMOTIC_CATEGORIES)}
    mae, count = M.vad_mae(arr.true_vad, arr.pred_vad)
    out['vad_mae'] = {d: _opt(v) for d, v in zip(VAD_NAMES, mae)}
    out['vad_n'] = {d: int(c) for d, c in zip(VAD_NAMES, count)}
    n_text = int(arr.sets_labels.sum())
    out['labels_from'] = ('scores' if n_text == 0 else
                          'text' if n_text == int(arr.ok.sum()) else 'mixed')
    out['thresholds'] = {c: float(t) for c, t in zip(EMOTIC_CATEGORIES, thresholds)}
    out['bootstrap'] = {'rounds': rounds, 'seed': seed}
    return out


def tune_on(arr: EvalArrays) -> tuple[np.ndarray, dict[str, Any]]:
    """F1-maximising thresholds on ``arr`` and a JSON-ready summary (val F1 before / after)."""
    ok = arr.ok & ~arr.sets_labels
    if not ok.any():
        raise ValueError('no person has scores to tune thresholds on (the backend sets the '
                         'labels itself, e.g. --mode generate, or every prediction failed)')
    # tuned on exactly what the metrics count: skipped/failed persons predict nothing, their
    # labels are misses
    thresholds = M.tune_thresholds(arr.y_true, arr.scores, predictable=ok)
    f1_tuned = M.per_category_prf(arr.y_true, arr.predictions(thresholds))[2]
    f1_default = M.per_category_prf(arr.y_true, arr.predictions(np.full(NUM_CATEGORIES, 0.5)))[2]
    return thresholds, {
        'thresholds': {c: float(t) for c, t in zip(EMOTIC_CATEGORIES, thresholds)},
        'n': int(len(arr.statuses)),
        'f1': {c: float(v) for c, v in zip(EMOTIC_CATEGORIES, f1_tuned)},
        'f1_at_0.5': {c: float(v) for c, v in zip(EMOTIC_CATEGORIES, f1_default)},
        'macro_f1': float(f1_tuned.mean()), 'macro_f1_at_0.5': float(f1_default.mean()),
    }


# -- report ------------------------------------------------------------------------------------
def _pct(m: dict[str, Any]) -> str:
    text = f'{100 * m["value"]:.2f}'
    if m.get('ci95'):
        lo, hi = m['ci95']
        text += f' [{100 * lo:.2f}, {100 * hi:.2f}]'
    return text


def _fmt(v: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return '—' if v is None else f'{scale * v:.{digits}f}'


def write_report(path: Path, metrics: dict[str, Any], plots: Sequence[str]) -> None:
    """report.md: our rows next to the paper's Table I, mAP anchors, per-category table."""
    cfg = metrics['config']
    name = f'{cfg["backend"]}' + (f' ({cfg["model"]})' if cfg.get('model') else '')
    rows = [(f'**ours: {name}**', metrics)]
    if 'tuned' in metrics:
        rows.append((f'**ours: {name}, thresholds tuned on {metrics["tuned"]["tuned_on"]}**',
                     metrics['tuned']))
    lines = [
        f'# EMOTIC {cfg["split"]}: {name}', '',
        f'{metrics["n"]} annotated persons; status: '
        + ', '.join(f'{k} {v}' for k, v in sorted(metrics['status_counts'].items()))
        + '. Skipped/failed persons count as predicting no label.', '',
        'Values in %, 95 % bootstrap intervals in brackets '
        f'({metrics["bootstrap"]["rounds"]} rounds). Hamming loss: lower is better. '
        'The paper\'s rows are from Etesam et al. (arXiv 2405.08992), Table I, EMOTIC test.', '',
        '| model | P | R | F1 | Hamming | subset acc | mAP |',
        '|---|---|---|---|---|---|---|',
    ]
    for label, p, r, f1, ham, acc in PAPER_TABLE_I:
        lines.append(f'| {label} | {p:.2f} | {r:.2f} | {f1:.2f} | {ham:.2f} | {acc:.2f} | — |')
    for label, m in rows:
        lines.append(f'| {label} | ' + ' | '.join(_pct(m[k]) for k in M.LABEL_METRICS)
                     + f' | {_fmt(metrics["mAP"])} |')
    lines += ['', f'**mAP** over categories with positives: {_fmt(metrics["mAP"])} % '
              f'(labels from: {metrics["labels_from"]}). Earlier EMOTIC mAP: '
              + '; '.join(f'{n} {v:.2f}' for n, v in MAP_ANCHORS) + '.']
    if metrics['labels_from'] != 'scores':
        parser = cfg.get('parser') or 'robust'
        how = ("the authors' protocol (a category counts when its lower-case name occurs in the "
               'answer), as behind their Table I' if parser == 'paper' else
               'the robust parser (word forms such as "happy", negation such as "not angry"); '
               "use --parser paper for numbers computed as in the paper's Table I")
        lines += ['', f'Labels were parsed from the generated answers with `{parser}`: {how}.',
                  '', 'Note: this backend chooses labels from generated text; its scores are '
                  'not graded confidences, so mAP is not comparable to score-based models.']
    vad = metrics['vad_mae']
    if any(v is not None for v in vad.values()):
        lines += ['', '**VAD mean absolute error** (1-10 scale): ' + ', '.join(
            f'{d} {_fmt(v, 1.0)} (n={metrics["vad_n"][d]})' for d, v in vad.items())]
    else:
        lines += ['', 'The backend predicts no valence/arousal/dominance.']
    lines += ['', '## Per category', '',
              '| category | support | predicted | P | R | F1 | AP | threshold |',
              '|---|---|---|---|---|---|---|---|']
    for c in EMOTIC_CATEGORIES:
        pc = metrics['per_category'][c]
        lines.append(f'| {c} | {pc["support"]} | {pc["predicted"]} | {_fmt(pc["precision"])} | '
                     f'{_fmt(pc["recall"])} | {_fmt(pc["f1"])} | {_fmt(metrics["ap"][c])} | '
                     f'{metrics["thresholds"][c]:.3f} |')
    if plots:
        lines += ['', '## Plots', ''] + [f'![{Path(p).stem}]({Path(p).name})' for p in plots]
    lines += ['', '## Configuration', '', '```json', json.dumps(cfg, indent=2), '```', '']
    path.write_text('\n'.join(lines))


def write_plots(out_dir: Path, arr: EvalArrays, metrics: dict[str, Any]) -> list[Path]:
    """ap_per_category.png, pr_curves.png, label_frequency.png (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    paths = []
    names = list(EMOTIC_CATEGORIES)
    ap = np.array([np.nan if metrics['ap'][c] is None else metrics['ap'][c] for c in names])
    fig, ax = plt.subplots(figsize=(8, 7))
    ypos = np.arange(len(names))
    ax.barh(ypos, np.nan_to_num(ap) * 100, color='tab:blue')
    ax.set_yticks(ypos, names, fontsize=8)
    ax.invert_yaxis()
    if metrics['mAP'] is not None:
        ax.axvline(100 * metrics['mAP'], color='tab:red', ls='--',
                   label=f'mAP {100 * metrics["mAP"]:.2f}')
        ax.legend(loc='lower right')
    ax.set_xlabel('average precision (%)')
    ax.set_title(f'AP per category (n={metrics["n"]})')
    fig.tight_layout()
    paths.append(out_dir / 'ap_per_category.png')
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(6, 5, figsize=(15, 17), sharex=True, sharey=True)
    for c, ax in enumerate(axes.ravel()):
        if c >= len(names):
            ax.axis('off')
            continue
        if arr.y_true[:, c].any():
            prec, rec, _ = M.precision_recall_curve(arr.y_true[:, c], arr.scores[:, c])
            ax.step(np.r_[0.0, rec], np.r_[prec[0] if len(prec) else 1.0, prec], where='post')
            ax.axhline(arr.y_true[:, c].mean(), color='grey', lw=0.8, ls=':')
            ax.set_title(f'{names[c]} AP {100 * ap[c]:.1f}', fontsize=9)
        else:
            ax.set_title(f'{names[c]} (no positives)', fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    fig.supxlabel('recall')
    fig.supylabel('precision')
    fig.tight_layout()
    paths.append(out_dir / 'pr_curves.png')
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(12, 5))
    x = np.arange(len(names))
    true_n = [metrics['per_category'][c]['support'] for c in names]
    pred_n = [metrics['per_category'][c]['predicted'] for c in names]
    ax.bar(x - 0.2, true_n, 0.4, label='true')
    ax.bar(x + 0.2, pred_n, 0.4, label='predicted')
    ax.set_xticks(x, names, rotation=70, ha='right', fontsize=8)
    ax.set_ylabel('persons')
    ax.set_title('label frequency: predicted vs true')
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / 'label_frequency.png')
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


# -- the command -------------------------------------------------------------------------------
def select_persons(persons: list[EmoticPerson], limit: int | None, sample: int | None
                   ) -> list[EmoticPerson]:
    """Shuffle with ``sample`` (a seed) if given, then keep the first ``limit``."""
    if sample is not None:
        persons = list(persons)
        random.Random(sample).shuffle(persons)
    if limit is not None:
        if limit < 1:
            raise ValueError(f'--limit must be >= 1, got {limit}')
        persons = persons[:limit]
    return persons


def _check_identity(out_dir: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume predictions made with another backend/model/split."""
    path = out_dir / RUN_FILE
    if path.is_file() and (out_dir / PREDICTIONS).is_file():
        before = json.loads(path.read_text())
        diff = {k: (before.get(k), identity.get(k)) for k in IDENTITY_KEYS
                if before.get(k) != identity.get(k)}
        if diff:
            raise ValueError(f'{out_dir / PREDICTIONS} was made with other settings '
                             f'{ {k: v[0] for k, v in diff.items()} }, now '
                             f'{ {k: v[1] for k, v in diff.items()} }: use another --output '
                             f'or delete that file')
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=2))


def run_split(args: argparse.Namespace, split: str, out_dir: Path, backend: LazyBackend
              ) -> tuple[list[EmoticPerson], dict[tuple[str, int], dict[str, Any]]]:
    """Load ``split``, select persons, predict the missing ones into ``out_dir``."""
    persons = select_persons(load_emotic(args.data, split, args.format), args.limit, args.sample)
    if not persons:
        raise ValueError(f'EMOTIC {split} has no annotated persons in {args.data}')
    identity = {'backend': args.backend, 'model': args.model, 'llm': args.llm,
                'mode': args.mode, 'adapter': args.adapter,
                'parser': getattr(args, 'parser', None), 'split': split,
                'format': args.format, 'data': str(Path(args.data).resolve()),
                **{k: getattr(args, k, None) for k in PROMPT_KEYS}}
    _check_identity(out_dir, identity)
    records = predict_split(persons, backend, out_dir / PREDICTIONS, args.batch_size,
                            args.retry_errors, progress=True)
    return persons, records


def main(args: argparse.Namespace) -> int:
    """Run the evaluation described by ``args`` (see ``register``)."""
    from ..core.backends import backend_class
    from ..core.backends.base import load_thresholds

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = LazyBackend(args.backend, backend_options(args, backend_class(args.backend)))
    thresholds = (load_thresholds(args.thresholds) if args.thresholds
                  else thresholds_array(None)).astype(np.float64)
    config = {k: v for k, v in vars(args).items() if k != 'func'}
    config['data'] = str(Path(args.data).resolve())
    t_start = time.perf_counter()
    try:
        persons, records = run_split(args, args.split, out_dir, backend)
        arr = to_arrays(persons, records)
        tuned_thresholds = None
        tuning_summary: dict[str, Any] = {}
        if args.tune_thresholds_on:
            try:
                tuned_thresholds, tuning_summary = _tune(args, out_dir, backend)
            except ValueError as exc:  # still report the metrics at the given thresholds
                LOG.error('threshold tuning skipped: %s', exc)
    finally:
        backend.close()
    t0 = time.perf_counter()
    metrics = compute_metrics(arr, thresholds, args.bootstrap, args.bootstrap_seed)
    if tuned_thresholds is not None:
        y_pred = arr.predictions(tuned_thresholds)
        metrics['tuned'] = dict(label_metrics_with_ci(arr.y_true, y_pred, args.bootstrap,
                                                      args.bootstrap_seed),
                                tuned_on=args.tune_thresholds_on,
                                thresholds_file=str(out_dir / THRESHOLDS_FILE),
                                val_macro_f1=tuning_summary['macro_f1'],
                                val_macro_f1_at_0_5=tuning_summary['macro_f1_at_0.5'])
    LOG.info('metrics computed in %.1f s (bootstrap %d rounds)', time.perf_counter() - t0,
             args.bootstrap)
    config['backend_model'] = next((r.get('model') for r in records.values() if r.get('model')),
                                   '')
    metrics['config'] = config
    metrics['wall_s'] = round(time.perf_counter() - t_start, 2)
    plots = [] if args.no_plots else write_plots(out_dir, arr, metrics)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    write_report(out_dir / REPORT_FILE, metrics, [str(p) for p in plots])
    summary = ', '.join(f'{k} {100 * metrics[k]["value"]:.2f}' for k in M.LABEL_METRICS)
    LOG.info('EMOTIC %s, %d persons: %s, mAP %s -> %s', args.split, metrics['n'], summary,
             _fmt(metrics['mAP']), out_dir / REPORT_FILE)
    if 'tuned' in metrics:
        LOG.info('with thresholds tuned on %s: F1 %.2f', args.tune_thresholds_on,
                 100 * metrics['tuned']['f1']['value'])
    return 0


def _tune(args: argparse.Namespace, out_dir: Path, backend: LazyBackend
          ) -> tuple[np.ndarray, dict[str, Any]]:
    """Predict (or reuse) the tuning split, tune, write thresholds.json."""
    spec = args.tune_thresholds_on
    if spec in SPLITS:
        if spec == args.split:
            LOG.warning('tuning thresholds on the evaluated split %r itself: the tuned '
                        'metrics are optimistic', spec)
        persons, records = run_split(args, spec, out_dir / spec, backend)
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f'--tune-thresholds-on: {spec!r} is neither a split {SPLITS} '
                             f'nor a predictions.jsonl file')
        records = read_predictions(path)
        split = json.loads((path.parent / RUN_FILE).read_text())['split'] \
            if (path.parent / RUN_FILE).is_file() else 'val'
        wanted = set(records)
        persons = [p for p in load_emotic(args.data, split, args.format) if p.key in wanted]
    thresholds, summary = tune_on(to_arrays(persons, records))
    summary.update(tuned_on=spec, backend=args.backend, model=args.model)
    (out_dir / THRESHOLDS_FILE).write_text(json.dumps(summary, indent=2))
    LOG.info('thresholds tuned on %s (%d persons): val macro F1 %.2f -> %.2f; wrote %s', spec,
             summary['n'], 100 * summary['macro_f1_at_0.5'], 100 * summary['macro_f1'],
             out_dir / THRESHOLDS_FILE)
    return thresholds, summary


__all__ = ['EvalArrays', 'LazyBackend', 'PAPER_TABLE_I', 'compute_metrics', 'group_by_image',
           'main', 'predict_split', 'read_predictions', 'register', 'select_persons',
           'to_arrays', 'tune_on', 'write_plots', 'write_report']
