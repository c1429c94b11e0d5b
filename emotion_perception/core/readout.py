"""How a yes/no or 0-9 answer is read from a language model's next-token probabilities.

Score mode asks a question and reads how likely each answer is, instead of generating text.
An answer is not one token: real tokenizers write ``'5'`` as ``['▁', '5']`` (SentencePiece)
and what the first answer token is depends on how the chat template's assistant prefix ends
(``'ASSISTANT:'`` + ``' yes'`` -> ``':', '▁yes'``). So, for each accepted *spelling* of each
*outcome* (``'yes'``, ``' Yes'``, ... for yes; ``'5'``, ``' 5'`` for the digit 5), this module
finds the token sequence the model would emit right after the rendered prompt, by tokenizing
``prompt + spelling`` and taking the ids after ``prompt``'s (``answer_sequences``). A spelling
whose tokens would change the prompt's own last tokens (a merge across the boundary), or that
needs the unknown token, is not expressible and is dropped (``AnswerPlan.dropped`` says why).

The probability of a sequence ``a1 .. an`` is computed exactly by teacher forcing,
``P(a1) * P(a2 | a1) * ... ``; sequences that share first tokens share those model positions
(an ``AnswerPlan`` is a token trie: ``positions`` are the prefixes at which the model's
next-token distribution is needed, root ``()`` first; ``requests[i]`` are the token ids read
there). An outcome's probability is the sum over its spellings' sequences. Read-outs:

* yes/no: ``score = P(yes) / (P(yes) + P(no))`` (``yes_probability``);
* digits 0..9: ``E[d] = sum_d d * P(d) / sum_d P(d)`` (``digit_expectation``); the VAD value on
  EMOTIC's 1..10 scale is ``1 + E[d]``.

Pure Python/numpy (no torch): the local backends and the remote (HTTP) backend share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

#: the accepted spellings of each answer (what a model may write right after the prompt)
YES_SPELLINGS: tuple[str, ...] = ('yes', 'Yes', 'YES', ' yes', ' Yes', ' YES')
NO_SPELLINGS: tuple[str, ...] = ('no', 'No', 'NO', ' no', ' No', ' NO')
DIGIT_SPELLINGS: tuple[tuple[str, ...], ...] = tuple((str(d), f' {d}') for d in range(10))

#: outcome names of the two question kinds
YES_NO = ('yes', 'no')
DIGITS = tuple(str(d) for d in range(10))

TokenIds = tuple[int, ...]


class ReadoutError(ValueError):
    """An answer set cannot be read with this tokenizer (e.g. no spelling of 'yes' exists)."""


def answer_sequences(tokenize: Callable[[str], Sequence[int]], prompt: str,
                     spellings: Sequence[str], unk_id: int | None = None
                     ) -> tuple[list[TokenIds], list[str]]:
    """Token sequences the model would emit after ``prompt`` for each of ``spellings``.

    Args:
        tokenize: text -> token ids, tokenizing a whole prompt as the model sees it (special
            tokens in the text parsed; a BOS, if the tokenizer adds one, is harmless since it
            is the same for ``prompt`` and ``prompt + spelling``).
        prompt: the full rendered prompt, ending with the assistant turn start.
        spellings: answer strings, e.g. ``('yes', ' yes')``.
        unk_id: the tokenizer's unknown-token id (a sequence containing it is dropped).

    Returns:
        (distinct non-empty sequences in spelling order, reasons for the dropped spellings).
    """
    return sequences_after(tokenize(prompt), [tokenize(prompt + s) for s in spellings],
                           spellings, unk_id)


def sequences_after(base: Sequence[int], fulls: Sequence[Sequence[int]],
                    spellings: Sequence[str], unk_id: int | None = None
                    ) -> tuple[list[TokenIds], list[str]]:
    """``answer_sequences`` from tokenizations already made (e.g. one batched call):
    ``base`` = the prompt's ids, ``fulls[i]`` = the ids of prompt + ``spellings[i]``."""
    base = list(base)
    seqs: list[TokenIds] = []
    dropped: list[str] = []
    for s, full in zip(spellings, fulls):
        full = list(full)
        if full[:len(base)] != base:
            dropped.append(f'{s!r}: its tokens merge with the end of the prompt')
            continue
        seq = tuple(int(i) for i in full[len(base):])
        if not seq:
            dropped.append(f'{s!r}: no tokens')
        elif unk_id is not None and unk_id in seq:
            dropped.append(f'{s!r}: needs the unknown token')
        elif seq not in seqs:
            seqs.append(seq)
    return seqs, dropped


@dataclass(frozen=True)
class AnswerPlan:
    """The token trie of one question kind's answers (see the module docstring).

    Attributes:
        outcomes: outcome names, e.g. ('yes', 'no') or ('0', ..., '9').
        sequences: per outcome, its distinct token sequences (may be empty: not expressible).
        positions: prefixes (token tuples, root ``()`` first) at which the next-token
            distribution is read.
        requests: per position, the token ids read there (sorted, distinct).
        dropped: why some spellings were not used.
    """

    outcomes: tuple[str, ...]
    sequences: tuple[tuple[TokenIds, ...], ...]
    positions: tuple[TokenIds, ...]
    requests: tuple[tuple[int, ...], ...]
    dropped: tuple[str, ...] = ()
    _index: Mapping[TokenIds, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_sequences(cls, outcomes: Sequence[str], sequences: Sequence[Sequence[TokenIds]],
                       dropped: Sequence[str] = ()) -> 'AnswerPlan':
        """Build the trie. Raises ReadoutError if one sequence belongs to two outcomes."""
        owner: dict[TokenIds, str] = {}
        for name, seqs in zip(outcomes, sequences):
            for s in seqs:
                if s in owner and owner[s] != name:
                    raise ReadoutError(f'the same tokens {list(s)} spell both {owner[s]!r} and '
                                       f'{name!r}')
                owner[s] = name
        needed: dict[TokenIds, set[int]] = {(): set()}
        for seqs in sequences:
            for s in seqs:
                for j, tok in enumerate(s):
                    needed.setdefault(tuple(s[:j]), set()).add(int(tok))
        positions = sorted(needed, key=lambda p: (len(p), p))
        index = {p: i for i, p in enumerate(positions)}
        return cls(tuple(outcomes), tuple(tuple(tuple(s) for s in seqs) for seqs in sequences),
                   tuple(positions), tuple(tuple(sorted(needed[p])) for p in positions),
                   tuple(dropped), index)

    @property
    def expressible(self) -> tuple[bool, ...]:
        """Per outcome: does at least one spelling have a token sequence?"""
        return tuple(bool(s) for s in self.sequences)

    @property
    def max_depth(self) -> int:
        """Length of the longest prefix position (extra tokens fed after the question)."""
        return max(len(p) for p in self.positions)

    def outcome_logprobs(self, position_logprobs: Sequence[Mapping[int, float]]) -> np.ndarray:
        """log P(outcome) from the log-probs read at each position.

        Args:
            position_logprobs: per position (``positions`` order), token id -> log-prob of that
                token at that position (next-token log-softmax over the full vocabulary); must
                hold every id of ``requests`` at that position.

        Returns:
            (n_outcomes,) float64: log of the summed probability of the outcome's sequences
            (``-inf`` for an outcome without sequences).
        """
        out = np.full(len(self.outcomes), -np.inf)
        for k, seqs in enumerate(self.sequences):
            terms = [sum(float(position_logprobs[self._index[tuple(s[:j])]][int(t)])
                         for j, t in enumerate(s)) for s in seqs]
            if terms:
                out[k] = np.logaddexp.reduce(np.asarray(terms, dtype=np.float64))
        return out


def yes_probability(outcome_logp: np.ndarray) -> np.ndarray:
    """``P(yes) / (P(yes) + P(no))`` from (..., 2) outcome log-probs (yes, no)."""
    lp = np.asarray(outcome_logp, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(lp[..., 1] - lp[..., 0]))


def digit_expectation(outcome_logp: np.ndarray) -> np.ndarray:
    """``sum_d d * P(d) / sum_d P(d)`` in [0, 9] from (..., 10) outcome log-probs.

    Digits without any spelling (log-prob -inf) simply get probability 0; when no digit at all
    is expressible the result is NaN.
    """
    lp = np.asarray(outcome_logp, dtype=np.float64)
    top = lp.max(axis=-1, keepdims=True)
    with np.errstate(invalid='ignore'):
        w = np.exp(lp - top)
        return (w * np.arange(lp.shape[-1])).sum(-1) / w.sum(-1)


__all__ = ['AnswerPlan', 'DIGITS', 'DIGIT_SPELLINGS', 'NO_SPELLINGS', 'ReadoutError',
           'YES_NO', 'YES_SPELLINGS', 'answer_sequences', 'sequences_after',
           'digit_expectation', 'yes_probability']
