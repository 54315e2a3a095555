"""Grammar-constrained decoding: every step written under its task's grammar (llguidance).

A task's grammar admits exactly one well-formed ToolBench step and nothing after it::

    \\nThought: <one line, at most THOUGHT_TOKENS tokens>
    Action: <one of the task's tool names, or Finish>
    Action Input: <a JSON object valid under that tool's parameters schema>

and for Finish ``{"return_type": "give_answer" | "give_up_and_restart", "final_answer": "..."}``, its
answer bounded in tokens by what the thought left of the step's budget, so that it always closes.

Tool schemas are normalised first (:func:`normalise`): types mapped to JSON Schema's, keywords
the engine does not need dropped, undeclared keys forbidden, strings and arrays bounded, so a
weak model cannot write an endless argument. A tool whose schema llguidance still rejects keeps
its name but takes any JSON object (:data:`ANY_OBJECT`); the task is then a *fallback*, counted
in the metrics and named in the log, never a crash.

:class:`GrammarConstraint` is the ``transformers`` ``LogitsProcessor``: one ``LLMatcher`` per
batch row, each fed the row's last token before the next masks are filled (in parallel, by one
``LLExecutor``). Only masks are computed, so the model may reach a literal such as ``\\nAction: ``
through any tokenization, including the ones it was trained on; the one exception is the end of a step
that would not close in time (:func:`closing`): near the token limit, a call whose shortest closing would no
longer fit is written to its end, so a step under grammar ends well formed wherever its closing fitted when
the row came near the limit.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from transformers import LogitsProcessor

from slmlib import toolbench_format as tbf
from slmlib.schema import FINISH, arranged

log = logging.getLogger(__name__)

THOUGHT_TOKENS = 96     # p90 of the training thoughts is ~130 tokens; the step's whole budget is 256 by default
# A string gets as many characters as the step has tokens, at least 256: at one character a token it fills the step
# and no more. ComplexFuncBench's calls copy base64 keys of up to 710 characters (380-570 tokens of Action Input):
# 107 of its 980 test calls need a step budget (eval.max_new_tokens) of about 640 to be writable at all.
STRING_CHARS = 256
ARRAY_ITEMS = 16        # the longest argument array in the training mix has 8 items
# Numbers are bounded to 16 integer digits; their decimals are not: ComplexFuncBench passes coordinates of 13-14
# decimals (130 of its 980 test gold calls, in 27 of the 200 tasks), and llguidance compiles no multipleOf finer
# than 1e-10. A weak model that writes decimals without end is closed at the step's token limit, as any run-on is.
NUMBER_BOUND = 10 ** 15
# The JSON's whitespace: room for ToolBench's indented objects ('{\n  "a": 1\n}'), none for a loop of it.
JSON_OPTIONS = {"whitespace_pattern": r"[\x20\x0A]{0,6}", "lenient": True}

# Type names met in tool definitions (ToolBench writes 'NUMBER', 'STRING', ...), lower-cased -> JSON Schema's.
TYPES = {"string": "string", "str": "string", "text": "string", "date": "string", "time": "string",
         "datetime": "string", "enum": "string", "number": "number", "float": "number", "double": "number",
         "integer": "integer", "int": "integer", "long": "integer", "boolean": "boolean", "bool": "boolean",
         "array": "array", "list": "array", "object": "object", "dict": "object", "null": "null"}
PYTHON_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "array": list, "object": dict,
                "null": type(None)}
ANY_OBJECT = {"type": "object"}


def _type(raw: Any) -> str | list[str] | None:
    names = raw if isinstance(raw, list) else [raw]
    known = sorted({TYPES[n.lower()] for n in names if isinstance(n, str) and n.lower() in TYPES})
    return None if not known else known[0] if len(known) == 1 else known


def _fits(value: Any, json_type: str | list[str]) -> bool:
    kinds = json_type if isinstance(json_type, list) else [json_type]
    return any(isinstance(value, PYTHON_TYPES[k]) and not (k != "boolean" and isinstance(value, bool)) for k in kinds)


def normalise(schema: Any, top: bool = False, string_chars: int = STRING_CHARS) -> dict:
    """A schema llguidance compiles and that bounds what a model can write; ``top``: a tool's parameters."""
    if not isinstance(schema, dict):
        return {"type": "object", "properties": {}, "additionalProperties": False} if top else {}
    out: dict[str, Any] = {}
    json_type = "object" if top else _type(schema.get("type"))
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, (str, int, float, bool)) or v is None for v in enum):
        out["enum"] = enum
        if json_type is not None and not all(_fits(v, json_type) for v in enum):
            json_type = None  # the values say more than a mismatched type name
    if json_type is not None:
        out["type"] = json_type
    kinds = set(json_type) if isinstance(json_type, list) else {json_type}
    props = schema.get("properties")
    if "object" in kinds and (top or isinstance(props, dict)):
        props = {k: normalise(v, string_chars=string_chars) for k, v in (props or {}).items() if isinstance(k, str)}
        out["properties"] = props
        required = schema.get("required")
        if isinstance(required, list):
            out["required"] = list(dict.fromkeys(k for k in required if k in props))
        out["additionalProperties"] = False
    if "array" in kinds:
        if isinstance(schema.get("items"), dict):
            out["items"] = normalise(schema["items"], string_chars=string_chars)
        out["maxItems"] = ARRAY_ITEMS
    if "string" in kinds and "enum" not in out:
        out["maxLength"] = string_chars
    if kinds & {"number", "integer"} and "enum" not in out:
        for bound, sign, pick in (("minimum", -1, max), ("maximum", 1, min)):
            given = schema.get(bound)
            usable = isinstance(given, (int, float)) and not isinstance(given, bool)
            out[bound] = pick(given, sign * NUMBER_BOUND) if usable else sign * NUMBER_BOUND
    return out


def _json(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS})


def _literal(text: str) -> str:
    return json.dumps(text)  # a Lark string literal: the same escapes as JSON's


# Finish is written as the training data writes it, '{"return_type": "...", "final_answer": "..."}', with its
# answer bounded in tokens, not characters: a model that writes one character per token ('000...') would
# otherwise reach the step's token limit inside the answer (seen with untuned SmolLM2 and 400 characters).
FINISH_OPENING, FINISH_BETWEEN, FINISH_CLOSING = FINISH + tbf.ACTION_INPUT + '{"return_type": ', ', "final_answer": "', '"}'
# Nothing is forced, so a model may spell the literals one character per token: the answer gets what is left.
FINISH_OVERHEAD = len(tbf.THOUGHT + tbf.ACTION + FINISH_OPENING + '"give_up_and_restart"' + FINISH_BETWEEN + FINISH_CLOSING)
# The inside of the answer's JSON string, without escapes: llguidance ends a lexeme at its max_tokens even where
# the regex would not (seen: an answer cut right after a backslash, its closing quote escaped, the step invalid).
ANSWER_BODY = r'/[^"\\\x00-\x1f]*/'


def _finish_rules(answer_tokens: int) -> str:
    kinds = " | ".join(_literal(json.dumps(k)) for k in ("give_answer", "give_up_and_restart"))
    return (f"finish: {_literal(FINISH_OPENING)} return_type {_literal(FINISH_BETWEEN)} answer {_literal(FINISH_CLOSING)}\n"
            f"return_type: {kinds}\n"
            f"answer[max_tokens={answer_tokens}]: {ANSWER_BODY}\n")


def lark(alternatives: list[tuple[str, dict]], thought_tokens: int = THOUGHT_TOKENS, max_new_tokens: int = 256) -> str:
    """The Lark grammar of one step with these ``(action name, Action Input schema)`` choices and Finish.

    The thought and the answer share the step's token budget, so a Finish always closes within it.
    """
    calls = "".join(f"\n     | {_literal(name + tbf.ACTION_INPUT)} {_json(schema)}" for name, schema in alternatives)
    answer_tokens = max(1, max_new_tokens - thought_tokens - FINISH_OVERHEAD)
    return (f"start: {_literal(tbf.THOUGHT)} thought {_literal(tbf.ACTION)} call\n"
            f"thought[max_tokens={thought_tokens}]: /[^\\n]*/\n"
            f"call: finish{calls}\n" + _finish_rules(answer_tokens))


@functools.lru_cache(maxsize=4096)  # a tool's grammar recurs in many tasks; bounded for long evaluations
def _problem(grammar: str) -> str:
    """llguidance's complaint about a grammar, '' when it compiles (a bad grammar does not raise)."""
    import llguidance
    return llguidance.LLMatcher.validate_grammar(grammar)


@dataclass(frozen=True)
class TaskGrammar:
    text: str
    fallbacks: dict[str, str] = field(default_factory=dict)  # tool name -> why it takes any JSON object


def for_task(task: dict, max_new_tokens: int = 256, orders: Mapping[str, list[str]] | None = None) -> TaskGrammar:
    """The task's step grammar; a tool whose schema does not compile takes any object (and is reported).

    The thought gets at most a third of the step's token budget, so the call after it has room. llguidance writes
    an object's keys in its schema's order; ``orders`` (tool name -> argument names, :func:`slmlib.schema.argument_orders`
    of a model's training data) puts a tool's arguments in the order the model learned to write them instead.
    """
    thought_tokens = max(1, min(THOUGHT_TOKENS, max_new_tokens // 3))
    alternatives, fallbacks = [], {}
    for tool in task["tools"]:
        schema = normalise(tool.get("parameters"), top=True, string_chars=max(STRING_CHARS, max_new_tokens))
        if orders and tool["name"] in orders:
            props = schema["properties"]
            schema["properties"] = {k: props[k] for k in arranged(props, orders[tool["name"]])}
        problem = _problem(lark([(tool["name"], schema)]))
        if problem:
            fallbacks[tool["name"]] = problem.splitlines()[0][:200]
            schema = ANY_OBJECT
        alternatives.append((tool["name"], schema))
    text = lark(alternatives, thought_tokens, max_new_tokens)
    problem = _problem(text)
    if problem:  # e.g. a name that cannot be a literal: the names alone, each with any object
        fallbacks["*"] = problem.splitlines()[0][:200]
        text = lark([(name, ANY_OBJECT) for name, _ in alternatives], thought_tokens, max_new_tokens)
    if fallbacks:
        log.warning("task %s: schema grammar fell back to any JSON object for %s", task.get("id"), fallbacks)
    return TaskGrammar(text, fallbacks)


@functools.lru_cache(maxsize=4)
def ll_tokenizer(tokenizer):
    """llguidance's view of a tokenizer (about a second to build, so once per tokenizer)."""
    import llguidance.hf
    return llguidance.hf.from_tokenizer(tokenizer, eos_token=tokenizer.eos_token_id)


@functools.cache
def _executor():
    import llguidance
    return llguidance.LLExecutor()


BITS = torch.arange(32, dtype=torch.int32)
# The last tokens of a step's budget, where each token the model may write must leave room to close the step
# (a call's JSON cut at the limit was the only invalid step under grammar: 4 of ~1,180 on ComplexFuncBench).
CLOSING_ZONE = 32       # tokens to spare beyond the closing: one token rarely raises a closing by more
CLOSING_EVERY = 8       # further from the limit, the closing's length is looked at every 8 tokens
CLOSING_CANDIDATES = 3  # in that zone, the model chooses among its three likeliest allowed tokens that still fit
# The closing's choice of character, where the grammar allows several: inside a JSON string, end it; outside,
# end the containers, go on to a missing key, or write the shortest value (0, "", true); whitespace last.
INSIDE_STRING, OUTSIDE_STRING = '"0', '}],:0"t'


@dataclass(frozen=True)
class Vocabulary:
    texts: list[str]            # each token's text
    chars: dict[str, int]       # printable ASCII characters (and newline) that are one token each, whitespace last


@functools.lru_cache(maxsize=4)
def vocabulary(tokenizer) -> Vocabulary:
    texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    wanted = [chr(c) for c in range(33, 127)] + [" ", "\n"]
    first = {}
    for i, text in enumerate(texts):
        if len(text) == 1 and text not in first and tokenizer.encode(text, add_special_tokens=False) == [i]:
            first[text] = i
    return Vocabulary(texts, {c: first[c] for c in wanted if c in first})


def _allowed(mask: bytes, token: int) -> bool:
    return token // 8 < len(mask) and bool(mask[token // 8] >> (token % 8) & 1)


def _in_string(call: str) -> bool:
    """Whether a JSON text that has not ended stops inside a string (an escape counts as inside)."""
    inside = escaped = False
    for ch in call:
        if escaped:
            escaped = False
        elif ch == "\\" and inside:
            escaped = True
        elif ch == '"':
            inside = not inside
    return inside or escaped


def _shortest(mask: bytes, vocab: Vocabulary) -> int | None:
    bits = np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")[:len(vocab.texts)]
    allowed = np.flatnonzero(bits)
    return min(allowed.tolist(), key=lambda i: len(vocab.texts[i]) or 10 ** 6, default=None)


def closing(matcher, text: str, vocab: Vocabulary, budget: int) -> list[int] | None:
    """Tokens that end the step ``text`` (what the row wrote so far) within ``budget`` tokens, or None where they do
    not fit: what the grammar forces (a key is a literal in one tokenization), else the preferred character, else the
    shortest token allowed. The matcher is not changed (a copy is walked)."""
    m = matcher.deep_copy()
    out: list[int] = []
    while not m.is_accepting():
        if len(out) >= budget or m.is_stopped():
            return None
        forced = m.compute_ff_tokens()
        if not forced:
            _, action, call = text.rpartition(tbf.ACTION_INPUT)
            order = "\n" if not action else INSIDE_STRING if _in_string(call) else OUTSIDE_STRING
            mask = m.compute_bitmask()
            pick = next((vocab.chars[c] for c in order + "".join(vocab.chars)
                         if c in vocab.chars and _allowed(mask, vocab.chars[c])), None)
            forced = [pick if pick is not None else _shortest(mask, vocab)]
        if forced[0] is None or not m.consume_tokens(forced):
            return None
        out += forced
        text += "".join(vocab.texts[t] for t in forced)
    return out if len(out) <= budget else None


class GrammarConstraint(LogitsProcessor):
    """Masks each row's logits to what its grammar allows next; ``grammars[row]`` is that row's grammar text.

    A row whose step is complete (its matcher accepts) and that ``generate`` goes on padding is left
    alone; a token its grammar rejected otherwise, or a state that allows no token, is counted in
    ``rejected`` and frees that row (neither happens with a grammar that compiled).

    With ``max_new_tokens`` (the step's budget), each row keeps room to close its step: once fewer than
    :data:`CLOSING_ZONE` tokens beyond its :func:`closing` are left, the model keeps its likeliest allowed
    tokens after which the closing still fits, and where none does the closing is written; ``closing[row]``
    says whether row ``row``'s step was closed so.
    """

    def __init__(self, tokenizer, prompt_len: int, grammars: list[str], max_new_tokens: int | None = None):
        import llguidance
        import llguidance.torch as llt
        self.lltok = ll_tokenizer(tokenizer)
        self.matchers = [llguidance.LLMatcher(self.lltok, g) for g in grammars]
        self.prompt_len = prompt_len
        self.free = [m.is_error() for m in self.matchers]
        self.rejected = 0
        self.closing = [False] * len(grammars)
        self.tokenizer, self.max_new_tokens = tokenizer, max_new_tokens
        self.queued: list[list[int]] = [[] for _ in grammars]
        self.watch = [max_new_tokens or 0] * len(grammars)  # a row's closing is looked at once ``left`` is at most this
        self.mask = llt.allocate_token_bitmask(len(grammars), self.lltok.vocab_size)
        self._fill = llt.fill_next_token_bitmask_par

    def _consume(self, tokens: list[int]) -> None:
        for row, (m, token) in enumerate(zip(self.matchers, tokens)):
            if self.free[row]:
                continue
            accepting = m.is_accepting()
            if m.is_stopped() or not m.consume_token(token):
                self.free[row] = True
                if not accepting:
                    self.rejected += 1
                    log.warning("grammar rejected token %d in row %d: %s", token, row, m.get_error())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_len:
            self._consume(input_ids[:, -1].tolist())
        rows = [row for row, free in enumerate(self.free) if not free]
        if not rows:
            return scores
        self._fill(_executor(), [(self.matchers[r], r) for r in rows], self.mask)
        allowed = ((self.mask[rows, :, None] >> BITS) & 1).bool().reshape(len(rows), -1)
        for i in (~allowed.any(1)).nonzero().flatten().tolist():  # nothing allowed: leave that row free, not all -inf
            self.free[rows[i]] = True
            self.rejected += 1
            allowed[i] = True
            log.warning("grammar of row %d allows no token: %s", rows[i], self.matchers[rows[i]].get_error())
        width = min(allowed.shape[1], scores.shape[1])
        blocked = torch.ones((len(rows), scores.shape[1]), dtype=torch.bool)
        blocked[:, :width] = ~allowed[:, :width]
        left = None if self.max_new_tokens is None else self.max_new_tokens - (input_ids.shape[1] - self.prompt_len)
        if left is not None:
            for i, row in enumerate(rows):
                keep = self._closing_keep(row, input_ids[row, self.prompt_len:], scores[row], blocked[i], left)
                if keep is not None:
                    blocked[i] = True
                    blocked[i, keep] = False
        scores[rows] = scores[rows].masked_fill(blocked.to(scores.device), float("-inf"))
        return scores

    def _closing_keep(self, row: int, written: torch.Tensor, scores: torch.Tensor, blocked: torch.Tensor,
                      left: int) -> list[int] | None:
        """The tokens row ``row`` may take with ``left`` tokens of its budget to go, None for all it is allowed."""
        m = self.matchers[row]
        if self.queued[row]:
            return [self.queued[row].pop(0)]
        if m.is_accepting() or left > self.watch[row]:
            return None
        vocab, text = vocabulary(self.tokenizer), self.tokenizer.decode(written.tolist(), skip_special_tokens=True)
        ending = closing(m, text, vocab, left)
        if ending is None:
            return None  # no closing fits any more (a token raised it by more than the zone): cut as before
        if left - len(ending) > CLOSING_ZONE:  # room enough: look again a few tokens on
            self.watch[row] = left - CLOSING_EVERY
            return None
        likeliest = scores.masked_fill(blocked.to(scores.device), float("-inf")).topk(CLOSING_CANDIDATES)
        fitting = []
        for token in likeliest.indices[likeliest.values > float("-inf")].tolist():
            after = m.deep_copy()
            if after.consume_token(token) and closing(after, text + vocab.texts[token], vocab, left - 1) is not None:
                fitting.append(token)
        if fitting:
            return fitting
        self.closing[row] = True
        log.info("row %d: the step closed by the grammar with %d of its tokens left", row, left)
        self.queued[row] = ending[1:]
        return ending[:1]
