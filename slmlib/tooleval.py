"""ToolEval's pass-rate judge for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp server).

The algorithm of ``toolbench/tooleval`` (``eval_pass_rate.py`` with the
``tooleval_gpt-3.5-turbo_default`` evaluator), per query and round:

1. no ``Finish`` in the last tool step -> failed, without asking the judge;
2. empty answer or ``give_up_and_restart`` -> Unsolved; else ``check_answer_status`` -> Solved /
   Unsolved / Unsure, and on Unsure ``parse_answer_status`` over the whole answer;
3. when not Solved, ``check_task_solvable`` -> Solvable / Unsolvable / Unsure;
4. ToolEval's ``is_passed`` table; an Unsure verdict becomes pass or fail by a fair coin;
5. after ``rounds`` rounds (4 by default) the query passes when failed <= passed.

The prompts are ToolEval's, word for word. The API key is read from ``OPENAI_API_KEY`` only and
is never written anywhere.
"""
from __future__ import annotations

import json
import os
import random
import urllib.request
from typing import Any

from slmlib import toolbench_format as tbf
from slmlib.schema import FINISH

CHECK_ANSWER_STATUS = """
Giving the query and answer, you need give `answer_status` of the answer by following rules:
1. If the answer is a sorry message or not a positive/straight response for the given query, return "Unsolved".
2. If the answer is a positive/straight response for the given query, you have to further check.
2.1 If the answer is not sufficient to determine whether the solve the query or not, return "Unsure".
2.2 If you are confident that the answer is sufficient to determine whether the solve the query or not, return "Solved" or "Unsolved".

Query:
{query}
Answer:
{answer}

Now give your reason in "content" and `answer_status` of JSON to `check_answer_status`.
"""

PARSE_ANSWER_STATUS = """
Giving the query and the correspond execution detail of an answer, you need give `answer_status` of the answer by following rules:
1. If all 'tool' nodes' message indicate that there are errors happened, return "Unsolved"
2. If you find the information in the "final_answer" is not true/valid according to the messages in 'tool' nodes, return "Unsolved"
3. If you are unable to verify the authenticity and validity of the information, return "Unsure"
4. If there are 'tool' node in the chain contains successful func calling and those calling indeed solve the query, return "Solved"

Query:
{query}
Answer:
{answer}

Now you are requested to give reason in "content" and `answer_status` of JSON to `parse_answer_status`.
"""

CHECK_TASK_SOLVABLE = """
Please check whether the given task solvable with following rules:
1. If the `query` provide invalid information (e.g. invalid email address or phone number), return "Unsolvable"
2. If the `query` needs more information to solve (e.g. the target restaurant name in a navigation task), return "Unsolvable"
3. If you are unable to draw a conclusion, return "Unsure"
4. If the currently `available_tools` are enough to solve the query, return "Solvable"

Task:
{task}

Now give your reason in "content" and `task_status` of JSON to `check_task_solvable`.
"""

PROMPTS = {"check_answer_status": CHECK_ANSWER_STATUS, "parse_answer_status": PARSE_ANSWER_STATUS,
           "check_task_solvable": CHECK_TASK_SOLVABLE}
_STATUS = {"type": "string", "enum": ["Unsure", "Unsolved", "Solved"]}
FUNCTIONS = {
    "check_answer_status": {"description": "Parse the json answer with layerd nodes and return the answer_status about the answer",
                            "key": "answer_status", "schema": _STATUS},
    "parse_answer_status": {"description": "Parse the json answer with layerd nodes and return the answer_status about the answer",
                            "key": "answer_status", "schema": _STATUS},
    "check_task_solvable": {"description": "Parse the task description and return the task_status about the task",
                            "key": "task_status", "schema": {"type": "string", "enum": ["Unsure", "Unsolvable", "Solvable"]}},
}
# ToolEval's is_passed table: (answer status, task status) -> Passed / Failed / Unsure
IS_PASSED = {("Unsolved", "Solvable"): "Failed", ("Unsolved", "Unsure"): "Unsure", ("Unsolved", "Unsolvable"): "Passed",
             ("Unsure", "Solvable"): "Unsure", ("Unsure", "Unsure"): "Unsure", ("Unsure", "Unsolvable"): "Passed"}


class JudgeClient:
    """A forced function call on ``POST {base_url}/chat/completions``."""

    def __init__(self, model: str = "gpt-3.5-turbo-16k", base_url: str | None = None,
                 temperature: float = 0.2, max_tokens: int = 1000, timeout: float = 60.0):
        self.model, self.temperature, self.max_tokens, self.timeout = model, temperature, max_tokens, timeout
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")

    def function_call(self, name: str, **fields: str) -> dict:
        spec = FUNCTIONS[name]
        function = {"name": name, "description": spec["description"], "parameters": {
            "type": "object", "properties": {spec["key"]: spec["schema"], "reason": {"type": "string", "description": "explain your answer."}},
            "required": [spec["key"], "reason"]}}
        body = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": PROMPTS[name].format(**fields)}],
                "tools": [{"type": "function", "function": function}],
                "tool_choice": {"type": "function", "function": {"name": name}}}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last: Exception | None = None
        for _ in range(3):  # ToolEval retries a call three times
            try:
                req = urllib.request.Request(self.base_url + "/chat/completions", data=json.dumps(body).encode(), headers=headers)
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    message = json.loads(resp.read())["choices"][0]["message"]
                call = (message.get("tool_calls") or [{}])[0].get("function") or message.get("function_call")
                result = json.loads(call["arguments"])
                if result.get(spec["key"]) in spec["schema"]["enum"]:
                    return result
                last = KeyError(f"{spec['key']} missing or invalid in {result}")
            except (OSError, KeyError, TypeError, ValueError) as e:
                last = e
        raise RuntimeError(f"judge call {name} failed three times: {last}")


def answer_dict(task: dict, record: dict) -> dict:
    """The episode in ToolEval's converted answer format (one chain of nodes)."""
    nodes: list[dict] = []
    for s in record["steps"]:
        if "step" not in s:
            nodes.append({"role": "assistant", "message": s["raw"], "next": []})
            continue
        step = s["step"]
        nodes.append({"role": "assistant", "message": step["thought"], "next": []})
        nodes.append({"role": "tool", "message": {"name": step["action"], "arguments": step["action_input"],
                                                  "response": s.get("observation", "")}, "next": []})
    chain = [{"role": "system", "message": tbf.system_prompt(task), "next": []},
             {"role": "user", "message": task["messages"][0]["content"], "next": []}, *nodes]
    for a, b in zip(chain, chain[1:]):
        a["next"] = [b]
    finish = record.get("finish") or {}
    final = finish.get("final_answer", "") if finish.get("return_type") == "give_answer" else json.dumps(finish)
    return {"method": "slmlib", "total_steps": len(nodes), "final_answer": final or "", "answer_details": [chain[0]]}


def last_tool_is_finish(record: dict) -> bool:
    steps = [s["step"] for s in record["steps"] if "step" in s]
    return bool(steps) and steps[-1]["action"] == FINISH


def round_verdict(client: JudgeClient, task: dict, record: dict, rng: random.Random) -> str:
    """One ToolEval round: "Passed" or "Failed" (Unsure already decided by the coin)."""
    if not last_tool_is_finish(record):
        return "Failed"
    answer = answer_dict(task, record)
    query = task["messages"][0]["content"]
    if answer["final_answer"] == "" or "give_up_and_restart" in answer["final_answer"]:
        status = "Unsolved"
    else:
        status = client.function_call("check_answer_status", query=query, answer=answer["final_answer"])["answer_status"]
        if status == "Unsure":
            status = client.function_call("parse_answer_status", query=query, answer=json.dumps(answer))["answer_status"]
    if status == "Solved":
        return "Passed"
    description = {"query": query, "available_tools": [tbf.strip_meta(t) for t in task["tools"]] + [tbf.FINISH_FUNCTION]}
    solvable = client.function_call("check_task_solvable", task=json.dumps(description))["task_status"]
    verdict = IS_PASSED[(status, solvable)]
    if verdict == "Unsure":
        verdict = "Passed" if rng.random() < 0.5 else "Failed"
    return verdict


def judge_query(client: JudgeClient, task: dict, record: dict, rounds: int = 4, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(f"{seed}:{task['id']}")
    verdicts = [round_verdict(client, task, record, rng) for _ in range(rounds)]
    passed, failed = verdicts.count("Passed"), verdicts.count("Failed")
    return {"passed": failed <= passed, "rounds": verdicts}


def rejudge(records: list[dict], tasks: dict[str, dict], model: str | None = None, rounds: int = 4) -> None:
    """Replace each record's pass verdict by ToolEval's (kept with its rounds under ``tooleval``)."""
    client = JudgeClient(model=model or "gpt-3.5-turbo-16k")
    for record in records:
        result = judge_query(client, tasks[record["id"]], record, rounds)
        record["verdict"]["offline_passed"] = record["verdict"]["passed"]
        record["verdict"]["tooleval"] = result
        record["verdict"]["passed"] = result["passed"]
