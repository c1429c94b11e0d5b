"""The vlm backend on tiny random models of every advertised family, with each family's REAL
tokenizer and conversation format, saved in the hub checkpoint layout and loaded through the
same from_pretrained path users take. No network (HF_HUB_OFFLINE=1).

Families: LLaVA-1.5 (Llama-2 SentencePiece), LLaVA-NeXT (anyres, Mistral v0.1 SentencePiece),
Qwen2-VL and Qwen2.5-VL (Qwen2 BPE), Idefics3/SmolVLM (SmolLM2 BPE)."""
from __future__ import annotations

import json
import logging
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
from emotion_perception.core.backends import _vision_input as vi  # noqa: E402
from emotion_perception.core.backends.vlm import (NO_LABEL_REASON, VLMBackend,  # noqa: E402
                                                  answer_result, tokenize_fn)
from emotion_perception.core.categories import EMOTIC_CATEGORIES, NUM_CATEGORIES  # noqa: E402
from emotion_perception.core.types import BBox, Status  # noqa: E402
from emotion_perception.testing.tiny_models import (FAMILIES, build_tiny_text_llm,  # noqa: E402
                                                    build_tiny_vlm, make_test_image)

torch.set_num_threads(min(2, torch.get_num_threads()))

IMAGE = make_test_image(96, 128, seed=3)
BOXES = [BBox(10, 10, 60, 90), BBox(50, 5, 120, 80), BBox(0, 0, 30, 30), BBox(70, 40, 127, 95)]
#: the questions the per-sequence naive reference recomputes (one forward per answer sequence)
NAIVE_QUESTIONS = (0, 9, 25, 26, 27, 28)


@pytest.fixture(scope='module', params=FAMILIES)
def family_model(request, tiny_vlm_dir):
    """(family, folder) of a saved tiny random VLM with its real tokenizer."""
    return request.param, tiny_vlm_dir(request.param)


@pytest.fixture(scope='module')
def tiny_llava(tiny_vlm_dir):
    return tiny_vlm_dir('llava')


def make_backend(path, **options) -> VLMBackend:
    backend = create_backend('vlm', dict(model=str(path), device='cpu', **options))
    backend.load()
    return backend


# -- the families: checkpoint layout, tokenizer, template ---------------------------------------
#: (tensor-name prefix the hub checkpoints of the family use, rendered prompt format)
HUB_FORMAT = {
    'llava': (('language_model.model.', 'vision_tower.vision_model.', 'multi_modal_projector.'),
              'USER: <image>\nHello ASSISTANT:'),
    'llava_next': (('language_model.model.', 'vision_tower.vision_model.', 'image_newline'),
                   '[INST] <image>\nHello [/INST]'),
    'qwen2_vl': (('model.layers.', 'visual.blocks.', 'lm_head.'),
                 '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n'
                 '<|vision_start|><|image_pad|><|vision_end|>Hello<|im_end|>\n'
                 '<|im_start|>assistant\n'),
    'qwen2_5_vl': (('model.layers.', 'visual.blocks.', 'lm_head.'),
                   '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n'
                   '<|vision_start|><|image_pad|><|vision_end|>Hello<|im_end|>\n'
                   '<|im_start|>assistant\n'),
    'idefics3': (('model.text_model.', 'model.vision_model.', 'model.connector.'),
                 '<|im_start|>User:<image>Hello<end_of_utterance>\nAssistant:'),
}
#: real vocabulary size of each family's base tokenizer (before the added image tokens)
BASE_VOCAB = {'llava': 32000, 'llava_next': 32000, 'qwen2_vl': 151643, 'qwen2_5_vl': 151643,
              'idefics3': 49152}


def test_family_layout_tokenizer_and_template(family_model):
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor
    family, path = family_model
    with safe_open(str(path / 'model.safetensors'), 'pt') as f:
        keys = list(f.keys())
    prefixes, rendered = HUB_FORMAT[family]
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in keys), (family, prefix, keys[:5])
    model, info = AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'], info
    proc = AutoProcessor.from_pretrained(path)
    msgs = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'Hello'}]}]
    assert proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == rendered
    tok = proc.tokenizer
    assert tok.vocab_size >= BASE_VOCAB[family] or len(tok) >= BASE_VOCAB[family]
    digit = tok.convert_ids_to_tokens(tok.encode('5', add_special_tokens=False))
    # SentencePiece families write a lone digit with the dummy prefix: two tokens
    assert digit == (['▁', '5'] if family in ('llava', 'llava_next') else ['5'])
    assert json.loads((path / 'tiny_model.json').read_text())['tokenizer'] == 'real'


# -- score mode: the readout on real tokenizers -------------------------------------------------
def test_score_equals_naive_per_sequence_reference(family_model):
    """Tree scorer == one full forward pass per question AND answer token sequence (teacher
    forced), summed over spellings: an independent computation of the same probabilities."""
    family, path = family_model
    backend = make_backend(path)
    results = backend.predict(IMAGE, BOXES[:1])
    ref_scores, ref_vad = backend.naive_scores(IMAGE, BOXES[:1], questions=NAIVE_QUESTIONS)
    cats = [q for q in NAIVE_QUESTIONS if q < NUM_CATEGORIES]
    got = results[0].scores
    np.testing.assert_allclose(got[cats], ref_scores[0, cats], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(results[0].vad), ref_vad[0], atol=1e-4, rtol=0)
    assert got.std() > 1e-4, family  # random weights still give different scores


def test_score_equals_per_question_reencoding(family_model):
    """All 29 questions: tree scorer == the prompt re-encoded per question and answer prefix
    (for anyres families with a crop marking: tiles of a person crop)."""
    family, path = family_model
    marking = 'crop_context' if family in ('llava_next', 'idefics3') else 'red_box'
    backend = make_backend(path, marking=marking)
    batch = backend.preprocess(IMAGE, BOXES[:1])
    s = backend._score
    tree_lp, used, _ = ps.score_batches(backend.model, batch.batches, s.tree, s.suffixes,
                                        s.plans, 'cpu', torch.float32, use_tree=True)
    ref_lp, used_ref, _ = ps.score_batches(backend.model, batch.batches, s.tree, s.suffixes,
                                           s.plans, 'cpu', torch.float32, use_tree=False)
    assert used and not used_ref
    torch.testing.assert_close(tree_lp, ref_lp, atol=1e-4, rtol=0)
    for (sc, vad), (rs, rv) in zip(s.results(tree_lp), s.results(ref_lp)):
        np.testing.assert_allclose(sc, rs, atol=1e-4, rtol=0)
        np.testing.assert_allclose(vad, rv, atol=1e-4, rtol=0)


def test_prefill_score_prompt(family_model):
    """score_prompt='prefill': the questions continue the assistant turn ('Anger:'), so the
    template's assistant start is shared: a smaller tree, and still exactly the re-encoded
    prompts (all 29) and the per-sequence reference."""
    family, path = family_model
    question = make_backend(path)
    backend = make_backend(path, score_prompt='prefill')
    s = backend._score
    assert s.tree.size < 0.6 * question._score.tree.size
    tok = backend.processor.tokenizer
    assert tok.decode(list(s.suffixes[1])).strip() == 'Anger:'
    batch = backend.preprocess(IMAGE, BOXES[:1])
    tree_lp, used, _ = ps.score_batches(backend.model, batch.batches, s.tree, s.suffixes,
                                        s.plans, 'cpu', torch.float32, use_tree=True)
    ref_lp, _, _ = ps.score_batches(backend.model, batch.batches, s.tree, s.suffixes, s.plans,
                                    'cpu', torch.float32, use_tree=False)
    assert used
    torch.testing.assert_close(tree_lp, ref_lp, atol=1e-4, rtol=0)
    res = backend.predict(IMAGE, BOXES[:1])[0]
    ref_scores, ref_vad = backend.naive_scores(IMAGE, BOXES[:1], questions=(0, 26))
    np.testing.assert_allclose(res.scores[0], ref_scores[0, 0], atol=1e-4)
    np.testing.assert_allclose(res.vad[0], ref_vad[0, 0], atol=1e-4)
    assert all(1.0 <= v <= 10.0 for v in res.vad)


@pytest.mark.parametrize('marking', prompts.MARKINGS)
def test_batch_of_persons_equals_one_by_one(family_model, marking):
    """All persons in one processor + model call == each person alone. With crop markings the
    persons' images differ in size: anyres processors (LLaVA-NeXT tiles, Idefics3 splits) give
    different patch counts and Qwen2-VL different token counts, i.e. real padding."""
    family, path = family_model
    backend = make_backend(path, batch_size=4, marking=marking)
    together = backend.predict(IMAGE, BOXES[:3])
    assert all(r.status == Status.OK for r in together), [r.reason for r in together]
    alone = [backend.predict(IMAGE, [b])[0] for b in BOXES[:3]]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4, rtol=0)
        np.testing.assert_allclose(a.vad, b.vad, atol=1e-4, rtol=0)


def test_generate_mode_runs_and_batches(family_model):
    family, path = family_model
    backend = make_backend(path, mode='generate', max_new_tokens=6, batch_size=4)
    assert backend.sets_labels
    results = backend.predict(IMAGE, BOXES[:2])
    for res in results:
        assert isinstance(res.text, str) and res.text
        assert math.isnan(res.vad[0])
        assert (res.reason == NO_LABEL_REASON) == (not res.labels)
    # batched generation (left padding) == one by one
    assert [r.text for r in results] == [backend.predict(IMAGE, [b])[0].text for b in BOXES[:2]]


def test_answer_sequences_in_context_on_sentencepiece(tiny_llava):
    """LLaVA-1.5's tokenizer writes ' 5' after 'ASSISTANT:' as '▁', '5': the digit is a
    two-token answer scored by teacher forcing (the position after '▁' is read too)."""
    backend = make_backend(tiny_llava)
    tok = backend.processor.tokenizer
    digits = backend._score.plans[NUM_CATEGORIES]
    seqs5 = [tok.convert_ids_to_tokens(list(s)) for s in digits.sequences[5]]
    assert ['▁', '5'] in seqs5
    assert [tok.convert_ids_to_tokens(list(p)) for p in digits.positions] == [[], ['▁']]
    yes = [tok.convert_ids_to_tokens(list(s)) for s in backend._score.plans[0].sequences[0]]
    assert ['▁yes'] in yes and ['yes'] in yes
    # every plan entry really is what the tokenizer gives for prompt + answer
    tokenize = tokenize_fn(tok)
    prompt = backend._head + prompts.score_queries()[26] + ' ASSISTANT:'
    base = tokenize(prompt)
    assert tuple(tokenize(prompt + ' 5')[len(base):]) in digits.sequences[5]


def test_question_tokens_come_from_full_prompts(family_model):
    """head tokens + suffix tokens == the tokenization of the whole prompt, for every question
    (so no split exists that a real prompt does not have: 'Answer' after a newline on
    SentencePiece is not '▁Answer')."""
    family, path = family_model
    backend = make_backend(path)
    tok = backend.processor.tokenizer
    tokenize = tokenize_fn(tok)
    s = backend._score
    head_ids = tokenize(s.head)
    kept = head_ids[:len(head_ids) - s.head_drop]
    rendered = backend._render(prompts.score_prefix() + '\n' + '<<Q>>')
    tail = rendered.split('<<Q>>')[1]
    for q, suffix in zip(prompts.score_queries(), s.suffixes):
        assert kept + list(suffix) == tokenize(s.head + q + tail)
    # after the head's newline the question starts without a word-boundary marker, as in the
    # real prompt ('▁Answer' / 'ĠAnswer' would be a split no real prompt has)
    first = tok.convert_ids_to_tokens(list(s.suffixes[0][:1]))[0]
    assert 'Answer'.startswith(first), first
    # the question tree shares the common wording: far fewer nodes than suffix tokens
    assert s.tree.size < 0.7 * s.suffix_tokens


def test_prefix_is_read_once_kv_bytes(tiny_llava):
    """The cache after the tree call holds prefix + tree tokens per person, no copies."""
    backend = make_backend(tiny_llava, batch_size=2)
    batch = backend.preprocess(IMAGE, BOXES[:2])
    s, stats = backend._score, {}
    ps.tree_logprobs(backend.model, batch.batches[0], s.tree, s.tree.request_ids(s.plans), stats)
    cfg = backend.model.config.text_config
    per_token = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads
                 * (cfg.hidden_size // cfg.num_attention_heads) * 4)
    assert stats['kv_bytes'] == 2 * (stats['prefix_len'] + stats['tree_nodes']) * per_token
    assert stats['tree_nodes'] <= s.suffix_tokens


def test_vad_nan_when_the_vocabulary_has_no_digits(tmp_path, caplog):
    """A vocabulary that cannot write 0-9: the load succeeds, VAD is NaN with the reason logged
    once, the 26 categories are still scored."""
    path = build_tiny_vlm('llava', tmp_path / 'nodigits', tokenizer='nodigits')
    with caplog.at_level(logging.WARNING):
        backend = make_backend(path)
        results = backend.predict(IMAGE, BOXES[:2])
        backend.predict(IMAGE, BOXES[:1])
    warnings = [r for r in caplog.records if 'digit' in r.getMessage()]
    assert len(warnings) == 1 and 'VAD' in warnings[0].getMessage()
    assert 'NaN' in backend.diagnostics()['vad']
    for res in results:
        assert res.status == Status.OK
        assert all(math.isnan(v) for v in res.vad)
        assert np.isfinite(res.scores).all() and res.scores.std() > 0


def test_sliding_window_model_falls_back_with_a_flag(tmp_path, caplog, tiny_vlm_dir):
    """A window shorter than prefix + question: the tree would not be exact, so the backend
    re-encodes per question, says so once, and flags it in diagnostics."""
    tiny_vlm_dir('llava_next')  # skips when the tokenizer is missing
    path = build_tiny_vlm('llava_next', tmp_path / 'swa', sliding_window=64)
    with caplog.at_level(logging.WARNING):
        backend = make_backend(path)
        res = backend.predict(IMAGE, BOXES[:1])
        backend.predict(IMAGE, BOXES[:1])
    assert res[0].status == Status.OK
    diag = backend.diagnostics()
    assert diag['prefix_sharing'] is False and 'sliding' in diag['prefix_sharing_reason']
    assert len([r for r in caplog.records if 'cannot share' in r.getMessage()]) == 1
    ref, ref_vad = backend.naive_scores(IMAGE, BOXES[:1], questions=(0, 26))
    np.testing.assert_allclose(res[0].scores[0], ref[0, 0], atol=1e-4)
    np.testing.assert_allclose(res[0].vad[0], ref_vad[0, 0], atol=1e-4)


# -- preprocessing once per frame ---------------------------------------------------------------
def test_frame_at_working_size_gives_todays_pixels_and_scores(tiny_vlm_dir):
    """When the frame is already at the processor's working size, the once-per-frame path draws
    exactly today's per-person marked images, so the scores are identical."""
    path = tiny_vlm_dir('qwen2_vl')
    backend = make_backend(path)
    ip = backend.processor.image_processor
    frame = make_test_image(84, 112, seed=5)  # multiples of 28 within max_pixels
    assert vi.plan_frame(ip, 84, 112).size == (84, 112)
    boxes = [BBox(10, 10, 60, 80), BBox(60, 5, 110, 70)]
    new = backend.marked_images(frame, boxes)
    old = [prompts.mark_image(frame, b) for b in boxes]
    for a, b in zip(new, old):
        np.testing.assert_array_equal(a, b)
    from emotion_perception.core.backends.vlm import encode_batch
    old_batch = backend._score.trim(encode_batch(backend.processor, [backend._head] * 2, old))
    s = backend._score
    old_lp, _, _ = ps.score_batches(backend.model, [old_batch], s.tree, s.suffixes, s.plans,
                                    'cpu', torch.float32)
    got = backend.predict(frame, boxes)
    for res, (scores, vad) in zip(got, s.results(old_lp)):
        np.testing.assert_array_equal(res.scores, np.clip(scores, 0, 1))
        np.testing.assert_array_equal(np.array(res.vad), np.array(vad))


def test_large_frame_is_resized_once_per_frame(tiny_vlm_dir, monkeypatch):
    path = tiny_vlm_dir('qwen2_vl')
    backend = make_backend(path)
    calls = []
    real = vi.working_frame
    monkeypatch.setattr(vi, 'working_frame', lambda *a, **k: calls.append(1) or real(*a, **k))
    frame = make_test_image(960, 1280, seed=1)
    boxes = [BBox(100, 100, 400, 900), BBox(500, 50, 900, 700), BBox(950, 200, 1270, 950)]
    images = backend.marked_images(frame, boxes)
    assert len(calls) == 1
    plan = vi.plan_frame(backend.processor.image_processor, 960, 1280)
    assert all(im.shape[:2] == plan.size for im in images)
    # each box is drawn in working coordinates: red pixels on its left edge
    for im, b in zip(images, boxes):
        wb = plan.box(b)
        column = im[int(wb.y1) + 2:int(wb.y2) - 2, int(wb.x1)]
        assert (column == [255, 0, 0]).all()


def test_letterbox_keeps_edge_persons_visible_with_center_crop(tiny_llava):
    """LLaVA-1.5's processor centre-crops to a square: a person at the edge of a wide frame
    would lose the red box. The frame is letterboxed first, so the box survives the crop."""
    backend = make_backend(tiny_llava)
    ip = backend.processor.image_processor
    frame = np.full((90, 320, 3), 40, dtype=np.uint8)
    box = BBox(290, 10, 318, 80)  # at the right edge
    plan = vi.plan_frame(ip, 90, 320)
    assert plan.letterbox and plan.size == (56, 56)
    marked = backend.marked_images(frame, [box])[0]
    pixels = ip(marked, return_tensors='pt')['pixel_values'][0].numpy()
    mean = np.asarray(ip.image_mean)[:, None, None]
    std = np.asarray(ip.image_std)[:, None, None]
    rgb = (pixels * std + mean) * 255
    redness = rgb[0] - rgb[1]
    assert redness.max() > 150  # the red box is in what the model sees
    today = ip(prompts.mark_image(frame, box), return_tensors='pt')['pixel_values'][0].numpy()
    today_rgb = (today * std + mean) * 255
    assert (today_rgb[0] - today_rgb[1]).max() < 60  # centre crop cut the box away


# -- results, lifecycle, errors -----------------------------------------------------------------
def test_scores_and_vad_ranges(tiny_llava):
    backend = make_backend(tiny_llava)
    for res in backend.predict(IMAGE, BOXES):
        assert res.status == Status.OK
        assert res.scores.shape == (NUM_CATEGORIES,) and res.scores.dtype == np.float32
        assert np.all((res.scores >= 0) & (res.scores <= 1))
        assert all(1.0 <= v <= 10.0 for v in res.vad)
        assert res.backend == 'vlm' and res.model == str(tiny_llava)
        expected = {c for c, s in zip(EMOTIC_CATEGORIES, res.scores) if s >= 0.5}
        assert set(res.labels) == expected


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
    assert diff > 1e-4
    with pytest.raises(ModelLoadError, match='adapter'):
        make_backend(tiny_llava, adapter=str(tmp_path / 'missing'))


def test_generate_postprocess_on_crafted_answers():
    res = answer_result('The person seems happy and a bit confused, not angry.')
    assert res.labels == ['Doubt/Confusion', 'Happiness'] and res.reason == ''
    assert res.scores[EMOTIC_CATEGORIES.index('Happiness')] == 1.0
    assert res.scores[EMOTIC_CATEGORIES.index('Anger')] == 0.0
    empty = answer_result('I cannot tell.')
    assert empty.status == Status.SKIPPED and empty.labels == [] and empty.reason == NO_LABEL_REASON
    assert float(empty.scores.sum()) == 0.0
    paper = answer_result('not happy', parser='paper')  # no adjective forms in the paper's
    assert paper.status == Status.SKIPPED
    assert answer_result('Happiness', parser='paper').labels == ['Happiness']


def test_generate_labels_survive_finish(tiny_llava, monkeypatch):
    """With sets_labels, predict keeps the parsed labels (no thresholding of the 0/1 scores)."""
    backend = make_backend(tiny_llava, mode='generate', max_new_tokens=2)
    monkeypatch.setattr(backend, '_generate',
                        lambda batches, **kw: ['Fear, Sadness'] * sum(
                            int(b['input_ids'].shape[0]) for b in batches))
    res = backend.predict(IMAGE, BOXES[:1])[0]
    assert res.labels == ['Fear', 'Sadness'] and res.text == 'Fear, Sadness'


def test_wrong_path_names_the_path(tmp_path):
    missing = tmp_path / 'no_such_model'
    with pytest.raises(ModelLoadError, match='no_such_model'):
        make_backend(missing)


def test_unknown_hub_id_offline():
    with pytest.raises(ModelLoadError, match='nobody-xyz/not-a-model'):
        make_backend('nobody-xyz/not-a-model')


def test_text_only_model_is_refused(tmp_path):
    path = build_tiny_text_llm(tmp_path / 'llm', tokenizer='toy')
    with pytest.raises(ModelLoadError, match='not an image-text model'):
        make_backend(path)


def test_missing_chat_template_is_refused(tmp_path):
    path = build_tiny_vlm('llava', tmp_path / 'nochat', tokenizer='toy', chat_template='')
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
    with pytest.raises(ValueError, match='parser'):
        create_backend('vlm', {'parser': 'regex'})
    with pytest.raises(ValueError, match='score_prompt'):
        create_backend('vlm', {'score_prompt': 'chat'})
    with pytest.raises(ValueError, match='unknown option'):
        create_backend('vlm', {'temperature': 0.2})
