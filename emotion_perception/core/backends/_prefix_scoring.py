"""Shared-prefix scoring: many short questions about one long prompt, in two model calls.

Score mode asks, for every person, 26 yes/no questions (one per EMOTIC category) and 3 rating
questions (valence, arousal, dominance) that share one long *prefix*: the chat turn start, the
marked image (hundreds of image tokens) and the category list. Each question continues the
prefix with its own *suffix* tokens (the question and the chat template's assistant start),
and each answer is read by teacher forcing its token sequences (``core.readout``: a digit is
``['▁', '5']`` on SentencePiece models, so the distribution after ``'▁'`` is needed too).

``tree_logprobs`` does it in two calls for a batch of P persons:

1. **Prefix call**: the P prefixes, left-padded (pads masked; 1-D RoPE positions
   ``cumsum(mask) - 1``, so each row starts at 0 as when alone; multimodal-RoPE models compute
   their 3-D positions themselves). This fills a KV cache (P, heads, L, head_dim) per layer.
2. **Tree call**: all question suffixes *and* the answer prefixes hung under them form one token
   trie (``QuestionTree``): common tokens (the shared question wording) appear once. The trie's N
   nodes are ONE row per person, after its prefix; a 4-D attention mask lets node i attend to its
   person's real prefix tokens and to its own trie ancestors only, and node i gets position
   ``next_pos + depth(i)``, exactly the position it has in its own question's full prompt. So
   every read-out equals a separate full forward pass of that question (the naive reference),
   while the prefix is read once per person and never copied: the cache grows to (L + N) tokens
   per person, N <= the sum of all suffix lengths. ``logits_to_keep`` projects only the read-out
   nodes onto the vocabulary.

Both paths return, per person and per read-out, the log-probabilities (log-softmax over the full
vocabulary) of the requested token ids.

Models whose cache cannot be extended like this fall back to ``per_question_logprobs`` (one full
forward pass per question and answer prefix: slower, same numbers): cache layers other than
full-attention ``DynamicLayer`` (linear attention, hybrid caches), sliding-window layers when
prefix + tree depth exceeds the window, and attention implementations without arbitrary masks
(flash attention). ``TreeUnsupported`` says why. ``naive_sequence_logprobs`` is the test
reference: one forward pass per question *and per answer token sequence*, teacher forced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from ..readout import AnswerPlan, ReadoutError

#: keys of processor outputs that are per-token (shape (P, L)) besides input_ids/attention_mask;
#: text tokens get 0
_SEQ_KEYS_PAD = {'mm_token_type_ids': 0, 'token_type_ids': 0}
#: attention implementations that accept an arbitrary 4-D additive mask
_MASKABLE_ATTENTION = ('sdpa', 'eager')


class TreeUnsupported(RuntimeError):
    """The model cannot score the question tree on a shared prefix (the message says why)."""


# -- the question tree -------------------------------------------------------------------------
@dataclass(frozen=True)
class QuestionTree:
    """All questions' suffix tokens and answer prefixes of one person as one token trie.

    Attributes:
        tokens: (N,) token id of each node (nodes in insertion order; parents first).
        parent: (N,) index of the parent node, -1 for nodes hanging from the prefix.
        depth: (N,) 0 for the first suffix token.
        readouts: (question index, answer-plan position index, node index) for every position
            at which a distribution is read, questions in order.
        ancestors: (N, N) bool: ``ancestors[i, j]`` iff node j is node i or one of its ancestors.
    """

    tokens: torch.Tensor
    parent: torch.Tensor
    depth: torch.Tensor
    readouts: tuple[tuple[int, int, int], ...]
    ancestors: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    @property
    def max_depth(self) -> int:
        return int(self.depth.max().item()) + 1 if self.size else 0

    @classmethod
    def build(cls, suffixes: Sequence[Sequence[int]], plans: Sequence[AnswerPlan]
              ) -> 'QuestionTree':
        """The trie of ``suffixes[q] + p`` for every question q and every position p of
        ``plans[q]`` (``plans[q] is None``: the question is not read at all).

        Raises:
            ValueError: an empty suffix (a question must add at least one token).
        """
        tokens: list[int] = []
        parent: list[int] = []
        depth: list[int] = []
        children: dict[tuple[int, int], int] = {}
        readouts: list[tuple[int, int, int]] = []

        def node(par: int, tok: int) -> int:
            key = (par, int(tok))
            if key not in children:
                children[key] = len(tokens)
                tokens.append(int(tok))
                parent.append(par)
                depth.append(depth[par] + 1 if par >= 0 else 0)
            return children[key]

        for q, (suffix, plan) in enumerate(zip(suffixes, plans)):
            if plan is None:
                continue
            if not suffix:
                raise ValueError(f'question {q} has no suffix tokens')
            end = -1
            for tok in suffix:
                end = node(end, tok)
            for k, pos in enumerate(plan.positions):
                cur = end
                for tok in pos:
                    cur = node(cur, tok)
                readouts.append((q, k, cur))
        n = len(tokens)
        anc = torch.zeros((n, n), dtype=torch.bool)
        for i in range(n):  # parents come before children
            if parent[i] >= 0:
                anc[i] = anc[parent[i]]
            anc[i, i] = True
        return cls(torch.tensor(tokens, dtype=torch.long), torch.tensor(parent, dtype=torch.long),
                   torch.tensor(depth, dtype=torch.long), tuple(readouts), anc)

    def request_ids(self, plans: Sequence[AnswerPlan]) -> list[int]:
        """The union of token ids read at any read-out (the columns gathered from the logits)."""
        ids = sorted({t for q, k, _ in self.readouts for t in plans[q].requests[k]})
        return ids


# -- inputs -----------------------------------------------------------------------------------
def seq_len(inputs: Mapping[str, torch.Tensor]) -> int:
    return int(inputs['input_ids'].shape[-1])


def select_rows(inputs: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Rows ``start:stop`` of a batch produced by a processor for several persons.

    Per-token tensors and per-image tensors with a leading batch dimension are sliced; Qwen-style
    flattened patches (``pixel_values`` with one row per patch, ``image_grid_thw`` per image) are
    sliced by the patch counts of the selected images; left padding shared by all rows is cut.
    """
    n = int(inputs['input_ids'].shape[0])
    out: dict[str, Any] = {}
    grid = inputs.get('image_grid_thw')
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            out[key] = value
        elif key == 'pixel_values' and grid is not None and value.shape[0] != n:
            counts = grid.prod(-1).tolist()
            lo = int(sum(counts[:start]))
            out[key] = value[lo:lo + int(sum(counts[start:stop]))]
        elif value.shape[0] == n:
            out[key] = value[start:stop]
        else:
            out[key] = value
    mask = out['attention_mask']
    pad = int((mask.any(0).long().cumsum(0) == 0).sum())  # leading all-padding columns
    if pad:
        for key in ('input_ids', 'attention_mask', *_SEQ_KEYS_PAD):
            if key in out:
                out[key] = out[key][:, pad:]
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


def _gather(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log-softmax over the vocabulary (float32) gathered at ``ids``: (..., K)."""
    logits = logits.float()
    return logits.index_select(-1, ids) - torch.logsumexp(logits, dim=-1, keepdim=True)


class Float32Head(torch.nn.Module):
    """A model's LM head computed in float32 from its own (bf16 / fp16) weights.

    Score mode reads log-probabilities straight off the logits; a bf16 matmul rounds them to 8
    significant bits (a logit of 20 to steps of 0.125), a visible error in P(yes) / P(no). This
    head casts the final hidden states to float32 and multiplies by the weight upcast chunk by
    chunk (``CHUNK`` vocabulary rows at a time: no float32 copy of the whole head is kept), so
    the logits are the float32 product of the model's values. It wraps the original module, so
    tied input embeddings stay shared.
    """

    #: vocabulary rows upcast at a time (16384 x 1536 x 4 bytes = 100 MB at Qwen2-VL's width)
    CHUNK = 16384

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.float()
        out = torch.cat([torch.nn.functional.linear(x, w.float())
                         for w in self.head.weight.split(self.CHUNK)], dim=-1)
        return out if self.head.bias is None else out + self.head.bias.float()


def float32_readout(model: Any) -> bool:
    """Compute ``model``'s LM head in float32 (``Float32Head``) when its weights are bf16 or
    fp16 and not quantized; returns whether the head is (now) float32."""
    from .quantization import is_quantized_weight
    head = model.get_output_embeddings()
    if isinstance(head, Float32Head):
        return True
    if not isinstance(head, torch.nn.Linear) or is_quantized_weight(head.weight):
        return False
    if head.weight.dtype not in (torch.bfloat16, torch.float16):
        return head.weight.dtype == torch.float32
    model.set_output_embeddings(Float32Head(head))
    return True


def _text_config(model: Any) -> Any:
    cfg = model.config
    return getattr(cfg, 'text_config', None) or cfg


# -- the shared-prefix tree scorer --------------------------------------------------------------
def check_tree_support(model: Any, prefix_len: int, tree_depth: int) -> None:
    """Raise ``TreeUnsupported`` when ``tree_logprobs`` cannot be exact for this model."""
    impl = getattr(_text_config(model), '_attn_implementation', None) or getattr(
        model.config, '_attn_implementation', None)
    if impl is not None and impl not in _MASKABLE_ATTENTION:
        raise TreeUnsupported(f'attention implementation {impl!r} takes no custom masks')
    window = getattr(_text_config(model), 'sliding_window', None)
    if window and prefix_len + tree_depth >= int(window):
        raise TreeUnsupported(f'sliding-window attention (window {window}) shorter than prefix + '
                              f'question ({prefix_len} + {tree_depth} tokens)')


@torch.inference_mode()
def tree_logprobs(model: Any, prefix: Mapping[str, torch.Tensor], tree: QuestionTree,
                  read_ids: Sequence[int], stats: dict | None = None) -> torch.Tensor:
    """Log-probs of ``read_ids`` at every read-out of ``tree``, one prefix pass (module doc).

    Args:
        model: an image-text-to-text or causal LM (``forward`` taking ``past_key_values``,
            ``position_ids``, a 4-D ``attention_mask`` and a tensor ``logits_to_keep``).
        prefix: left-padded batch on the model's device: ``input_ids`` (P, L),
            ``attention_mask`` (P, L), plus vision inputs.
        tree: the question tree (shared by all persons).
        read_ids: K vocabulary ids to gather.
        stats: if given, receives 'kv_bytes' (the cache after the tree call), 'prefix_len' (L),
            'tree_nodes' (N) and 'persons' (P).

    Returns:
        float32 tensor (P, R, K), R = len(tree.readouts), on the model's output device.

    Raises:
        TreeUnsupported: the cache is not made of full-attention (or large enough
            sliding-window) layers, or the attention implementation takes no custom mask.
    """
    device = prefix['input_ids'].device
    mask = prefix['attention_mask']
    n_persons, length = mask.shape
    check_tree_support(model, length, tree.max_depth)
    real_len = mask.long().sum(-1)
    call = dict(prefix)
    mrope = uses_mrope(model)
    if mrope:
        model.model.rope_deltas = None  # recomputed from this prompt (3-D positions)
    else:
        call['position_ids'] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    model(**call, past_key_values=cache, use_cache=True, logits_to_keep=1)
    for i, layer in enumerate(cache.layers):
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) or layer.keys is None \
                or layer.keys.shape[-2] != length:
            raise TreeUnsupported(f'cache layer {i} ({type(layer).__name__}) cannot be extended '
                                  'by a masked question tree')
    next_pos = real_len.clone()
    if mrope:
        next_pos = next_pos + model.model.rope_deltas.reshape(-1).to(device)

    n = tree.size
    dtype = cache.layers[0].keys.dtype
    blocked = torch.finfo(dtype).min
    allowed = torch.cat([mask.bool()[:, None, :].expand(n_persons, n, length),
                         tree.ancestors.to(device)[None].expand(n_persons, n, n)], dim=-1)
    attn = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, blocked)
    input_ids = tree.tokens.to(device)[None].expand(n_persons, n)
    positions = next_pos[:, None] + tree.depth.to(device)[None]
    keep = torch.tensor([r[2] for r in tree.readouts], dtype=torch.long, device=device)
    out = model(input_ids=input_ids, attention_mask=attn[:, None], position_ids=positions,
                past_key_values=cache, use_cache=True, logits_to_keep=keep)
    if stats is not None:
        stats.update(kv_bytes=kv_cache_bytes(cache), prefix_len=length, tree_nodes=n,
                     persons=n_persons)
    ids = torch.as_tensor(list(read_ids), dtype=torch.long, device=out.logits.device)
    return _gather(out.logits, ids)


def kv_cache_bytes(cache: Any) -> int:
    """Bytes held by the keys and values of a transformers cache."""
    return sum(int(t.numel() * t.element_size()) for layer in cache.layers
               for t in (layer.keys, layer.values) if isinstance(t, torch.Tensor))


# -- the references -----------------------------------------------------------------------------
@torch.inference_mode()
def _last_logprobs(model: Any, full: Mapping[str, torch.Tensor], keep: int,
                   ids: torch.Tensor | None = None) -> torch.Tensor:
    if uses_mrope(model):
        model.model.rope_deltas = None
    out = model(**full, use_cache=False, logits_to_keep=keep)
    logits = out.logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp if ids is None else logp[..., ids]


def per_question_logprobs(model: Any, prefix: Mapping[str, torch.Tensor], tree: QuestionTree,
                          suffixes: Sequence[Sequence[int]], plans: Sequence[AnswerPlan],
                          read_ids: Sequence[int]) -> torch.Tensor:
    """Fallback of ``tree_logprobs`` for ONE person (batch 1, unpadded): a full forward pass of
    ``prefix + suffix_q + answer prefix`` per read-out. Returns (1, R, K)."""
    ids = None
    rows = []
    for q, k, _ in tree.readouts:
        full = extend_inputs(prefix, list(suffixes[q]) + list(plans[q].positions[k]))
        if ids is None:
            ids = torch.as_tensor(list(read_ids), dtype=torch.long, device=prefix['input_ids'].device)
        lp = _last_logprobs(model, full, 1)
        rows.append(lp[-1, ids.to(lp.device)])
    return torch.stack(rows)[None]


def naive_sequence_logprobs(model: Any, prefix: Mapping[str, torch.Tensor],
                            suffix: Sequence[int], sequence: Sequence[int]) -> float:
    """Reference: log P(sequence | prefix + suffix) by ONE full forward pass of
    ``prefix + suffix + sequence[:-1]``, teacher forced (ONE person, batch 1, unpadded)."""
    full = extend_inputs(prefix, list(suffix) + list(sequence[:-1]))
    lp = _last_logprobs(model, full, len(sequence))
    return float(sum(lp[j, int(t)] for j, t in enumerate(sequence)))


def score_batches(model: Any, batches: Sequence[Mapping[str, torch.Tensor]], tree: QuestionTree,
                  suffixes: Sequence[Sequence[int]], plans: Sequence[AnswerPlan],
                  device: Any, dtype: Any, use_tree: bool = True
                  ) -> tuple[torch.Tensor, bool, str]:
    """Read-out log-probs for every person of ``batches`` (processor outputs, CPU tensors).

    Args:
        use_tree: try ``tree_logprobs``; on ``TreeUnsupported`` (or when False) use
            ``per_question_logprobs`` person by person.

    Returns:
        (log-probs (P, R, K) float32 on the CPU in ``tree.request_ids(plans)`` order, whether
        the tree could be used, the reason when it could not).
    """
    read_ids = tree.request_ids(plans)
    out = []
    reason = ''
    for batch in batches:
        if use_tree:
            try:
                out.append(tree_logprobs(model, to_device(batch, device, dtype), tree,
                                         read_ids).cpu())
                continue
            except TreeUnsupported as exc:
                use_tree, reason = False, str(exc)
        n = int(batch['input_ids'].shape[0])
        for i in range(n):
            one = to_device(select_rows(batch, i, i + 1), device, dtype)
            out.append(per_question_logprobs(model, one, tree, suffixes, plans, read_ids).cpu())
    return torch.cat(out), use_tree, reason


def readout_outcomes(logp: torch.Tensor, tree: QuestionTree, plans: Sequence[AnswerPlan],
                     n_questions: int) -> list[list[Any]]:
    """Per person and question, the outcome log-probs (``AnswerPlan.outcome_logprobs``) from the
    (P, R, K) read-outs; None for questions without a plan."""
    read_ids = tree.request_ids(plans)
    col = {t: j for j, t in enumerate(read_ids)}
    arr = logp.double().numpy()
    result = []
    for p in range(arr.shape[0]):
        per_q: list[list[dict[int, float]]] = [[{} for _ in (pl.positions if pl else ())]
                                               for pl in plans]
        for r, (q, k, _) in enumerate(tree.readouts):
            per_q[q][k] = {t: arr[p, r, col[t]] for t in plans[q].requests[k]}
        result.append([plans[q].outcome_logprobs(per_q[q]) if plans[q] is not None else None
                       for q in range(n_questions)])
    return result


# -- the prompts of score mode -----------------------------------------------------------------
def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class ScorePrompts:
    """Everything score mode computes once at load: the question suffixes tokenized as in full
    prompts, the answer plans, the question tree.

    The full prompt of question q is ``head + queries[q] + tail``. ``head`` is tokenized with
    the image(s) per person; each question's tokens are taken from the tokenization of its
    whole prompt, after the tokens it shares with ``head`` alone, so no score depends on a token
    split that no real prompt has (SentencePiece writes 'Does' after a newline, not '▁Does').
    If the end of ``head`` tokenizes differently inside the full prompts, the last
    ``head_drop`` tokens of the encoded head are removed and belong to the suffixes.

    Attributes:
        head: the rendered text shared by all questions (chat start, image, category list).
        head_drop: trailing tokens of the encoded head that must be removed (usually 0).
        suffixes: per question, its token ids after the (trimmed) head.
        plans: per question, its answer plan (None: the question is not read: VAD without
            any writable digit).
        tree: the question tree of ``suffixes`` and ``plans``.
        n_categories: the first ``n_categories`` questions are yes/no, the rest 0-9 ratings.
        vad_reason: why VAD is NaN or partial ('' when every digit can be written).
    """

    head: str
    head_drop: int
    suffixes: tuple[tuple[int, ...], ...]
    plans: tuple[AnswerPlan | None, ...]
    tree: QuestionTree
    n_categories: int
    vad_reason: str = ''

    @classmethod
    def build(cls, tokenize: Any, head: str, tail: str, queries: Sequence[str],
              n_categories: int, unk_id: int | None = None) -> 'ScorePrompts':
        """Tokenize the full prompts (``tokenize``: text -> ids as the model gets them).

        Raises:
            ReadoutError: yes/no cannot be written after the prompt (score mode impossible).
        """
        from .scoring_plan import one_by_one, plan_answers
        prompts = [head + q + tail for q in queries]
        ids = one_by_one(tokenize)([head, *prompts])
        head_ids, full = ids[0], ids[1:]
        common = min(common_prefix_len(head_ids, f) for f in full)
        suffixes = tuple(tuple(f[common:]) for f in full)
        plans, vad_reason, _ = plan_answers(one_by_one(tokenize), prompts, n_categories, unk_id)
        return cls(head, len(head_ids) - common, suffixes, tuple(plans),
                   QuestionTree.build(suffixes, plans), n_categories, vad_reason)

    @property
    def suffix_tokens(self) -> int:
        """Tokens of all questions' suffixes and answer prefixes if each were separate."""
        return sum(len(s) + sum(len(p) for p in plan.positions)
                   for s, plan in zip(self.suffixes, self.plans) if plan is not None)

    def trim(self, encoded: dict[str, Any]) -> dict[str, Any]:
        """Remove the ``head_drop`` trailing tokens from a processor output of ``head``."""
        if not self.head_drop:
            return encoded
        out = dict(encoded)
        for key in ('input_ids', 'attention_mask', *_SEQ_KEYS_PAD):
            if key in out and isinstance(out[key], torch.Tensor):
                out[key] = out[key][:, :-self.head_drop]
        return out

    def naive_results(self, model: Any, prefix: Mapping[str, torch.Tensor],
                      questions: Sequence[int] | None = None
                      ) -> tuple[list[float], list[float]]:
        """The independent reference of ``results`` for ONE person (batch 1, unpadded, on the
        model's device): one full forward pass per question and answer token sequence
        (``naive_sequence_logprobs``), outcome probabilities summed over spellings, then
        ``P(yes) / (P(yes) + P(no))`` and ``1 + sum_d d P(d) / sum_d P(d)`` written out here.

        Args:
            questions: indices to compute (None: all); the others are NaN.

        Returns:
            (26 category scores, 3 VAD values).
        """
        import numpy as np
        probs: list[Any] = []
        for q, plan in enumerate(self.plans):
            if plan is None or (questions is not None and q not in questions):
                probs.append(None)
                continue
            probs.append(np.array([sum(np.exp(naive_sequence_logprobs(model, prefix,
                                                                      self.suffixes[q], seq))
                                       for seq in seqs) for seqs in plan.sequences]))
        cats = [p[0] / (p[0] + p[1]) if p is not None else np.nan
                for p in probs[:self.n_categories]]
        vad = [1.0 + float((p * np.arange(10)).sum() / p.sum()) if p is not None else np.nan
               for p in probs[self.n_categories:]]
        return cats, vad

    def results(self, logp: torch.Tensor) -> list[tuple[Any, tuple[float, float, float]]]:
        """Per person: (26 scores float32 array, (valence, arousal, dominance) on 1-10 or NaN)."""
        from .scoring_plan import read_scores
        out = []
        for per_q in readout_outcomes(logp, self.tree, self.plans, len(self.plans)):
            out.append(read_scores(per_q, self.n_categories))
        return out


__all__ = ['Float32Head', 'QuestionTree', 'ReadoutError', 'ScorePrompts', 'TreeUnsupported',
           'check_tree_support', 'common_prefix_len', 'extend_inputs', 'float32_readout',
           'kv_cache_bytes', 'naive_sequence_logprobs', 'per_question_logprobs',
           'readout_outcomes', 'score_batches', 'select_rows', 'seq_len', 'to_device',
           'tree_logprobs', 'uses_mrope']
