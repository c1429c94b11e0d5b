"""Shared-prefix scoring: many short questions about one long prompt, in two model calls.

Score mode asks, for every person, 26 yes/no questions (one per EMOTIC category) and 3 rating
questions (valence, arousal, dominance) that all share one long prefix: the chat turn start, the
marked image (hundreds of image tokens) and the category list. Re-encoding that prefix 29 times
is what ``naive_logprobs`` does (the reference); ``shared_prefix_logprobs`` does instead:

1. **Prefix call**: the prefixes of all P persons as one batch, left-padded to the longest one
   (pads masked out; 1-D RoPE positions are ``cumsum(mask) - 1`` so each row starts at 0 exactly
   as when it is alone). This fills a KV cache of shape (P, heads, L, head_dim) per layer.
2. **Suffix call**: the Q question suffixes of every person as one batch of P*Q rows. The suffixes
   are *left*-padded to the longest one, so every row's answer position is the last column and
   ``logits_to_keep=1`` projects only that column onto the vocabulary. Row (p, q) attends to
   person p's prefix (its 2-D mask row, repeated Q times) and its own real suffix tokens; the pad
   columns between prefix and suffix are masked, and the positions of the real suffix tokens
   continue from person p's next text position (``real prefix length`` for 1-D RoPE; ``real
   length + rope_delta`` for multimodal RoPE, see below). The prefix KV cache is *not* copied Q
   times and kept: ``SharedPrefixCache`` hands each layer the prefix keys/values repeated along
   the batch and the new suffix keys/values, concatenated, without storing them (only one layer's
   copy exists at a time).

Both return log-probabilities (log-softmax over the full vocabulary at the answer position)
gathered at ``readout_ids``; they agree to float rounding (the tests check 1e-4).

Model families: 1-D RoPE decoders (LLaVA/Llama, Mistral, Idefics3/SmolVLM, text LLMs) use
explicit positions. Multimodal-RoPE models (Qwen2-VL family: the inner model has
``get_rope_index`` and ``rope_deltas``) compute their 3-D prefix positions themselves from the
attention mask (left padding is handled by ``get_rope_index``); the suffix (text only) then gets
1-D positions ``real_len + rope_delta + j``, which those models expand to their 3 rotary sections.
A model whose cache layers are not plain full-attention ``DynamicLayer`` (sliding-window or
linear-attention layers) raises ``PrefixCacheUnsupported``; callers fall back to
``naive_logprobs`` for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

#: keys of processor outputs that are per-token (shape (1, L)) besides input_ids/attention_mask;
#: they are padded with 0 and extended with 0 for text tokens
_SEQ_KEYS_PAD = {'mm_token_type_ids': 0, 'token_type_ids': 0}


class PrefixCacheUnsupported(RuntimeError):
    """The model's cache cannot be shared across a batch (use ``naive_logprobs``)."""


# -- the cache ---------------------------------------------------------------------------------
class _SharedPrefixLayer(DynamicLayer):
    """One layer: read-only prefix keys/values (P, H, L, D), repeated ``repeats`` times along the
    batch on the fly; the suffix states are concatenated and returned but never stored."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, repeats: int) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.repeats = repeats
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.cat([self.keys.repeat_interleave(self.repeats, dim=0), key_states], dim=-2)
        values = torch.cat([self.values.repeat_interleave(self.repeats, dim=0), value_states],
                           dim=-2)
        return keys, values


class SharedPrefixCache(Cache):
    """A read-only view of a filled prefix cache for a batch of P*``repeats`` suffix rows.

    Row ``p * repeats + q`` sees prefix row ``p``. ``get_seq_length()`` is the prefix length L,
    so masks are built for L + suffix length keys.
    """

    def __init__(self, prefix: Cache, repeats: int) -> None:
        layers = []
        for i, layer in enumerate(prefix.layers):
            if type(layer) is not DynamicLayer or layer.keys is None:
                raise PrefixCacheUnsupported(
                    f'cache layer {i} is a {type(layer).__name__}; shared-prefix scoring supports '
                    'full-attention DynamicLayer caches only')
            layers.append(_SharedPrefixLayer(layer.keys, layer.values, repeats))
        super().__init__(layers=layers)


# -- inputs -----------------------------------------------------------------------------------
def seq_len(inputs: Mapping[str, torch.Tensor]) -> int:
    return int(inputs['input_ids'].shape[-1])


def collate_left(items: Sequence[Mapping[str, torch.Tensor]], pad_id: int
                 ) -> dict[str, torch.Tensor]:
    """Batch per-person model inputs (each with batch dimension 1) with left padding.

    Per-token tensors (``input_ids`` padded with ``pad_id``, ``attention_mask`` and
    ``mm_token_type_ids``/``token_type_ids`` with 0) are left-padded to the longest sequence;
    every other tensor (pixel values, image grids) is concatenated along dim 0, as processors do
    for a batch.

    Args:
        items: one mapping per person, e.g. a processor output for one prompt and one image:
            ``input_ids`` (1, L_p), ``attention_mask`` (1, L_p), ``pixel_values`` (...).

    Returns:
        ``input_ids`` (P, L), ``attention_mask`` (P, L), ... with L = max L_p.
    """
    length = max(seq_len(it) for it in items)
    out: dict[str, torch.Tensor] = {}
    for key in items[0]:
        tensors = [it[key] for it in items]
        if key in ('input_ids', 'attention_mask') or key in _SEQ_KEYS_PAD:
            value = pad_id if key == 'input_ids' else _SEQ_KEYS_PAD.get(key, 0)
            rows = []
            for t in tensors:
                pad = torch.full((1, length - t.shape[-1]), value, dtype=t.dtype, device=t.device)
                rows.append(torch.cat([pad, t], dim=-1))
            out[key] = torch.cat(rows, dim=0)
        elif isinstance(tensors[0], torch.Tensor):
            out[key] = torch.cat(tensors, dim=0)
        else:
            out[key] = tensors[0]
    return out


def extend_inputs(inputs: Mapping[str, torch.Tensor], suffix: Sequence[int]
                  ) -> dict[str, torch.Tensor]:
    """One person's full sequence ``prefix + suffix`` (text-only suffix), batch dimension 1."""
    out = dict(inputs)
    ids = inputs['input_ids']
    ext = torch.tensor([list(suffix)], dtype=ids.dtype, device=ids.device)
    out['input_ids'] = torch.cat([ids, ext], dim=-1)
    n = len(suffix)
    for key in ('attention_mask', *_SEQ_KEYS_PAD):
        if key in inputs:
            t = inputs[key]
            fill = 1 if key == 'attention_mask' else _SEQ_KEYS_PAD[key]
            out[key] = torch.cat([t, torch.full((t.shape[0], n), fill, dtype=t.dtype,
                                                device=t.device)], dim=-1)
    return out


def to_device(inputs: Mapping[str, Any], device: torch.device, dtype: torch.dtype | None
              ) -> dict[str, Any]:
    """Tensors to ``device``; floating tensors (pixel values) also to ``dtype``."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def uses_mrope(model: Any) -> bool:
    """True for multimodal-RoPE models (Qwen2-VL family) whose inner model keeps ``rope_deltas``."""
    inner = getattr(model, 'model', None)
    return inner is not None and hasattr(inner, 'get_rope_index') and hasattr(inner, 'rope_deltas')


def _gather_logprobs(logits: torch.Tensor, readout_ids: torch.Tensor) -> torch.Tensor:
    """log-softmax over the vocabulary (float32) gathered at ``readout_ids``: (..., K)."""
    return torch.log_softmax(logits.float(), dim=-1)[..., readout_ids]


# -- the two scorers --------------------------------------------------------------------------
@torch.inference_mode()
def shared_prefix_logprobs(model: Any, prefix: Mapping[str, torch.Tensor],
                           suffixes: Sequence[Sequence[int]], readout_ids: Sequence[int],
                           pad_id: int) -> torch.Tensor:
    """Log-probs of ``readout_ids`` after each suffix, with one prefix pass (module docstring).

    Args:
        model: a causal LM or image-text-to-text model (``forward`` taking ``past_key_values``,
            ``position_ids``, ``logits_to_keep``).
        prefix: left-padded batch (``collate_left``) on the model's device: ``input_ids``
            (P, L), ``attention_mask`` (P, L), plus vision inputs.
        suffixes: Q token-id lists (text only, no special tokens added), shared by all persons;
            each ends just before the answer token.
        readout_ids: K vocabulary ids to read.
        pad_id: id used for padding the suffixes (masked, never attended).

    Returns:
        float32 tensor (P, Q, K): log p(readout token | prefix_p + suffix_q).
    """
    device = prefix['input_ids'].device
    mask = prefix['attention_mask']
    n_persons, n_queries = mask.shape[0], len(suffixes)
    real_len = mask.long().sum(-1)  # (P,)
    mrope = uses_mrope(model)
    call = dict(prefix)
    if mrope:
        model.model.rope_deltas = None  # recomputed from the prompt (3-D positions)
    else:
        call['position_ids'] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    model(**call, past_key_values=cache, use_cache=True, logits_to_keep=1)
    next_pos = real_len.clone()
    if mrope:
        next_pos = next_pos + model.model.rope_deltas.reshape(-1).to(device)
    shared = SharedPrefixCache(cache, n_queries)

    # suffixes, left-padded: (Q, S)
    s_len = max(len(s) for s in suffixes)
    ids = torch.full((n_queries, s_len), pad_id, dtype=torch.long, device=device)
    smask = torch.zeros((n_queries, s_len), dtype=mask.dtype, device=device)
    for q, s in enumerate(suffixes):
        ids[q, s_len - len(s):] = torch.tensor(list(s), dtype=torch.long, device=device)
        smask[q, s_len - len(s):] = 1
    # positions of the real suffix tokens: next_pos[p] + 0..len-1 (pads get clamped values)
    offs = (smask.long().cumsum(-1) - 1).clamp(min=0)  # (Q, S)
    positions = next_pos[:, None, None] + offs[None]  # (P, Q, S)
    input_ids = ids.repeat(n_persons, 1)  # row p*Q + q
    attn = torch.cat([mask.repeat_interleave(n_queries, dim=0), smask.repeat(n_persons, 1)], -1)
    out = model(input_ids=input_ids, attention_mask=attn,
                position_ids=positions.reshape(n_persons * n_queries, s_len),
                past_key_values=shared, use_cache=True, logits_to_keep=1)
    readout = torch.as_tensor(list(readout_ids), dtype=torch.long, device=out.logits.device)
    logp = _gather_logprobs(out.logits[:, -1], readout)
    return logp.reshape(n_persons, n_queries, -1)


@torch.inference_mode()
def naive_logprobs(model: Any, prefix: Mapping[str, torch.Tensor],
                   suffixes: Sequence[Sequence[int]], readout_ids: Sequence[int]) -> torch.Tensor:
    """Reference for ``shared_prefix_logprobs``: the full sequence re-encoded per question.

    Args:
        prefix: ONE person's unpadded inputs (batch dimension 1) on the model's device.

    Returns:
        float32 tensor (Q, K).
    """
    readout = None
    rows = []
    for s in suffixes:
        full = extend_inputs(prefix, s)
        if uses_mrope(model):
            model.model.rope_deltas = None
        out = model(**full, use_cache=False, logits_to_keep=1)
        if readout is None:
            readout = torch.as_tensor(list(readout_ids), dtype=torch.long,
                                      device=out.logits.device)
        rows.append(_gather_logprobs(out.logits[0, -1], readout))
    return torch.stack(rows)


def score_items(model: Any, items: Sequence[Mapping[str, torch.Tensor]],
                suffixes: Sequence[Sequence[int]], readout_ids: Sequence[int], pad_id: int,
                device: Any, dtype: Any, batch_size: int, shared: bool = True
                ) -> tuple[torch.Tensor, bool]:
    """Readout log-probs for every person, ``batch_size`` persons per shared-prefix call.

    Args:
        items: one prefix input per person (batch dimension 1, any device).
        shared: try ``shared_prefix_logprobs``; on ``PrefixCacheUnsupported`` (or when False)
            use ``naive_logprobs`` person by person.

    Returns:
        (log-probs (P, Q, K) float32 on the CPU, whether the shared prefix could be used).
    """
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        if shared:
            prefix = to_device(collate_left(chunk, pad_id), device, dtype)
            try:
                out.append(shared_prefix_logprobs(model, prefix, suffixes, readout_ids,
                                                  pad_id).cpu())
                continue
            except PrefixCacheUnsupported:
                shared = False
        for it in chunk:
            one = to_device(it, device, dtype)
            out.append(naive_logprobs(model, one, suffixes, readout_ids)[None].cpu())
    return torch.cat(out), shared


# -- readout tokens and scores ----------------------------------------------------------------
YES_VARIANTS = ('yes', 'Yes', 'YES', ' yes', ' Yes', ' YES')
NO_VARIANTS = ('no', 'No', 'NO', ' no', ' No', ' NO')


def single_token_ids(tokenizer: Any, variants: Sequence[str]) -> list[int]:
    """Ids of the ``variants`` that the tokenizer encodes as exactly one token (deduplicated)."""
    ids: list[int] = []
    for v in variants:
        enc = tokenizer.encode(v, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(int(enc[0]))
    return ids


@dataclass(frozen=True)
class ReadoutTokens:
    """Vocabulary ids read at the answer position.

    ``yes``/``no``: ids of the single-token spellings of yes/no (``YES_VARIANTS``,
    ``NO_VARIANTS``). ``digits[d]``: ids of the single-token spellings of digit d ('d', ' d').
    ``ids`` is the flat list passed to the scorers; the ``*_pos`` fields index into it.
    """

    yes: tuple[int, ...]
    no: tuple[int, ...]
    digits: tuple[tuple[int, ...], ...]

    @property
    def ids(self) -> list[int]:
        return list(self.yes) + list(self.no) + [i for d in self.digits for i in d]

    @property
    def yes_pos(self) -> list[int]:
        return list(range(len(self.yes)))

    @property
    def no_pos(self) -> list[int]:
        return list(range(len(self.yes), len(self.yes) + len(self.no)))

    @property
    def digit_pos(self) -> list[list[int]]:
        start, out = len(self.yes) + len(self.no), []
        for d in self.digits:
            out.append(list(range(start, start + len(d))))
            start += len(d)
        return out


def readout_tokens(tokenizer: Any) -> ReadoutTokens:
    """The yes/no/digit ids for ``tokenizer``.

    Raises:
        ValueError: no single-token spelling of 'yes' or 'no' or of some digit, or a token
            shared by yes and no.
    """
    yes = single_token_ids(tokenizer, YES_VARIANTS)
    no = single_token_ids(tokenizer, NO_VARIANTS)
    if not yes or not no or set(yes) & set(no):
        raise ValueError(f'the tokenizer has no distinct single-token spellings of yes/no '
                         f'(yes ids {yes}, no ids {no}); score mode needs them: use mode=generate')
    digits = [single_token_ids(tokenizer, (str(d), f' {d}')) for d in range(10)]
    if not all(digits):
        raise ValueError('the tokenizer has no single-token digits 0-9; VAD cannot be scored')
    return ReadoutTokens(tuple(yes), tuple(no), tuple(tuple(d) for d in digits))


def yes_probability(logp: torch.Tensor, tokens: ReadoutTokens) -> torch.Tensor:
    """Normalised yes probability ``P(yes) / (P(yes) + P(no))`` from readout log-probs.

    P(yes) is the summed probability of the yes ids, P(no) of the no ids (next-token
    probabilities over the full vocabulary); computed as
    ``sigmoid(logsumexp(logp[yes]) - logsumexp(logp[no]))``.

    Args:
        logp: (..., K) log-probs at ``tokens.ids``.

    Returns:
        (...) in [0, 1].
    """
    ly = torch.logsumexp(logp[..., tokens.yes_pos], dim=-1)
    ln = torch.logsumexp(logp[..., tokens.no_pos], dim=-1)
    return torch.sigmoid(ly - ln)


def digit_expectation(logp: torch.Tensor, tokens: ReadoutTokens) -> torch.Tensor:
    """Expected digit ``sum_d d * P(d) / sum_d P(d)`` over d = 0..9, in [0, 9].

    Args:
        logp: (..., K) log-probs at ``tokens.ids``.

    Returns:
        (...) float32.
    """
    per_digit = torch.stack([torch.logsumexp(logp[..., pos], dim=-1)
                             for pos in tokens.digit_pos], dim=-1)  # (..., 10)
    probs = torch.softmax(per_digit, dim=-1)
    return (probs * torch.arange(10, dtype=probs.dtype, device=probs.device)).sum(-1)


__all__ = ['PrefixCacheUnsupported', 'ReadoutTokens', 'SharedPrefixCache', 'collate_left',
           'digit_expectation', 'extend_inputs', 'naive_logprobs', 'readout_tokens', 'score_items',
           'shared_prefix_logprobs', 'single_token_ids', 'to_device', 'uses_mrope',
           'yes_probability']
