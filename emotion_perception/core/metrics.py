"""Multi-label metrics over the 26 EMOTIC categories (the paper's protocol and EMOTIC's mAP).

All metrics are fractions in [0, 1] (multiply by 100 for the paper's tables). Inputs are arrays
of shape (N, 26) in ``EMOTIC_CATEGORIES`` order: ``y_true`` and ``y_pred`` boolean (or 0/1),
``scores`` float (higher = more confident). Definitions follow scikit-learn, which the tests use
as the independent reference (it is not imported here):

* macro precision / recall / F1: per-category values averaged over all 26 categories; a
  category whose denominator is 0 (nothing predicted, or no true positives and nothing
  predicted) counts 0 (``zero_division=0``). Per-category F1 is ``2 tp / (2 tp + fp + fn)``.
* Hamming loss: the fraction of wrong (person, category) decisions.
* subset accuracy: the fraction of persons whose predicted label set equals the true one.
* average precision (AP) per category from scores, ``sum_n (R_n - R_{n-1}) P_n`` over the
  distinct score thresholds (``average_precision_score``); NaN for a category without
  positives, which mAP leaves out of its mean.
* VAD mean absolute error per dimension over persons with a finite prediction.

Bootstrap confidence intervals resample persons with replacement (seeded) and recompute the
label metrics from per-category counts with matrix products, so 10,000 rounds over ~7,000
persons take seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .categories import DEFAULT_THRESHOLD, NUM_CATEGORIES

#: The label metrics that get bootstrap intervals, in report order.
LABEL_METRICS: tuple[str, ...] = ('precision', 'recall', 'f1', 'hamming_loss', 'subset_accuracy')

#: Bootstrap rounds per chunk: bounds memory to about chunk * N * 8 bytes.
_BOOTSTRAP_CHUNK = 250


def _as_bool(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f'{name} must have shape (N, C), got {y.shape}')
    return y.astype(bool)


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_bool(y_true, 'y_true'), _as_bool(y_pred, 'y_pred')
    if t.shape != p.shape:
        raise ValueError(f'y_true {t.shape} and y_pred {p.shape} differ in shape')
    if t.shape[0] == 0:
        raise ValueError('no persons to evaluate (N = 0)')
    return t, p


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (sklearn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass
class CategoryCounts:
    """Per-category counts; each array has shape (..., C) (a leading axis for bootstrap)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @classmethod
    def from_labels(cls, y_true: np.ndarray, y_pred: np.ndarray) -> 'CategoryCounts':
        t, p = _check_pair(y_true, y_pred)
        return cls(tp=(t & p).sum(0), fp=(~t & p).sum(0), fn=(t & ~p).sum(0))

    def precision(self) -> np.ndarray:
        return _safe_div(self.tp, self.tp + self.fp)

    def recall(self) -> np.ndarray:
        return _safe_div(self.tp, self.tp + self.fn)

    def f1(self) -> np.ndarray:
        return _safe_div(2 * self.tp, 2 * self.tp + self.fp + self.fn)


def per_category_prf(y_true: np.ndarray, y_pred: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-category precision, recall, F1 and support (number of true positives), each (C,)."""
    counts = CategoryCounts.from_labels(y_true, y_pred)
    support = np.asarray(y_true).astype(bool).sum(0)
    return counts.precision(), counts.recall(), counts.f1(), support


def macro_prf(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over all categories (zero_division=0)."""
    counts = CategoryCounts.from_labels(y_true, y_pred)
    return (float(counts.precision().mean()), float(counts.recall().mean()),
            float(counts.f1().mean()))


def hamming_loss(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of (person, category) decisions that are wrong."""
    t, p = _check_pair(y_true, y_pred)
    return float((t != p).mean())


def subset_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of persons whose predicted label set equals the true label set exactly."""
    t, p = _check_pair(y_true, y_pred)
    return float((t == p).all(axis=1).mean())


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The paper's five label metrics: ``LABEL_METRICS`` name -> value in [0, 1]."""
    precision, recall, f1 = macro_prf(y_true, y_pred)
    return {'precision': precision, 'recall': recall, 'f1': f1,
            'hamming_loss': hamming_loss(y_true, y_pred),
            'subset_accuracy': subset_accuracy(y_true, y_pred)}


# -- ranking metrics ---------------------------------------------------------------------------
def _ranked_counts(y_true: np.ndarray, scores: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct score thresholds (descending) with cumulative tp and fp at each, for one category.

    Predicting positive when ``score >= threshold``; ties share a threshold.
    """
    y = np.asarray(y_true).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f'y_true {y.shape} and scores {s.shape} differ in shape')
    if not np.isfinite(s).all():
        raise ValueError('scores must be finite (replace failed predictions by 0 first)')
    order = np.argsort(-s, kind='stable')
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.arange(1, len(y) + 1) - tp
    # last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.zeros(0, int)
    return s[last], tp[last], fp[last]


def precision_recall_curve(y_true: np.ndarray, scores: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and thresholds for one category, thresholds in decreasing order.

    Returns arrays of equal length K (one per distinct score). Recall is 0 everywhere when the
    category has no positives.
    """
    thr, tp, fp = _ranked_counts(y_true, scores)
    positives = tp[-1] if len(tp) else 0
    return _safe_div(tp, tp + fp), _safe_div(tp, positives), thr


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of one category (sklearn's ``average_precision_score``); NaN without positives."""
    precision, recall, _ = precision_recall_curve(y_true, scores)
    if len(recall) == 0 or not np.asarray(y_true).astype(bool).any():
        return float('nan')
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_category_ap(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AP for each category, shape (C,); NaN where a category has no positives."""
    t = _as_bool(y_true, 'y_true')
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f'y_true {t.shape} and scores {s.shape} differ in shape')
    return np.array([average_precision(t[:, c], s[:, c]) for c in range(t.shape[1])])


def mean_average_precision(ap: np.ndarray) -> float:
    """Mean of the per-category APs, leaving out categories without positives (NaN)."""
    ap = np.asarray(ap, dtype=np.float64)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float('nan')


def vad_mae(true_vad: np.ndarray, pred_vad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean absolute error per VAD dimension and the number of persons used per dimension.

    Args:
        true_vad: (N, 3) on the 1-10 scale.
        pred_vad: (N, 3); NaN where the backend gave no value (left out).

    Returns:
        (mae (3,), count (3,)); MAE is NaN for a dimension without any prediction.
    """
    t = np.asarray(true_vad, dtype=np.float64)
    p = np.asarray(pred_vad, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f'true_vad {t.shape} and pred_vad {p.shape} must both be (N, 3)')
    ok = np.isfinite(p) & np.isfinite(t)
    count = ok.sum(0)
    err = np.where(ok, np.abs(p - t), 0.0).sum(0)
    mae = np.full(t.shape[1], np.nan)
    np.divide(err, count, out=mae, where=count > 0)
    return mae, count


# -- bootstrap ---------------------------------------------------------------------------------
def bootstrap_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, rounds: int = 10_000,
                            seed: int = 0) -> dict[str, np.ndarray]:
    """The five label metrics on ``rounds`` bootstrap resamples of the persons.

    Each round draws N persons with replacement (``numpy.random.default_rng(seed)``); the
    metrics come from per-category counts computed as (rounds, N) @ (N, C) matrix products of
    resampling multiplicities, in chunks of ``_BOOTSTRAP_CHUNK`` rounds.

    Returns:
        name -> array of shape (rounds,).
    """
    t, p = _check_pair(y_true, y_pred)
    if rounds < 1:
        raise ValueError(f'bootstrap rounds must be >= 1, got {rounds}')
    n, c = t.shape
    # per-person columns: tp (C), fp (C), fn (C), wrong decisions, exact match
    per_person = np.concatenate([
        (t & p), (~t & p), (t & ~p),
        (t != p).sum(1, keepdims=True), (t == p).all(1, keepdims=True),
    ], axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    out = {name: np.empty(rounds) for name in LABEL_METRICS}
    for start in range(0, rounds, _BOOTSTRAP_CHUNK):
        b = min(_BOOTSTRAP_CHUNK, rounds - start)
        idx = rng.integers(0, n, size=(b, n))
        idx += (np.arange(b) * n)[:, None]
        weights = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        sums = weights @ per_person                       # (b, 3C + 2)
        counts = CategoryCounts(tp=sums[:, :c], fp=sums[:, c:2 * c], fn=sums[:, 2 * c:3 * c])
        sl = slice(start, start + b)
        out['precision'][sl] = counts.precision().mean(1)
        out['recall'][sl] = counts.recall().mean(1)
        out['f1'][sl] = counts.f1().mean(1)
        out['hamming_loss'][sl] = sums[:, 3 * c] / (n * c)
        out['subset_accuracy'][sl] = sums[:, 3 * c + 1] / n
    return out


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, rounds: int = 10_000, seed: int = 0,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the five label metrics.

    Returns:
        name -> (low, high), the (1-level)/2 and (1+level)/2 quantiles of the resampled values.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f'level must lie in (0, 1), got {level}')
    samples = bootstrap_label_metrics(y_true, y_pred, rounds, seed)
    q = [100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0]
    return {name: tuple(float(v) for v in np.percentile(values, q))
            for name, values in samples.items()}


# -- thresholds --------------------------------------------------------------------------------
def best_f1_threshold(y_true: np.ndarray, scores: np.ndarray,
                      default: float = DEFAULT_THRESHOLD,
                      predictable: np.ndarray | None = None) -> tuple[float, float]:
    """The threshold (one of the scores) that maximises F1 of one category, and that F1.

    Every distinct positive score of a ``predictable`` person is tried as a threshold
    (positive when ``score >= threshold``); among equal F1 values the largest threshold wins
    (fewest positive predictions). Persons that are not predictable (skipped or failed: the
    metrics count them as predicting nothing) never become positive, but their true labels still
    count as false negatives, exactly as in the metrics. No threshold is ever 0 or below (that
    would label everyone). A category with no positives, or no candidate, keeps ``default``.

    Returns:
        (threshold, f1).
    """
    y = np.asarray(y_true).astype(bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    keep = np.ones_like(y) if predictable is None else np.asarray(predictable, bool).reshape(-1)
    keep = keep & np.isfinite(s) & (s > 0)
    positives = int(y.sum())
    if positives == 0 or not keep.any():
        return float(default), 0.0
    thr, tp, fp = _ranked_counts(y[keep], s[keep])
    f1 = _safe_div(2 * tp, tp + fp + positives)     # 2tp / (2tp + fp + fn), fn = P - tp
    best = int(np.argmax(f1))                        # first = highest threshold among ties
    return float(thr[best]), float(f1[best])


def tune_thresholds(y_true: np.ndarray, scores: np.ndarray,
                    default: float = DEFAULT_THRESHOLD,
                    predictable: np.ndarray | None = None) -> np.ndarray:
    """Per-category F1-maximising thresholds, shape (C,) (see ``best_f1_threshold``).

    Args:
        predictable: (N,) bool, the persons whose scores the metrics threshold (None: all).
    """
    t = _as_bool(y_true, 'y_true')
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f'y_true {t.shape} and scores {s.shape} differ in shape')
    return np.array([best_f1_threshold(t[:, c], s[:, c], default, predictable)[0]
                     for c in range(t.shape[1])])


def apply_thresholds(scores: np.ndarray, thresholds: float | Sequence[float] | np.ndarray
                     ) -> np.ndarray:
    """Boolean predictions ``scores >= thresholds`` (thresholds broadcast over persons)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.nan_to_num(s, nan=-np.inf) >= np.asarray(thresholds, dtype=np.float64)


__all__ = ['LABEL_METRICS', 'NUM_CATEGORIES', 'CategoryCounts', 'apply_thresholds',
           'average_precision', 'best_f1_threshold', 'bootstrap_ci', 'bootstrap_label_metrics',
           'hamming_loss', 'label_metrics', 'macro_prf', 'mean_average_precision',
           'per_category_ap', 'per_category_prf', 'precision_recall_curve', 'subset_accuracy',
           'tune_thresholds', 'vad_mae']
