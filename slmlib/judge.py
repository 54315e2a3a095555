"""The offline, deterministic judge: one verdict and one primary error label per episode.

A task passes when the episode ends with ``Finish`` / ``give_answer`` and a non-empty answer
within the budget (a Finish that is not strict JSON is read as ToolBench's environment reads it:
``toolbench_format.toolbench_finish``), every tool call parsed, no undeclared tool was called, no call was repeated more
than twice, and the calls match ``gold_calls`` (BFCL semantics: each expected call matched once,
values among the acceptable ones, ``""`` = may be omitted, no unexpected arguments, types
checked; further calls are allowed) or, with only ``relevant_tools``, every relevant tool was
called with schema-valid arguments that take the task's input (a tool with required text arguments needs one
of them in the query or an earlier observation, whole or by half its words, or among its enum values: the stub
answers any arguments, so "example" would otherwise do) and the answer carries, for each relevant tool whose response held
any, at least one value that tool returned (not in the query, not among the call's own arguments): a
policy that calls every tool and answers "done", echoes the query, or calls every tool with placeholders and
echoes what they returned, solves nothing and fails (the last passes where the relevant tools ask nothing of the
query: no offline judge can tell those apart).
``"gold_calls": []`` passes only when no tool was called.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, Iterator

from slmlib import toolbench_format as tbf
from slmlib.errors import ErrorLabel
from slmlib.schema import FINISH
from slmlib.values import same_type, same_value, schema_errors

REPEAT_LIMIT = 2
MIN_FACT = 4  # characters: a shorter string ("OK", "yes") is no evidence that the answer used a response
# in an observation cut at 1,024 characters: string values (not keys) and numbers after ':', '[' or ','
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?')  # a key when the colon follows
_WORD = re.compile(r"[^\W_]{3,}")
_NUMBER_VALUE = re.compile(r'(?<=[:\[,])\s*(-?\d+(?:\.\d+)?)(?=\s*[,\]}])')


def calls_of(record: dict) -> list[tuple[str, dict]]:
    return [(name, arguments) for name, arguments, _ in calls_in_context(record)]


def calls_in_context(record: dict, query: str = "") -> list[tuple[str, dict, str]]:
    """Each call with what the episode had shown before it: the query and the earlier observations."""
    context, out = query, []
    for step in record["steps"]:
        s = step.get("step")
        if s and s["action"] != FINISH:
            out.append((s["action"], json.loads(s["action_input"]), context))
        context += " " + step.get("observation", "")
    return out


def grounded_argument(value: str, context: str) -> bool:
    """``value`` is in ``context`` whole, or at least half of its words of three letters or more are."""
    if not value.strip():
        return False
    if _mentions(context, value):
        return True
    words = _WORD.findall(value)
    return bool(words) and 2 * sum(_mentions(context, w) for w in words) >= len(words)


def grounded_call(tool: dict, arguments: dict, context: str) -> bool:
    """A tool with required text arguments takes one of them from the context or its enum; others ask nothing."""
    props = tool.get("parameters", {}).get("properties", {})
    texts = [(p, v) for p in tool.get("parameters", {}).get("required", []) if isinstance(v := arguments.get(p), str)]
    return not texts or any(v in (props.get(p, {}).get("enum") or []) or grounded_argument(v, context) for p, v in texts)


def call_key(name: str, arguments: dict) -> str:
    """What makes two calls the same call (argument order does not matter)."""
    return json.dumps([name, arguments], sort_keys=True)


def toolbench_answer(record: dict) -> dict | None:
    """The Finish arguments ToolBench's environment takes from an episode that ended on an unparsable Finish."""
    failure = record.get("failure")
    if record.get("finish") is not None or not failure or failure[0] != ErrorLabel.INVALID_JSON_INPUT.value:
        return None
    parsed = tbf.parse_step(record["steps"][-1]["raw"])
    if isinstance(parsed, tbf.ParseFailure) and parsed.action == FINISH:
        return tbf.toolbench_finish(parsed.action_input)
    return None


def returned_values(observation: str) -> list[str]:
    """The values a tool's observation returned, as text: strings of ``MIN_FACT`` characters or more and
    numbers of two digits or more; none for an error observation."""
    try:
        parsed = json.loads(observation)
    except ValueError:  # cut at 1,024 characters
        if not observation.startswith('{"error": ""'):
            return []
        strings = [m[1].replace('\\"', '"') for m in _STRING.finditer(observation) if not m[2]]
        numbers = _NUMBER_VALUE.findall(observation)
    else:
        if not isinstance(parsed, dict) or parsed.get("error"):
            return []
        leaves = list(_leaves(parsed.get("response")))
        strings = [v for v in leaves if isinstance(v, str)]
        numbers = [json.dumps(v) for v in leaves if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [s.strip() for s in strings if len(s.strip()) >= MIN_FACT] + [n for n in numbers if len(n.strip("-").replace(".", "")) >= 2]


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, str) and value[:1] in ("{", "["):  # ToolBench's responses are often JSON in a string
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _mentions(text: str, value: str) -> bool:
    """``value`` appears in ``text`` as a whole (case and runs of spaces do not count)."""
    words = r"\s+".join(map(re.escape, value.split()))
    return re.search(rf"(?<!\w){words}(?!\w)", text, re.IGNORECASE) is not None


def query_of(task: dict) -> str:
    return " ".join(m["content"] for m in task["messages"] if m["role"] == "user")


def ungrounded(task: dict, record: dict, answer: str) -> list[str]:
    """The relevant tools whose responses held values of which the answer carries none."""
    query = query_of(task)
    missing = []
    for name in task.get("relevant_tools", []):
        values = set()
        for step in record["steps"]:
            s = step.get("step")
            if s and s["action"] == name and "observation" in step:
                own = json.dumps(json.loads(s["action_input"]), ensure_ascii=False)
                values |= {v for v in returned_values(step["observation"]) if not _mentions(query, v) and v not in own}
        if values and not any(_mentions(answer, v) for v in values):
            missing.append(name)
    return missing


def match_gold(gold: dict, made: dict) -> tuple[ErrorLabel, str] | None:
    """Why ``made`` does not satisfy one gold call (same name assumed), or None when it does."""
    expected = gold.get("arguments", {})
    for key, acceptable in expected.items():
        if key not in made:
            if "" not in acceptable:
                return ErrorLabel.MISSING_REQUIRED, f"{gold['name']}: missing '{key}'"
            continue
        if any(same_value(a, made[key]) for a in acceptable if a != ""):
            continue
        if not any(same_type(a, made[key]) for a in acceptable if a != ""):
            return ErrorLabel.TYPE_ERROR, f"{gold['name']}.{key}: {made[key]!r} has the wrong type (expected like {acceptable[0]!r})"
        return ErrorLabel.VALUE_ERROR, f"{gold['name']}.{key}: {made[key]!r} not in {acceptable[:3]!r}"
    extra = [k for k in made if k not in expected]
    if extra:
        return ErrorLabel.UNEXPECTED_PARAM, f"{gold['name']}: unexpected {extra}"
    return None


def judge(task: dict, record: dict) -> dict:
    """``{"passed", "label", "detail", "matched_calls", "expected_calls", "names_right"}`` for one episode."""
    declared = {t["name"] for t in task["tools"]}
    calls = calls_of(record)
    gold = task.get("gold_calls")
    relevant = task.get("relevant_tools", [])
    expected = len(gold) if gold is not None else len(relevant)
    verdict = {"passed": False, "label": None, "detail": "", "matched_calls": 0, "expected_calls": expected,
               "names_right": 0}

    def fail(label: ErrorLabel, detail: str) -> dict:
        verdict.update(label=label.value, detail=detail)
        return verdict

    # quality of the calls, counted even when the episode fails for another reason
    made_names = Counter(name for name, _ in calls)
    if gold is not None:
        verdict["names_right"] = sum(min(n, made_names[g]) for g, n in Counter(c["name"] for c in gold).items())
        used, failures = set(), []
        for g in gold:
            candidates = [i for i, (name, _) in enumerate(calls) if name == g["name"] and i not in used]
            hit = next((i for i in candidates if match_gold(g, calls[i][1]) is None), None)
            if hit is not None:
                used.add(hit)
                verdict["matched_calls"] += 1
            elif candidates:
                failures.append(match_gold(g, calls[candidates[-1]][1]))
            else:
                other = [n for n in made_names if n in declared and n not in {c["name"] for c in gold}]
                failures.append((ErrorLabel.WRONG_FUNC_NAME, f"called {other} instead of {g['name']}") if other
                                else (ErrorLabel.MISSING_CALL, f"{g['name']} was never called"))
    else:
        failures = []
        in_context = calls_in_context(record, query_of(task))
        for name in relevant:
            made = [(a, context) for n, a, context in in_context if n == name]
            if not made:
                failures.append((ErrorLabel.MISSING_CALL, f"{name} was never called"))
                continue
            verdict["names_right"] += 1
            tool = next(t for t in task["tools"] if t["name"] == name)
            errors = [schema_errors(tool, a) for a, _ in made]
            if all(errors):
                failures.append(errors[-1][0])
            elif not any(not e and grounded_call(tool, a, context) for e, (a, context) in zip(errors, made)):
                failures.append((ErrorLabel.UNGROUNDED_ARGUMENT,
                                 f"{name}: no call takes a required text argument from the query or an observation"))
            else:
                verdict["matched_calls"] += 1

    lenient = toolbench_answer(record)  # the step stays a format failure; the calls decide the verdict
    failure, finish = (None, lenient) if lenient else (record.get("failure"), record.get("finish"))
    if failure and failure[0] != ErrorLabel.NO_FINISH.value:
        return fail(ErrorLabel(failure[0]), failure[1])
    unknown = [n for n in made_names if n not in declared]
    if unknown:
        return fail(ErrorLabel.UNKNOWN_TOOL, f"called undeclared {unknown}")
    repeats = Counter(call_key(n, a) for n, a in calls)
    if repeats and max(repeats.values()) > REPEAT_LIMIT:
        return fail(ErrorLabel.REPEATED_CALL, f"the same call {max(repeats.values())} times")
    if finish is None:
        return fail(ErrorLabel.NO_FINISH, failure[1] if failure else "no Finish within the step budget")
    if finish.get("return_type") == "give_up_and_restart":
        return fail(ErrorLabel.GIVE_UP, "Finish with give_up_and_restart")
    answer = finish.get("final_answer")
    if finish.get("return_type") != "give_answer" or not isinstance(answer, str) or not answer.strip():
        return fail(ErrorLabel.EMPTY_ANSWER, f"Finish arguments {finish!r}")
    if gold == [] and calls:
        return fail(ErrorLabel.IRRELEVANCE, f"{len(calls)} calls where none was expected")
    if failures:
        return fail(*failures[0])
    if gold is None and (missing := ungrounded(task, record, answer)):
        return fail(ErrorLabel.UNGROUNDED_ANSWER, f"the answer carries nothing that {missing} returned")
    verdict["passed"] = True
    return verdict


def wilson(passed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = passed / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    # rounding can put a bound a hair past the observed rate (0 passes of 11: lo 2.8e-17), which plots reject
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def metrics(records: list[dict]) -> dict[str, Any]:
    """Aggregate scored predictions; the overall pass rate weights groups by their task counts."""
    def agg(rs: list[dict]) -> dict[str, Any]:
        n = len(rs)
        steps = [s for r in rs for s in r["steps"]]
        calls = [s["step"]["action"] for r in rs for s in r["steps"] if s.get("step") and s["step"]["action"] != FINISH]
        declared = [set(r["declared_tools"]) for r in rs for s in r["steps"] if s.get("step") and s["step"]["action"] != FINISH]
        passed = sum(r["verdict"]["passed"] for r in rs)
        expected = sum(r["verdict"]["expected_calls"] for r in rs)
        seconds = sum(r["seconds"] for r in rs)
        return {
            "n_tasks": n, "pass_rate": passed / n if n else 0.0, "pass_rate_ci95": list(wilson(passed, n)),
            "format_valid_rate": sum("error" not in s for s in steps) / len(steps) if steps else 0.0,
            "guarded_step_rate": sum("guard" in s for s in steps) / len(steps) if steps else 0.0,
            # of them, the steps the grammar closed to end within the token limit
            "closed_step_rate": sum(s.get("guard") == "token_limit" for s in steps) / len(steps) if steps else 0.0,
            "finish_rate": sum(bool(r["finish"]) for r in rs) / n if n else 0.0,
            "give_up_rate": sum(bool(r["finish"]) and r["finish"].get("return_type") == "give_up_and_restart" for r in rs) / n if n else 0.0,
            "hallucinated_tool_rate": sum(c not in d for c, d in zip(calls, declared)) / len(calls) if calls else 0.0,
            "tool_name_accuracy": sum(r["verdict"]["names_right"] for r in rs) / expected if expected else 0.0,
            "call_match_rate": sum(r["verdict"]["matched_calls"] for r in rs) / expected if expected else 0.0,
            "avg_steps": sum(len(r["steps"]) for r in rs) / n if n else 0.0,
            # what an episode cost: a search's model calls count every branch, ReAct's are its steps
            "model_calls_per_task": sum(r.get("model_calls", len(r["steps"])) for r in rs) / n if n else 0.0,
            "new_tokens_per_task": sum(r["new_tokens"] for r in rs) / n if n else 0.0,
            "seconds_per_task": seconds / n if n else 0.0,
            "tokens_per_second": sum(r["new_tokens"] for r in rs) / seconds if seconds else 0.0,
            "error_labels": dict(Counter(r["verdict"]["label"] for r in rs if r["verdict"]["label"])),
            "grammar_fallback_tasks": sum(bool(r.get("grammar_fallbacks")) for r in rs),  # tools whose schema did not compile
        }
    groups = sorted({r["group"] for r in records})
    return {**agg(records), "groups": {g: agg([r for r in records if r["group"] == g]) for g in groups}}
