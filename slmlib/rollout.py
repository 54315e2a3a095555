"""The ReAct loop: generate one step, parse it, act in an environment, append the observation.

Episodes run batched: up to ``batch_size`` tasks share each ``generate`` call (left padding), a
task that finishes leaves the batch and the next waiting task takes its place. Each episode keeps the
KV cache of its conversation (:class:`PrefixCache`), so a step prefills only what the last one added
(its step and observation); on a CPU a batch does so one episode at a time and then decodes together
from the episodes' caches laid side by side (:func:`decode_rows`). Generation of a
step stops as soon as its Action Input is a complete JSON object (or the model starts another
turn, or ends the sequence) instead of running to the token limit. The repeated-key guard ends an
Action Input at its first repeated top-level key and closes the object there; such steps are marked
``"guard": "repeated_key"`` in the predictions and counted in the metrics. With
``Decoding.decoding = "grammar"`` every step is decoded under its task's grammar (:mod:`slmlib.grammar`); a
step the grammar had to close to end within its token limit is marked ``"guard": "token_limit"``. Each step
records its new tokens (``"tokens"``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from slmlib import budget, encode, grammar, judge, lookup
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
    reuse_prefix: bool = True    # keep each episode's KV cache from step to step
    key_guard: bool = True       # end an Action Input at its first repeated top-level key and close it
    decoding: str = "free"       # "grammar": every step under its task's grammar (slmlib.grammar)
    lookup_tokens: int = 15      # a batch of one with its episode's cache drafts this many tokens a forward (slmlib.lookup); 0: off
    fit_window: int = 0          # a prompt that leaves a step less room than this has its older observations cut (0: off)
    history_chars: int = 256     # ... to this many characters, as training fits a trajectory (slmlib.budget)
    argument_orders: dict[str, list[str]] = field(default_factory=dict)  # tool -> the order the grammar writes its arguments; {}: its schema's


class PrefixCache:
    """One episode's KV cache and the token ids it holds.

    Each step's prompt is the previous prompt plus the step and its observation, so a step prefills
    only what is new instead of the whole conversation again.
    """

    def __init__(self):
        self.cache, self.ids = None, []

    def shared(self, prompt: list[int]) -> int:
        """How many of the prompt's tokens this cache holds (never its last, which is fed anew)."""
        keep = 0
        while keep < min(len(self.ids), len(prompt) - 1) and self.ids[keep] == prompt[keep]:
            keep += 1
        return keep

    def prepare(self, prompt: list[int]):
        from transformers import DynamicCache
        keep = self.shared(prompt)
        if self.cache is None or keep == 0:
            self.cache = DynamicCache()
        elif self.cache.get_seq_length() > keep:
            self.cache.crop(keep - self.cache.get_seq_length())
        return self.cache

    def update(self, sequence: list[int]) -> None:
        self.ids = sequence[:self.cache.get_seq_length()]

    def fill(self, model, prompt: list[int], others: Iterable[PrefixCache] = ()):
        """The cache of all of ``prompt`` but its last token (a batched step feeds every row's last token). Where
        another row's cache holds more of the prompt (a task just begun shares the system prompt with the others),
        that much of it is copied first."""
        donor, most = max(((c, c.shared(prompt)) for c in others), key=lambda pair: pair[1], default=(None, 0))
        if most > self.shared(prompt):
            self.cache, self.ids = copy.deepcopy(donor.cache), donor.ids[:most]
        cache = self.prepare(prompt)
        held = cache.get_seq_length()
        if held < len(prompt) - 1:
            with torch.no_grad():  # only the cache is wanted: no logits over the vocabulary for every new token
                model(input_ids=torch.tensor([prompt[held:-1]], device=model.device),
                      attention_mask=torch.ones(1, len(prompt) - 1, dtype=torch.long, device=model.device),
                      cache=cache, use_cache=True, logits_to_keep=1)
        self.ids = prompt[:-1]
        return cache


def side_by_side(caches: list, width: int):
    """One batch's cache from the rows' own: each left-padded to ``width`` tokens (the padding is masked)."""
    from transformers import DynamicCache
    batch = DynamicCache()
    for n in range(len(caches[0].layers)):
        keys, values = ([torch.nn.functional.pad(getattr(c.layers[n], part), (0, 0, width - c.get_seq_length(), 0))
                         for c in caches] for part in ("keys", "values"))
        batch.update(torch.cat(keys), torch.cat(values), n)
    return batch


def row_of(batch, row: int, padding: int):
    """One row's cache out of a batch's, without its left padding (copied, so the batch's can be freed)."""
    from transformers import DynamicCache
    cache = DynamicCache()
    for n, layer in enumerate(batch.layers):
        cache.update(layer.keys[row:row + 1, :, padding:].clone(), layer.values[row:row + 1, :, padding:].clone(), n)
    return cache


class Generated(NamedTuple):
    texts: list[str]     # each row's text up to its step end
    counts: list[int]    # its new tokens
    closed: list[bool]   # whether the grammar closed it to end within the token limit


def generate_steps(model, tokenizer, prompts: list[list[int]], dec: Decoding, caches: list[PrefixCache] | None = None,
                   grammars: list[str] | None = None) -> Generated:
    """Left-padded batch generation of each row's next step.

    With ``caches`` (one per prompt, each its episode's) the prefix each prompt shares with its episode's
    previous step is reused. With ``grammars`` (grammar decoding), each row is decoded under its own grammar.
    """
    if caches is not None and (len(caches) != len(prompts) or len({id(c) for c in caches}) != len(caches)):
        raise ValueError("each prompt of a batch needs a prefix cache of its own")
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    processors = LogitsProcessorList([grammar.GrammarConstraint(tokenizer, width, grammars, dec.max_new_tokens)]
                                    if grammars is not None else [])
    stopping = StoppingCriteriaList([StopAtStepEnd(tokenizer, width, dec.key_guard)] if dec.early_stop else [])
    if caches is not None and len(prompts) > 1:
        out = decode_rows(model, ids, mask, prompts, caches, dec, processors, stopping, pad, tokenizer.eos_token_id)
    elif caches is not None and dec.lookup_tokens > 0:
        out = lookup.decode(model, prompts[0], caches[0].prepare(prompts[0]), max_new_tokens=dec.max_new_tokens,
                            temperature=dec.temperature, tokens=dec.lookup_tokens, processors=processors,
                            stopping=stopping, eos=tokenizer.eos_token_id)
        caches[0].update(out[0].tolist())
    else:
        kwargs: dict[str, Any] = {"do_sample": dec.temperature > 0}
        if dec.temperature > 0:
            kwargs["temperature"] = dec.temperature
        if caches is not None:  # generate prefills what is new into the episode's cache
            kwargs["cache"] = caches[0].prepare(prompts[0])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=dec.max_new_tokens, pad_token_id=pad,
                                 top_p=None, top_k=None, logits_processor=processors, stopping_criteria=stopping, **kwargs)
        if caches is not None:
            caches[0].update(out[0].tolist())
    texts, counts = [], []
    for row in out[:, width:]:
        row = row.tolist()
        n = next((i for i, t in enumerate(row) if t in (tokenizer.eos_token_id, pad)), len(row))
        text = tokenizer.decode(row[:n], skip_special_tokens=True)
        end = step_end(text, dec.key_guard)
        texts.append(text[:end] if end is not None else text)
        counts.append(n)
    return Generated(texts, counts, list(processors[0].closing) if processors else [False] * len(texts))


def decode_rows(model, ids, mask, prompts: list[list[int]], caches: list[PrefixCache], dec: Decoding, processors,
                stopping, pad: int, eos: int) -> torch.Tensor:
    """``generate``'s decoding of a left-padded batch whose rows each bring their episode's cache: the caches laid
    side by side, and a row leaves the batch as soon as it ends, its cache handed back to its episode (``generate``
    would go on computing it as padding until the last row ends). Returns the rows' ids, as ``generate`` does."""
    width = ids.shape[1]
    kv = side_by_side([c.fill(model, p, caches[:row]) for row, (c, p) in enumerate(zip(caches, prompts))], width - 1)
    live, done = list(range(len(prompts))), torch.zeros(len(prompts), dtype=torch.bool, device=ids.device)
    feed = ids[:, -1:]

    def hand_back(index: int, row: int) -> None:
        caches[row].cache = row_of(kv, index, width - len(prompts[row]))
        caches[row].update(ids[row, width - len(prompts[row]):].tolist())

    for _ in range(dec.max_new_tokens):
        rows = mask[live]
        with torch.no_grad():
            logits = model(input_ids=feed, attention_mask=rows, position_ids=rows.sum(1, keepdim=True) - 1,
                           cache=kv, use_cache=True).logits[:, -1].float()
        scores = torch.zeros(len(prompts), logits.shape[-1], device=logits.device)
        scores[live] = logits
        scores = processors(ids, scores)
        if dec.temperature > 0:
            token = torch.multinomial(torch.softmax(scores / dec.temperature, -1), 1)[:, 0]
        else:
            token = scores.argmax(-1)
        token = torch.where(done, torch.full_like(token, pad), token)  # as generate pads a finished row
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        done |= token == eos
        if len(stopping):
            done |= stopping(ids, scores)
        ended = [i for i, row in enumerate(live) if done[row]]
        for i in ended:
            hand_back(i, live[i])
        if ended:
            keep = [i for i in range(len(live)) if i not in ended]
            if not keep:
                return ids
            kv.batch_select_indices(torch.tensor(keep, device=ids.device))
            live = [live[i] for i in keep]
        feed = token[live][:, None]
    for i, row in enumerate(live):  # at the token limit
        hand_back(i, row)
    return ids


def parse_generated(raw: str) -> tuple[tbf.Step | tbf.ParseFailure, bool]:
    """The parsed step of a generated text, and whether the repeated-key guard closed it."""
    text, guarded = close_step(raw)
    return tbf.parse_step(text), guarded


def advance(ep: Episode, written: Written, env) -> None:
    """Parse one written step and act on it."""
    parsed, guarded = parse_generated(written.text)
    record: dict[str, Any] = {"raw": written.text, "tokens": written.tokens}
    if written.closed or guarded:
        record["guard"] = "token_limit" if written.closed else "repeated_key"
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


class Written(NamedTuple):
    """What a policy wrote for one episode's next step."""
    text: str
    tokens: int            # new tokens
    seconds: float
    closed: bool = False   # the grammar closed it to end within the token limit


# A policy writes the next step of each episode of a batch, or None where the episode's conversation no
# longer fits the model's window. Models and scripted policies alike.
Policy = Callable[[list[Episode]], list[Written | None]]


def prompt_ids(state: dict, tokenizer, dec: Decoding) -> list[int]:
    """The prompt of a conversation's next step. With ``dec.fit_window`` (the training window), a prompt and step
    that would not fit it have every observation but the last cut to ``dec.history_chars``, as training cut the
    histories that did not fit (:func:`slmlib.budget.fit`): the model is not shown contexts longer, and older
    observations longer, than any it learned from."""
    ids = encode.encode(tbf.prompt_segments(state), tokenizer, add_eos=False).input_ids
    if dec.fit_window and len(ids) + dec.max_new_tokens > dec.fit_window:
        short = {**state, "messages": copy.deepcopy(state["messages"])}
        if budget.shorten_history(short, dec.history_chars):
            ids = encode.encode(tbf.prompt_segments(short), tokenizer, add_eos=False).input_ids
    return ids


def model_policy(model, tokenizer, dec: Decoding) -> Policy:
    """The model's next step for each episode, one ``generate`` call for the whole batch (seeded here)."""
    torch.manual_seed(dec.seed)
    def steps(episodes: list[Episode]) -> list[Written | None]:
        prompts, ready = [], []
        for i, ep in enumerate(episodes):
            ids = prompt_ids(ep.state(), tokenizer, dec)
            if len(ids) + dec.max_new_tokens <= dec.max_context:
                prompts.append(ids)
                ready.append(i)
        out: list[Written | None] = [None] * len(episodes)
        if ready:
            t0 = time.perf_counter()
            generated = generate_steps(model, tokenizer, prompts, dec,
                                           caches=[episodes[i].prefix for i in ready] if episodes[ready[0]].prefix else None,
                                           grammars=[episodes[i].grammar.text for i in ready] if dec.decoding == "grammar" else None)
            share = (time.perf_counter() - t0) / len(ready)
            for i, text, n, closed in zip(ready, *generated):
                out[i] = Written(text, n, share, closed)
        return out
    return steps


def scripted(write: Callable[[Episode], str]) -> Policy:
    """A policy that writes each step with a function of the episode (tests, judge floors)."""
    return lambda episodes: [Written(write(ep), 0, 0.0) for ep in episodes]


def reuses_prefix(model, dec: Decoding, batch_size: int) -> bool:
    # sliding-window layers (Gemma 3) cannot be cropped back to a shared prefix. A batch reuses its rows' caches on
    # a CPU, where prefill is what costs (bench step); a GPU prefills a padded batch in one cheap call, and fills
    # row by row there are not measured.
    return (dec.reuse_prefix and not getattr(model.config, "sliding_window", None)
            and (batch_size == 1 or model.device.type == "cpu"))


def new_episode(task: dict, dec: Decoding, reuse: bool = False, prefix: PrefixCache | None = None) -> Episode:
    """A task's episode; with ``reuse``, its KV cache is ``prefix`` (a finished episode's: the system prompt and
    tools they share are not prefilled again) or a new one."""
    return Episode(task, copy.deepcopy(task["messages"]), dec.max_steps, prefix=(prefix or PrefixCache()) if reuse else None,
                   grammar=task_grammar(task, dec))


def overflow(ep: Episode) -> None:
    ep.failure, ep.done = (ErrorLabel.NO_FINISH.value, "the conversation exceeds the model's window"), True


def play(policy: Policy, tasks: Iterable[dict], env, dec: Decoding, batch_size: int = 8,
         reuse: bool = False) -> Iterator[Episode]:
    """ReAct: roll out every task with ``policy``; yields episodes as they finish (not in input order)."""
    queue = iter(tasks)
    active: list[Episode] = []
    spare: list[PrefixCache] = []  # finished episodes' caches, handed to the next
    while True:
        while len(active) < batch_size and (task := next(queue, None)) is not None:
            active.append(new_episode(task, dec, reuse, spare.pop() if spare else None))
        if not active:
            return
        for ep, result in zip(active, policy(active)):
            if result is None:
                overflow(ep)
                continue
            ep.seconds += result.seconds
            ep.new_tokens += result.tokens
            advance(ep, result, env)
        still = []
        for ep in active:
            if ep.done:
                if ep.prefix is not None:
                    spare.append(ep.prefix)
                ep.prefix = None
                yield ep
            else:
                still.append(ep)
        active = still


def run(model, tokenizer, tasks: Iterable[dict], env, dec: Decoding, batch_size: int = 8) -> Iterator[Episode]:
    """Roll out every task with the model (ReAct); yields episodes as they finish (not in input order)."""
    return play(model_policy(model, tokenizer, dec), tasks, env, dec, batch_size, reuses_prefix(model, dec, batch_size))


def task_grammar(task: dict, dec: Decoding) -> grammar.TaskGrammar | None:
    return grammar.for_task(task, dec.max_new_tokens, dec.argument_orders) if dec.decoding == "grammar" else None


def episode_record(ep: Episode) -> dict:
    """What ``predictions.jsonl`` keeps of an episode (the verdict is added by the judge)."""
    record = {"id": ep.task["id"], "group": ep.task["group"], "steps": ep.steps, "finish": ep.finish,
              "failure": list(ep.failure) if ep.failure else None, "new_tokens": ep.new_tokens,
              "seconds": round(ep.seconds, 3), "messages": ep.messages}
    if ep.grammar is not None and ep.grammar.fallbacks:
        record["grammar_fallbacks"] = ep.grammar.fallbacks  # tools decoded with any JSON object as input
    return record
