"""Answers a call with the recorded response of the matching call in the task's ``replay``."""
from __future__ import annotations

from typing import Any

from slmlib.envs import Environment, no_such_function, observation, tool_of
from slmlib.values import same_value


class ReplayEnv(Environment):
    def call(self, task: dict, name: str, arguments: dict) -> str:
        if tool_of(task, name) is None:
            return no_such_function(name)
        for record in task.get("replay", []):
            if record["name"] == name and _matches(record["arguments"], arguments):
                return recorded(record["response"])
        return observation(error="No recorded response for these arguments; check the parameter values")


def recorded(response: Any) -> str:
    """A recorded response as an observation (some recordings are observations already)."""
    return observation(**response) if _is_observation(response) else observation(response)


def _is_observation(response: Any) -> bool:
    return isinstance(response, dict) and set(response) == {"error", "response"}


def _matches(recorded: dict, given: dict) -> bool:
    return set(recorded) == set(given) and all(same_value(recorded[k], given[k]) for k in recorded)
