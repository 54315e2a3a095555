"""Token ids and loss labels from rendered ``(text, learned)`` segments.

Each segment is tokenized on its own and the ids are concatenated, so the boundary between
context and learned text never falls inside a token, and a prompt at inference is tokenized
exactly as the same prefix was in training.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_learned(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a").input_ids
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def encode(segments: list[tuple[str, bool]], tokenizer, add_eos: bool = True,
           unlearned: dict[int, tuple[int, int]] | None = None) -> Encoded:
    """Concatenate per-segment ids; labels copy the learned ids, ``-100`` elsewhere.

    With ``add_eos`` the EOS token follows the last segment and is learned when that segment is.
    ``unlearned`` maps a segment's index to a character span of it whose tokens (those wholly inside)
    are not learned; the ids stay those of the whole segment, so lengths do not change.
    """
    ids: list[int] = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    labels: list[int] = [IGNORE] * len(ids)
    for i, (text, learned) in enumerate(segments):
        if learned and unlearned and i in unlearned:
            start, end = unlearned[i]
            out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            piece = out.input_ids
            labels.extend(IGNORE if start <= a and b <= end else t for t, (a, b) in zip(piece, out.offset_mapping))
        else:
            piece = tokenizer(text, add_special_tokens=False).input_ids
            labels.extend(piece if learned else [IGNORE] * len(piece))
        ids.extend(piece)
    if add_eos and segments:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id if segments[-1][1] else IGNORE)
    return Encoded(ids, labels)


def learned_text(enc: Encoded, tokenizer) -> list[str]:
    """The learned spans decoded one by one (for tests and the mask viewer)."""
    spans, cur = [], []
    for tok, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            cur.append(tok)
        elif cur:
            spans.append(tokenizer.decode(cur))
            cur = []
    if cur:
        spans.append(tokenizer.decode(cur))
    return spans
