"""core.metrics against scikit-learn (the independent reference) and hand-checked cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, hamming_loss,
                             precision_recall_fscore_support)

from emotion_perception.core import metrics as M

C = 26


def random_case(seed: int, n: int = 300, rate: float = 0.12):
    rng = np.random.default_rng(seed)
    y_true = rng.random((n, C)) < rate
    y_true[:, 3] = False                                    # a category without positives
    scores = np.clip(0.35 * y_true + 0.65 * rng.random((n, C)), 0.0, 1.0)
    scores = np.round(scores, 2)                            # ties, as real models produce
    y_pred = scores >= 0.5
    y_pred[:, 7] = False                                    # a category never predicted
    return y_true, y_pred, scores


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_label_metrics_match_sklearn(seed):
    y_true, y_pred, _ = random_case(seed)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average='macro',
                                                 zero_division=0)
    got = M.label_metrics(y_true, y_pred)
    assert got['precision'] == pytest.approx(p, abs=1e-12)
    assert got['recall'] == pytest.approx(r, abs=1e-12)
    assert got['f1'] == pytest.approx(f, abs=1e-12)
    assert got['hamming_loss'] == pytest.approx(hamming_loss(y_true, y_pred), abs=1e-12)
    assert got['subset_accuracy'] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    pc, rc, fc, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    mp, mr, mf, ms = M.per_category_prf(y_true, y_pred)
    np.testing.assert_allclose(mp, pc)
    np.testing.assert_allclose(mr, rc)
    np.testing.assert_allclose(mf, fc)
    np.testing.assert_array_equal(ms, support)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_average_precision_matches_sklearn(seed):
    y_true, _, scores = random_case(seed)
    ap = M.per_category_ap(y_true, scores)
    for c in range(C):
        if y_true[:, c].any():
            assert ap[c] == pytest.approx(average_precision_score(y_true[:, c], scores[:, c]),
                                          abs=1e-12)
        else:
            assert np.isnan(ap[c])
    assert M.mean_average_precision(ap) == pytest.approx(
        np.mean([average_precision_score(y_true[:, c], scores[:, c])
                 for c in range(C) if y_true[:, c].any()]), abs=1e-12)


def test_edge_cases_by_hand():
    y_true = np.zeros((4, C), dtype=bool)
    y_true[0, 0] = y_true[1, 0] = y_true[2, 1] = True
    none = np.zeros_like(y_true)
    # all-zero predictions: P = R = F1 = 0; 3 wrong decisions of 4 * 26; person 3 exact
    got = M.label_metrics(y_true, none)
    assert got['precision'] == got['recall'] == got['f1'] == 0.0
    assert got['hamming_loss'] == pytest.approx(3 / (4 * C))
    assert got['subset_accuracy'] == pytest.approx(1 / 4)
    # perfect predictions: the 24 categories without positives still count 0 in the macro mean
    got = M.label_metrics(y_true, y_true)
    assert got['precision'] == got['recall'] == got['f1'] == pytest.approx(2 / C)
    assert got['hamming_loss'] == 0.0 and got['subset_accuracy'] == 1.0
    # one right, one false positive in category 0
    pred = np.zeros_like(y_true)
    pred[0, 0] = pred[3, 0] = True
    p, r, f, _ = M.per_category_prf(y_true, pred)
    assert (p[0], r[0], f[0]) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    # AP: category 0 ranked [pos, neg, pos, neg] -> (1 + 2/3) / 2; category 2 has no positives
    scores = np.zeros((4, C))
    scores[:, 0] = [0.9, 0.7, 0.1, 0.8]          # ranks: p0 .9 (pos), p3 .8, p1 .7 (pos), p2
    ap = M.per_category_ap(y_true, scores)
    assert ap[0] == pytest.approx((1.0 + 2 / 3) / 2)
    assert np.isnan(ap[2])
    with pytest.raises(ValueError, match='shape'):
        M.label_metrics(y_true, y_true[:, :5])
    with pytest.raises(ValueError, match='N = 0'):
        M.label_metrics(np.zeros((0, C)), np.zeros((0, C)))


def test_vad_mae_ignores_missing_predictions():
    true = np.array([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
    pred = np.array([[6.0, np.nan, 4.0], [1.0, np.nan, 5.0]])
    mae, count = M.vad_mae(true, pred)
    assert mae[0] == pytest.approx(0.5) and np.isnan(mae[1]) and mae[2] == pytest.approx(1.5)
    assert count.tolist() == [2, 0, 2]


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    y_true, y_pred, _ = random_case(5, n=400)
    point = M.label_metrics(y_true, y_pred)
    ci = M.bootstrap_ci(y_true, y_pred, rounds=600, seed=3)
    for name in M.LABEL_METRICS:
        lo, hi = ci[name]
        assert lo <= point[name] <= hi, name
        assert hi - lo < 0.2
    assert M.bootstrap_ci(y_true, y_pred, rounds=600, seed=3) == ci
    assert M.bootstrap_ci(y_true, y_pred, rounds=600, seed=4) != ci


def test_bootstrap_rounds_equal_direct_recomputation():
    """Each vectorised round equals the metrics of the resampled rows computed directly."""
    y_true, y_pred, _ = random_case(6, n=50)
    samples = M.bootstrap_label_metrics(y_true, y_pred, rounds=3, seed=11)
    rng = np.random.default_rng(11)
    idx = rng.integers(0, 50, size=(3, 50))
    for b in range(3):
        direct = M.label_metrics(y_true[idx[b]], y_pred[idx[b]])
        for name in M.LABEL_METRICS:
            assert samples[name][b] == pytest.approx(direct[name], abs=1e-12)


def naive_best_threshold(y, s):
    best_t, best_f = None, -1.0
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        f = precision_recall_fscore_support(y, pred, average='binary', zero_division=0)[2]
        if f > best_f + 1e-12:
            best_t, best_f = t, f
    return best_t, best_f


@pytest.mark.parametrize('seed', [0, 1])
def test_threshold_tuning_matches_brute_force_and_beats_default(seed):
    y_true, _, scores = random_case(seed, n=200)
    thresholds = M.tune_thresholds(y_true, scores)
    for c in range(C):
        if not y_true[:, c].any():
            assert thresholds[c] == 0.5
            continue
        t, f = naive_best_threshold(y_true[:, c], scores[:, c])
        assert thresholds[c] == pytest.approx(t)
        assert M.best_f1_threshold(y_true[:, c], scores[:, c])[1] == pytest.approx(f)
    tuned = M.per_category_prf(y_true, M.apply_thresholds(scores, thresholds))[2]
    default = M.per_category_prf(y_true, M.apply_thresholds(scores, 0.5))[2]
    assert np.all(tuned >= default - 1e-12)
    assert tuned.mean() > default.mean()


@pytest.mark.parametrize('seed', [0, 3])
def test_threshold_tuning_treats_skipped_persons_as_the_metrics_do(seed):
    """Skipped/failed persons carry score 0 and predict nothing in the metrics: tuning must
    neither pick a threshold of 0 (labelling everyone, those persons included) nor ignore
    their positives. Reference: sklearn F1 of the predictions the metrics make, brute force."""
    rng = np.random.default_rng(seed)
    y_true, _, scores = random_case(seed, n=150)
    ok = rng.random(len(scores)) > 0.3
    scores = np.where(ok[:, None], scores, 0.0)
    y_true[~ok, 0] = True  # category 0: most skipped persons are positive
    thresholds = M.tune_thresholds(y_true, scores, predictable=ok)
    assert (thresholds > 0).all()
    for c in range(C):
        if not y_true[:, c].any():
            continue
        cands = np.unique(scores[ok & (scores[:, c] > 0), c])
        f1s = [precision_recall_fscore_support(y_true[:, c], ok & (scores[:, c] >= t),
                                               average='binary', zero_division=0)[2]
               for t in cands]
        best = max(f1s)
        got = precision_recall_fscore_support(y_true[:, c], ok & (scores[:, c] >= thresholds[c]),
                                              average='binary', zero_division=0)[2]
        assert got == pytest.approx(best)


def test_bootstrap_speed_7000_persons():
    """10,000 rounds on an EMOTIC-test-sized set stay well under a minute (seconds, typically)."""
    import time
    rng = np.random.default_rng(0)
    y_true = rng.random((7000, C)) < 0.1
    y_pred = rng.random((7000, C)) < 0.2
    t0 = time.perf_counter()
    M.bootstrap_ci(y_true, y_pred, rounds=10_000, seed=0)
    assert time.perf_counter() - t0 < 60
