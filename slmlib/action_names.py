"""Constrained decoding of the action name: after ``Action:`` only a declared tool's name (or Finish) can follow.

A small model writes names it half remembers: the API's provider instead of one of its endpoints,
a lowercase ``finish``. The environment answers those as calls to a tool that does not exist. Here
the logits are masked so that the text after the step's ``\\nAction:`` stays on course for
`` <name>\\n`` of one of the task's names; the thought before it and the Action Input after it are
generated freely. The names are compared as text, not as token sequences, so a name reached
through any tokenization is allowed.
"""
from __future__ import annotations

import functools
from bisect import bisect_left
from collections import defaultdict

import torch
from transformers import LogitsProcessor

from slmlib import toolbench_format as tbf
from slmlib.schema import FINISH

MARK = tbf.ACTION.rstrip()  # "\nAction:"; the space after it comes in the name's first token


def names_of(task: dict) -> list[str]:
    """The action names a task allows: its declared tools and Finish."""
    return [t["name"] for t in task["tools"]] + [FINISH]


class TokenTexts:
    """Every ordinary token's text, indexed to find the tokens that continue a string."""

    def __init__(self, tokenizer):
        special = set(tokenizer.all_special_ids)
        self.ids: dict[str, list[int]] = defaultdict(list)
        for i, text in enumerate(tokenizer.batch_decode([[i] for i in range(len(tokenizer))])):
            if text and i not in special:
                self.ids[text].append(i)
        self.sorted = sorted(self.ids)

    def on_course(self, rest: str) -> list[int]:
        """Tokens whose text is a prefix of ``rest``, or ``rest`` followed by more."""
        found = [i for k in range(1, len(rest) + 1) for i in self.ids.get(rest[:k], ())]
        j = bisect_left(self.sorted, rest)
        while j < len(self.sorted) and self.sorted[j].startswith(rest):
            if len(self.sorted[j]) > len(rest):
                found += self.ids[self.sorted[j]]
            j += 1
        return found


@functools.lru_cache(maxsize=4)
def token_texts(tokenizer) -> TokenTexts:
    return TokenTexts(tokenizer)


def allowed_tokens(generated: str, names: list[str], texts: TokenTexts) -> list[int] | None:
    """The tokens that may come next in a step generated so far; None where anything may.

    Only the name after the last ``\\nAction:`` is constrained, until its line ends. Text already
    off course for every name (it cannot be, when each step is decoded with this mask) is left alone.
    """
    a = generated.rfind(MARK)
    if a < 0:
        return None
    partial = generated[a + len(MARK):]
    if "\n" in partial:
        return None
    rests = {target[len(partial):] for target in (f" {name}\n" for name in names) if target.startswith(partial)}
    if not rests:
        return None
    return sorted({i for rest in rests for i in texts.on_course(rest)})


class ActionNameConstraint(LogitsProcessor):
    """Masks each row's logits while it writes an action name; ``names[row]`` are that row's choices."""

    def __init__(self, tokenizer, prompt_len: int, names: list[list[str]]):
        self.tokenizer, self.prompt_len, self.names = tokenizer, prompt_len, names
        self.texts = token_texts(tokenizer)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        for row, (text, names) in enumerate(zip(generated, self.names)):
            allowed = allowed_tokens(text, names, self.texts)
            if allowed is not None:
                keep = scores[row, allowed].clone()
                scores[row] = float("-inf")
                scores[row, allowed] = keep
        return scores
