"""Fit a trajectory into a context window (OPT-350m has 2,048 positions).

In order, and only as far as needed: observations are cut as ToolBench cuts them
(``text[:n] + "..."``); the tool list is trimmed to the tools the trajectory uses (or the task's
relevant / gold tools) plus ``k`` seeded distractors; the observations before the last step are cut
to a quarter of that; then steps go, as the loss decides:

- loss on every assistant turn: the trajectory is cut to its longest prefix that fits, ending at
  an assistant step. Every kept step keeps its whole history; dropping the oldest steps instead
  would leave the question followed by a late step (often ``Finish``) and teach the model to
  skip its calls.
- loss on the last turn (ToolLLaMA rows, each already one step): the oldest steps of the history
  go; the target (the last assistant turn) is never cut.

A trajectory that still does not fit is dropped, and every trim is counted.
"""
from __future__ import annotations

import copy
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from slmlib import toolbench_format as tbf
from slmlib.schema import called_tools


@dataclass
class TrimStats:
    """What fitting a set of trajectories cost, summed."""
    seen: int = 0
    fitted: int = 0
    dropped: int = 0
    observations_cut: int = 0
    tools_removed: int = 0
    steps_removed: int = 0
    tokens: Counter = field(default_factory=Counter)  # "before" / "after" totals
    calls_before: Counter = field(default_factory=Counter)  # tool calls by position ("1", "2", "3", "4+"), as given
    calls_kept: Counter = field(default_factory=Counter)    # and as fitted: what dropping the last steps costs the later calls

    def merge(self, other: "TrimStats") -> None:
        for k, v in other.__dict__.items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.__dict__.items()}


def truncate_observations(task: dict, max_chars: int) -> int:
    """Cut tool messages in place to ``max_chars`` + ``"..."``; returns how many were cut."""
    cut = 0
    for msg in task["messages"]:
        if msg["role"] == "tool" and len(msg["content"]) > max_chars:
            msg["content"] = msg["content"][:max_chars] + "..."
            cut += 1
    return cut


def needed_tools(task: dict) -> set[str]:
    names = set(called_tools(task)) | set(task.get("relevant_tools", []))
    names |= {c["name"] for c in task.get("gold_calls", [])}
    return names


def trim_tools(task: dict, distractors: int, seed: int = 0) -> int:
    """Keep the needed tools plus ``distractors`` others (seeded per task); returns how many went."""
    keep = needed_tools(task)
    others = [t["name"] for t in task["tools"] if t["name"] not in keep]
    rng = random.Random(f"{seed}:{task['id']}")
    keep |= set(rng.sample(others, min(distractors, len(others))))
    before = len(task["tools"])
    task["tools"] = [t for t in task["tools"] if t["name"] in keep]
    return before - len(task["tools"])


def shorten_history(task: dict, max_chars: int) -> int:
    """Cut every observation but the last to ``max_chars``; returns how many were cut."""
    tools = [m for m in task["messages"] if m["role"] == "tool"]
    cut = 0
    for msg in tools[:-1]:
        if len(msg["content"]) > max_chars + 3:
            msg["content"] = msg["content"][:max_chars] + "..."
            cut += 1
    return cut


def drop_oldest_step(task: dict) -> bool:
    """Remove the oldest assistant step (and its observation) that is not the last one."""
    msgs = task["messages"]
    steps = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if len(steps) < 2:
        return False
    i = steps[0]
    end = i + 1 + (1 if i + 1 < len(msgs) and msgs[i + 1]["role"] == "tool" else 0)
    del msgs[i:end]
    return True


def drop_last_step(task: dict) -> bool:
    """End the trajectory at its second-to-last assistant step (that step's observation goes too)."""
    msgs = task["messages"]
    steps = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    if len(steps) < 2:
        return False
    del msgs[steps[-1]:]
    while msgs[-1]["role"] == "tool":
        msgs.pop()
    return True


def calls_by_position(task: dict) -> Counter:
    """The trajectory's tool calls (Finish excluded) counted by their position in it: 1, 2, 3, 4 and later."""
    return Counter(str(k) if k < 4 else "4+" for k in range(1, len(called_tools(task)) + 1))


def make_counter(tokenizer):
    """Token length of rendered segments; segments are cached (system prompts repeat a lot)."""
    @lru_cache(maxsize=65536)
    def piece(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    def count(segments: list[tuple[str, bool]]) -> int:
        return sum(piece(s) for s, _ in segments) + 2  # BOS and EOS at most
    return count


def fit(task: dict, count, max_length: int, *, loss_on: str = "last", max_observation_chars: int = 1024,
        distractors: int = 4, seed: int = 0, stats: TrimStats | None = None) -> dict | None:
    """A trimmed copy of ``task`` whose rendering has at most ``max_length`` tokens, or None."""
    stats = stats if stats is not None else TrimStats()
    stats.seen += 1
    task = copy.deepcopy(task)
    length = lambda: count(tbf.segments(task, loss_on))  # noqa: E731
    before = length()
    stats.tokens["before"] += before
    stats.calls_before.update(calls_by_position(task))
    stats.observations_cut += truncate_observations(task, max_observation_chars)
    n = length()
    if n > max_length and needed_tools(task):
        stats.tools_removed += trim_tools(task, distractors, seed)
        n = length()
    if n > max_length:
        stats.observations_cut += shorten_history(task, max_observation_chars // 4)
        n = length()
    drop_step = drop_last_step if loss_on == "all" else drop_oldest_step
    while n > max_length and drop_step(task):
        stats.steps_removed += 1
        n = length()
    if n > max_length:
        stats.dropped += 1
        return None
    stats.fitted += 1
    stats.tokens["after"] += n
    stats.calls_kept.update(calls_by_position(task))
    return task
