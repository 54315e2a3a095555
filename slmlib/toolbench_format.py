"""ToolBench's ReAct text: the renderer and its exact inverse, the parser.

Byte-faithful to OpenBMB/ToolBench: the AutoGPT system prompt (original typos kept), the
``rapidapi`` task description with its numbered tool list, the format line and Python-repr
function list that ``process_system_message`` adds, the ``Finish`` function, the user turn
``\\n{query}\\nBegin!\\n``, assistant steps ``\\nThought: ...\\nAction: ...\\nAction Input: ...``,
and the ToolLLaMA conversation template ``System: ...\\nUser: ...\\nAssistant: ...\\nFunction:
...`` with EOS after the last assistant turn.

Training and evaluation share :func:`segments`: the prompt for the next step is the rendered
history followed by ``\\nAssistant: `` exactly as in training (ToolLLaMA's own inference
script ends its prompt with ``Assistant:\\n`` instead).
"""
from __future__ import annotations

import ast
import functools
import json
from dataclasses import dataclass
from typing import Any

from slmlib.errors import ErrorLabel
from slmlib.schema import FINISH

SYSTEM_PROMPT = """You are AutoGPT, you can use many tools(functions) to do the following task.
First I will give you the task description, and your task start.
At each step, you need to give your thought to analyze the status now and what to do next, with a function call to actually excute your step.
After the call, you will get the call result, and you are now in a new state.
Then you will analyze your status now, then decide what to do next...
After many (Thought-call) pairs, you finally perform the task, then you can give your finial answer.
Remember: 
1.the state change is irreversible, you can't go back to one of the former state, if you want to restart the task, say "I give up and restart".
2.All the thought is short, at most in 5 sentence.
3.You can do more then one trys, so if your plan is to continusly try some conditions, you can do one of the conditions per try.
Let's Begin!
Task description: {task_description}"""

TASK_DESCRIPTION = """You should use functions to help handle the real time user querys. Remember:
1.ALWAYS call "Finish" function at the end of the task. And the final answer should contain enough information to show to the user,If you can't handle the task, or you find that function calls always fail(the function is not valid now), use function Finish->give_up_and_restart.
2.Do not use origin tool names, use only subfunctions' names.
You have access of the following tools:
"""

USER_TURN = "\n{query}\nBegin!\n"
FORMAT_ANCHOR = "with a function call to actually excute your step."
FORMAT_LINE = " Your output should follow this format:\nThought:\nAction\nAction Input:\n"
API_LIST_PREFIX = "\nSpecifically, you have access to the following APIs: "

# The Finish function of ToolBench's inference environment (rapidapi.py). Released answer files also
# carry an older wording; a row keeps the one its own system message lists.
FINISH_FUNCTION = {
    "name": FINISH,
    "description": "If you believe that you have obtained a result that can answer the task, please call this function to provide the final answer. Alternatively, if you recognize that you are unable to proceed with the task in the current state, call this function to restart. Remember: you must ALWAYS call this function at the end of your attempt, and the only part that will be shown to the user is the final answer, so it should contain sufficient information.",
    "parameters": {"type": "object", "properties": {
        "return_type": {"type": "string", "enum": ["give_answer", "give_up_and_restart"]},
        "final_answer": {"type": "string", "description": "The final answer you want to give the user. You should have this field if \"return_type\"==\"give_answer\""}},
        "required": ["return_type"]},
}

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Function"}
THOUGHT, ACTION, ACTION_INPUT = "\nThought: ", "\nAction: ", "\nAction Input: "


# ---------------------------------------------------------------- system prompt
def task_description(toolkits: list[dict]) -> str:
    """The rapidapi task description with its numbered list (descriptions cut to 512, newlines dropped)."""
    text = TASK_DESCRIPTION
    unique = {kit["name"]: kit["description"] for kit in toolkits}
    for k, (name, desc) in enumerate(unique.items()):
        stripped = desc[:512].replace("\n", "").strip() or "None"
        text += f"{k + 1}.{name}: {stripped}\n"
    return text


def process_system_message(system: str, functions: list[dict]) -> str:
    """ToolBench's ``process_system_message``: the format line and the Python repr of the functions."""
    system = system.replace(FORMAT_ANCHOR, FORMAT_ANCHOR + FORMAT_LINE)
    return system + API_LIST_PREFIX + str(functions)


def system_prompt(task: dict) -> str:
    """The processed system prompt for a task: its own system message, or one built from its tools.

    A verbatim system message that ends with the repr of a function list gets that list replaced
    by the task's current tools, so a trimmed tool list shows in the prompt.
    """
    tools = [strip_meta(t) for t in task["tools"]]
    own = next((m["content"] for m in task["messages"] if m["role"] == "system"), None)
    if own is not None:
        head, sep, listing = own.rpartition(API_LIST_PREFIX)
        return head + sep + str([*tools, _listed_finish(listing)]) if sep else own
    functions = [*tools, FINISH_FUNCTION]
    kits = task.get("toolkits") or [{"name": t["name"], "description": t.get("description", "")}
                                    for t in task["tools"]]
    return process_system_message(SYSTEM_PROMPT.format(task_description=task_description(kits)), functions)


@functools.lru_cache(maxsize=256)
def _listed_finish(listing: str) -> dict:
    """The Finish entry of a rendered function list (its wording differs between ToolBench releases)."""
    try:
        functions = ast.literal_eval(listing)
    except (ValueError, SyntaxError):
        return FINISH_FUNCTION
    return next((f for f in functions if isinstance(f, dict) and f.get("name") == FINISH), FINISH_FUNCTION)


def strip_meta(tool: dict) -> dict:
    """The function definition as shown to the model (bookkeeping keys removed)."""
    return {k: v for k, v in tool.items() if k not in ("meta", "template_response")}


# ---------------------------------------------------------------- one step
@dataclass(frozen=True)
class Step:
    thought: str
    action: str
    action_input: str  # the JSON text exactly as written

    def arguments(self) -> dict:
        return json.loads(self.action_input)


@dataclass(frozen=True)
class ParseFailure:
    label: ErrorLabel
    detail: str
    text: str
    action: str | None = None        # set when only the Action Input failed to parse
    action_input: str | None = None


def render_step(step: Step) -> str:
    if ACTION in step.thought or "\n" in step.action or not step.action:
        raise ValueError(f"step cannot be rendered unambiguously: {step!r}")
    return f"{THOUGHT}{step.thought}{ACTION}{step.action}{ACTION_INPUT}{step.action_input}"


def parse_step(text: str) -> Step | ParseFailure:
    """Inverse of :func:`render_step`; never raises.

    Model output is accepted with or without the leading newline and with trailing whitespace or
    an end-of-sequence marker after the JSON input; anything else is a classified failure.
    """
    body = text if text.startswith(THOUGHT) else "\n" + text.lstrip()
    if not body.startswith(THOUGHT):
        return ParseFailure(ErrorLabel.DECODER_FAILED, "no 'Thought: '", text)
    a = body.find(ACTION, len(THOUGHT))
    if a < 0:
        return ParseFailure(ErrorLabel.DECODER_FAILED, "no 'Action: '", text)
    i = body.find(ACTION_INPUT, a + len(ACTION))
    if i < 0:
        return ParseFailure(ErrorLabel.DECODER_FAILED, "no 'Action Input: '", text)
    thought, action = body[len(THOUGHT):a], body[a + len(ACTION):i]
    raw = body[i + len(ACTION_INPUT):]
    if not action or "\n" in action:
        return ParseFailure(ErrorLabel.DECODER_FAILED, f"bad action name {action!r}", text)
    try:
        value, end = json.JSONDecoder().raw_decode(raw)
    except json.JSONDecodeError as e:
        return ParseFailure(ErrorLabel.INVALID_JSON_INPUT, f"Action Input is not JSON: {e.msg}", text, action, raw)
    if not isinstance(value, dict):
        return ParseFailure(ErrorLabel.INVALID_JSON_INPUT, "Action Input is not a JSON object", text, action, raw)
    return Step(thought, action, raw[:end])


RETURN_TYPE, FINAL_ANSWER = '"return_type": "', '"final_answer": "'


def toolbench_finish(action_input: str) -> dict | None:
    """A Finish whose input is not strict JSON, read as ToolBench's environment reads it, or None.

    ``rapidapi.py`` (``_step``) tries ``json.loads(..., strict=False)`` (raw newlines allowed), then
    looks for the ``return_type`` and takes everything after ``"final_answer": "`` as the answer.
    It ends the episode on ``give_answer`` with an answer or on ``give_up_and_restart``; for
    anything else it answers with an error, and so do we (None).
    """
    try:
        args = json.loads(action_input, strict=False)
    except json.JSONDecodeError:
        args = {}
        if RETURN_TYPE in action_input:
            for kind in ("give_answer", "give_up_and_restart"):
                if f'{RETURN_TYPE}{kind}"' in action_input:
                    args["return_type"] = kind
                    break
        if FINAL_ANSWER in action_input:
            args["final_answer"] = action_input[action_input.find(FINAL_ANSWER) + len(FINAL_ANSWER):]
    if not isinstance(args, dict):
        return None
    ends = args.get("return_type") == "give_up_and_restart" or (args.get("return_type") == "give_answer" and "final_answer" in args)
    return args if ends else None


# ---------------------------------------------------------------- messages <-> steps
def message_step(msg: dict) -> Step:
    """The ReAct step of an assistant message (exactly one tool call)."""
    calls = msg.get("tool_calls") or []
    if len(calls) != 1:
        raise ValueError(f"the ReAct format shows one call per assistant turn, got {len(calls)}")
    fn = calls[0]["function"]
    return Step(msg.get("thought") or "", fn["name"], fn["arguments"])


def step_message(step: Step) -> dict:
    return {"role": "assistant", "content": None, "thought": step.thought,
            "tool_calls": [{"type": "function", "function": {"name": step.action, "arguments": step.action_input}}]}


def rendered_messages(task: dict) -> list[tuple[str, str]]:
    """``(role, value)`` for every message as ToolLLaMA's template shows it, system prompt first.

    The first user message is wrapped as ToolBench's user turn ``\\n{query}\\nBegin!\\n``; later
    user messages (DFSDT's retry notes, follow-up questions) are shown as they are.
    """
    out = [("system", system_prompt(task))]
    first_user = True
    for msg in task["messages"]:
        role = msg["role"]
        if role == "system":
            continue
        if role == "assistant":
            value = render_step(message_step(msg))
        elif role == "user" and first_user:
            value, first_user = USER_TURN.format(query=msg["content"]), False
        else:
            value = msg["content"]
        out.append((role, value))
    return out


# ---------------------------------------------------------------- the conversation template
def segments(task: dict, loss_on: str = "last") -> list[tuple[str, bool]]:
    """The ToolLLaMA text of a trajectory as ``(text, learned)`` pieces.

    ``loss_on="last"`` learns only the last assistant turn (ToolLLaMA); ``"all"`` learns every
    assistant turn. The EOS token after the last turn is added by the encoder. Without a system
    message the ToolBench system prompt is built from the task's tools.
    """
    if loss_on not in ("last", "all"):
        raise ValueError(f"loss_on must be 'last' or 'all', got {loss_on!r}")
    msgs = rendered_messages(task)
    last = max((i for i, (role, _) in enumerate(msgs) if role == "assistant"), default=None)
    if last is None:
        raise ValueError(f"task {task['id']} has no assistant turn to learn")
    out: list[tuple[str, bool]] = []
    for i, (role, value) in enumerate(msgs):
        out.append((("" if i == 0 else "\n") + ROLE_NAMES[role] + ": ", False))
        out.append((value, role == "assistant" and (loss_on == "all" or i == last)))
    return out


def prompt_segments(task: dict) -> list[tuple[str, bool]]:
    """The prompt for the model's next step: the history so far and ``\\nAssistant: ``."""
    out = []
    for i, (role, value) in enumerate(rendered_messages(task)):
        out.append((("" if i == 0 else "\n") + ROLE_NAMES[role] + ": ", False))
        out.append((value, False))
    out.append(("\nAssistant: ", False))
    return out


def text(segs: list[tuple[str, bool]]) -> str:
    return "".join(s for s, _ in segs)


def to_toolllama_row(task: dict, row_id: str | None = None) -> dict[str, Any]:
    """A training row in ToolBench's released layout ``{"id", "conversations": [{from, value}]}``."""
    name = {"tool": "function"}
    return {"id": row_id or task["id"],
            "conversations": [{"from": name.get(r, r), "value": v} for r, v in rendered_messages(task)]}
