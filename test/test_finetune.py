"""LoRA fine-tuning (``emotion-perception finetune``) on a tiny random LLaVA and the EMOTIC fixture.

Covers: the training example is the inference prompt plus the label list (loss only on the answer
tokens + EOS), batching, augmentation geometry, the LoRA targets (language model only), and a
short training run: the loss goes down, the adapter reloads in the ``vlm`` backend and changes its
scores, and the CLI evaluates the adapter at the end. No network (HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import json
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('peft')

from emotion_perception.core import finetune_data as fd  # noqa: E402
from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.emotic import load_emotic  # noqa: E402
from emotion_perception.core.types import BBox, Status  # noqa: E402
from emotion_perception.testing.emotic_fixture import write_emotic_fixture  # noqa: E402
from emotion_perception.testing.tiny_models import build_tiny_llava, make_test_image  # noqa: E402
from emotion_perception.tools import finetune as ft  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
# peft (loading an adapter in vlm.apply_adapter) reads a property transformers 5 deprecates
pytestmark = pytest.mark.filterwarnings('ignore:.*is_gradient_checkpointing:FutureWarning')

IMAGE = make_test_image(96, 128, seed=5)
BOX = BBox(20, 10, 90, 85)


@pytest.fixture(scope='module')
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp('ft_llava') / 'model')


@pytest.fixture(scope='module')
def emotic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('ft_emotic')
    write_emotic_fixture(root, {'train': 3, 'val': 4, 'test': 1}, seed=2)
    return root


@pytest.fixture(scope='module')
def processor(tiny_llava):
    from transformers import AutoProcessor
    return AutoProcessor.from_pretrained(tiny_llava)


def vlm(path, **options):
    backend = create_backend('vlm', dict(model=str(path), device='cpu', **options))
    backend.load()
    return backend


# -- the training example ----------------------------------------------------------------------
def test_only_answer_tokens_and_eos_carry_loss(processor):
    ex = fd.encode_example(processor, IMAGE, BOX, ['Happiness', 'Engagement'])
    ids, labels, n = ex['input_ids'][0], ex['labels'][0], ex['n_prompt']
    assert ids.shape == labels.shape == ex['attention_mask'][0].shape
    keep = labels != fd.IGNORE_INDEX
    # exactly the tokens after the prompt (which holds the image tokens) carry a label ...
    assert not keep[:n].any() and keep[n:].all() and n < len(ids)
    image_id = processor.tokenizer.convert_tokens_to_ids('<image>')
    assert int((ids[:n] == image_id).sum()) == 16 and not (ids[n:] == image_id).any()
    # ... they are the input tokens themselves (the loss shifts), end on EOS, and decode to the
    # labels in EMOTIC order, comma-separated (the paper's answer)
    assert torch.equal(labels[keep], ids[keep])
    assert int(labels[-1]) == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(labels[keep], skip_special_tokens=True) == \
        'Engagement, Happiness'


#: LLaVA-1.5 (llava-hf) style: no end-of-turn token after the answer, 'ASSISTANT:' prompt
LLAVA15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
#: a template that writes the assistant prompt after every last message (Vicuna-1.1 style)
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: <image>\n"
    "{{ message['content'][1]['text'] }}\n{% else %}ASSISTANT: "
    "{{ message['content'][0]['text'] }}<|im_end|>\n{% endif %}"
    "{% if loop.last %}ASSISTANT:{% endif %}{% endfor %}")


@pytest.mark.parametrize('template', ['chatml', 'llava15', 'vicuna'])
def test_answer_ends_on_one_stop_token_for_any_template(processor, template):
    import copy
    proc = copy.deepcopy(processor)
    if template != 'chatml':
        proc.chat_template = LLAVA15_TEMPLATE if template == 'llava15' else VICUNA_TEMPLATE
    ex = fd.encode_example(proc, IMAGE, BOX, ['Sadness', 'Fatigue'])
    answer = ex['labels'][0][ex['n_prompt']:]
    eos = proc.tokenizer.eos_token_id
    assert int(answer[-1]) == eos and int((answer == eos).sum()) == 1
    assert proc.tokenizer.decode(answer, skip_special_tokens=True).strip() == 'Fatigue, Sadness'
    prompt_text = proc.tokenizer.decode(ex['input_ids'][0][:ex['n_prompt']])
    assert prompt_text.rstrip().endswith(('ASSISTANT:', 'assistant'))


@pytest.mark.parametrize('definitions', [False, True])
def test_training_prompt_is_the_inference_prompt(tiny_llava, processor, definitions):
    backend = vlm(tiny_llava, mode='generate', definitions=definitions)
    item = backend.preprocess(IMAGE, [BOX]).batches[0]
    ex = fd.encode_example(processor, IMAGE, BOX, ['Peace'], fd.PromptSpec('red_box', definitions))
    n = ex['n_prompt']
    assert torch.equal(ex['input_ids'][:, :n], item['input_ids'])
    assert torch.equal(ex['pixel_values'], item['pixel_values'])  # same red box, same image


def test_answer_text_and_bad_labels():
    assert fd.answer_text(['Peace', 'Anger', 'Peace']) == 'Anger, Peace'
    with pytest.raises(fd.FinetuneDataError):
        fd.answer_text([])
    with pytest.raises(fd.FinetuneDataError):
        fd.answer_text(['Joy'])


def test_collate_right_pads_with_ignore(processor):
    a = fd.encode_example(processor, IMAGE, BOX, ['Peace'])
    b = fd.encode_example(processor, IMAGE, BOX, ['Affection', 'Doubt/Confusion', 'Yearning'])
    batch = fd.collate_right([a, b], pad_id=processor.tokenizer.pad_token_id)
    la, lb = a['input_ids'].shape[1], b['input_ids'].shape[1]
    assert lb > la and batch['input_ids'].shape == batch['labels'].shape == (2, lb)
    assert batch['pixel_values'].shape[0] == 2 and 'n_prompt' not in batch
    assert (batch['labels'][0, la:] == fd.IGNORE_INDEX).all()
    assert (batch['attention_mask'][0, la:] == 0).all() and batch['attention_mask'][1].all()
    assert (batch['input_ids'][0, la:] == processor.tokenizer.pad_token_id).all()
    assert torch.equal(batch['labels'][1], b['labels'][0])


def test_answer_loss_ignores_masked_positions():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=gen)
    labels = torch.full((2, 6), -100)
    labels[0, 4:], labels[1, 2] = torch.tensor([3, 7]), 5
    manual = -torch.stack([torch.log_softmax(logits[0, 3], -1)[3],
                           torch.log_softmax(logits[0, 4], -1)[7],
                           torch.log_softmax(logits[1, 1], -1)[5]]).mean()
    assert float(ft.answer_loss(logits, labels)) == pytest.approx(float(manual), rel=1e-5)


def test_augment_flips_image_and_box_together():
    rng = np.random.default_rng(0)
    image = np.zeros((40, 60, 3), np.uint8)
    image[5:15, 10:20] = 200  # a bright patch inside the box
    box = BBox(8, 4, 22, 16)
    out, b = fd.augment(image, box, rng, fd.Augmentation(flip_p=1.0, color_jitter=0.0,
                                                         box_jitter=0.0))
    assert b == BBox(38, 4, 52, 16) and fd.flip_box(b, 60) == box
    np.testing.assert_array_equal(out, image[:, ::-1])
    assert out[5:15, 40:50].min() == 200
    for _ in range(20):  # jittered boxes stay inside with positive area; colours stay uint8
        img2, b2 = fd.augment(image, box, rng)
        assert img2.dtype == np.uint8 and img2.shape == image.shape
        assert 0 <= b2.x1 < b2.x2 <= 60 and 0 <= b2.y1 < b2.y2 <= 40
        assert abs(b2.width - box.width) <= 0.1 * box.width + 1e-9


def test_lora_targets_are_the_language_model_only(tiny_llava):
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    names = fd.language_model_targets(model)
    assert len(names) == 2 * 4  # 2 decoder layers x q, k, v, o
    assert all('language_model' in n and 'vision' not in n for n in names)
    with pytest.raises(fd.FinetuneDataError, match='gate_proj'):
        fd.language_model_targets(model, ['qkv'])


# -- training ----------------------------------------------------------------------------------
def test_loss_goes_down_and_adapter_changes_vlm_scores(tiny_llava, emotic_root, tmp_path):
    out = tmp_path / 'adapter'
    config = ft.FinetuneConfig(data=str(emotic_root), split='val', model=str(tiny_llava),
                               output=str(out), samples=2, batch_size=2, epochs=8, lr=1e-2,
                               warmup_ratio=0.0, device='cpu', seed=0, eval_split='none',
                               progress=False)
    result = ft.train(config)
    assert result.steps == 8 and len(result.losses) == 8  # one repeated batch per step
    first, last = np.mean(result.losses[:2]), np.mean(result.losses[-2:])
    assert last < 0.8 * first, result.losses
    assert (out / 'adapter_model.safetensors').is_file() and (out / 'adapter_config.json').is_file()
    log = [json.loads(line) for line in (out / ft.TRAIN_LOG).read_text().splitlines()]
    assert [r['step'] for r in log] == list(range(1, 9))
    assert log[0]['loss'] == pytest.approx(result.losses[0], abs=1e-5)
    saved = json.loads((out / ft.CONFIG_FILE).read_text())
    assert saved['base_model'] == str(tiny_llava) and saved['n_train_persons'] == 2
    assert saved['options']['lr'] == 1e-2 and len(saved['labels']) == 26
    assert all('language_model' in n for n in saved['lora_target_modules'])
    # the saved sample is the seeded one
    assert [tuple(k) for k in saved['train_persons']] == \
        [p.key for p in ft.training_persons(config)]

    base = vlm(tiny_llava).predict(IMAGE, [BOX])[0]
    tuned = vlm(tiny_llava, adapter=str(out)).predict(IMAGE, [BOX])[0]
    assert tuned.status == Status.OK
    assert float(np.abs(base.scores - tuned.scores).max()) > 1e-3


def test_cli_trains_saves_and_evaluates(tiny_llava, emotic_root, tmp_path, capsys):
    from emotion_perception.tools import cli
    assert len(load_emotic(emotic_root, 'val')) >= 3 + 2  # 3 to train on, 2 others to evaluate
    out = tmp_path / 'adapter'
    rc = cli.main(['finetune', '--data', str(emotic_root), '--split', 'val', '--format', 'csv',
                   '--model', str(tiny_llava), '--output', str(out), '--samples', '3',
                   '--batch-size', '2', '--max-steps', '2', '--augment', '--device', 'cpu',
                   '--lora-targets', 'q_proj,v_proj', '--eval-limit', '2',
                   '--eval-max-new-tokens', '3', '--eval-bootstrap', '0'])
    assert rc == 0
    assert 'eval val with the adapter' in capsys.readouterr().out
    saved = json.loads((out / ft.CONFIG_FILE).read_text())
    assert saved['steps'] == 2 and saved['options']['augment'] is True
    assert saved['evaluation']['n'] == 2 and saved['evaluation']['mode'] == 'generate'
    assert all(n.endswith(('q_proj', 'v_proj')) for n in saved['lora_target_modules'])
    metrics = json.loads((out / 'eval_val' / 'metrics.json').read_text())
    assert metrics['config']['adapter'] == str(out)
    # the evaluation leaves the training persons out
    train_keys = {tuple(k) for k in saved['train_persons']}
    lines = (out / 'eval_val' / 'predictions.jsonl').read_text().splitlines()
    preds = [json.loads(x) for x in lines]
    assert len(preds) == 2 and not train_keys & {(r['image'], r['person']) for r in preds}
