"""``emotion-perception evaluate`` end to end on the synthetic EMOTIC fixture."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, hamming_loss,
                             precision_recall_fscore_support)

from emotion_perception.core.backends.base import EmotionBackend, ModelLoadError, load_thresholds
from emotion_perception.core.categories import EMOTIC_CATEGORIES
from emotion_perception.core.emotic import load_emotic
from emotion_perception.core.types import BBox, EmotionResult
from emotion_perception.testing.emotic_fixture import write_emotic_fixture
from emotion_perception.tools import evaluate as E
from emotion_perception.tools.cli import main as cli_main

STUB = f'{__name__}:StubBackend'


class StubBackend(EmotionBackend):
    """Deterministic scores from the crop's pixels, nudged towards the truth when it is known.

    Class attributes steer it from the tests: ``truth`` maps (image h, w, box) -> multi-hot
    labels; ``interrupt_after`` raises KeyboardInterrupt on that predict call; ``fail_load``
    makes ``load`` fail (to prove a finished run loads nothing); ``calls`` counts predict calls.
    """

    name = 'stub'
    truth: ClassVar[dict[tuple, np.ndarray]] = {}
    interrupt_after: ClassVar[int | None] = None
    fail_load: ClassVar[bool] = False
    calls: ClassVar[int] = 0
    persons: ClassVar[int] = 0

    def load(self) -> None:
        if StubBackend.fail_load:
            raise ModelLoadError('stub: loading is forbidden in this test')
        self._loaded = True

    def preprocess(self, image: np.ndarray, boxes: Sequence[BBox]) -> Any:
        return [(image.shape[:2], tuple(b.xyxy()), image[int(b.y1):int(b.y2), int(b.x1):int(b.x2)])
                for b in boxes]

    def forward(self, batch: Any) -> Any:
        StubBackend.calls += 1
        if StubBackend.interrupt_after is not None and StubBackend.calls > StubBackend.interrupt_after:
            raise KeyboardInterrupt
        StubBackend.persons += len(batch)
        out = []
        for shape, box, crop in batch:
            rng = np.random.default_rng(int(crop.astype(np.int64).sum()))
            truth = StubBackend.truth.get((*shape, *box), np.zeros(26))
            out.append(np.clip(0.45 * truth + 0.6 * rng.random(26), 0, 1))
        return out

    def postprocess(self, outputs: Any, batch: Any) -> list[EmotionResult]:
        return [EmotionResult(scores=np.asarray(o, np.float32), vad=(5.0, 6.0, float('nan')))
                for o in outputs]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('emotic')
    expected = write_emotic_fixture(root, {'train': 2, 'val': 10, 'test': 12}, seed=3)
    return root, expected


@pytest.fixture(autouse=True)
def stub(data):
    import cv2
    root, expected = data
    truth = {}
    for persons in expected.values():
        for p in persons:
            h, w = cv2.imread(str(p.image_path)).shape[:2]
            truth[(h, w, *BBox(*p.bbox.xyxy()).clipped(w, h).xyxy())] = p.label_vector().astype(float)
    StubBackend.truth = truth
    StubBackend.interrupt_after, StubBackend.fail_load = None, False
    StubBackend.calls = StubBackend.persons = 0
    yield


def run(root: Path, out: Path, *extra: str) -> int:
    return cli_main(['evaluate', '--data', str(root), '--output', str(out), '--backend', STUB,
                     '--bootstrap', '300', *extra])


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ('config', 'wall_s')}


def test_end_to_end_with_stub(data, tmp_path):
    root, expected = data
    out = tmp_path / 'out'
    assert run(root, out, '--tune-thresholds-on', 'val', '--batch-size', '2') == 0
    for name in ('metrics.json', 'report.md', 'predictions.jsonl', 'thresholds.json',
                 'ap_per_category.png', 'pr_curves.png', 'label_frequency.png',
                 'val/predictions.jsonl'):
        assert (out / name).is_file(), name
    test_persons = expected['test']
    lines = (out / 'predictions.jsonl').read_text().splitlines()
    assert len(lines) == len(test_persons)
    recs = [json.loads(line) for line in lines]
    for key in ('image', 'person', 'scores', 'labels', 'true_labels', 'vad', 'true_vad',
                'status'):
        assert all(key in r for r in recs), key
    assert set(recs[0]['scores']) == set(EMOTIC_CATEGORIES)
    # images are read once: persons of an image are consecutive, each batch <= 2 boxes
    assert StubBackend.persons == len(test_persons) + len(expected['val'])

    # metrics.json equals sklearn on the arrays rebuilt from predictions.jsonl
    metrics = json.loads((out / 'metrics.json').read_text())
    by_key = {(r['image'], r['person']): r for r in recs}
    y_true = np.array([p.label_vector() for p in test_persons])
    scores = np.array([[by_key[p.key]['scores'][c] for c in EMOTIC_CATEGORIES]
                       for p in test_persons])
    y_pred = scores >= 0.5
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average='macro',
                                                 zero_division=0)
    assert metrics['n'] == len(test_persons)
    assert metrics['precision']['value'] == pytest.approx(p)
    assert metrics['recall']['value'] == pytest.approx(r)
    assert metrics['f1']['value'] == pytest.approx(f)
    assert metrics['hamming_loss']['value'] == pytest.approx(hamming_loss(y_true, y_pred))
    assert metrics['subset_accuracy']['value'] == pytest.approx(accuracy_score(y_true, y_pred))
    for name in ('precision', 'recall', 'f1', 'hamming_loss', 'subset_accuracy'):
        # (27 persons: macro metrics shift under resampling, so the percentile interval need
        # not contain the estimate here; test_metrics checks that on a realistic size)
        lo, hi = metrics[name]['ci95']
        assert 0.0 <= lo <= hi <= 1.0
    aps = [average_precision_score(y_true[:, c], scores[:, c]) for c in range(26)
           if y_true[:, c].any()]
    assert metrics['mAP'] == pytest.approx(np.mean(aps), abs=1e-5)
    assert metrics['vad_mae']['dominance'] is None
    true_vad = np.array([p.vad for p in test_persons])
    assert metrics['vad_mae']['valence'] == pytest.approx(np.abs(true_vad[:, 0] - 5.0).mean())
    assert metrics['config']['backend'] == STUB and metrics['config']['split'] == 'test'

    # thresholds.json is accepted by every backend's `thresholds` option; tuned F1 >= 0.5 on val
    thresholds = json.loads((out / 'thresholds.json').read_text())
    assert thresholds['macro_f1'] >= thresholds['macro_f1_at_0.5']
    np.testing.assert_allclose(load_thresholds(str(out / 'thresholds.json')),
                               [thresholds['thresholds'][c] for c in EMOTIC_CATEGORIES],
                               rtol=1e-6)
    assert StubBackend({'thresholds': str(out / 'thresholds.json')}).thresholds.shape == (26,)
    assert 'tuned' in metrics and 'value' in metrics['tuned']['f1']
    report = (out / 'report.md').read_text()
    assert 'LLaVA-F (fine-tuned, val aug)' in report and '**ours:' in report
    assert 'thresholds tuned on val' in report

    # --thresholds FILE on the same predictions gives the tuned numbers; nothing is recomputed
    StubBackend.fail_load = True
    assert run(root, out, '--thresholds', str(out / 'thresholds.json')) == 0
    again = json.loads((out / 'metrics.json').read_text())
    assert again['f1'] == metrics['tuned']['f1']


def test_resume_after_limit_and_interrupt_matches_uninterrupted(data, tmp_path):
    root, _ = data

    def run(*args):
        return globals()['run'](*args, '--no-plots')

    full = tmp_path / 'full'
    assert run(root, full) == 0
    reference = comparable(json.loads((full / 'metrics.json').read_text()))

    # interrupted by --limit, then completed
    part = tmp_path / 'limit'
    assert run(root, part, '--limit', '5') == 0
    assert len((part / 'predictions.jsonl').read_text().splitlines()) == 5
    assert json.loads((part / 'metrics.json').read_text())['n'] == 5
    assert run(root, part) == 0
    assert comparable(json.loads((part / 'metrics.json').read_text())) == reference

    # interrupted inside the backend after 3 images (Ctrl-C), plus a half-written line
    crash = tmp_path / 'crash'
    StubBackend.interrupt_after, StubBackend.calls = 3, 0
    assert run(root, crash) == 130
    done = (crash / 'predictions.jsonl').read_text().splitlines()
    assert 3 <= len(done) < reference['n']
    with (crash / 'predictions.jsonl').open('a') as f:
        f.write('{"image": "trunc')
    StubBackend.interrupt_after, StubBackend.calls, StubBackend.persons = None, 0, 0
    assert run(root, crash) == 0
    assert StubBackend.persons == reference['n'] - len(done)      # only the missing ones
    assert comparable(json.loads((crash / 'metrics.json').read_text())) == reference

    # a finished run recomputes nothing: the backend is never even loaded
    StubBackend.fail_load = True
    assert run(root, crash) == 0
    assert comparable(json.loads((crash / 'metrics.json').read_text())) == reference


def test_sample_is_a_seeded_subset(data, tmp_path):
    root, expected = data
    a = E.select_persons(expected['test'], 4, 1)
    assert a == E.select_persons(expected['test'], 4, 1) != E.select_persons(expected['test'], 4, 2)
    assert run(root, tmp_path / 's', '--sample', '1', '--limit', '4', '--no-plots') == 0
    recs = E.read_predictions(tmp_path / 's' / 'predictions.jsonl')
    assert set(recs) == {p.key for p in a}


def test_refuses_other_settings_and_unknown_options(data, tmp_path):
    root, _ = data
    assert run(root, tmp_path / 'o', '--limit', '2', '--no-plots') == 0
    with pytest.raises(ValueError, match='other settings'):
        run(root, tmp_path / 'o', '--limit', '2', '--format', 'csv')
    with pytest.raises(ValueError, match="no 'llm' option"):
        run(root, tmp_path / 'p', '--llm', 'some-llm')
    with pytest.raises(FileNotFoundError, match='Annotations.mat'):
        run(tmp_path, tmp_path / 'q')


def test_unreadable_image_is_an_error_record(data, tmp_path):
    root, _ = data
    import shutil
    copy = tmp_path / 'copy'
    shutil.copytree(root, copy)
    persons = load_emotic(copy, 'test')
    persons[0].image_path.write_bytes(b'not an image')
    assert run(copy, tmp_path / 'e', '--bootstrap', '0', '--no-plots') == 0
    metrics = json.loads((tmp_path / 'e' / 'metrics.json').read_text())
    n_bad = sum(p.image_key == persons[0].image_key for p in persons)
    assert metrics['status_counts']['error'] == n_bad
    assert metrics['f1']['ci95'] is None


def test_face_baseline_end_to_end(data, tmp_path):
    """The lead's face-only baseline through the same command (skipped without its weights)."""
    pytest.importorskip('emotion_perception.core.backends.face_baseline')
    from emotion_perception.core.backends import create_backend
    try:
        create_backend('face_baseline', {'device': 'cpu'}).load()
    except ModelLoadError as exc:
        pytest.skip(f'face_baseline weights unavailable: {exc}')
    root, expected = data
    assert cli_main(['evaluate', '--data', str(root), '--output', str(tmp_path / 'f'),
                     '--backend', 'face_baseline', '--device', 'cpu', '--bootstrap', '100']) == 0
    metrics = json.loads((tmp_path / 'f' / 'metrics.json').read_text())
    assert metrics['n'] == len(expected['test'])
    # random-noise images hold no faces: every person is skipped, and counted as no labels
    assert sum(metrics['status_counts'].values()) == metrics['n']
    assert 0.0 <= metrics['f1']['value'] <= 1.0
