"""``emotion-perception finetune``: LoRA fine-tuning of a vision-language model on EMOTIC.

The paper's fine-tuned setting (Etesam et al., IROS 2024: LLaVA-1.5-13B + LoRA on small EMOTIC
subsets): every training person is shown exactly as at inference (full image, red box, the
generate-mode question listing the 26 categories; ``emotion_perception.core.finetune_data``) and
the target is its label list, comma-separated, then the end-of-turn token. The loss is the
token cross-entropy on those answer tokens only (prompt and image tokens are masked with -100).

A plain PyTorch loop: AdamW on the LoRA weights only, linear warm-up then linear decay, gradient
clipping, gradient accumulation, optional bf16 base weights and gradient checkpointing.
``--quantization nf4`` is QLoRA: the base is loaded in 4 bits (bitsandbytes, as
``backend.quantization nf4``), frozen, and the LoRA weights train in float32 on top (CPU and
CUDA); serve the adapter with the same ``quantization: nf4`` (merging a LoRA into 4-bit weights
re-quantizes them). Writes
into ``--output DIR``:

* ``adapter_model.safetensors`` + ``adapter_config.json`` (``PeftModel.save_pretrained``): load
  it with ``--backend vlm --model BASE --adapter DIR``;
* ``finetune_config.json``: every option, the base model, the label list, the prompt, the LoRA
  target modules, the training persons, loss first/last, timings, the final evaluation;
* ``train_log.jsonl``: one line per optimiser step (step, epoch, loss, lr, grad_norm, seconds);
* ``eval_<split>/``: ``predictions.jsonl``, ``metrics.json``, ``report.md`` of the ``vlm``
  backend with the saved adapter (``--eval-split none`` skips it). When the evaluation split is
  the training split, the training persons are left out of it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.categories import EMOTIC_CATEGORIES
from ..core.emotic import FORMATS, SPLITS, EmoticPerson, load_emotic
from ..core.finetune_data import (DEFAULT_LORA_TARGETS, Augmentation, PromptSpec, augment,
                                  collate_right, encode_example, language_model_targets,
                                  render_prompt)
from ..core.prompts import MARKINGS

LOG = logging.getLogger('emotion_perception.finetune')

CONFIG_FILE = 'finetune_config.json'
TRAIN_LOG = 'train_log.jsonl'
#: base quantizations LoRA can be trained on: QLoRA = LoRA on a bitsandbytes nf4 base
QLORA_QUANTIZATIONS = ('none', 'nf4')
#: the paper's model for the fine-tuned row (LLaVA-F)
PAPER_MODEL = 'llava-hf/llava-1.5-13b-hf'


@dataclass
class FinetuneConfig:
    """All options of a fine-tuning run (the CLI flags, same names with '_').

    Attributes:
        data: EMOTIC root (see ``core.emotic``); split/format: which annotations to train on.
        model: base image-text-to-text model (hub id or folder).
        output: adapter folder (created).
        samples: train on this many persons, a ``seed``-shuffled sample (None = all).
        epochs, lr, batch_size, grad_accum, warmup_ratio, weight_decay, max_grad_norm:
            optimisation (effective batch = batch_size x grad_accum persons).
        max_steps: stop after this many optimiser steps (None = all epochs).
        lora_rank, lora_alpha, lora_dropout, lora_targets: LoRA on the language model's
            linear layers with these names.
        bf16: load the base weights in bfloat16 (LoRA weights stay float32).
        gradient_checkpointing: recompute activations in the backward pass (less memory).
        augment: random flip / colour / box jitter per example and epoch.
        marking, definitions: the prompt variant (same at evaluation).
        eval_split: split to evaluate the adapter on at the end ('none': skip).
        eval_limit: evaluate on the first N persons of it (None = all).
        eval_mode: 'generate' (the paper's protocol, what the adapter learns) or 'score'.
    """

    data: str
    model: str
    output: str
    split: str = 'train'
    format: str = 'auto'
    samples: int | None = None
    epochs: float = 3.0
    lr: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_steps: int | None = None
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: Sequence[str] = DEFAULT_LORA_TARGETS
    bf16: bool = False
    quantization: str = 'none'
    gradient_checkpointing: bool = False
    augment: bool = False
    marking: str = 'red_box'
    definitions: bool = False
    seed: int = 0
    device: str = 'auto'
    trust_remote_code: bool = False
    log_every: int = 10
    eval_split: str = 'val'
    eval_limit: int | None = None
    eval_mode: str = 'generate'
    eval_batch_size: int = 4
    eval_max_new_tokens: int = 64
    eval_bootstrap: int = 10_000
    progress: bool = True

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        checks = [
            (self.split in SPLITS, f'--split must be one of {SPLITS}'),
            (self.format in FORMATS, f'--format must be one of {FORMATS}'),
            (self.eval_split in SPLITS + ('none',),
             f'--eval-split must be one of {SPLITS} or none'),
            (self.eval_mode in ('generate', 'score'), '--eval-mode must be generate or score'),
            (self.marking in MARKINGS, f'--marking must be one of {MARKINGS}'),
            (self.quantization in QLORA_QUANTIZATIONS,
             f'--quantization must be one of {QLORA_QUANTIZATIONS} (QLoRA trains LoRA on an '
             'nf4 base; int8/int4 bases are not trained here)'),
            (self.samples is None or self.samples >= 1, '--samples must be >= 1'),
            (self.epochs > 0, '--epochs must be > 0'),
            (self.lr > 0, '--lr must be > 0'),
            (self.batch_size >= 1 and self.grad_accum >= 1, '--batch-size/--grad-accum >= 1'),
            (0 <= self.warmup_ratio < 1, '--warmup-ratio must be in [0, 1)'),
            (self.max_steps is None or self.max_steps >= 1, '--max-steps must be >= 1'),
            (self.lora_rank >= 1 and self.lora_alpha > 0, '--lora-rank >= 1, --lora-alpha > 0'),
            (0 <= self.lora_dropout < 1, '--lora-dropout must be in [0, 1)'),
            (len(self.lora_targets) > 0, '--lora-targets must name at least one layer'),
            (self.eval_limit is None or self.eval_limit >= 1, '--eval-limit must be >= 1'),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['lora_targets'] = list(self.lora_targets)
        return d


@dataclass
class TrainResult:
    """What ``train`` did.

    Attributes:
        output: the adapter folder.
        losses: mean answer-token loss per optimiser step.
        steps: optimiser steps taken.
        seconds: wall time of the loop (data + forward + backward + step), without loading.
        seconds_per_step: ``seconds / steps``.
        persons: the training persons.
        target_modules: the adapted modules (full names).
    """

    output: Path
    losses: list[float]
    steps: int
    seconds: float
    seconds_per_step: float
    persons: list[EmoticPerson] = field(default_factory=list)
    target_modules: list[str] = field(default_factory=list)


# -- data ----------------------------------------------------------------------------------------
def training_persons(config: FinetuneConfig) -> list[EmoticPerson]:
    """The persons of ``config.split``: all, or a ``seed``-shuffled sample of ``samples``.

    Same selection as ``evaluate --limit N --sample SEED`` (after leaving out persons whose
    body box is empty).
    """
    from .evaluate import select_persons
    persons = load_emotic(config.data, config.split, config.format)
    usable = [p for p in persons if p.bbox.width >= 1 and p.bbox.height >= 1]
    if len(usable) < len(persons):
        LOG.warning('%s: %d persons with an empty body box left out', config.split,
                    len(persons) - len(usable))
    persons = usable
    if not persons:
        raise ValueError(f'EMOTIC {config.split} has no annotated persons in {config.data}')
    selected = select_persons(persons, config.samples, config.seed if config.samples else None)
    if config.samples and len(selected) < config.samples:
        LOG.warning('--samples %d: %s has only %d persons', config.samples, config.split,
                    len(selected))
    return selected


class ImageCache:
    """RGB images by path (a training set of a few hundred persons reads each image once)."""

    def __init__(self, max_items: int = 256) -> None:
        self.max_items = max_items
        self._items: dict[Path, np.ndarray] = {}

    def get(self, path: Path) -> np.ndarray:
        """(H, W, 3) uint8 RGB.

        Raises:
            FileNotFoundError: the image is missing or unreadable.
        """
        image = self._items.get(path)
        if image is None:
            import cv2
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise FileNotFoundError(f'cannot read EMOTIC image {path}')
            image = np.ascontiguousarray(bgr[:, :, ::-1])
            if len(self._items) >= self.max_items:
                self._items.pop(next(iter(self._items)))
            self._items[path] = image
        return image


def steps_plan(n_persons: int, config: FinetuneConfig) -> tuple[int, int]:
    """(micro-batches per epoch, optimiser steps in total)."""
    micro = math.ceil(n_persons / config.batch_size)
    per_epoch = math.ceil(micro / config.grad_accum)
    total = max(1, math.ceil(per_epoch * config.epochs))
    if config.max_steps:
        total = min(total, config.max_steps)
    return micro, total


def linear_schedule(total: int, warmup: int):
    """LR factor per step: linear warm-up over ``warmup`` steps, then linear decay to 0."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def answer_loss(logits: Any, labels: Any) -> Any:
    """Mean next-token cross-entropy over the positions whose label is not -100.

    Args:
        logits: (B, L, V) model output for ``input_ids`` (B, L).
        labels: (B, L) int64, -100 where no loss is taken (prompt, image, padding).

    Returns:
        Scalar float32 tensor: position t predicts ``labels[:, t + 1]``.
    """
    import torch
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    return torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                             shift_labels.reshape(-1), ignore_index=-100)


# -- training ------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for name in ('torch', 'transformers', 'peft'):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = ''
    return out


def _stop_ids(model: Any) -> list[int]:
    eos = getattr(getattr(model, 'generation_config', None), 'eos_token_id', None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute decoder activations in the backward pass (non-reentrant: no input grads needed).

    transformers 5 names it ``activation_checkpointing_enable``; older releases
    ``gradient_checkpointing_enable``.
    """
    kwargs = {'use_reentrant': False}
    if hasattr(model, 'activation_checkpointing_enable'):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def train(config: FinetuneConfig) -> TrainResult:
    """Fine-tune ``config.model`` with LoRA and save the adapter into ``config.output``.

    Returns:
        The per-step losses and timings (also in ``train_log.jsonl`` / ``finetune_config.json``).

    Raises:
        ModelLoadError: the base model does not load.
        EmoticError: the data set is missing or malformed.
        ValueError: bad options (e.g. no layer matches ``lora_targets``).
    """
    from ..core.backends.base import resolve_device
    from ..core.backends.vlm import release

    out_dir = Path(config.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = _seed_everything(config.seed)
    persons = training_persons(config)
    device = resolve_device(config.device)
    model, base, processor, targets = _lora_model(config, device)
    spec = PromptSpec(config.marking, config.definitions)
    make_batch = _batch_maker(config, processor, base, spec, rng)
    optim = _Optimisation(model, config, len(persons))
    t_start = time.perf_counter()
    losses = _run_steps(model, base, make_batch, optim, persons, config, rng, device,
                        out_dir / TRAIN_LOG, t_start)
    seconds = time.perf_counter() - t_start
    model.save_pretrained(str(out_dir), safe_serialization=True)
    steps = len(losses)
    result = TrainResult(output=out_dir, losses=losses, steps=steps, seconds=seconds,
                         seconds_per_step=seconds / max(1, steps), persons=persons,
                         target_modules=targets)
    write_config(config, result, prompt_text=spec.question())
    LOG.info('saved the adapter to %s (%d steps in %.1f s, %.3f s/step; loss %.4f -> %.4f)',
             out_dir, steps, seconds, result.seconds_per_step, losses[0], losses[-1])
    del model, base, optim
    release()
    return result


def _seed_everything(seed: int) -> np.random.Generator:
    """Seed Python's, NumPy's and torch's generators; returns the generator of the person
    order and the augmentations."""
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _lora_model(config: FinetuneConfig, device: str) -> tuple[Any, Any, Any, list[str]]:
    """The base model (4-bit and prepared for QLoRA when ``config.quantization`` asks) with
    LoRA adapters on its language model's ``config.lora_targets``, in training mode.

    Returns:
        (the peft model, the base model, its processor, the adapted module names).
    """
    from peft import LoraConfig, get_peft_model

    from ..core.backends.vlm import load_image_text_model
    t0 = time.perf_counter()
    base, processor = load_image_text_model(config.model, device,
                                            'bfloat16' if config.bf16 else 'float32',
                                            trust_remote_code=config.trust_remote_code,
                                            quantization=config.quantization)
    LOG.info('loaded %s on %s in %.1f s', config.model, device, time.perf_counter() - t0)
    if config.quantization != 'none':  # QLoRA: frozen 4-bit base, float norms and LM head
        from peft import prepare_model_for_kbit_training
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*is_gradient_checkpointing',
                                    category=FutureWarning)
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    targets = language_model_targets(base, config.lora_targets)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(base)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets, bias='none')
    with warnings.catch_warnings():  # peft reads the deprecated is_gradient_checkpointing
        warnings.filterwarnings('ignore', message='.*is_gradient_checkpointing',
                                category=FutureWarning)
        model = get_peft_model(base, lora)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    LOG.info('LoRA r=%d alpha=%g on %d modules: %d trainable parameters (%.3f %% of %d)',
             config.lora_rank, config.lora_alpha, len(targets), n_train, 100 * n_train / n_all,
             n_all)
    model.train()
    return model, base, processor, targets


def _batch_maker(config: FinetuneConfig, processor: Any, base: Any, spec: PromptSpec,
                 rng: np.random.Generator):
    """``make_batch(persons)``: their training examples (the inference prompt + the label
    list; images augmented with ``rng`` when ``config.augment``), right-padded into one batch
    (``collate_right``)."""
    prompt = render_prompt(processor, spec.question())
    stop_ids = _stop_ids(base)
    tok = processor.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    images = ImageCache()
    aug = Augmentation()

    def make_batch(batch_persons: Sequence[EmoticPerson]) -> dict[str, Any]:
        items = []
        for p in batch_persons:
            image, box = images.get(p.image_path), p.bbox
            h, w = image.shape[:2]
            box = box.clipped(w, h)
            if config.augment:
                image, box = augment(image, box, rng, aug)
            items.append(encode_example(processor, image, box, p.labels, spec, stop_ids, prompt))
        return collate_right(items, pad_id)
    return make_batch


class _Optimisation:
    """AdamW over the trainable (LoRA) parameters with a linear warm-up and decay and gradient
    clipping, and the plan: ``micro_per_epoch`` micro-batches per epoch, ``total`` steps."""

    def __init__(self, model: Any, config: FinetuneConfig, n_persons: int) -> None:
        import torch
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.micro_per_epoch, self.total = steps_plan(n_persons, config)
        warmup = int(round(config.warmup_ratio * self.total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           linear_schedule(self.total, warmup))
        self.max_grad_norm = config.max_grad_norm
        LOG.info('%d persons of %s, batch %d x accumulation %d: %d optimiser steps (%d warm-up)',
                 n_persons, config.split, config.batch_size, config.grad_accum, self.total,
                 warmup)

    def step(self) -> tuple[float, float]:
        """Clip, step, schedule, zero the gradients; returns (the lr used, the gradient norm
        before clipping)."""
        import torch
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        lr = self.optimizer.param_groups[0]['lr']
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, float(grad_norm)


def _run_steps(model: Any, base: Any, make_batch, optim: _Optimisation,
               persons: Sequence[EmoticPerson], config: FinetuneConfig,
               rng: np.random.Generator, device: str, log_path: Path, t_start: float
               ) -> list[float]:
    """The training loop: each epoch a new order of ``persons`` (``rng``), micro-batches of
    ``config.batch_size``, an optimiser step every ``config.grad_accum`` micro-batches (and
    at the end of an epoch), until ``optim.total`` steps. Each step is written to
    ``log_path`` (one JSON object per line). Returns the loss of each step (the mean over its
    micro-batches)."""
    from tqdm import tqdm
    losses: list[float] = []
    window: list[float] = []
    step, epoch = 0, 0
    with log_path.open('w') as log_file, tqdm(total=optim.total, unit='step', desc='finetune',
                                              disable=not config.progress) as bar:
        while step < optim.total:
            order = list(rng.permutation(len(persons)))
            for m in range(optim.micro_per_epoch):
                chunk = [persons[i] for i in order[m * config.batch_size:
                                                   (m + 1) * config.batch_size]]
                window.append(_forward_backward(model, base, make_batch(chunk), config, device))
                if len(window) < config.grad_accum and m < optim.micro_per_epoch - 1:
                    continue
                lr, grad_norm = optim.step()
                losses.append(float(np.mean(window)))
                window = []
                step += 1
                record = {'step': step,
                          'epoch': round(epoch + (m + 1) / optim.micro_per_epoch, 4),
                          'loss': round(losses[-1], 6), 'lr': lr,
                          'grad_norm': round(grad_norm, 6),
                          'seconds': round(time.perf_counter() - t_start, 3)}
                _log_step(log_file, bar, record, losses[-1], grad_norm, optim.total,
                          config.log_every)
                if step >= optim.total:
                    break
            epoch += 1
    return losses


def _forward_backward(model: Any, base: Any, batch: dict[str, Any], config: FinetuneConfig,
                      device: str) -> float:
    """One micro-batch: forward, the answer tokens' loss, backward (scaled by
    ``1 / grad_accum``); returns the loss."""
    from ..core.backends._prefix_scoring import to_device, uses_mrope
    batch = to_device(batch, device, base.dtype)
    labels = batch.pop('labels')
    if uses_mrope(base):
        base.model.rope_deltas = None
    logits = model(**batch, use_cache=False).logits
    loss = answer_loss(logits, labels)
    (loss / config.grad_accum).backward()
    return float(loss.detach())


def _log_step(log_file, bar, record: dict[str, Any], loss: float, grad_norm: float,
              total: int, log_every: int) -> None:
    """A step's record into the log file (flushed), the progress bar, and every
    ``log_every`` steps (and the last) the log (``loss``, ``grad_norm``: unrounded)."""
    log_file.write(json.dumps(record) + '\n')
    log_file.flush()
    bar.update(1)
    bar.set_postfix(loss=f'{loss:.4f}', lr=f'{record["lr"]:.2e}')
    step = record['step']
    if log_every and (step % log_every == 0 or step == total):
        LOG.info('step %d/%d epoch %.2f loss %.4f lr %.2e grad_norm %.3f', step, total,
                 record['epoch'], loss, record['lr'], grad_norm)


def write_config(config: FinetuneConfig, result: TrainResult, prompt_text: str,
                 evaluation: dict[str, Any] | None = None) -> Path:
    """``finetune_config.json``: options, base model, labels, prompt, persons, losses, eval."""
    path = Path(config.output) / CONFIG_FILE
    k = max(1, min(10, len(result.losses) // 4))
    doc: dict[str, Any] = {
        'base_model': config.model,
        'options': config.to_json(),
        'labels': list(EMOTIC_CATEGORIES),
        'answer_format': 'the EMOTIC labels of the person in EMOTIC order, comma-separated',
        'prompt': prompt_text,
        'lora_target_modules': result.target_modules,
        'train_persons': [[p.image_key, p.person] for p in result.persons],
        'n_train_persons': len(result.persons),
        'steps': result.steps,
        'loss_first': result.losses[0] if result.losses else None,
        'loss_last': result.losses[-1] if result.losses else None,
        f'loss_mean_first_{k}': float(np.mean(result.losses[:k])) if result.losses else None,
        f'loss_mean_last_{k}': float(np.mean(result.losses[-k:])) if result.losses else None,
        'train_seconds': round(result.seconds, 3),
        'seconds_per_step': round(result.seconds_per_step, 4),
        'versions': _versions(),
    }
    if evaluation is not None:
        doc['evaluation'] = evaluation
    elif path.is_file():  # keep an earlier evaluation when only re-writing
        doc['evaluation'] = json.loads(path.read_text()).get('evaluation')
    path.write_text(json.dumps(doc, indent=2))
    return path


# -- evaluation ----------------------------------------------------------------------------------
def eval_backend_options(config: FinetuneConfig, adapter: str | None) -> dict[str, Any]:
    """``vlm`` backend options that ask the question the adapter was trained on."""
    opts: dict[str, Any] = dict(model=config.model, device=config.device,
                                dtype='bfloat16' if config.bf16 else 'auto',
                                mode=config.eval_mode, marking=config.marking,
                                definitions=config.definitions,
                                batch_size=config.eval_batch_size,
                                max_new_tokens=config.eval_max_new_tokens,
                                trust_remote_code=config.trust_remote_code,
                                quantization=config.quantization)
    if adapter:
        opts['adapter'] = str(adapter)
    return opts


def evaluate_adapter(config: FinetuneConfig, adapter: str | None,
                     exclude: Sequence[tuple[str, int]] = (), out_dir: Path | None = None
                     ) -> dict[str, Any]:
    """Predict ``config.eval_split`` with the ``vlm`` backend (+ ``adapter``) and score it.

    Args:
        adapter: adapter folder (None: the base model alone).
        exclude: (image_key, person) keys left out (the training persons).
        out_dir: where predictions.jsonl / metrics.json / report.md go (resumable).

    Returns:
        ``evaluate.compute_metrics`` output (+ ``config``).
    """
    from .evaluate import (METRICS_FILE, PREDICTIONS, REPORT_FILE, LazyBackend, compute_metrics,
                           predict_split, select_persons, to_arrays, write_report)
    from ..core.categories import thresholds_array

    skip = set(exclude)
    persons = [p for p in load_emotic(config.data, config.eval_split, config.format)
               if p.key not in skip]
    if skip:
        LOG.info('evaluating on %s without the %d training persons', config.eval_split, len(skip))
    persons = select_persons(persons, config.eval_limit, None)
    if not persons:
        raise ValueError(f'no {config.eval_split} persons left to evaluate on')
    out_dir = out_dir or Path(config.output) / f'eval_{config.eval_split}'
    out_dir.mkdir(parents=True, exist_ok=True)
    backend = LazyBackend('vlm', eval_backend_options(config, adapter))
    try:
        records = predict_split(persons, backend, out_dir / PREDICTIONS,
                                config.eval_batch_size, progress=config.progress)
    finally:
        backend.close()
    metrics = compute_metrics(to_arrays(persons, records), thresholds_array(None).astype(float),
                              config.eval_bootstrap, 0)
    metrics['config'] = {'backend': 'vlm', 'model': config.model, 'adapter': adapter,
                         'split': config.eval_split, 'mode': config.eval_mode,
                         'marking': config.marking, 'definitions': config.definitions,
                         'limit': config.eval_limit, 'excluded_training_persons': len(skip)}
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    write_report(out_dir / REPORT_FILE, metrics, [])
    return metrics


def metrics_summary(metrics: dict[str, Any]) -> str:
    """'n 120: precision 31.20, recall ..., mAP ...' (values in %)."""
    from ..core.metrics import LABEL_METRICS
    parts = [f'{k} {100 * metrics[k]["value"]:.2f}' for k in LABEL_METRICS]
    m_ap = metrics.get('mAP')
    parts.append('mAP ' + ('—' if m_ap is None else f'{100 * m_ap:.2f}'))
    return f'n {metrics["n"]}: ' + ', '.join(parts)


# -- command line --------------------------------------------------------------------------------
def _csv_names(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(',') if t.strip())
    if not names:
        raise argparse.ArgumentTypeError('give comma-separated layer names, e.g. q_proj,v_proj')
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` sub-command."""
    p = subparsers.add_parser(
        'finetune', help='LoRA fine-tuning of a vision-language model on EMOTIC',
        description=__doc__.split('\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = FinetuneConfig(data='', model='', output='')
    p.add_argument('--data', required=True, metavar='ROOT', help='EMOTIC root (see evaluate)')
    p.add_argument('--split', default=d.split, choices=SPLITS, help='split to train on')
    p.add_argument('--format', default=d.format, choices=FORMATS, help='annotation source')
    p.add_argument('--model', required=True, metavar='ID_OR_PATH',
                   help=f'base image-text-to-text model (paper: {PAPER_MODEL})')
    p.add_argument('--output', required=True, metavar='ADAPTER_DIR', help='adapter folder')
    p.add_argument('--samples', type=int, default=None, metavar='N',
                   help='train on N persons drawn with --seed (paper: 100); default all')
    p.add_argument('--epochs', type=float, default=d.epochs)
    p.add_argument('--lr', type=float, default=d.lr, help='peak learning rate (AdamW)')
    p.add_argument('--batch-size', type=int, default=d.batch_size, help='persons per forward')
    p.add_argument('--grad-accum', type=int, default=d.grad_accum,
                   help='micro-batches per optimiser step')
    p.add_argument('--warmup-ratio', type=float, default=d.warmup_ratio)
    p.add_argument('--weight-decay', type=float, default=d.weight_decay)
    p.add_argument('--max-grad-norm', type=float, default=d.max_grad_norm)
    p.add_argument('--max-steps', type=int, default=None, help='stop after N optimiser steps')
    p.add_argument('--lora-rank', type=int, default=d.lora_rank)
    p.add_argument('--lora-alpha', type=float, default=d.lora_alpha)
    p.add_argument('--lora-dropout', type=float, default=d.lora_dropout)
    p.add_argument('--lora-targets', type=_csv_names, default=','.join(d.lora_targets),
                   help="the language model's linear layers to adapt (names, comma-separated)")
    p.add_argument('--bf16', action='store_true', help='base weights in bfloat16 (GPU)')
    p.add_argument('--quantization', default=d.quantization, choices=QLORA_QUANTIZATIONS,
                   help='nf4: QLoRA, LoRA trained on a 4-bit (bitsandbytes) base: a 7B base in '
                        'about 4 GB; evaluated (and served) with the same --quantization nf4')
    p.add_argument('--gradient-checkpointing', action='store_true',
                   help='trade compute for activation memory')
    p.add_argument('--augment', action='store_true',
                   help='horizontal flip, colour jitter and box jitter')
    p.add_argument('--marking', default=d.marking, choices=MARKINGS)
    p.add_argument('--definitions', action='store_true', help='category definitions in prompt')
    p.add_argument('--seed', type=int, default=d.seed)
    p.add_argument('--device', default=d.device, help="'auto', 'cpu', 'cuda', 'cuda:1'")
    p.add_argument('--trust-remote-code', action='store_true')
    p.add_argument('--log-every', type=int, default=d.log_every, help='log every N steps')
    p.add_argument('--eval-split', default=d.eval_split, choices=SPLITS + ('none',),
                   help='evaluate the adapter on this split at the end')
    p.add_argument('--eval-limit', type=int, default=None, metavar='N')
    p.add_argument('--eval-mode', default=d.eval_mode, choices=['generate', 'score'])
    p.add_argument('--eval-batch-size', type=int, default=d.eval_batch_size)
    p.add_argument('--eval-max-new-tokens', type=int, default=d.eval_max_new_tokens)
    p.add_argument('--eval-bootstrap', type=int, default=d.eval_bootstrap, metavar='ROUNDS')
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The ``FinetuneConfig`` of parsed CLI arguments."""
    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if isinstance(values.get('lora_targets'), str):
        values['lora_targets'] = _csv_names(values['lora_targets'])
    return FinetuneConfig(**values)


def main(args: argparse.Namespace) -> int:
    """Fine-tune, save, then evaluate on ``--eval-split`` (see the module docstring)."""
    config = config_from_args(args)
    result = train(config)
    print(f'adapter: {result.output} ({result.steps} steps, {result.seconds_per_step:.3f} s/step, '
          f'loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f})')
    if config.eval_split == 'none':
        return 0
    exclude = [p.key for p in result.persons] if config.eval_split == config.split else []
    metrics = evaluate_adapter(config, str(result.output), exclude)
    summary = metrics_summary(metrics)
    write_config(config, result, PromptSpec(config.marking, config.definitions).question(),
                 evaluation={k: metrics[k] for k in ('n', 'precision', 'recall', 'f1',
                                                     'hamming_loss', 'subset_accuracy', 'mAP')}
                 | {'split': config.eval_split, 'mode': config.eval_mode})
    print(f'eval {config.eval_split} with the adapter ({config.eval_mode}), {summary}')
    return 0


__all__ = ['CONFIG_FILE', 'FinetuneConfig', 'TRAIN_LOG', 'TrainResult', 'answer_loss',
           'config_from_args', 'evaluate_adapter', 'linear_schedule', 'main', 'metrics_summary',
           'register', 'steps_plan', 'train', 'training_persons', 'write_config']
