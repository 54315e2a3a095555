"""Prompt-lookup decoding: several tokens a forward, the same text as one at a time.

A tool-calling step copies much of its prompt: tool and argument names from the tool list, values from the
query and from earlier observations, the ReAct literals. Where the last few tokens generated occurred before,
what followed them then is a guess (a *draft*) at what comes next. One forward of the model over the last
token and the draft scores every draft position at once; the tokens are then chosen one by one from those
scores exactly as one-at-a-time decoding would choose them (under the grammar, greedy or sampled), and the
draft is kept for as long as it agrees. At batch 1 a forward reads every weight and the whole KV cache
whatever the number of new tokens, so checking 15 costs a few times one token, not 15 times (README,
Performance: ``bench step --configs prefix_reuse prefix_reuse_lookup``).

Greedy, the text is that of ``generate`` (the same argmax at every position; in fp32 the scores of one
position do not depend on how many are computed with it beyond rounding). Sampled, each position's token is
drawn from the model's distribution there and a draft token is kept only when the draw equals it, so the
distribution of texts is that of sampling one token at a time, though not the same draws.
"""
from __future__ import annotations

import torch

LONGEST, SHORTEST = 4, 3  # n-gram sizes matched, longest first; a match of one or two tokens is mostly chance


def draft(ids: list[int], tokens: int, longest: int = LONGEST, shortest: int = SHORTEST) -> list[int]:
    """What followed the latest earlier occurrence of ``ids``' last n tokens (n from ``longest`` down to
    ``shortest``), at most ``tokens`` of it; [] when nothing matches. The latest, because a step repeats the
    observation or call it follows more often than the tool list far above."""
    for n in range(longest, shortest - 1, -1):
        if len(ids) <= n:
            continue
        tail = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):
            if ids[start:start + n] == tail:
                return ids[start + n:start + n + tokens]
    return []


def decode(model, prompt: list[int], cache, *, max_new_tokens: int, temperature: float, tokens: int,
           processors, stopping, eos: int) -> torch.Tensor:
    """One row's ``generate``: ``prompt`` and what follows it, as a ``(1, length)`` tensor. ``cache`` holds
    ``prompt``'s first tokens (any number short of all); on return it holds all but the last token returned.
    ``tokens``: the longest draft tried in one forward."""
    ids = torch.tensor([prompt], device=model.device)
    feed = prompt[cache.get_seq_length():]
    new = 0
    while True:
        guess = draft(ids[0].tolist(), min(tokens, max_new_tokens - new - 1))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([feed + guess], device=model.device), cache=cache, use_cache=True,
                           logits_to_keep=len(guess) + 1).logits[0].float()
        for i in range(len(guess) + 1):
            scores = processors(ids, logits[i:i + 1])  # the grammar takes the last token chosen, then masks
            if temperature > 0:
                token = torch.multinomial(torch.softmax(scores / temperature, -1), 1)[0]
            else:
                token = scores.argmax(-1)
            ids = torch.cat([ids, token[:, None]], 1)
            new += 1
            ended = token.item() == eos or new == max_new_tokens or (len(stopping) and bool(stopping(ids, scores)[0]))
            if ended or i == len(guess) or token.item() != guess[i]:
                break
        cache.crop(ids.shape[1] - 1 - cache.get_seq_length())  # the draft's rejected tail out; the last token is fed next
        if ended:
            return ids
        feed = [token.item()]
