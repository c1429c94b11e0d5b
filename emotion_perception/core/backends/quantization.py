"""Quantized loading of the VLMs: one switch, ``quantization``, for a robot's 8-16 GB GPU.

``none`` (default) | ``int8`` | ``nf4`` | ``int4``, through transformers' quantization configs
(``from_pretrained(..., quantization_config=...)``: weights are quantized layer by layer while
the checkpoint is read, so the full-precision model is never in memory). Which library does
what (``library='auto'`` picks the first):

* ``int8``: torchao ``Int8WeightOnlyConfig`` (int8 weights with a scale per output row,
  dequantized into the model dtype at the matmul), on CPU, CUDA and Jetson. bitsandbytes'
  LLM.int8 (``library='bitsandbytes'``) also runs, but it quantizes the *activations* per call
  and moves outlier columns (any row > 6.0) to 16-bit, chosen over all rows of the call: a
  person's scores then depend on who else is in the batch and differ between the question tree
  and the per-question reference (1e-2 on the tiny models), which score mode promises not to
  do; hence not the default.
* ``nf4``: bitsandbytes NF4 with double quantization (4.13 bits per weight), compute in the
  model dtype (bf16 on CUDA, float32 on CPU unless ``dtype`` says otherwise). CPU too (layer
  widths must be multiples of 64). Jetson: bitsandbytes' aarch64 wheels fail on L4T at the first
  kernel (bitsandbytes issue #1930): build it from source, or use ``int4``.
* ``int4``: torchao weight-only int4, groups of 128 (or the largest of 64/32 dividing every
  width): CUDA ``Int4WeightOnlyConfig`` (tinygemm layout, bf16: ``dtype`` auto or bfloat16,
  Jetson included: jetson-containers builds torchao), CPU its CPU layout
  ``PrototypeInt4WeightOnlyConfig``.

What stays in the model dtype (``SKIP_MODULES``): the LM head, whose logits ARE the scores
(score mode reads log P(yes)/P(no) and the digit distribution straight off them), and the
multimodal projector (the small layer that maps image features into the LM's embedding space;
LLaVA's own 4-bit loader keeps ``mm_projector`` unquantized for the same reason). The input
embeddings are not linear layers and stay too. The vision tower's
linear layers ARE quantized like the LM's: they are 5-30 % of the weights (CLIP ViT-L 0.3 B,
Qwen2-VL's ViT 0.67 B); in bf16 they would add about 0.45 GB to LLaVA-1.5-7B's measured
4.07 GB (nf4), past the 4.5 GB an 8 GB robot GPU leaves; their convolutional patch embeddings
stay. The LM head is 2 % of a 7B model.

Anything the installed libraries or the device cannot do raises ``QuantizationError`` (a
``ModelLoadError``: configure fails) naming the package to install; a load that left any linear
layer outside ``SKIP_MODULES`` unquantized, or quantized one of them, is refused too
(``verify_quantized``), so a model never runs silently (partly) unquantized.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import ModelLoadError

QUANTIZATIONS = ('none', 'int8', 'nf4', 'int4')
LIBRARIES = ('auto', 'bitsandbytes', 'torchao')
#: the pinned versions (requirements/quant.txt); what the error messages tell users to install
PACKAGES = {'bitsandbytes': 'bitsandbytes==0.50.2', 'torchao': 'torchao==0.18.0'}
#: modules kept in the model dtype (transformers' skip patterns: a regex matched from the start
#: of the module name, or a suffix): LM head and multimodal projectors of the families
SKIP_MODULES = ['lm_head', r'.*multi_modal_projector', r'.*visual\.merger', r'.*connector']
#: torchao int4 group sizes, largest first (the largest dividing every quantized layer's input)
INT4_GROUP_SIZES = (128, 64, 32)
#: bitsandbytes' 4-bit block size (its CPU kernels need input widths divisible by it)
NF4_BLOCK = 64
INSTALL_HINT = 'pip install "emotion_perception[quant]" or pip install -r requirements/quant.txt'


@dataclass
class QuantizationOptions:
    """The quantization switch of the backends that load a VLM (``vlm``; ``caption_llm``'s
    captioner), mixed into their options.

    Attributes:
        quantization: 'none' | 'int8' | 'nf4' | 'int4': weights quantized while loading.
        quantization_library: 'auto' (per option and device) | 'bitsandbytes' | 'torchao'.
    """

    quantization: str = 'none'
    quantization_library: str = 'auto'

    def check_quantization(self) -> None:
        """Raise ValueError for an unknown option or library."""
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f'quantization must be one of {QUANTIZATIONS}, '
                             f'got {self.quantization!r}')
        if self.quantization_library not in LIBRARIES:
            raise ValueError(f'quantization_library must be one of {LIBRARIES}, '
                             f'got {self.quantization_library!r}')


class QuantizationError(ModelLoadError):
    """A quantization the installed libraries or the device cannot do (the message says why
    and what to install or choose instead)."""


def is_jetson() -> bool:
    """True on NVIDIA Jetson (L4T): aarch64 with /etc/nv_tegra_release."""
    return platform.machine() == 'aarch64' and Path('/etc/nv_tegra_release').exists()


def _installed(package: str) -> str:
    """Installed version of ``package`` or '' (the module is looked up without importing)."""
    if importlib.util.find_spec(package) is None:
        return ''
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ''


def choose_library(quantization: str, library: str, device: str) -> str:
    """The library that does ``quantization`` on ``device`` ('' for 'none').

    Raises:
        QuantizationError: unknown names, or a pairing that does not exist.
    """
    if quantization not in QUANTIZATIONS:
        raise QuantizationError(f'quantization must be one of {QUANTIZATIONS}, '
                                f'got {quantization!r}')
    if library not in LIBRARIES:
        raise QuantizationError(f'quantization_library must be one of {LIBRARIES}, '
                                f'got {library!r}')
    if quantization == 'none':
        return ''
    if quantization == 'nf4':
        if library == 'torchao':
            raise QuantizationError('nf4 is a bitsandbytes format; with torchao use '
                                    'quantization=int4')
        return 'bitsandbytes'
    if quantization == 'int4':
        if library == 'bitsandbytes':
            raise QuantizationError("bitsandbytes' 4-bit format is nf4: use quantization=nf4, "
                                    'or int4 with quantization_library torchao/auto')
        return 'torchao'
    return 'torchao' if library == 'auto' else library  # int8: both (see the module doc)


def check_available(library: str, quantization: str, device: str, dtype: Any) -> None:
    """Refuse what the installed library or the device cannot do, before any weight is read.

    Raises:
        QuantizationError: the library is missing (with the package to install), the device is
            neither CPU nor CUDA, or the dtype is one the kernels do not take.
    """
    import torch
    if not _installed(library):
        raise QuantizationError(
            f'quantization={quantization} uses {library}, which is not installed: '
            f'pip install {PACKAGES[library]} ({INSTALL_HINT})')
    dev = str(device)
    if not (dev == 'cpu' or dev.startswith('cuda')):
        raise QuantizationError(f'quantization={quantization} ({library}) runs on cpu or cuda '
                                f'devices, not {dev!r}')
    if library == 'bitsandbytes' and dev.startswith('cuda') and is_jetson():
        try:
            import bitsandbytes.functional as bnbf  # noqa: F401 - loads the CUDA library
        except Exception as exc:  # noqa: BLE001 - any failure means no working kernels
            raise QuantizationError(
                f'bitsandbytes does not load on this Jetson ({type(exc).__name__}: {exc}); '
                'build it from source, or use quantization=int8/int4 with '
                'quantization_library=torchao') from exc
    if quantization == 'int4' and dev.startswith('cuda') and dtype != torch.bfloat16:
        raise QuantizationError('quantization=int4 on CUDA (torchao tinygemm) needs '
                                f'dtype bfloat16 or auto, got {dtype}')


def _widths(config: Any) -> set[int]:
    """Hidden / intermediate widths of the model, its LM and its vision tower (the input
    widths of the layers that are quantized)."""
    widths = set()
    for cfg in (config, getattr(config, 'text_config', None),
                getattr(config, 'vision_config', None)):
        for name in ('hidden_size', 'intermediate_size', 'embed_dim'):
            value = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                widths.add(value)
    return widths


def _int4_group_size(config: Any) -> int:
    """The largest of ``INT4_GROUP_SIZES`` dividing every hidden/intermediate width."""
    widths = _widths(config)
    for size in INT4_GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    raise QuantizationError(f'quantization=int4: no group size in {INT4_GROUP_SIZES} divides '
                            f'the layer widths {sorted(widths)}; use int8 or nf4')


def quantization_config(quantization: str, library: str, device: str, dtype: Any,
                        model_config: Any = None) -> Any:
    """The transformers quantization config for ``from_pretrained`` (None for 'none').

    Args:
        quantization: one of ``QUANTIZATIONS``.
        library: 'bitsandbytes' | 'torchao' (from ``choose_library``).
        device: the resolved torch device ('cpu', 'cuda', 'cuda:1').
        dtype: the model dtype (torch.dtype): the compute dtype of the quantized layers.
        model_config: the model's config (int4 group size).
    """
    if quantization == 'none':
        return None
    from transformers import BitsAndBytesConfig, TorchAoConfig
    if library == 'bitsandbytes':
        if quantization == 'int8':
            # its CPU path logs 'inputs will be cast to float16' at every call
            logging.getLogger('bitsandbytes.autograd._functions').setLevel(logging.ERROR)
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_MODULES)
        odd = sorted(w for w in _widths(model_config) if w % NF4_BLOCK)
        if str(device) == 'cpu' and odd:
            raise QuantizationError(f'quantization=nf4 on the CPU (bitsandbytes) needs layer '
                                    f'widths that are multiples of {NF4_BLOCK}, got {odd}; use '
                                    'int8 or int4')
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
                                  bnb_4bit_quant_storage='uint8',
                                  llm_int8_skip_modules=SKIP_MODULES)
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    if quantization == 'int8':
        quant = Int8WeightOnlyConfig()
    elif str(device).startswith('cuda'):
        quant = Int4WeightOnlyConfig(group_size=_int4_group_size(model_config),
                                     int4_packing_format='tile_packed_to_4d')
    else:
        from torchao.prototype.quantization.int4.inference_workflow import (
            PrototypeInt4WeightOnlyConfig)
        quant = PrototypeInt4WeightOnlyConfig(group_size=_int4_group_size(model_config))
    return TorchAoConfig(quant, modules_to_not_convert=list(SKIP_MODULES))


def is_quantized_weight(weight: Any) -> bool:
    """True for a bitsandbytes or torchao quantized weight (not a plain float tensor)."""
    import torch
    cls = type(weight)
    module = cls.__module__
    if module.startswith('bitsandbytes'):
        return True
    if module.startswith('torchao'):
        return True
    data = getattr(weight, 'data', weight)
    return type(data).__module__.startswith('torchao') or (
        isinstance(weight, torch.Tensor) and not weight.is_floating_point())


def _linear_layers(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of the linear layers of ``model`` (bitsandbytes layers count as linear)."""
    import torch
    return [(name, m) for name, m in model.named_modules()
            if getattr(m, 'weight', None) is not None and (
                isinstance(m, torch.nn.Linear) or type(m).__module__.startswith('bitsandbytes'))]


def quantized_linear_count(model: Any) -> tuple[int, int]:
    """(quantized, all) linear layers of ``model`` (bitsandbytes layers count as linear)."""
    layers = _linear_layers(model)
    return sum(is_quantized_weight(m.weight) for _, m in layers), len(layers)


def misplaced_layers(model: Any, skip: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Linear layers not where ``SKIP_MODULES`` puts them, matched by transformers' own rule
    (``should_convert_module``, what the quantizers apply while loading).

    Returns:
        (layers that should be quantized and are not, layers kept in the model dtype
        (the LM head, projectors) that are quantized).
    """
    from transformers.quantizers.quantizers_utils import should_convert_module
    skip = SKIP_MODULES if skip is None else skip
    missing, extra = [], []
    for name, module in _linear_layers(model):
        quantized = is_quantized_weight(module.weight)
        if should_convert_module(name, skip) and not quantized:
            missing.append(name)
        elif not should_convert_module(name, skip) and quantized:
            extra.append(name)
    return missing, extra


def tensor_bytes(t: Any) -> int:
    """Bytes a (possibly quantized) tensor holds: plain tensors, bitsandbytes 4-bit data plus
    its quantization state (absmax, nested absmax, code), torchao subclasses by their inner
    tensors."""
    import torch
    flatten = getattr(type(t), '__tensor_flatten__', None)
    if flatten is not None and type(t) not in (torch.Tensor, torch.nn.Parameter) and \
            not type(t).__module__.startswith('bitsandbytes'):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    size = t.numel() * t.element_size()
    state = getattr(t, 'quant_state', None)
    if state is not None:
        for part in (state, getattr(state, 'state2', None)):
            for name in ('absmax', 'code', 'offset'):
                v = getattr(part, name, None) if part is not None else None
                if isinstance(v, torch.Tensor):
                    size += v.numel() * v.element_size()
    scb = getattr(t, 'SCB', None)
    if isinstance(scb, torch.Tensor):
        size += scb.numel() * scb.element_size()
    return size


def weight_bytes(model: Any) -> int:
    """Bytes of all parameters and buffers of ``model``, quantized ones by what they hold
    (``tensor_bytes``); tensors shared between modules are counted once."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += tensor_bytes(t)
    return total


def verify_quantized(model: Any, quantization: str, library: str, src: str) -> str:
    """Refuse a model that is not quantized as ``quantization`` says: a linear layer outside
    ``SKIP_MODULES`` left in floating point (a model with one quantized layer is no 4-bit
    model), or a layer that must stay in the model dtype quantized (the LM head, whose logits
    are the scores; the projector). Returns a one-line summary ('none' when unquantized)."""
    if quantization == 'none':
        return 'none'
    quantized, total = quantized_linear_count(model)
    missing, extra = misplaced_layers(model)
    if missing or extra:
        what = []
        if missing:
            what.append(f'{len(missing)} of {total} linear layers that should be quantized are '
                        f'not ({", ".join(missing[:3])}{", ..." if len(missing) > 3 else ""})')
        if extra:
            what.append(f'layers that must stay in the model dtype are quantized '
                        f'({", ".join(extra[:3])})')
        raise QuantizationError(f'{src!r}: quantization={quantization} ({library}): '
                                f'{"; ".join(what)}; refusing to run it')
    return (f'{quantization} ({library}): {quantized} of {total} linear layers, weights '
            f'{weight_bytes(model) / 1e9:.3f} GB')


__all__ = ['INSTALL_HINT', 'LIBRARIES', 'PACKAGES', 'QUANTIZATIONS', 'QuantizationError',
           'QuantizationOptions',
           'SKIP_MODULES', 'check_available', 'choose_library', 'is_jetson',
           'misplaced_layers', 'quantization_config', 'quantized_linear_count', 'tensor_bytes',
           'verify_quantized', 'weight_bytes']
