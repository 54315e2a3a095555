"""Agents: how a model's steps become an episode. ``react`` is one chain, step after step until Finish
(:func:`slmlib.rollout.play`); ``dfsdt`` is ToolBench's depth-first search over such chains
(:mod:`slmlib.agents.dfsdt`). Both take a policy (a model, or a scripted one) and an environment
(:mod:`slmlib.envs`), and yield one record per task for the judge."""
from __future__ import annotations

from typing import Iterable, Iterator

from slmlib import rollout
from slmlib.config import SearchConfig

AGENTS = ("react", "dfsdt")


def run(agent: str, policy: rollout.Policy, tasks: Iterable[dict], env, dec: rollout.Decoding, batch_size: int = 8,
        reuse: bool = False, search: SearchConfig = SearchConfig()) -> Iterator[dict]:
    """Each task's record (``rollout.episode_record`` and, for a search, its tree), as the tasks end."""
    if agent == "react":
        return (rollout.episode_record(ep) for ep in rollout.play(policy, tasks, env, dec, batch_size, reuse))
    if agent == "dfsdt":
        from slmlib.agents import dfsdt
        return dfsdt.run(policy, tasks, env, dec, search, batch_size, reuse)
    raise ValueError(f"unknown agent {agent!r}: {' or '.join(AGENTS)}")
