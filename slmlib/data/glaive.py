"""LLaMA-Factory's tool-calling demos (sharegpt layout) as trajectories.

* ``glaive_toolcall_{en,zh}_demo.json``: ``conversations`` of ``human`` / ``gpt`` /
  ``function_call`` / ``observation`` turns and a ``tools`` JSON string;
* ``reason_tool_use_demo_50.jsonl``: OpenAI-style ``messages`` whose assistant content holds
  ``reasoning``, ``tool_call`` and ``text`` parts.

In the ReAct format every assistant turn is an action, so an assistant reply in words becomes
``Finish`` with that reply as the answer (the user may speak again after it); reasoning becomes
the step's thought. Parallel calls become consecutive steps, each followed by its observation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from slmlib.data import types
from slmlib.schema import SchemaError, assistant_call, convert_records, finish_call

FILES = ("glaive_toolcall_en_demo.json", "glaive_toolcall_zh_demo.json", "reason_tool_use_demo_50.jsonl")


def _tools(raw: str | list, field: str) -> list[dict]:
    tools = json.loads(raw) if isinstance(raw, str) else raw
    out = []
    for i, t in enumerate(tools):
        fn = t.get("function", t)
        if "name" not in fn:
            raise SchemaError(f"{field}[{i}].name", "missing")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if params.get("type") != "object":  # Python-style docs ("dict", "str, optional")
            params = types.parameters(params.get("properties", {}), fn.get("required", params.get("required")))
        out.append({"name": fn["name"], "description": fn.get("description", ""), "parameters": params})
    return out


def sharegpt_to_task(record: dict, task_id: str, group: str) -> dict:
    messages: list[dict[str, Any]] = []
    for j, turn in enumerate(record["conversations"]):
        role, value = turn["from"], turn["value"]
        if role == "human":
            messages.append({"role": "user", "content": value})
        elif role == "gpt":
            messages.append(finish_call(value))
        elif role == "function_call":
            call = json.loads(value)
            messages.append(assistant_call(call["name"], call.get("arguments", {})))
        elif role == "observation":
            name = messages[-1]["tool_calls"][0]["function"]["name"] if messages and messages[-1]["role"] == "assistant" else ""
            messages.append({"role": "tool", "name": name, "content": value})
        else:
            raise SchemaError(f"conversations[{j}].from", f"unknown role {role!r}")
    return {"id": task_id, "group": group, "source": "glaive",
            "tools": _tools(record.get("tools") or "[]", "tools"), "messages": messages}


def _parts(content: Any) -> list[dict]:
    return content if isinstance(content, list) else [{"type": "text", "value": content}]


def reasoning_to_task(record: dict, task_id: str) -> dict:
    messages: list[dict[str, Any]] = []
    pending: list[str] = []  # call names awaiting their observations, in order
    for msg in record["messages"]:
        role, parts = msg["role"], _parts(msg["content"])
        if role == "system":
            continue  # the ReAct system prompt replaces the source's own
        if role == "user":
            messages.append({"role": "user", "content": "".join(p["value"] for p in parts if p["type"] == "text")})
        elif role == "assistant":
            thought = " ".join(p["value"].strip() for p in parts if p["type"] == "reasoning")
            for p in parts:
                if p["type"] == "tool_call":
                    call = json.loads(p["value"]) if isinstance(p["value"], str) else p["value"]
                    messages.append(assistant_call(call["name"], call.get("arguments", {}), thought))
                    pending.append(call["name"])
                    thought = ""
                elif p["type"] == "text":
                    messages.append(finish_call(p["value"], thought))
        elif role == "tool":
            for p in parts:
                messages.append({"role": "tool", "name": pending.pop(0) if pending else "", "content": p["value"]})
    return {"id": task_id, "group": "reason_tool_use", "source": "glaive",
            "tools": _tools(record.get("tools") or "[]", "tools"), "messages": messages}


def _records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)


def tasks(path: str | Path, on_error=None) -> Iterator[dict]:
    """Every demo under ``path`` (the data root, the demo folder, or one file)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        base = next((p for p in (path / "llamafactory-toolcall-demo" / "data", path / "data", path)
                     if (p / FILES[0]).is_file()), None)
        if base is None:
            raise FileNotFoundError(f"{path}: no {FILES[0]} found there")
        files = [base / f for f in FILES if (base / f).is_file()]
    for file in files:
        stem = file.stem.replace("_demo", "").replace("_toolcall", "")

        def convert(record: dict, i: int, stem: str = stem) -> dict:
            if "messages" in record:
                return reasoning_to_task(record, f"{stem}-{i}")
            return sharegpt_to_task(record, f"{stem}-{i}", stem)
        yield from convert_records(_records(file), str(file), convert, on_error)
