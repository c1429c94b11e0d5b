"""`emotion-perception evaluate` end to end with a tiny random VLM on the EMOTIC fixture,
in both read-outs: score (mAP from the per-category scores) and generate (parsed text)."""
import json

import numpy as np
import pytest

from emotion_perception.core.categories import EMOTIC_CATEGORIES
from emotion_perception.testing.emotic_fixture import write_emotic_fixture
from emotion_perception.testing.tiny_models import build_tiny_llava
from emotion_perception.tools.cli import main as cli_main


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('emotic')
    persons = write_emotic_fixture(root, seed=3)
    model = build_tiny_llava(tmp_path_factory.mktemp('m') / 'llava')
    return root, persons, model


@pytest.mark.parametrize('mode', ['score', 'generate'])
def test_evaluate_tiny_vlm(setup, tmp_path, mode):
    root, persons, model = setup
    out = tmp_path / mode
    args = ['evaluate', '--data', str(root), '--split', 'test', '--output', str(out),
            '--backend', 'vlm', '--model', str(model), '--mode', mode, '--device', 'cpu',
            '--limit', '6', '--bootstrap', '200', '--no-plots']
    assert cli_main(args) == 0
    preds = [json.loads(line) for line in (out / 'predictions.jsonl').read_text().splitlines()]
    assert len(preds) == 6
    for p in preds:
        assert list(p['scores']) == list(EMOTIC_CATEGORIES)
        if mode == 'score':
            assert p['status'] == 'ok'
        elif p['status'] == 'skipped':  # a random model's answer may name no category
            assert p['labels'] == [] and p['reason'] == 'no known label in answer'
            continue
        scores = np.array([p['scores'][c] for c in EMOTIC_CATEGORIES], dtype=float)
        assert np.all((scores >= 0) & (scores <= 1))
        if mode == 'generate':  # scores are the parsed labels as 0/1
            assert p['status'] == 'ok' and set(np.unique(scores)) <= {0.0, 1.0}
            assert {c for c, s in p['scores'].items() if s == 1.0} == set(p['labels'])
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['n'] == 6
    for key in ('precision', 'recall', 'f1', 'hamming_loss', 'subset_accuracy'):
        assert 0.0 <= metrics[key]['value'] <= 1.0
    assert 0.0 <= metrics['mAP'] <= 1.0
    # a second run over the finished predictions recomputes nothing and gives the same metrics
    assert cli_main(args) == 0
    again = json.loads((out / 'metrics.json').read_text())
    assert again['f1'] == metrics['f1'] and again['mAP'] == metrics['mAP']


def test_evaluate_reports_the_label_parser(setup, tmp_path, monkeypatch):
    """--parser paper: the authors' protocol finds labels by lower-case name; the report says
    which parser produced the numbers, and resuming with another parser is refused."""
    import emotion_perception.core.backends.vlm as vlm_mod
    root, _, model = setup
    # the same crafted answer for everyone: 'Happiness' counts for both parsers, the negated
    # 'not Anger' only for the paper's substring rule
    monkeypatch.setattr(vlm_mod, 'generate_texts',
                        lambda *a, **k: ['Happiness, and not Anger.'] * sum(
                            int(b['input_ids'].shape[0]) for b in a[2]))
    labels = {}
    for parser in ('robust', 'paper'):
        out = tmp_path / parser
        args = ['evaluate', '--data', str(root), '--split', 'test', '--output', str(out),
                '--backend', 'vlm', '--model', str(model), '--mode', 'generate',
                '--parser', parser, '--device', 'cpu', '--limit', '3', '--bootstrap', '0',
                '--no-plots']
        assert cli_main(args) == 0
        preds = [json.loads(line) for line in (out / 'predictions.jsonl').read_text().splitlines()]
        labels[parser] = preds[0]['labels']
        metrics = json.loads((out / 'metrics.json').read_text())
        assert metrics['config']['parser'] == parser
        assert f'parsed from the generated answers with `{parser}`' in (out / 'report.md').read_text()
    assert labels == {'robust': ['Happiness'], 'paper': ['Anger', 'Happiness']}
    other = ['evaluate', '--data', str(root), '--split', 'test', '--output', str(tmp_path / 'paper'),
             '--backend', 'vlm', '--model', str(model), '--mode', 'generate', '--parser',
             'robust', '--device', 'cpu', '--limit', '3', '--bootstrap', '0', '--no-plots']
    with pytest.raises(ValueError, match='parser'):
        cli_main(other)
