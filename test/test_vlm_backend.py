"""The vlm backend on tiny random vision-language models (LLaVA and Qwen2-VL), loaded from disk
through the same from_pretrained path users take. No network (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import json
import math
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from emotion_perception.core import prompts  # noqa: E402
from emotion_perception.core.backends import ModelLoadError, create_backend  # noqa: E402
from emotion_perception.core.backends import _prefix_scoring as ps  # noqa: E402
from emotion_perception.core.backends.vlm import NO_LABEL_REASON, VLMBackend  # noqa: E402
from emotion_perception.core.categories import EMOTIC_CATEGORIES, NUM_CATEGORIES  # noqa: E402
from emotion_perception.core.types import BBox, Status  # noqa: E402
from emotion_perception.testing.tiny_models import (TINY_VLM_BUILDERS, build_tiny_llava,  # noqa: E402
                                                    build_tiny_text_llm, make_test_image)

torch.set_num_threads(min(2, torch.get_num_threads()))

IMAGE = make_test_image(96, 128, seed=3)
BOXES = [BBox(10, 10, 60, 90), BBox(50, 5, 120, 80), BBox(0, 0, 30, 30), BBox(70, 40, 127, 95)]


@pytest.fixture(scope='module', params=sorted(TINY_VLM_BUILDERS))
def tiny_vlm(request, tmp_path_factory):
    """(family, folder) of a saved tiny random VLM."""
    path = TINY_VLM_BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / 'model')
    return request.param, path


@pytest.fixture(scope='module')
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp('llava') / 'model')


def make_backend(path, **options) -> VLMBackend:
    backend = create_backend('vlm', dict(model=str(path), device='cpu', **options))
    backend.load()
    return backend


# -- score mode --------------------------------------------------------------------------------
@pytest.mark.parametrize('marking', ['red_box', 'crop_context'])
def test_score_equals_naive_full_reencoding(tiny_vlm, marking):
    family, path = tiny_vlm
    backend = make_backend(path, marking=marking)
    results = backend.predict(IMAGE, BOXES[:2])
    ref_scores, ref_vad = backend.naive_scores(IMAGE, BOXES[:2])
    got = np.stack([r.scores for r in results])
    np.testing.assert_allclose(got, ref_scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array([r.vad for r in results]), ref_vad, atol=1e-4, rtol=0)
    # random weights still give scores that differ between categories (not a constant)
    assert got.std() > 1e-3, family


def test_scores_and_vad_ranges(tiny_vlm):
    _, path = tiny_vlm
    backend = make_backend(path)
    for res in backend.predict(IMAGE, BOXES):
        assert res.status == Status.OK
        assert res.scores.shape == (NUM_CATEGORIES,) and res.scores.dtype == np.float32
        assert np.all((res.scores >= 0) & (res.scores <= 1))
        assert all(1.0 <= v <= 10.0 for v in res.vad)
        assert res.backend == 'vlm' and res.model == str(path)
        # labels come from the thresholds (0.5): exactly the categories at or above it
        expected = {c for c, s in zip(EMOTIC_CATEGORIES, res.scores) if s >= 0.5}
        assert set(res.labels) == expected


@pytest.mark.parametrize('batch_size', [1, 3, 8])
def test_batch_of_persons_equals_one_by_one(tiny_vlm, batch_size):
    """All persons of a frame in one padded call == each person alone (crop marking gives
    different image sizes, so for Qwen2-VL the prefixes have different lengths: real padding)."""
    _, path = tiny_vlm
    backend = make_backend(path, batch_size=batch_size, marking='crop')
    together = backend.predict(IMAGE, BOXES)
    alone = [backend.predict(IMAGE, [b])[0] for b in BOXES]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, rtol=0)
        np.testing.assert_allclose(a.vad, b.vad, atol=1e-4, rtol=0)


def test_scorer_left_padding_with_prefixes_of_different_lengths(tiny_llava):
    """Shared-prefix scorer on prompts of different lengths (left padding) == naive reference."""
    from PIL import Image
    backend = make_backend(tiny_llava)
    tok = backend.processor.tokenizer
    heads = [backend._render('Short prompt.\n'), backend._render(prompts.score_prefix() + '\n')]
    items = [backend._encode(IMAGE, h) for h in heads]
    assert items[0]['input_ids'].shape[1] != items[1]['input_ids'].shape[1]
    batch = ps.collate_left(items, backend._pad_id)
    got = ps.shared_prefix_logprobs(backend.model, batch, backend._suffixes, backend._readout.ids,
                                    backend._pad_id)
    for i, it in enumerate(items):
        ref = ps.naive_logprobs(backend.model, it, backend._suffixes, backend._readout.ids)
        torch.testing.assert_close(got[i], ref, atol=1e-4, rtol=0)
    assert tok.pad_token_id == backend._pad_id and Image is not None


def test_readout_tokens_and_score_definition(tiny_llava):
    backend = make_backend(tiny_llava)
    tok = backend.processor.tokenizer
    rt = backend._readout
    assert rt.yes and rt.no and not set(rt.yes) & set(rt.no)
    assert all(tok.decode([i]).strip().lower() == 'yes' for i in rt.yes)
    assert all(tok.decode([i]).strip().lower() == 'no' for i in rt.no)
    assert [tok.decode([d[0]]).strip() for d in rt.digits] == [str(d) for d in range(10)]
    # score = P(yes) / (P(yes) + P(no)) from full-vocabulary probabilities
    logp = torch.log_softmax(torch.randn(len(tok)), -1)
    p = logp.exp()
    expected = p[list(rt.yes)].sum() / (p[list(rt.yes)].sum() + p[list(rt.no)].sum())
    got = ps.yes_probability(logp[rt.ids], rt)
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-5)
    # VAD: expectation over digit probabilities, renormalised over 0..9
    pd = torch.stack([p[list(d)].sum() for d in rt.digits])
    exp_d = (pd / pd.sum() * torch.arange(10)).sum()
    assert math.isclose(ps.digit_expectation(logp[rt.ids], rt).item(), exp_d.item(), rel_tol=1e-5)


def test_prompt_suffixes_are_the_questions(tiny_llava):
    backend = make_backend(tiny_llava, definitions=True)
    tok = backend.processor.tokenizer
    assert len(backend._suffixes) == NUM_CATEGORIES + 3
    first = tok.decode(backend._suffixes[0])
    assert first.startswith('Does the person in the red box feel Affection? Answer yes or no.')
    assert first.endswith('<|im_start|>assistant\n')
    assert 'Doubt/Confusion: ' in backend._head and '<image>' in backend._head


def test_unload_and_reload(tiny_llava):
    backend = make_backend(tiny_llava)
    first = backend.predict(IMAGE, BOXES[:1])[0].scores
    backend.unload()
    assert backend.model is None and not backend.loaded
    backend.load()
    np.testing.assert_allclose(backend.predict(IMAGE, BOXES[:1])[0].scores, first, atol=1e-6)


def test_bad_box_is_isolated(tiny_llava):
    backend = make_backend(tiny_llava)
    res = backend.predict(IMAGE, [BBox(10, 10, 60, 90), BBox(500, 500, 600, 600)])
    assert res[0].status == Status.OK
    assert res[1].status == Status.ERROR and 'outside' in res[1].reason


# -- LoRA adapter ------------------------------------------------------------------------------
def test_lora_adapter_changes_scores(tiny_llava, tmp_path):
    peft = pytest.importorskip('peft')
    from transformers import AutoModelForImageTextToText
    base = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj'],
                             init_lora_weights=False)  # random A and B: a non-zero update
    lora = peft.get_peft_model(base, config)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in lora.named_parameters() if 'lora_B' in n)
    lora.save_pretrained(tmp_path / 'adapter')
    plain = make_backend(tiny_llava).predict(IMAGE, BOXES[:2])
    tuned = make_backend(tiny_llava, adapter=str(tmp_path / 'adapter')).predict(IMAGE, BOXES[:2])
    diff = max(float(np.abs(a.scores - b.scores).max()) for a, b in zip(plain, tuned))
    assert diff > 1e-3
    # and the adapter path is validated
    with pytest.raises(ModelLoadError, match='adapter'):
        make_backend(tiny_llava, adapter=str(tmp_path / 'missing'))


# -- generate mode -----------------------------------------------------------------------------
def test_generate_mode_runs_and_parses(tiny_vlm):
    _, path = tiny_vlm
    backend = make_backend(path, mode='generate', max_new_tokens=8)
    assert backend.sets_labels
    results = backend.predict(IMAGE, BOXES[:2])
    for res in results:
        assert isinstance(res.text, str)
        assert math.isnan(res.vad[0])
        assert (res.reason == NO_LABEL_REASON) == (not res.labels)
        if res.labels:
            assert res.status == Status.OK
            assert set(np.unique(res.scores)) <= {0.0, 1.0}
            assert [c for c, s in zip(EMOTIC_CATEGORIES, res.scores) if s == 1.0] == res.labels
        else:  # an answer naming no category: SKIPPED with the reason, no scores
            assert res.status == Status.SKIPPED and np.isnan(res.scores).all()
    # batched generation (left padding) == one by one
    alone = [backend.predict(IMAGE, [b])[0].text for b in BOXES[:2]]
    assert [r.text for r in results] == alone


def test_generate_postprocess_on_crafted_answers():
    res = VLMBackend._generate_result('The person seems happy and a bit confused, not angry.')
    assert res.labels == ['Doubt/Confusion', 'Happiness'] and res.reason == ''
    assert res.scores[EMOTIC_CATEGORIES.index('Happiness')] == 1.0
    assert res.scores[EMOTIC_CATEGORIES.index('Anger')] == 0.0
    empty = VLMBackend._generate_result('I cannot tell.')
    assert empty.status == Status.SKIPPED and empty.labels == [] and empty.reason == NO_LABEL_REASON
    assert float(empty.scores.sum()) == 0.0


def test_generate_labels_survive_finish(tiny_llava, monkeypatch):
    """With sets_labels, predict keeps the parsed labels (no thresholding of the 0/1 scores)."""
    backend = make_backend(tiny_llava, mode='generate', max_new_tokens=2)
    monkeypatch.setattr(backend, '_generate', lambda items, **kw: ['Fear, Sadness'] * len(items))
    res = backend.predict(IMAGE, BOXES[:1])[0]
    assert res.labels == ['Fear', 'Sadness'] and res.text == 'Fear, Sadness'


# -- loading errors ----------------------------------------------------------------------------
def test_wrong_path_names_the_path(tmp_path):
    missing = tmp_path / 'no_such_model'
    with pytest.raises(ModelLoadError, match='no_such_model'):
        make_backend(missing)


def test_unknown_hub_id_offline():
    with pytest.raises(ModelLoadError, match='nobody-xyz/not-a-model'):
        make_backend('nobody-xyz/not-a-model')


def test_text_only_model_is_refused(tmp_path):
    path = build_tiny_text_llm(tmp_path / 'llm')
    with pytest.raises(ModelLoadError, match='not an image-text model'):
        make_backend(path)


def test_missing_chat_template_is_refused(tmp_path):
    path = build_tiny_llava(tmp_path / 'nochat', chat_template=False)
    for name in ('chat_template.jinja', 'chat_template.json'):
        assert not (path / name).exists()
    assert 'chat_template' not in json.loads((path / 'tokenizer_config.json').read_text())
    with pytest.raises(ModelLoadError, match='chat template'):
        make_backend(path)


def test_options_are_validated():
    with pytest.raises(ValueError, match='mode'):
        create_backend('vlm', {'mode': 'sample'})
    with pytest.raises(ValueError, match='marking'):
        create_backend('vlm', {'marking': 'blue_box'})
    with pytest.raises(ValueError, match='unknown option'):
        create_backend('vlm', {'temperature': 0.2})


# -- the bench runs to the end (no timing asserts) ----------------------------------------------
@pytest.mark.slow
def test_bench_vlm_smoke(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, str(repo / 'bench' / 'bench_vlm.py'), '--frames', '1', '--persons', '1,2',
         '--new-tokens', '4', '--hidden', '32', '--layers', '2', '--device', 'cpu',
         '--json', str(out)],
        cwd=repo, env=dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='2'),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for title in ('### 1. score vs generate', '### 2. shared-prefix score vs naive',
                  '### 3. persons of one frame'):
        assert title in proc.stdout
    report = json.loads(out.read_text())
    assert report['naive_max_abs_diff'] < 1e-4
    assert [b['persons'] for b in report['batching']] == [1, 2]
