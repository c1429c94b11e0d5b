"""The VLM backends in bf16 on CPUs that have bf16 matmuls (``dtype: auto``), score mode's
read-out in float32: bf16 scores against float32 ones on the tiny families (bf16 checkpoints
as on the hub, weights at the scale where scores spread), the float32 head against a float64
reference, and what ``auto`` picks."""
import numpy as np
import pytest
import torch
from transformers import AutoConfig

from emotion_perception.core.backends import _prefix_scoring as ps
from emotion_perception.core.backends import vlm
from emotion_perception.core.backends.vlm import VLMBackend
from emotion_perception.core.types import BBox
from emotion_perception.testing import tiny_models

#: bf16 vs float32 scores (issue 24's bound) and VAD (1-10 scale)
SCORE_BOUND, VAD_BOUND = 2e-2, 0.1
BOXES = [BBox(40, 60, 180, 460), BBox(200, 40, 330, 470)]
EXTRA = {'llava': {'image_size': 224}, 'idefics3': {'image_size': 64},
         'qwen2_vl': {'max_pixels': 224 * 224}}


@pytest.mark.parametrize('family', ['llava', 'qwen2_vl', 'idefics3'])
def test_bf16_scores_match_float32_on_tiny_families(family, tmp_path):
    if tiny_models.missing_reason(family):
        pytest.skip(tiny_models.missing_reason(family))
    # a bf16 checkpoint (as SmolVLM's and Qwen2-VL's on the hub), weights drawn with std 0.1:
    # the scores spread (at 0.02 a 128-wide model says 0.5 to everything; at the builders'
    # 0.2 it is chaotic, 0.07 apart from a change in the 9th bit)
    folder = tiny_models.build_tiny_vlm(family, tmp_path / family, dtype='bfloat16',
                                        init_std=0.1, hidden=128, layers=2, heads=4,
                                        kv_heads=2, vision_hidden=64, **EXTRA[family])
    frame = tiny_models.make_test_image(480, 640, seed=3)
    got = {}
    for dtype in ('float32', 'bfloat16'):
        backend = VLMBackend(dict(model=str(folder), device='cpu', dtype=dtype))
        backend.load()
        assert backend.model.dtype == getattr(torch, dtype)
        head = backend.model.get_output_embeddings()
        assert isinstance(head, ps.Float32Head) == (dtype == 'bfloat16')
        results = backend.predict(frame, BOXES)
        got[dtype] = (np.array([r.scores for r in results]), np.array([r.vad for r in results]))
    (s32, v32), (s16, v16) = got['float32'], got['bfloat16']
    assert np.ptp(s32) > 0.05, 'degenerate scores: the comparison would say nothing'
    diff = np.abs(s32 - s16).max()
    assert 0 < diff <= SCORE_BOUND, diff
    assert np.nanmax(np.abs(v32 - v16)) <= VAD_BOUND


def test_float32_head_is_the_float32_product_of_the_bf16_weights():
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 40000, bias=True).to(torch.bfloat16)
    x = torch.randn(3, 5, 64).to(torch.bfloat16) * 4
    wrapped = ps.Float32Head(head)
    out = wrapped(x)
    ref = (x.double() @ head.weight.double().T + head.bias.double())  # float64 reference
    assert out.dtype == torch.float32 and out.shape == (3, 5, 40000)
    assert (out.double() - ref).abs().max() < 1e-4
    assert (head(x).double() - ref).abs().max() > 1e-2  # what a bf16 head would have read


def test_float32_readout_only_for_low_precision_heads():
    from emotion_perception.core.backends.quantization import is_quantized_weight
    model = tiny_models.make_vlm('llava', hidden=32, image_size=224)[0]
    assert ps.float32_readout(model) and type(model.get_output_embeddings()) is torch.nn.Linear
    model = model.to(torch.bfloat16)
    assert ps.float32_readout(model)
    head = model.get_output_embeddings()
    assert isinstance(head, ps.Float32Head) and not is_quantized_weight(head.weight)
    assert ps.float32_readout(model) and model.get_output_embeddings() is head  # once


def test_auto_dtype_rule(monkeypatch):
    wide = AutoConfig.for_model('llama', hidden_size=576)
    narrow = AutoConfig.for_model('llama', hidden_size=128)
    has = vlm.cpu_has_bf16()
    reference = getattr(getattr(torch._C, '_cpu', None), '_is_avx512_bf16_supported', None)
    if reference is not None and reference():
        assert has  # torch's own CPU probe agrees
    assert vlm.torch_dtype('auto', 'cpu', wide) == (torch.bfloat16 if has else torch.float32)
    assert vlm.torch_dtype('auto', 'cpu', narrow) == torch.float32
    assert vlm.torch_dtype('auto', 'cpu') == torch.float32  # no config: the safe choice
    monkeypatch.setattr(vlm, 'cpu_has_bf16', lambda: False)
    assert vlm.torch_dtype('auto', 'cpu', wide) == torch.float32
    assert vlm.torch_dtype('float32', 'cpu', wide) == torch.float32
    assert vlm.torch_dtype('bfloat16', 'cpu', narrow) == torch.bfloat16
    with pytest.raises(ValueError, match='unknown dtype'):
        vlm.torch_dtype('int8', 'cpu')
