"""The ReAct loop: generate one step, parse it, act in an environment, append the observation.

Episodes run batched: up to ``batch_size`` tasks share each ``generate`` call (left padding), a
task that finishes leaves the batch and the next waiting task takes its place. Generation of a
step stops as soon as its Action Input is a complete JSON object (or the model starts another
turn, or ends the sequence) instead of running to the token limit. The repeated-key guard ends an
Action Input at its first repeated top-level key and closes the object there; such steps are marked
``"guard": "repeated_key"`` in the predictions and counted in the metrics. With
``Decoding.decoding = "grammar"`` every step is decoded under its task's grammar (:mod:`slmlib.grammar`).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from slmlib import encode, grammar, judge
from slmlib import toolbench_format as tbf
from slmlib.errors import ErrorLabel
from slmlib.schema import FINISH

TURN_MARKERS = ("\nFunction:", "\nUser:", "\nAssistant:", "\nSystem:")


def scan_object(text: str, start: int) -> tuple[int | None, int | None]:
    """Scan the JSON object that starts at ``text[start:]`` (after spaces).

    Returns (index just past the object, or None while it is unfinished; index of the top-level
    comma before the first repeated top-level key, or None). A small model that loses track of an
    argument object repeats its keys until the token limit; the second index is where to close it.
    """
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None, None
    depth, in_str, esc = 0, False, False
    keys, key_start, expect_key, last_comma = set(), None, False, None
    for j in range(i, len(text)):
        c = text[j]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
                if key_start is not None:
                    key, key_start = text[key_start:j], None
                    if key in keys:
                        return None, last_comma
                    keys.add(key)
        elif c == '"':
            in_str = True
            if expect_key:
                key_start, expect_key = j + 1, False
        elif c in "{[":
            depth += 1
            expect_key = depth == 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return j + 1, None
        elif c == "," and depth == 1:
            last_comma, expect_key = j, True
        elif c not in " \t\n\r":
            expect_key = False
    return None, None


def step_end(text: str, key_guard: bool = True) -> int | None:
    """Where a generated step is complete: after its Action Input object, or at a turn marker.

    Text that does not begin with ``Thought: `` can never parse, so it ends as soon as that shows.
    With ``key_guard``, an Action Input object that repeats a top-level key ends before that key
    (:func:`close_step` then closes the object).
    """
    head = text.lstrip()
    opening = tbf.THOUGHT.lstrip("\n")
    if len(head) >= len(opening) and not head.startswith(opening):
        return len(text) - len(head) + len(opening)  # the earliest point where that is certain
    cut = min((i for i in (text.find(m) for m in TURN_MARKERS) if i >= 0), default=None)
    k = text.find(tbf.ACTION_INPUT)
    if k >= 0 and (cut is None or k < cut):
        end, repeated = scan_object(text, k + len(tbf.ACTION_INPUT))
        if end is not None:
            return end
        if key_guard and repeated is not None:
            return repeated + 1  # keep the comma: close_step knows the cut by it
        line_end = text.find("\n", k + len(tbf.ACTION_INPUT))  # not an object: the line ends it
        if line_end >= 0 and not text[k + len(tbf.ACTION_INPUT):].lstrip().startswith("{"):
            return line_end
    return cut


def close_step(text: str) -> tuple[str, bool]:
    """A generated step ready to parse, and whether the repeated-key guard closed its Action Input.

    ``text`` is already cut by :func:`step_end`: an object cut at a top-level comma (the guard's
    cut) gets its closing brace; anything else is left as it is.
    """
    k = text.find(tbf.ACTION_INPUT)
    if k < 0 or not text.endswith(","):
        return text, False
    closed = text[:-1] + "}"
    end, _ = scan_object(closed, k + len(tbf.ACTION_INPUT))
    return (closed, True) if end == len(closed) else (text, False)


class StopAtStepEnd(StoppingCriteria):
    def __init__(self, tokenizer, prompt_len: int, key_guard: bool = True):
        self.tokenizer, self.prompt_len, self.key_guard = tokenizer, prompt_len, key_guard

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([step_end(t, self.key_guard) is not None for t in texts], device=input_ids.device)


@dataclass
class Episode:
    """One task's rollout: the growing conversation and what happened at each step."""
    task: dict
    messages: list[dict]
    max_steps: int = 10          # tool calls allowed before the episode ends unfinished
    steps: list[dict] = field(default_factory=list)
    done: bool = False
    finish: dict | None = None   # parsed Finish arguments
    failure: tuple[str, str] | None = None  # (label, detail) that ended the episode early
    new_tokens: int = 0
    seconds: float = 0.0
    prefix: PrefixCache | None = None  # the KV cache of its conversation, when steps run one at a time
    grammar: grammar.TaskGrammar | None = None  # its step grammar, under grammar decoding

    def state(self) -> dict:
        return {**self.task, "messages": self.messages}


@dataclass
class Decoding:
    max_steps: int = 10
    max_new_tokens: int = 256
    temperature: float = 0.0
    max_context: int = 2048
    seed: int = 0
    early_stop: bool = True      # stop each row at its step's end (off: run to the token limit, then cut)
    reuse_prefix: bool = True    # at batch size 1, keep each episode's KV cache from step to step
    key_guard: bool = True       # end an Action Input at its first repeated top-level key and close it
    decoding: str = "free"       # "grammar": every step under its task's grammar (slmlib.grammar)


class PrefixCache:
    """One episode's KV cache and the token ids it holds.

    Each step's prompt is the previous prompt plus the step and its observation, so a step run
    alone (a batch of one) prefills only what is new instead of the whole conversation again.
    """

    def __init__(self):
        self.cache, self.ids = None, []

    def prepare(self, prompt: list[int]):
        from transformers import DynamicCache
        keep = 0
        while keep < min(len(self.ids), len(prompt) - 1) and self.ids[keep] == prompt[keep]:
            keep += 1  # at least the prompt's last token is fed anew
        if self.cache is None or keep == 0:
            self.cache = DynamicCache()
        elif self.cache.get_seq_length() > keep:
            self.cache.crop(keep - self.cache.get_seq_length())
        return self.cache

    def update(self, sequence: list[int]) -> None:
        self.ids = sequence[:self.cache.get_seq_length()]


def generate_steps(model, tokenizer, prompts: list[list[int]], dec: Decoding, cache: PrefixCache | None = None,
                   grammars: list[str] | None = None) -> tuple[list[str], list[int]]:
    """Left-padded batch generation; returns each row's text up to its step end and its token count.

    With ``cache`` (one prompt only) the prefix it shares with the episode's previous step is reused.
    With ``grammars`` (grammar decoding), each row is decoded under its own grammar.
    """
    if cache is not None and len(prompts) != 1:
        raise ValueError("a prefix cache serves a batch of one")
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    kwargs: dict[str, Any] = {"do_sample": dec.temperature > 0}
    if dec.temperature > 0:
        kwargs["temperature"] = dec.temperature
    if dec.early_stop:
        kwargs["stopping_criteria"] = StoppingCriteriaList([StopAtStepEnd(tokenizer, width, dec.key_guard)])
    if grammars is not None:
        kwargs["logits_processor"] = LogitsProcessorList([grammar.GrammarConstraint(tokenizer, width, grammars)])
    if cache is not None:
        kwargs["cache"] = cache.prepare(prompts[0])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=dec.max_new_tokens,
                             pad_token_id=pad, top_p=None, top_k=None, **kwargs)
    if cache is not None:
        cache.update(out[0].tolist())
    texts, counts = [], []
    for row in out[:, width:]:
        row = row.tolist()
        n = next((i for i, t in enumerate(row) if t in (tokenizer.eos_token_id, pad)), len(row))
        text = tokenizer.decode(row[:n], skip_special_tokens=True)
        end = step_end(text, dec.key_guard)
        texts.append(text[:end] if end is not None else text)
        counts.append(n)
    return texts, counts


def parse_generated(raw: str) -> tuple[tbf.Step | tbf.ParseFailure, bool]:
    """The parsed step of a generated text, and whether the repeated-key guard closed it."""
    text, guarded = close_step(raw)
    return tbf.parse_step(text), guarded


def advance(ep: Episode, raw: str, env) -> None:
    """Parse one generated step and act on it."""
    parsed, guarded = parse_generated(raw)
    record: dict[str, Any] = {"raw": raw}
    if guarded:
        record["guard"] = "repeated_key"
    if isinstance(parsed, tbf.ParseFailure):
        record["error"] = parsed.label.value
        ep.steps.append(record)
        ep.failure, ep.done = (parsed.label.value, parsed.detail), True
        return
    record["step"] = {"thought": parsed.thought, "action": parsed.action, "action_input": parsed.action_input}
    ep.messages.append(tbf.step_message(parsed))
    if parsed.action == FINISH:
        ep.finish, ep.done = parsed.arguments(), True
        ep.steps.append(record)
        return
    record["observation"], ending = env.respond(ep.task, ep.steps, parsed.action, parsed.arguments())
    ep.messages.append({"role": "tool", "name": parsed.action, "content": record["observation"]})
    ep.steps.append(record)
    if ending is not None:
        ep.failure, ep.done = ending, True
        return
    calls = [judge.call_key(name, args) for name, args in judge.calls_of({"steps": ep.steps})]
    repeats = calls.count(calls[-1])
    if repeats > judge.REPEAT_LIMIT:  # the judge fails this episode whatever follows: stop spending steps on it
        ep.failure, ep.done = (ErrorLabel.REPEATED_CALL.value, f"the same call {repeats} times"), True
    elif len(calls) >= ep.max_steps:
        ep.done = True


# A policy writes the next step of each episode of a batch: (text, new tokens, seconds), or None where
# the episode's conversation no longer fits the model's window. Models and scripted policies alike.
Policy = Callable[[list[Episode]], list[tuple[str, int, float] | None]]


def model_policy(model, tokenizer, dec: Decoding) -> Policy:
    """The model's next step for each episode, one ``generate`` call for the whole batch (seeded here)."""
    torch.manual_seed(dec.seed)
    def steps(episodes: list[Episode]) -> list[tuple[str, int, float] | None]:
        prompts, ready = [], []
        for i, ep in enumerate(episodes):
            ids = encode.encode(tbf.prompt_segments(ep.state()), tokenizer, add_eos=False).input_ids
            if len(ids) + dec.max_new_tokens <= dec.max_context:
                prompts.append(ids)
                ready.append(i)
        out: list[tuple[str, int, float] | None] = [None] * len(episodes)
        if ready:
            t0 = time.perf_counter()
            texts, counts = generate_steps(model, tokenizer, prompts, dec,
                                           cache=episodes[ready[0]].prefix if len(ready) == 1 else None,
                                           grammars=[episodes[i].grammar.text for i in ready] if dec.decoding == "grammar" else None)
            share = (time.perf_counter() - t0) / len(ready)
            for i, text, n in zip(ready, texts, counts):
                out[i] = (text, n, share)
        return out
    return steps


def scripted(write: Callable[[Episode], str]) -> Policy:
    """A policy that writes each step with a function of the episode (tests, judge floors)."""
    return lambda episodes: [(write(ep), 0, 0.0) for ep in episodes]


def reuses_prefix(model, dec: Decoding, batch_size: int) -> bool:
    # sliding-window layers (Gemma 3) cannot be cropped back to a shared prefix
    return batch_size == 1 and dec.reuse_prefix and not getattr(model.config, "sliding_window", None)


def new_episode(task: dict, dec: Decoding, reuse: bool = False) -> Episode:
    return Episode(task, copy.deepcopy(task["messages"]), dec.max_steps, prefix=PrefixCache() if reuse else None,
                   grammar=task_grammar(task, dec))


def overflow(ep: Episode) -> None:
    ep.failure, ep.done = (ErrorLabel.NO_FINISH.value, "the conversation exceeds the model's window"), True


def play(policy: Policy, tasks: Iterable[dict], env, dec: Decoding, batch_size: int = 8,
         reuse: bool = False) -> Iterator[Episode]:
    """ReAct: roll out every task with ``policy``; yields episodes as they finish (not in input order)."""
    queue = iter(tasks)
    active: list[Episode] = []
    while True:
        while len(active) < batch_size and (task := next(queue, None)) is not None:
            active.append(new_episode(task, dec, reuse))
        if not active:
            return
        for ep, result in zip(active, policy(active)):
            if result is None:
                overflow(ep)
                continue
            text, n, seconds = result
            ep.seconds += seconds
            ep.new_tokens += n
            advance(ep, text, env)
        still = []
        for ep in active:
            if ep.done:
                ep.prefix = None  # free its KV cache
                yield ep
            else:
                still.append(ep)
        active = still


def run(model, tokenizer, tasks: Iterable[dict], env, dec: Decoding, batch_size: int = 8) -> Iterator[Episode]:
    """Roll out every task with the model (ReAct); yields episodes as they finish (not in input order)."""
    return play(model_policy(model, tokenizer, dec), tasks, env, dec, batch_size, reuses_prefix(model, dec, batch_size))


def task_grammar(task: dict, dec: Decoding) -> grammar.TaskGrammar | None:
    return grammar.for_task(task, dec.max_new_tokens) if dec.decoding == "grammar" else None


def episode_record(ep: Episode) -> dict:
    """What ``predictions.jsonl`` keeps of an episode (the verdict is added by the judge)."""
    record = {"id": ep.task["id"], "group": ep.task["group"], "steps": ep.steps, "finish": ep.finish,
              "failure": list(ep.failure) if ep.failure else None, "new_tokens": ep.new_tokens,
              "seconds": round(ep.seconds, 3), "messages": ep.messages}
    if ep.grammar is not None and ep.grammar.fallbacks:
        record["grammar_fallbacks"] = ep.grammar.fallbacks  # tools decoded with any JSON object as input
    return record
