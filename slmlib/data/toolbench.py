"""ToolBench (OpenBMB/ToolBench) adapters: training rows, answer trees and query files.

* ``toolllama_G123_dfs_{train,eval}.json``: one pretty-printed JSON array of rows
  ``{"id", "conversations": [{"from", "value"}]}``, read as a stream in constant memory.
* answer trees (``answer_generation.train_messages``) -> rows, as ToolBench's
  ``preprocess_toolllama_data.py`` does: one row per assistant step.
* query files (``api_list``, ``relevant APIs``, ``query_id``) -> tasks.

Names and schemas follow ToolBench's ``standardize``, ``change_name`` and ``api_json_to_openai_json``.
"""
from __future__ import annotations

import ast
import itertools
import json
import re
from pathlib import Path
from typing import Any, Iterator

import ijson

from slmlib import toolbench_format as tbf
from slmlib.schema import FINISH, SchemaError, convert_records, reject, validate_task

HUB_DATASET = "Yhyu13/ToolBench_toolllama_G123_dfs"
TYPE_MAP = {"NUMBER": "integer", "STRING": "string", "BOOLEAN": "boolean"}
RESERVED = ("from", "class", "return", "false", "true", "id", "and")
DESCRIPTION_MAX = 256


def standardize(name: str) -> str:
    name = re.sub("[^\\u4e00-\\u9fa5^a-z^A-Z^0-9^_]", "_", name)
    name = re.sub(r"(_)\1+", "_", name).lower().strip("_")
    if name and name[0].isdigit():
        name = "get_" + name
    return name


def change_name(name: str) -> str:
    return "is_" + name if name in RESERVED else name


def function_name(api_name: str, standard_tool_name: str) -> str:
    return f"{change_name(standardize(api_name))}_for_{standard_tool_name}"[-64:]


def api_to_function(api: dict, standard_tool_name: str) -> dict:
    """ToolBench's ``api_json_to_openai_json`` (the ``optional`` list kept, as ToolBench shows it)."""
    name = function_name(api["api_name"], standard_tool_name)
    desc = f"This is the subfunction for tool \"{standard_tool_name}\", you can use this tool."
    if api["api_description"].strip() != "":
        cut = api["api_description"].strip().replace(api["api_name"], name)[:DESCRIPTION_MAX]
        desc += f"The description of this function is: \"{cut}\""
    params: dict[str, Any] = {"type": "object", "properties": {}, "required": [], "optional": []}
    # ToolBench reads optional parameters only when there are required ones; kept as it is.
    if api.get("required_parameters"):
        for kind in ("required", "optional"):
            for p in api.get(f"{kind}_parameters", []):
                pname = change_name(standardize(p["name"]))
                prop = {"type": TYPE_MAP.get(p["type"], "string"), "description": p["description"][:DESCRIPTION_MAX]}
                if len(str(p["default"])) != 0:
                    prop["example_value"] = p["default"]
                params["properties"][pname] = prop
                params[kind].append(pname)
    return {"name": name, "description": desc, "parameters": params}


# ------------------------------------------------------------------ query files -> tasks
def query_to_task(query: dict, group: str) -> dict:
    """One query (``api_list``, ``query``, ``relevant APIs``, ``query_id``) as a task."""
    tools, kits = [], []
    for api in query["api_list"]:
        tool = standardize(api["tool_name"])
        fn = api_to_function(api, tool)
        if any(t["name"] == fn["name"] for t in tools):
            continue
        if "template_response" in api:
            fn["template_response"] = api["template_response"]
        fn["meta"] = {"category": api["category_name"], "tool_name": api["tool_name"], "api_name": api["api_name"]}
        tools.append(fn)
        kits.append({"name": tool, "description": api.get("tool_description", "")})
    relevant = [function_name(api, standardize(tool)) for tool, api in query.get("relevant APIs", [])]
    known = {t["name"] for t in tools}
    return {"id": f"{group}-{query['query_id']}", "group": group, "source": "toolbench-queries",
            "tools": tools, "toolkits": kits,
            "messages": [{"role": "user", "content": query["query"]}],
            "relevant_tools": list(dict.fromkeys(r for r in relevant if r in known))}


def query_file_tasks(path: str | Path, group: str | None = None, on_error=None) -> Iterator[dict]:
    path = Path(path)
    group = group or path.stem.replace("_query", "")
    queries = json.loads(path.read_text(encoding="utf-8"))
    yield from convert_records(queries, str(path), lambda q, i: query_to_task(q, group), on_error)


# ------------------------------------------------------------------ answer trees -> rows
def answer_rows(answer: dict) -> list[dict]:
    """ToolBench's preprocessing of one answer file: a row per step prefix of every train message list."""
    gen = answer["answer_generation"]
    if not gen.get("valid_data"):
        return []
    query, functions = gen["query"], gen["function"]
    rows = []
    for train_message in gen["train_messages"]:
        conversations, react = [], ""
        for i, msg in enumerate(train_message):
            role = msg["role"]
            if role != "assistant":
                value = tbf.process_system_message(msg["content"], functions) if role == "system" else msg["content"]
                conversations.append({"from": role, "value": value})
                react = ""
                continue
            if "function_call" not in msg:
                if i + 1 == len(train_message):
                    break  # a final plain reply is no training target
                react += f"\nThought: {msg['content']}"
                continue
            call = msg["function_call"]
            react = (react or "\nThought: ") + f"\nAction: {call['name']}\nAction Input: {call['arguments']}"
            conversations.append({"from": role, "value": react})
            react = ""
            if i + 1 == len(train_message):
                rows.append({"id": f"Step {i}: {query}", "conversations": conversations})
    return rows


# ------------------------------------------------------------------ rows -> trajectories
def _functions_from_system(system: str) -> list[dict]:
    _, sep, listing = system.rpartition(tbf.API_LIST_PREFIX)
    if not sep:
        raise SchemaError("conversations[0].value", "system message has no 'Specifically, you have access to the following APIs: ' list")
    try:
        return ast.literal_eval(listing)
    except (ValueError, SyntaxError) as e:
        raise SchemaError("conversations[0].value", f"function list is not a Python literal: {e}") from None


def row_to_task(row: dict, index: int) -> dict:
    """A released training row as a trajectory whose last assistant turn is the target."""
    convs = row.get("conversations")
    if not isinstance(convs, list) or not convs or convs[0].get("from") != "system":
        raise SchemaError("conversations", "expected a list starting with the system message")
    system = convs[0]["value"]
    functions = _functions_from_system(system)
    messages: list[dict] = [{"role": "system", "content": system}]
    last_action = None
    for j, turn in enumerate(convs[1:], 1):
        role, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            raise SchemaError(f"conversations[{j}].value", "expected a string")
        if role == "user":
            messages.append({"role": "user", "content": _unwrap_user(value) if j == 1 else value})
        elif role == "assistant":
            step = tbf.parse_step(value)
            if isinstance(step, tbf.ParseFailure) or tbf.render_step(step) != value:
                raise SchemaError(f"conversations[{j}].value", f"not a ToolBench ReAct step: {value[:120]!r}")
            messages.append(tbf.step_message(step))
            last_action = step.action
        elif role == "function":
            messages.append({"role": "tool", "name": last_action or "", "content": value})
        else:
            raise SchemaError(f"conversations[{j}].from", f"unknown role {role!r}")
    task = {"id": f"toolbench-{index}", "group": "toolbench", "source": "toolbench-rows",
            "tools": [f for f in functions if f["name"] != FINISH],
            "messages": messages, "meta": {"row_id": row.get("id")}}
    return validate_task(task)


def _unwrap_user(value: str) -> str:
    """The query inside ToolBench's user turn ``\\n{query}\\nBegin!\\n``; the renderer wraps it again."""
    head, tail = "\n", "\nBegin!\n"
    if not (value.startswith(head) and value.endswith(tail)):
        raise SchemaError("conversations[1].value", "expected the user turn '\\n{query}\\nBegin!\\n'")
    return value[len(head):-len(tail)]


def iter_rows(path: str | Path) -> Iterator[dict]:
    """Stream the rows of a (possibly 2 GB) JSON array, in constant memory."""
    with open(path, "rb") as f:
        yield from ijson.items(f, "item", use_float=True)


def resolve_train_file(path_or_name: str) -> Path:
    """A local path, or a file name of the Hub mirror (downloaded where the machine is online)."""
    path = Path(path_or_name)
    if path.exists():
        return path
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(HUB_DATASET, path.name, repo_type="dataset"))
    except Exception as e:
        raise FileNotFoundError(
            f"{path_or_name} is not a local file and the Hub mirror {HUB_DATASET} could not be reached "
            f"({e.__class__.__name__}); download toolllama_G123_dfs_train.json there or from ToolBench's data.zip") from e


def row_file_tasks(path: str | Path, limit: int = -1, on_error=None) -> Iterator[dict]:
    path = resolve_train_file(str(path))
    rows = itertools.islice(iter_rows(path), limit if limit >= 0 else None)
    yield from convert_records(rows, str(path), row_to_task, on_error)


def answer_dir_tasks(folder: str | Path, on_error=None) -> Iterator[dict]:
    """Every answer file under ``folder`` -> rows -> trajectories (sorted by path for a fixed order)."""
    index = 0
    for path in sorted(Path(folder).rglob("*.json")):
        answer = json.loads(path.read_text(encoding="utf-8"))
        if "answer_generation" not in answer:
            continue
        for row in answer_rows(answer):
            try:
                task = row_to_task(row, index)
            except SchemaError as e:
                reject(e.at(str(path), index + 1), on_error)
                continue
            task["id"] = f"toolbench-{path.stem}-{index}"
            yield task
            index += 1
