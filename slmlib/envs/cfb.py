"""ComplexFuncBench's own protocol (``runner/base_runner.py``, ``utils/compare_method.py``) as an environment.

A call is compared with the golden calls not yet made (the task's ``replay``, in its order): one that
equals a golden call gets that call's recorded response. One that breaks the tool's schema gets
ComplexFuncBench's format message and may be retried. A well-formed call that matches nothing ends the
episode with their label: ``func_error`` (another function), ``param_missing`` / ``value_error`` (an
exact-match parameter of that function, ``cfb_exact_match_values.json``, absent or different), else
``param_missing`` / ``value_error`` / ``param_hallucination`` by the first difference; a call when no
golden call is left is ``func_hallucination``. The location look-ups are free: made or not, they are not
required. An answer (``Finish``) before every other golden call was made is ``stop_early``; after, the
episode is a ``success``. Their metrics: success over episodes, and call accuracy, golden calls matched
(look-ups included) over golden calls. Observations keep ToolBench's ``{"error", "response"}`` shape our
models read.

What differs, and why: the benchmark pairs a call with a golden one by embedding similarity and then
accepts it by comparing both calls' live API responses or by asking gpt-4o; offline we have neither, so a
call passes only by exact comparison (stricter). The packaging we read (``nestful-wrapper``) keeps the
golden calls in order but not in turns, so a call is compared with every golden call still open rather than
with its turn's. Their episodes have no step limit; ours end after ``max_steps`` calls (``no_finish``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from slmlib.envs import AutoEnv, Environment, observation, tool_of
from slmlib.envs.replay import recorded
from slmlib.errors import ErrorLabel
from slmlib.schema import FINISH

EXACT_MATCH = json.loads((Path(__file__).parent / "cfb_exact_match_values.json").read_text())
FREE_FUNCTIONS = ("Location_to_Lat_Long", "Search_Hotel_Destination", "Search_Attraction_Location",
                  "Search_Car_Location", "Search_Flight_Location", "Taxi_Search_Location")
AFTER_THE_LAST = ("func_hallucination", "Expected to stop. But Model continue to output function call.")
UNEXPECTED_CALL = {"api_status": True, "content": "There is a problem with your api call, please double-check for possible problems."}
# their ending labels, as the labels our judge and error analysis know
AS_OURS = {"func_error": ErrorLabel.WRONG_FUNC_NAME, "value_error": ErrorLabel.VALUE_ERROR,
           "param_missing": ErrorLabel.MISSING_REQUIRED, "param_hallucination": ErrorLabel.UNEXPECTED_PARAM,
           "func_hallucination": ErrorLabel.IRRELEVANCE}


def is_free(call: dict) -> bool:
    return call["name"] in FREE_FUNCTIONS or (call["name"] == "Search_Hotels" and call["arguments"].get("search_type") == "hotel")


def format_error(tool: dict | None, name: str, arguments: dict) -> str | None:
    """ComplexFuncBench's ``format_check`` message for a call, or None when it is well-formed."""
    if tool is None:
        return f"Function {name} is not defined in the function list."
    params = tool.get("parameters", {})
    props, required = params.get("properties", {}), params.get("required", [])
    if not set(required) <= set(arguments):
        return (f"Function {name} requires parameters {required}, but {list(arguments)} do not provide "
                f"{set(required) - set(arguments)}")
    if not set(arguments) <= set(props):
        return f"Function {name} does not have parameters {set(arguments) - set(props)}"
    kinds = {"string": (str, "a string"), "number": ((int, float), "a number"), "boolean": (bool, "a boolean"),
             "array": (list, "an array")}
    for key, value in arguments.items():
        kind = kinds.get(props[key].get("type"))
        if kind and not isinstance(value, kind[0]):
            return f"Parameter {key} of function {name} should be {kind[1]}, but {type(value)} is provided."
    return None


def _same(key: str, a, b) -> bool:
    if key == "categories_filter" and isinstance(a, str) and isinstance(b, str):
        return {s.strip() for s in a.split(",")} == {s.strip() for s in b.split(",")}
    return a == b


def rule_match(call: dict, golden: dict) -> bool:
    return (call["name"] == golden["name"] and set(call["arguments"]) == set(golden["arguments"])
            and all(_same(k, v, golden["arguments"][k]) for k, v in call["arguments"].items()))


def mismatch(call: dict, golden: dict) -> tuple[str, str, str | None]:
    """Their ``value_checker`` then ``get_error_message``: why a well-formed call is not the golden one, as
    (label, their message, the parameter it names)."""
    if call["name"] != golden["name"]:
        return "func_error", "Do not call the correct function.", None
    made, wanted = call["arguments"], golden["arguments"]
    for key, value in wanted.items():
        if key in EXACT_MATCH.get(call["name"], []):
            if key not in made:
                return "param_missing", f"Missing parameter {key} in prediction.", key
            if not _same(key, made[key], value):
                return "value_error", f"Parameter {key} value is not correct in prediction.", key
    for key, value in wanted.items():
        if key not in made:
            return "param_missing", f"Missing parameter {key} in prediction.", key
        if not _same(key, made[key], value):
            return "value_error", f"Parameter {key} value do not equal to golden.", key
    extra = next(k for k in made if k not in wanted)
    return "param_hallucination", f"Parameter {extra} is hallucinated.", extra


@dataclass
class Episode:
    """The protocol's state over one episode: which golden calls are still open, what was matched."""
    task: dict
    open: list[int] = field(default_factory=list)    # indices into task["replay"]
    correct: int = 0
    ending: tuple[str, str] | None = None             # (their label, detail) once the episode ended
    calls: int = 0                                    # calls acted on, format errors included
    missed: dict | None = None                        # the call that ended it: {at, call, golden, parameter}

    def __post_init__(self):
        self.open = list(range(len(self.task.get("replay", []))))

    def act(self, name: str, arguments: dict) -> str:
        """The observation of one call; sets ``ending`` when the protocol ends the episode here."""
        golden = self.task["replay"]
        call = {"name": name, "arguments": arguments}
        self.calls += 1
        if not self.required_open() and not is_free(call):
            self.ending = AFTER_THE_LAST
            return observation(UNEXPECTED_CALL)
        hit = next((i for i in self.open if rule_match(call, golden[i])), None)
        if hit is not None:
            self.open.remove(hit)
            self.correct += 1
            return recorded(golden[hit]["response"])
        error = format_error(tool_of(self.task, name), name, arguments)
        if error is not None:
            return observation(error=error)
        # pair it with an open golden call: the same function first (most equal values), else the first one
        pairs = [i for i in self.open if golden[i]["name"] == name] or self.required_open()
        if not pairs:  # only free look-ups left, and not this one
            self.ending = AFTER_THE_LAST
        else:
            best = max(pairs, key=lambda i: sum(_same(k, v, golden[i]["arguments"].get(k)) for k, v in arguments.items()))
            label, detail, parameter = mismatch(call, golden[best])
            self.ending = label, detail
            self.missed = {"at": self.calls - 1, "call": call, "golden": golden[best], "parameter": parameter}
        return observation(UNEXPECTED_CALL)

    def required_open(self) -> list[int]:
        """The golden calls still open that are not free look-ups."""
        return [i for i in self.open if not is_free(self.task["replay"][i])]

    def answer(self) -> tuple[str, str]:
        """The ending of an episode that answered: stop_early while a required golden call is open."""
        return ("stop_early", "Stop early.") if self.required_open() else ("success", "Success.")


def replayed(task: dict, steps: list[dict]) -> Episode:
    """The protocol's state after the calls of ``steps``."""
    ep = Episode(task)
    for s in steps:
        step = s.get("step")
        if step and step["action"] != FINISH and ep.ending is None:
            ep.act(step["action"], json.loads(step["action_input"]))
    return ep


class CfbEnv(Environment):
    """Answers as ComplexFuncBench's runner does; its state comes from the episode's earlier steps.
    Tasks of other sources get the ``auto`` environment."""

    def __init__(self):
        self.other = AutoEnv()

    def respond(self, task: dict, steps: list[dict], name: str, arguments: dict) -> tuple[str, tuple[str, str] | None]:
        if task.get("source") != "complexfuncbench":
            return self.other.call(task, name, arguments), None
        ep = replayed(task, steps)
        observation = ep.act(name, arguments)
        if ep.ending is None:
            return observation, None
        label, detail = ep.ending
        return observation, (AS_OURS[label].value, f"ComplexFuncBench {label}: {detail}")


def verdict(task: dict, record: dict) -> dict:
    """ComplexFuncBench's ending, success and correct calls for one recorded episode."""
    ep = replayed(task, record["steps"])
    finish = record.get("finish")
    if ep.ending is not None:
        label = ep.ending[0]
    elif any(s.get("error") for s in record["steps"]):
        label = "decode_error"
    elif finish is not None:
        label = ep.answer()[0]
    else:
        label = "no_finish"  # ours: their episodes have no step limit
    golden = len(task.get("replay", []))
    return {"label": label, "success": label == "success", "correct_calls": ep.correct, "golden_calls": golden}


def metrics(verdicts: list[dict]) -> dict:
    """Their success rate (over episodes) and call accuracy (matched golden calls over golden calls)."""
    golden = sum(v["golden_calls"] for v in verdicts)
    return {"cfb_success_rate": sum(v["success"] for v in verdicts) / len(verdicts) if verdicts else 0.0,
            "cfb_call_accuracy": sum(v["correct_calls"] for v in verdicts) / golden if golden else 0.0}
