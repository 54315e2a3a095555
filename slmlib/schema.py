"""The one data model: tasks and trajectories as JSON Lines (schema version 1).

A **task file** holds one JSON object a line::

    {"id": "unique string",
     "group": "label for per-group metrics, e.g. G1_instruction",
     "tools": [tool, ...],
     "messages": [message, ...],
     "gold_calls": [{"name": "fn", "arguments": {"param": [acceptable values]}}],   # optional
     "relevant_tools": ["fn", ...],                                                 # optional
     "replay": [{"name": "fn", "arguments": {...}, "response": any JSON}],          # optional
     "toolkits": [{"name": "tool", "description": "..."}],                          # optional
     "source": "adapter name", "meta": {...}}                                       # optional

* ``tool``: a JSON-Schema function definition ``{"name", "description", "parameters": {"type":
  "object", "properties": {...}, "required": [...]}}``; extra keys (``template_response``,
  ``meta``) are kept.
* ``message``: OpenAI style. ``system`` / ``user``: ``content`` (string). ``assistant``:
  ``content`` (string or null), optional ``thought`` (string) and ``tool_calls``
  ``[{"type": "function", "function": {"name", "arguments": JSON text}}]``. ``tool``: ``name``
  and ``content`` (string).
* A task to solve has only the user's messages; a **trajectory** (training example) goes on with
  assistant and tool messages and ends with a call of ``Finish`` (``{"return_type":
  "give_answer", "final_answer": ...}`` or ``give_up_and_restart``). ``Finish`` is never listed in
  ``tools``: the renderer adds it, as ToolBench does.
* ``gold_calls`` follows the Berkeley Function Calling Leaderboard: every listed call is expected
  (any order), each argument's value must be one of its acceptable values, ``""`` among them means
  the argument may be left out; ``[]`` means the right behaviour is to call no tool.
* ``toolkits`` are ToolBench's tools (API providers) for the numbered list in the system prompt;
  without them the prompt lists the functions themselves.
"""
from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA_VERSION = 1
FINISH = "Finish"
ROLES = ("system", "user", "assistant", "tool")
TASK_KEYS = {"id", "group", "tools", "messages", "gold_calls", "relevant_tools", "replay",
             "toolkits", "source", "meta", "schema_version"}


class SchemaError(ValueError):
    """A record that breaks the schema; the message names file, line and field."""

    def __init__(self, field: str, problem: str, file: str | None = None, line: int | None = None):
        self.field, self.problem, self.file, self.line = field, problem, file, line
        where = f"{file}:{line}: " if file is not None else ""
        super().__init__(f"{where}field '{field}': {problem}")

    def at(self, file: str, line: int) -> "SchemaError":
        return SchemaError(self.field, self.problem, file, line)


def reject(err: SchemaError, on_error=None) -> None:
    """Raise ``err``, or hand it to ``on_error`` (skip-invalid mode: the caller counts it)."""
    if on_error is None:
        raise err
    on_error(err)


def _expect(cond: bool, field: str, problem: str) -> None:
    if not cond:
        raise SchemaError(field, problem)


def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def validate_tool(tool: Any, field: str) -> None:
    _expect(isinstance(tool, dict), field, "expected an object with name, description, parameters")
    _expect(_is_str(tool.get("name")) and tool["name"] != "", f"{field}.name", "expected a non-empty string")
    _expect(tool["name"] != FINISH, f"{field}.name", "Finish is added by the renderer, not listed in tools")
    _expect(_is_str(tool.get("description", "")), f"{field}.description", "expected a string")
    params = tool.get("parameters")
    _expect(isinstance(params, dict) and params.get("type") == "object", f"{field}.parameters",
            'expected a JSON Schema {"type": "object", ...}')
    props = params.get("properties", {})
    _expect(isinstance(props, dict), f"{field}.parameters.properties", "expected an object")
    required = params.get("required", [])
    _expect(isinstance(required, list) and all(_is_str(r) for r in required),
            f"{field}.parameters.required", "expected a list of parameter names")


def validate_message(msg: Any, field: str) -> None:
    _expect(isinstance(msg, dict), field, "expected a message object")
    role = msg.get("role")
    _expect(role in ROLES, f"{field}.role", f"expected one of {list(ROLES)}, got {role!r}")
    if role in ("system", "user"):
        _expect(_is_str(msg.get("content")), f"{field}.content", "expected a string")
    elif role == "tool":
        _expect(_is_str(msg.get("name")), f"{field}.name", "expected the called tool's name")
        _expect(_is_str(msg.get("content")), f"{field}.content", "expected a string")
    else:
        content = msg.get("content")
        _expect(content is None or _is_str(content), f"{field}.content", "expected a string or null")
        _expect(_is_str(msg.get("thought", "")), f"{field}.thought", "expected a string")
        calls = msg.get("tool_calls", [])
        _expect(isinstance(calls, list), f"{field}.tool_calls", "expected a list")
        _expect(bool(calls) or content is not None, field, "an assistant message needs content or tool_calls")
        for j, call in enumerate(calls):
            f = f"{field}.tool_calls[{j}]"
            _expect(isinstance(call, dict) and isinstance(call.get("function"), dict), f,
                    'expected {"type": "function", "function": {...}}')
            _expect(_is_str(call["function"].get("name")) and call["function"]["name"] != "",
                    f"{f}.function.name", "expected a non-empty string")
            _expect(_is_str(call["function"].get("arguments")), f"{f}.function.arguments",
                    "expected the arguments as JSON text")


def validate_task(task: Any) -> dict:
    """Check one task or trajectory; return it unchanged or raise :class:`SchemaError`."""
    _expect(isinstance(task, dict), "<record>", "expected a JSON object")
    unknown = sorted(set(task) - TASK_KEYS)
    _expect(not unknown, unknown[0] if unknown else "", f"unknown field (known: {sorted(TASK_KEYS)})")
    _expect(_is_str(task.get("id")) and task["id"] != "", "id", "expected a non-empty string")
    _expect(_is_str(task.get("group")), "group", "expected a string")
    tools = task.get("tools")
    _expect(isinstance(tools, list), "tools", "expected a list of tool definitions")
    for i, tool in enumerate(tools):
        validate_tool(tool, f"tools[{i}]")
    names = [t["name"] for t in tools]
    _expect(len(names) == len(set(names)), "tools", "tool names must be unique")
    messages = task.get("messages")
    _expect(isinstance(messages, list) and messages, "messages", "expected a non-empty list")
    for i, msg in enumerate(messages):
        validate_message(msg, f"messages[{i}]")
    _expect(any(m["role"] == "user" for m in messages), "messages", "expected at least one user message")
    if "gold_calls" in task:
        gold = task["gold_calls"]
        _expect(isinstance(gold, list), "gold_calls", "expected a list")
        for i, call in enumerate(gold):
            f = f"gold_calls[{i}]"
            _expect(isinstance(call, dict) and _is_str(call.get("name")), f"{f}.name", "expected a string")
            args = call.get("arguments", {})
            _expect(isinstance(args, dict), f"{f}.arguments", "expected an object of acceptable-value lists")
            for k, v in args.items():
                _expect(isinstance(v, list), f"{f}.arguments.{k}", "expected a list of acceptable values")
    if "relevant_tools" in task:
        rel = task["relevant_tools"]
        _expect(isinstance(rel, list) and all(_is_str(r) for r in rel), "relevant_tools",
                "expected a list of tool names")
        missing = [r for r in rel if r not in names]
        _expect(not missing, "relevant_tools", f"names not among the task's tools: {missing}")
    if "replay" in task:
        _expect(isinstance(task["replay"], list), "replay", "expected a list")
        for i, rec in enumerate(task["replay"]):
            _expect(isinstance(rec, dict) and _is_str(rec.get("name")), f"replay[{i}].name", "expected a string")
            _expect(isinstance(rec.get("arguments"), dict), f"replay[{i}].arguments", "expected an object")
            _expect("response" in rec, f"replay[{i}].response", "missing")
    if "toolkits" in task:
        for i, kit in enumerate(task["toolkits"]):
            _expect(isinstance(kit, dict) and _is_str(kit.get("name")) and _is_str(kit.get("description")),
                    f"toolkits[{i}]", "expected {name, description} strings")
    _expect(task.get("schema_version", SCHEMA_VERSION) == SCHEMA_VERSION, "schema_version",
            f"this library reads version {SCHEMA_VERSION}")
    return task


def tool_call(name: str, arguments: str | dict) -> dict:
    """One OpenAI-style tool call; dict arguments are serialised as compact JSON."""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def assistant_call(name: str, arguments: str | dict, thought: str = "") -> dict:
    return {"role": "assistant", "content": None, "thought": thought, "tool_calls": [tool_call(name, arguments)]}


def finish_call(answer: str | None, thought: str = "") -> dict:
    """The closing step: give_answer with ``answer``, or give_up_and_restart when it is None."""
    args = ({"return_type": "give_answer", "final_answer": answer} if answer is not None
            else {"return_type": "give_up_and_restart"})
    return assistant_call(FINISH, args, thought)


def write_jsonl(path: str | Path, tasks: Iterable[dict]) -> int:
    """Validate and write tasks atomically; returns how many were written."""
    from slmlib.run import atomic_write_text
    lines = []
    for i, task in enumerate(tasks):
        try:
            validate_task(task)
        except SchemaError as e:
            raise e.at(f"<output record {i}>", i + 1) from None
        lines.append(json.dumps(task, ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def iter_jsonl(path: str | Path, skip_invalid: bool = False, skipped: list | None = None) -> Iterator[dict]:
    """Read a task file, validating every line.

    A malformed line raises :class:`SchemaError` with file, line and field; with ``skip_invalid``
    it is skipped and its error appended to ``skipped`` instead.
    """
    path = str(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                try:
                    task = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SchemaError("<record>", f"not valid JSON ({e.msg} at column {e.colno})")
                yield validate_task(task)
            except SchemaError as e:
                err = e.at(path, lineno)
                if not skip_invalid:
                    raise err from None
                if skipped is not None:
                    skipped.append(err)


def convert_records(records: Iterable, file: str, convert, on_error=None) -> Iterator[dict]:
    """``convert(record, index)`` for every source record, validated; a failure names file and line.

    A record the adapter cannot read (missing key, bad literal) is a :class:`SchemaError` too.
    """
    for i, record in enumerate(records):
        try:
            yield validate_task(convert(record, i))
        except SchemaError as e:
            reject(e.at(file, i + 1), on_error)
        except (KeyError, TypeError, ValueError, SyntaxError, AttributeError, IndexError) as e:
            reject(SchemaError("<record>", f"{e.__class__.__name__}: {e}", file, i + 1), on_error)


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))


def called_tools(task: dict) -> list[str]:
    """Names of the tools the trajectory calls, in order (Finish excluded)."""
    return [c["function"]["name"] for m in task["messages"] if m["role"] == "assistant"
            for c in m.get("tool_calls", []) if c["function"]["name"] != FINISH]


def leaves(arguments: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Every value of a JSON object or list (a call's arguments, an observation), nested ones by their path (``legs[1].date``)."""
    out = []
    for key, value in (arguments.items() if isinstance(arguments, dict) else enumerate(arguments)):
        path = f"{prefix}[{key}]" if isinstance(arguments, list) else f"{prefix}.{key}" if prefix else str(key)
        out += leaves(value, path) if isinstance(value, (dict, list)) else [(path, value)]
    return out


def parsed_calls(task: dict) -> Iterator[tuple[dict, dict, dict, str]]:
    """Each assistant call whose arguments are a JSON object, in order: (its message, the call, the arguments, the
    observations before it); a source's own malformed call is passed over."""
    seen = []
    for m in task["messages"]:
        if m["role"] == "tool":
            seen.append(m["content"])
        for call in (m.get("tool_calls") or []) if m["role"] == "assistant" else []:
            try:
                args = json.loads(call["function"]["arguments"])
            except json.JSONDecodeError:
                continue
            if isinstance(args, dict):
                yield m, call, args, "\n".join(seen)


def arranged(keys: Iterable[str], order: list[str]) -> list[str]:
    """``keys`` in ``order``; those it does not list follow in their own order."""
    keys = list(keys)
    return [k for k in order if k in keys] + [k for k in keys if k not in order]


def in_schema_order(task: dict) -> tuple[dict, int]:
    """``task`` with each call's arguments in its tool's property order, the order a grammar writes them
    (llguidance keeps a schema's order), and how many calls moved; keys the schema does not list follow in their
    own order. A call already in order keeps its text."""
    task, moved = copy.deepcopy(task), 0
    order = {t["name"]: list(t.get("parameters", {}).get("properties", {})) for t in task.get("tools", [])}
    for _, call, args, _ in parsed_calls(task):
        fn = call["function"]
        if fn["name"] not in order:
            continue
        keys = arranged(args, order[fn["name"]])
        if keys != list(args):
            fn["arguments"], moved = json.dumps({k: args[k] for k in keys}, ensure_ascii=False), moved + 1
    return task, moved


def argument_orders(tasks: Iterable[dict]) -> dict[str, list[str]]:
    """Each tool's arguments in the order its calls in ``tasks`` write them: a key goes before another when more
    calls write it first than second (ranked by such wins, then by mean relative position, then by name), so
    one call's odd order does not outvote the rest."""
    ahead: dict[str, Counter] = defaultdict(Counter)  # tool -> (a, b) -> calls writing a before b
    places: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for task in tasks:
        for _, call, args, _ in parsed_calls(task):
            name, keys = call["function"]["name"], list(args)
            for i, key in enumerate(keys):
                places[name][key].append(i / max(1, len(keys) - 1))
                ahead[name].update((key, later) for later in keys[i + 1:])
    orders = {}
    for name, seen in places.items():
        def wins(key: str) -> int:
            return sum((ahead[name][key, o] > ahead[name][o, key]) - (ahead[name][o, key] > ahead[name][key, o]) for o in seen)
        orders[name] = sorted(seen, key=lambda k: (-wins(k), sum(seen[k]) / len(seen[k]), k))
    return orders
