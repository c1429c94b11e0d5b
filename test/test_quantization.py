"""Quantized loading (``backend.quantization``, issue 17) on tiny random models of every family
with their REAL tokenizers, on the CPU: bitsandbytes (nf4, LLM.int8) and torchao (int8 / int4
weight-only) really quantize the layers, score mode's question tree (4-D mask, shared KV cache)
and generate mode run on the quantized model, a batch equals the persons one by one, and the
scores equal the naive per-sequence reference of the SAME quantized model. Options the
installed libraries or the device cannot do fail at load with the reason and the package."""
from __future__ import annotations

import os
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from emotion_perception.core.backends import create_backend  # noqa: E402
from emotion_perception.core.backends import quantization as q  # noqa: E402
from emotion_perception.core.backends.vlm import (VLMBackend, VLMOptions,  # noqa: E402
                                                  load_image_text_model)
from emotion_perception.core.types import BBox, Status  # noqa: E402
from emotion_perception.testing.tiny_models import FAMILIES, make_test_image  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

IMAGE = make_test_image(96, 128, seed=3)
BOXES = [BBox(10, 10, 60, 90), BBox(50, 5, 120, 80), BBox(0, 0, 30, 30)]
#: questions the per-sequence reference recomputes (two categories, valence)
NAIVE_QUESTIONS = (0, 25, 26)
#: widths that are multiples of 64: bitsandbytes' CPU nf4 kernels need them (real models have)
SHAPE = dict(hidden=64, vision_hidden=64)
#: (quantization, library) of the batch-stable options; each family runs one in the fast set
OPTIONS = (('int8', 'torchao'), ('nf4', 'bitsandbytes'), ('int4', 'torchao'))
FAST = {('llava', 'nf4'), ('llava_next', 'int4'), ('qwen2_vl', 'int8'), ('qwen2_5_vl', 'nf4'),
        ('idefics3', 'int4')}


def needs(library: str) -> None:
    if not q._installed(library):
        pytest.skip(f'{library} is not installed (make venv installs requirements/quant.txt)')


def load(path, quantization='none', library='auto', **options) -> VLMBackend:
    backend = create_backend('vlm', dict(model=str(path), device='cpu', batch_size=4,
                                         quantization=quantization,
                                         quantization_library=library, **options))
    backend.load()
    return backend


def kept_in_model_dtype(model) -> list[str]:
    """Names of the linear layers that must stay float: the LM head and the projectors
    (written out here, independently of ``SKIP_MODULES``)."""
    import re
    keep = re.compile(r'(^lm_head$|multi_modal_projector|visual\.merger|connector)')
    return [n for n, m in model.named_modules() if getattr(m, 'weight', None) is not None and (
        isinstance(m, torch.nn.Linear) or type(m).__module__.startswith('bitsandbytes'))
        and keep.search(n)]


def matrix():
    for family in FAMILIES:
        for quant, library in OPTIONS:
            marks = () if (family, quant) in FAST else (pytest.mark.slow,)
            yield pytest.param(family, quant, library, id=f'{family}-{quant}', marks=marks)


@pytest.mark.parametrize('family,quant,library', matrix())
def test_quantized_score_and_generate(tiny_vlm_dir, family, quant, library):
    """The tree scorer on a quantized model: batch == one by one, == the naive per-sequence
    reference of the same quantized model (1e-3); generate runs and batches the same way."""
    needs(library)
    path = tiny_vlm_dir(family, **SHAPE)
    backend = load(path, quant, library)
    n_quantized, n_linear = q.quantized_linear_count(backend.model)
    kept = kept_in_model_dtype(backend.model)
    assert n_quantized == n_linear - len(kept) > 0, (n_quantized, n_linear, kept)
    head = backend.model.get_output_embeddings()  # the LM head: its logits are the scores
    assert type(head.weight) is torch.nn.Parameter and head.weight.is_floating_point()
    assert not q.is_quantized_weight(head.weight) and 'lm_head' in kept
    assert backend.diagnostics()['quantization'].startswith(f'{quant} ({library})')
    together = backend.predict(IMAGE, BOXES)
    assert all(r.status == Status.OK for r in together), [r.reason for r in together]
    assert backend.prefix_sharing  # the question tree ran, not the per-question fallback
    alone = [backend.predict(IMAGE, [b])[0] for b in BOXES]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3, rtol=0)
        np.testing.assert_allclose(a.vad, b.vad, atol=1e-3, rtol=0)
    ref_scores, ref_vad = backend.naive_scores(IMAGE, BOXES[:1], questions=NAIVE_QUESTIONS)
    cats = [i for i in NAIVE_QUESTIONS if i < 26]
    np.testing.assert_allclose(together[0].scores[cats], ref_scores[0, cats], atol=1e-3, rtol=0)
    np.testing.assert_allclose(together[0].vad[0], ref_vad[0, 0], atol=1e-3, rtol=0)
    assert together[0].scores.std() > 1e-4

    gen = load(path, quant, library, mode='generate', max_new_tokens=5)
    answers = gen.predict(IMAGE, BOXES[:2])
    assert all(isinstance(r.text, str) and r.text for r in answers)
    assert [r.text for r in answers] == [gen.predict(IMAGE, [b])[0].text for b in BOXES[:2]]


def test_what_stays_in_the_model_dtype_and_what_shrinks(tiny_vlm_dir):
    """LM head and projector stay float layers; the LM and vision tower linears are quantized;
    the weights take fewer bytes (bytes counted from the tensors, quantization state too)."""
    needs('bitsandbytes')
    path = tiny_vlm_dir('llava', **SHAPE)
    plain = load(path)
    quant = load(path, 'nf4')
    m = quant.model
    assert type(m.lm_head) is torch.nn.Linear and m.lm_head.weight.dtype == torch.float32
    proj = m.model.multi_modal_projector
    assert all(type(x) is torch.nn.Linear for x in (proj.linear_1, proj.linear_2))
    layer = m.model.language_model.layers[0].self_attn.q_proj
    vision = m.model.vision_tower.encoder.layers[0].mlp.fc1
    assert q.is_quantized_weight(layer.weight) and q.is_quantized_weight(vision.weight)
    # the quantized layers shrink from 4 bytes (float32) to about half a byte per weight
    before = sum(q.tensor_bytes(p) for n, p in plain.model.named_parameters()
                 if '.layers.' in n and n.endswith('proj.weight'))
    after = sum(q.tensor_bytes(p) for n, p in m.named_parameters()
                if '.layers.' in n and n.endswith('proj.weight'))
    assert 0.1 < after / before < 0.2, after / before
    assert q.weight_bytes(m) < q.weight_bytes(plain.model)


def test_bitsandbytes_int8_runs_score_and_generate(tiny_vlm_dir):
    """LLM.int8 (library=bitsandbytes) loads and answers; its outlier columns are chosen per
    call, so it is not held to the batch == alone bound (module doc of ``quantization``)."""
    needs('bitsandbytes')
    backend = load(tiny_vlm_dir('llava', **SHAPE), 'int8', 'bitsandbytes')
    assert backend.diagnostics()['quantization'].startswith('int8 (bitsandbytes)')
    res = backend.predict(IMAGE, BOXES[:2])
    assert all(r.status == Status.OK and np.isfinite(r.scores).all() for r in res)


@pytest.mark.parametrize('library,quant', [('bitsandbytes', 'nf4'), ('torchao', 'int4'),
                                           ('torchao', 'int8')])
def test_missing_library_fails_load_with_the_package(tiny_vlm_dir, monkeypatch, library,
                                                     quant):
    """The library uninstalled (its import made impossible): load fails before any weight is
    read, naming the package and version; nothing runs unquantized."""
    path = tiny_vlm_dir('llava', **SHAPE)
    monkeypatch.setitem(sys.modules, library, None)  # `import library` raises, find_spec None
    backend = create_backend('vlm', dict(model=str(path), device='cpu', quantization=quant))
    with pytest.raises(q.QuantizationError, match=f'pip install {q.PACKAGES[library]}'):
        backend.load()
    assert not backend.loaded and backend.model is None


def test_impossible_combinations_fail_with_the_reason(tiny_vlm_dir):
    with pytest.raises(q.QuantizationError, match='bitsandbytes format'):
        q.choose_library('nf4', 'torchao', 'cpu')
    with pytest.raises(q.QuantizationError, match='use quantization=nf4'):
        q.choose_library('int4', 'bitsandbytes', 'cpu')
    with pytest.raises(q.QuantizationError, match='cpu or cuda'):
        q.check_available('torchao', 'int8', 'xpu', torch.float32)
    with pytest.raises(q.QuantizationError, match='needs dtype bfloat16'):
        q.check_available('torchao', 'int4', 'cuda', torch.float16)
    # nf4 on the CPU with widths bitsandbytes' CPU kernels cannot take (hidden 32)
    small = tiny_vlm_dir('llava')
    with pytest.raises(q.QuantizationError, match='multiples of 64'):
        load_image_text_model(str(small), 'cpu', quantization='nf4')
    with pytest.raises(ValueError, match='quantization must be one of'):
        VLMOptions(quantization='int3')
    with pytest.raises(ValueError, match='quantization_library must be one of'):
        VLMOptions(quantization_library='gptq')
    assert q.choose_library('int8', 'auto', 'cuda') == 'torchao'
    assert q.choose_library('nf4', 'auto', 'cuda') == 'bitsandbytes'
    assert q.choose_library('none', 'auto', 'cuda') == ''


def test_an_unquantized_model_is_refused_for_a_quantized_option(tiny_vlm_dir):
    """A model that came back with no quantized layer (here: attached unquantized) is refused,
    never run as if it were quantized."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    path = tiny_vlm_dir('llava', **SHAPE)
    model = AutoModelForImageTextToText.from_pretrained(path)
    backend = VLMBackend(dict(model=str(path), device='cpu', quantization='nf4'))
    with pytest.raises(q.QuantizationError, match='that should be quantized are not'):
        backend.attach(model, AutoProcessor.from_pretrained(path))
    assert not backend.loaded and backend.model is None


@pytest.mark.parametrize('which', ['one layer', 'the LM head too'])
def test_a_partly_quantized_model_is_refused(tiny_vlm_dir, which):
    """One linear layer quantized (torchao int8) is no int8 model; nor is one whose LM head
    was quantized with the rest (its logits are the scores): both refused, naming the layers."""
    needs('torchao')
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    from transformers import AutoModelForImageTextToText, AutoProcessor
    path = tiny_vlm_dir('llava', **SHAPE)
    model = AutoModelForImageTextToText.from_pretrained(path)
    one = 'model.language_model.layers.0.self_attn.q_proj'
    quantize_(model, Int8WeightOnlyConfig(),
              filter_fn=(lambda m, fqn: fqn == one) if which == 'one layer' else
              (lambda m, fqn: isinstance(m, torch.nn.Linear)))
    assert q.quantized_linear_count(model)[0] >= 1
    backend = VLMBackend(dict(model=str(path), device='cpu', quantization='int8'))
    expected = 'that should be quantized are not' if which == 'one layer' else (
        r'must stay in the model dtype are quantized \(.*lm_head')
    with pytest.raises(q.QuantizationError, match=expected):
        backend.attach(model, AutoProcessor.from_pretrained(path))
    assert not backend.loaded


@pytest.mark.slow
def test_qlora_trains_lora_on_an_nf4_base_and_serves_it(tiny_vlm_dir, tmp_path):
    """finetune --quantization nf4 (QLoRA): the base is 4-bit and frozen, the loss goes down,
    and the adapter changes the scores of the nf4 vlm backend that loads it."""
    needs('bitsandbytes')
    from emotion_perception.testing.emotic_fixture import write_emotic_fixture
    from emotion_perception.tools import finetune as ft
    path = tiny_vlm_dir('llava', **SHAPE)
    root = tmp_path / 'emotic'
    write_emotic_fixture(root, {'train': 1, 'val': 3, 'test': 1}, seed=2)
    out = tmp_path / 'adapter'
    config = ft.FinetuneConfig(data=str(root), split='val', model=str(path), output=str(out),
                               samples=2, batch_size=2, epochs=6, lr=1e-2, warmup_ratio=0.0,
                               device='cpu', seed=0, eval_split='none', progress=False,
                               quantization='nf4')
    result = ft.train(config)
    assert np.mean(result.losses[-2:]) < 0.9 * np.mean(result.losses[:2]), result.losses
    assert (out / 'adapter_model.safetensors').is_file()
    base = load(path, 'nf4').predict(IMAGE, BOXES[:1])[0]
    tuned = load(path, 'nf4', adapter=str(out))
    assert q.quantized_linear_count(tuned.model)[0] > 0  # still 4-bit after the merge
    res = tuned.predict(IMAGE, BOXES[:1])[0]
    assert res.status == Status.OK
    assert float(np.abs(base.scores - res.scores).max()) > 1e-3
    with pytest.raises(ValueError, match='--quantization must be one of'):
        ft.FinetuneConfig(data='d', model='m', output='o', quantization='int4')


# -- the switch: node parameter (read-only), YAML default, CLI flags ---------------------------
def test_node_parameter_yaml_default_and_cli_flags():
    import argparse
    from pathlib import Path

    import yaml

    from emotion_perception.nodes.emotion_node import BACKEND_PARAMS
    from emotion_perception.tools import evaluate, process
    from emotion_perception.tools.config import load_pipeline_config
    specs = {s.name: s for s in BACKEND_PARAMS}
    source_yaml = Path(__file__).resolve().parents[1] / 'config' / 'emotion_node.yaml'
    backend_yaml = yaml.safe_load(source_yaml.read_text())['/**/emotion_node'][
        'ros__parameters']['backend']
    for name, default in (('quantization', 'none'), ('quantization_library', 'auto')):
        spec = specs[f'backend.{name}']
        assert spec.read_only and spec.description and spec.default == default
        assert backend_yaml[name] == default

    def parse(command, argv):
        parser = argparse.ArgumentParser()
        command.register(parser.add_subparsers())
        return parser.parse_args(argv)
    args = parse(process, ['process', 'in.jpg', '-o', 'out', '--backend', 'vlm',
                           '--quantization', 'nf4', '--quantization-library', 'bitsandbytes'])
    cfg = load_pipeline_config(None, process.backend_overrides(args))
    assert cfg.backend_options['quantization'] == 'nf4'
    assert cfg.backend_options['quantization_library'] == 'bitsandbytes'
    args = parse(evaluate, ['evaluate', '--data', 'd', '--output', 'o', '--backend', 'vlm',
                            '--quantization', 'int4'])
    from emotion_perception.core.backends import backend_class
    assert evaluate.backend_options(args, backend_class('vlm'))['quantization'] == 'int4'
    assert 'quantization' in evaluate.IDENTITY_KEYS  # a resumed run cannot mix precisions


@pytest.mark.ros
def test_node_passes_quantization_and_refuses_changing_it_at_run_time():
    from rclpy.parameter import Parameter

    from emotion_perception.nodes.emotion_node import EmotionNode
    from emotion_perception.ros.params import read_params
    from emotion_perception.testing.ros_harness import RosHarness
    with RosHarness() as h:
        node = h.add(EmotionNode('quant_opts', context=h.context, parameter_overrides=[
            Parameter('backend.quantization', value='nf4')]))
        node.params = read_params(node, node._all_params)
        opts = node._backend_options('vlm')
        assert opts['quantization'] == 'nf4' and opts['quantization_library'] == 'auto'
        VLMOptions(**opts)
        result = node.set_parameters([Parameter('backend.quantization', value='int4')])[0]
        assert not result.successful


def test_caption_llm_quantizes_its_captioner(tmp_path):
    """--quantization with caption_llm quantizes the captioner (the large VLM) as the vlm
    backend does; the small text LLM stays in the model dtype; the backend answers."""
    needs('torchao')
    from emotion_perception.testing.tiny_models import build_tiny_captioner, build_tiny_text_llm
    from emotion_perception.testing.tiny_models import missing_reason
    if missing_reason('llava'):
        pytest.skip(missing_reason('llava'))
    backend = create_backend('caption_llm', dict(
        model=str(build_tiny_captioner(tmp_path / 'captioner')),
        llm=str(build_tiny_text_llm(tmp_path / 'llm')), device='cpu', quantization='int8',
        caption_max_new_tokens=6))
    backend.load()
    n_quantized, n_linear = q.quantized_linear_count(backend.captioner)
    assert n_quantized == n_linear - len(kept_in_model_dtype(backend.captioner)) > 0
    assert q.quantized_linear_count(backend.llm)[0] == 0
    res = backend.predict(IMAGE, BOXES[:1])[0]
    assert res.status == Status.OK and np.isfinite(res.scores).all()


def test_an_option_the_backend_does_not_take_is_refused():
    """A flag such as --quantization given for a backend without that option is refused with
    the backend's options, never dropped; the same flag for caption_llm now reaches it."""
    from emotion_perception.tools.config import load_pipeline_config
    with pytest.raises(ValueError, match=r"'face_baseline' has no 'quantization' option "
                                         r"\(drop --quantization"):
        load_pipeline_config(overrides={'backend.name': 'face_baseline',
                                        'backend.quantization': 'nf4'})
    cfg = load_pipeline_config(overrides={'backend.name': 'caption_llm',
                                          'backend.quantization': 'nf4',
                                          'backend.mode': None})
    assert cfg.backend_options['quantization'] == 'nf4'
