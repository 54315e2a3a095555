"""Grammar-constrained decoding (slmlib.grammar): every task's grammar compiles, and what a model
writes under it is always one well-formed step that calls a declared tool with schema-valid input."""
import json

import jsonschema
import pytest
import torch
from transformers import LogitsProcessorList

from slmlib import data, envs, grammar, judge, rollout
from slmlib import toolbench_format as tbf
from slmlib.schema import FINISH

SOURCES = [("complexfuncbench", "test"), ("stabletoolbench", "train"), ("glaive", "train"), ("apibank", "train"),
           ("toolrl", "train")]


def test_every_real_task_grammar_compiles(data_root, smol_tokenizer):
    """The ComplexFuncBench test split, all 765 StableToolBench queries, the glaive / API-Bank / ToolRL conversions."""
    import llguidance
    lltok = grammar.ll_tokenizer(smol_tokenizer)
    counts, fallbacks = {}, {}
    for source, split in SOURCES:
        tasks = list(data.load(source, data_root, split))
        for t in tasks:
            g = grammar.for_task(t)
            if g.fallbacks:
                fallbacks[t["id"]] = g.fallbacks
            matcher = llguidance.LLMatcher(lltok, g.text)
            assert not matcher.is_error(), (t["id"], matcher.get_error())
        counts[source] = len(tasks)
    print(f"grammars compiled: {counts}; fell back to any JSON object: {len(fallbacks)} {fallbacks}")
    assert counts == {"complexfuncbench": 200, "stabletoolbench": 765, "glaive": 650, "apibank": 1245, "toolrl": 400}
    assert fallbacks == {}  # once normalised, every real schema compiles (0 of 3,260 tasks fall back)


def test_messy_schemas_are_normalised():
    toolbench_like = {"type": "object", "properties": {
        "limit": {"type": "NUMBER", "description": "how many", "example_value": "10"},
        "q": {"type": "STRING", "format": "no-such-format"},
        "kind": {"type": "string", "enum": [1, 2]},
        "tags": {"type": "ARRAY", "items": {"type": "Str"}},
        "opts": {"type": "object", "properties": {"deep": {"type": "BOOLEAN"}}},
        "odd": {"type": "WHATEVER"}},
        "required": ["q", "q", "gone"], "optional": ["limit"]}
    n = grammar.normalise(toolbench_like, top=True)
    p = n["properties"]
    assert p["limit"] == {"type": "number", "minimum": -grammar.NUMBER_BOUND, "maximum": grammar.NUMBER_BOUND}
    assert p["q"] == {"type": "string", "maxLength": grammar.STRING_CHARS}
    assert p["kind"] == {"enum": [1, 2]}  # the values, not a type name they contradict
    assert p["tags"] == {"type": "array", "items": {"type": "string", "maxLength": grammar.STRING_CHARS},
                         "maxItems": grammar.ARRAY_ITEMS}
    assert p["opts"] == {"type": "object", "properties": {"deep": {"type": "boolean"}}, "additionalProperties": False}
    assert p["odd"] == {}
    assert n["required"] == ["q"] and n["additionalProperties"] is False and "optional" not in n
    assert grammar.normalise(None, top=True) == {"type": "object", "properties": {}, "additionalProperties": False}


def test_a_schema_the_engine_rejects_falls_back_to_any_object(caplog):
    impossible = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 1}},
                  "required": ["n"]}
    t = {"id": "t1", "tools": [{"name": "odd_tool", "parameters": impossible},
                               {"name": "fine_tool", "parameters": {"type": "object", "properties": {}}}]}
    g = grammar.for_task(t)
    assert set(g.fallbacks) == {"odd_tool"} and g.fallbacks["odd_tool"]
    assert "odd_tool" in caplog.text  # named in the log
    assert grammar._problem(g.text) == ""


def steps_are_valid(texts: list[str], tasks: list[dict]) -> None:
    for text, t in zip(texts, tasks):
        step = tbf.parse_step(text)
        assert isinstance(step, tbf.Step), (text, step)
        tools = {x["name"]: x for x in t["tools"]}
        assert step.action in tools or step.action == FINISH, step.action
        args = step.arguments()
        if step.action == FINISH:
            jsonschema.validate(args, tbf.FINISH_FUNCTION["parameters"])
            assert set(args) == {"return_type", "final_answer"}
        else:
            schema = tools[step.action].get("parameters") or {"type": "object", "properties": {}}
            jsonschema.validate(args, schema)
            assert set(args) <= set(schema.get("properties", {})), (step.action, args)


def sample_under_grammar(model, tok, tasks: list[dict], max_new_tokens: int) -> list[str]:
    prompts = [tok(f"User: {t['messages'][-1]['content'][:300]}\nAssistant:", add_special_tokens=False).input_ids
               for t in tasks]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    proc = grammar.GrammarConstraint(tok, width, [grammar.for_task(t, max_new_tokens).text for t in tasks], max_new_tokens)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                         temperature=1.0, top_k=None, top_p=None, pad_token_id=tok.pad_token_id,
                         logits_processor=LogitsProcessorList([proc]))
    assert proc.rejected == 0
    return [tok.decode(row[width:], skip_special_tokens=True) for row in out]


@pytest.mark.slow
def test_random_weights_at_temperature_one_write_only_valid_steps(data_root, tiny):
    """tiny-opt has random weights: whatever it samples, the grammar keeps it to a valid step."""
    model, tok = tiny
    stb = list(data.load("stabletoolbench", data_root))
    cfb = list(data.load("complexfuncbench", data_root, "test"))
    tasks = stb[::25][:30] + cfb[::10]  # 30 + 20 real tasks, every StableToolBench group and both ComplexFuncBench ones
    torch.manual_seed(0)
    steps_are_valid(sample_under_grammar(model, tok, tasks[:1], 1024), tasks[:1])  # one alone
    for b in range(0, len(tasks), 10):  # batches of tasks with different tools, left-padded
        steps_are_valid(sample_under_grammar(model, tok, tasks[b:b + 10], 1024), tasks[b:b + 10])


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [2, 1])  # at 1, sampled with drafts (slmlib.lookup): the grammar follows the kept tokens
def test_a_grammar_rollout_writes_well_formed_steps(data_root, tiny, batch_size):
    tasks = sorted(data.load("complexfuncbench", data_root, "test"), key=lambda t: len(json.dumps(t["tools"])))[:3]
    dec = rollout.Decoding(max_steps=2, max_new_tokens=192, decoding="grammar", temperature=1.0, max_context=2048)
    episodes = list(rollout.run(*tiny, tasks, envs.make("replay"), dec, batch_size=batch_size))
    steps = [s for ep in episodes for s in ep.steps]
    assert steps and all("error" not in s for s in steps), [s["raw"] for s in steps if "error" in s]
    for ep in episodes:
        record = rollout.episode_record(ep)
        assert "grammar_fallbacks" not in record
        for name, args in judge.calls_of(record):
            assert name in {t["name"] for t in ep.task["tools"]} and isinstance(args, dict)


@pytest.mark.slow
def test_the_grammar_keeps_a_real_model_to_its_rows_tools():
    """SmolLM2 never writes these made-up names freely; under the grammar each row writes a step of its own task."""
    from slmlib import models
    model, tok = models.load("smollm2-135m-instruct")
    prompt = tok("User: List the posts of an Instagram reel.\nAssistant:", add_special_tokens=False).input_ids
    tools = [[{"name": "zq_lookup_7", "parameters": {"type": "object", "properties": {"reel": {"type": "string"}},
                                                     "required": ["reel"]}}],
             [{"name": "wx_other_tool", "parameters": {"type": "object", "properties": {}}}]]
    tasks = [{"id": f"t{i}", "tools": t, "messages": [{"role": "user", "content": "x"}]} for i, t in enumerate(tools)]
    ids = torch.tensor([prompt] * 2)
    free = model.generate(input_ids=ids, max_new_tokens=48, do_sample=False)
    constrained = model.generate(input_ids=ids, max_new_tokens=96, do_sample=False, logits_processor=LogitsProcessorList(
        [grammar.GrammarConstraint(tok, len(prompt), [grammar.for_task(t).text for t in tasks])]))
    texts = [tok.decode(row[len(prompt):], skip_special_tokens=True) for row in constrained]
    steps_are_valid(texts, tasks)
    assert all(n not in tok.decode(free[0, len(prompt):]) for n in ("zq_lookup_7", "wx_other_tool"))


def test_an_answer_that_reaches_its_token_limit_still_closes_as_json(smol_tokenizer):
    """llguidance ends a lexeme at its max_tokens even mid-escape (an answer cut after a backslash, its closing
    quote escaped, was seen under grammar decoding): the answer takes no backslash, so any cut closes cleanly."""
    import llguidance
    import numpy as np
    tok = smol_tokenizer
    t = {"id": "t", "tools": [{"name": "f", "parameters": {"type": "object", "properties": {}}}]}
    matcher = llguidance.LLMatcher(grammar.ll_tokenizer(tok), grammar.for_task(t, max_new_tokens=120).text)
    opening = '\nThought: x\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "'
    assert matcher.consume_tokens(tok(opening, add_special_tokens=False).input_ids)
    vocab = {i: tok.decode([i]) for i in range(len(tok))}
    backslashes = [i for i, s in vocab.items() if "\\" in s]
    written = []
    while not matcher.is_stopped():
        mask = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        allowed = np.flatnonzero(mask[:len(tok)])
        assert not set(backslashes) & set(allowed.tolist())  # never a backslash inside the answer
        pick = max(allowed, key=lambda i: ("\\" in vocab[i], vocab[i] == "\\n", len(vocab[i]) if '"' not in vocab[i] else -1))
        assert matcher.consume_token(int(pick)), matcher.get_error()
        written.append(int(pick))
    step = tbf.parse_step(opening.lstrip("\n") + tok.decode(written, skip_special_tokens=True))
    assert isinstance(step, tbf.Step) and step.arguments()["return_type"] == "give_answer"


def test_the_longest_real_key_is_writable_once_the_step_has_room_for_it(data_root, smol_tokenizer):
    """ComplexFuncBench's calls copy base64 keys from observations (up to 710 characters): a string gets as many
    characters as the step has tokens, so the gold call is writable in a step of 768 tokens and not in one of 256."""
    import llguidance
    tok = smol_tokenizer
    task, call = max(((t, c) for t in data.load("complexfuncbench", data_root, "test") for c in t["replay"]),
                     key=lambda tc: max(map(len, (v for v in tc[1]["arguments"].values() if isinstance(v, str))),
                                        default=0))
    longest = max(len(v) for v in call["arguments"].values() if isinstance(v, str))
    assert longest == 710
    order = list(next(x for x in task["tools"] if x["name"] == call["name"])["parameters"]["properties"])
    arguments = dict(sorted(call["arguments"].items(), key=lambda kv: order.index(kv[0])))  # the grammar's key order
    ids = tok(tbf.render_step(tbf.Step("", call["name"], json.dumps(arguments))), add_special_tokens=False).input_ids
    written = {}
    for budget in (256, 768):
        matcher = llguidance.LLMatcher(grammar.ll_tokenizer(tok), grammar.for_task(task, max_new_tokens=budget).text)
        written[budget] = matcher.consume_tokens(ids) and matcher.is_accepting()
    assert written == {256: False, 768: True}, (len(ids), written)


def test_every_gold_call_of_the_test_split_is_writable(data_root, smol_tokenizer):
    """Each of ComplexFuncBench's 980 test gold calls, as the model writes it (keys in the tool's order, characters
    unescaped), is a step the grammar accepts in a step of 768 tokens: 14 decimals of a coordinate, 710 characters of
    a key. (Under 8 decimals, the bound before, 33 calls in 27 tasks were not.)"""
    import llguidance
    tok, unwritable, n = smol_tokenizer, [], 0
    ll = grammar.ll_tokenizer(tok)
    for task in data.load("complexfuncbench", data_root, "test"):
        g = grammar.for_task(task, max_new_tokens=768)
        assert not g.fallbacks, (task["id"], g.fallbacks)
        for call in task["replay"]:
            order = list(next(x for x in task["tools"] if x["name"] == call["name"])["parameters"]["properties"])
            arguments = dict(sorted(call["arguments"].items(), key=lambda kv: order.index(kv[0])))
            step = tbf.render_step(tbf.Step("", call["name"], json.dumps(arguments, ensure_ascii=False)))
            matcher = llguidance.LLMatcher(ll, g.text)
            n += 1
            if not (matcher.consume_tokens(tok(step, add_special_tokens=False).input_ids) and matcher.is_accepting()):
                unwritable.append((task["id"], call["name"], matcher.get_error()))
    assert n == 980 and unwritable == []


def test_the_grammar_writes_arguments_in_the_order_it_is_given(smol_tokenizer):
    """llguidance writes an object's keys in its schema's order; given a model's training order, in that one."""
    import llguidance
    tool = {"name": "f", "parameters": {"type": "object", "required": ["to", "since"],
                                        "properties": {"to": {"type": "string"}, "since": {"type": "string"}}}}
    ll = grammar.ll_tokenizer(smol_tokenizer)

    def writes(orders, arguments: str) -> bool:
        matcher = llguidance.LLMatcher(ll, grammar.for_task({"id": "t", "tools": [tool]}, orders=orders).text)
        step = tbf.render_step(tbf.Step("", "f", arguments))
        return matcher.consume_tokens(smol_tokenizer(step, add_special_tokens=False).input_ids) and matcher.is_accepting()

    since_first, to_first = '{"since": "2024-11-15", "to": "2024-11-17"}', '{"to": "2024-11-17", "since": "2024-11-15"}'
    assert writes(None, to_first) and not writes(None, since_first)
    assert writes({"f": ["since", "to"]}, since_first) and not writes({"f": ["since", "to"]}, to_first)
    assert writes({"g": ["since", "to"]}, to_first)  # another tool's order changes nothing


def test_an_evaluation_writes_arguments_in_its_training_files_order(tiny, tmp_path):
    """``argument_order_from`` reaches the grammar of every episode and is kept with the episodes."""
    from slmlib.evaluate import evaluate
    from slmlib.schema import tool_call, write_jsonl
    keys = ["pick_up_date", "drop_off_date", "pick_up_time"]
    tool = {"name": "rent", "description": "Rent a car.", "parameters": {
        "type": "object", "properties": {k: {"type": "string"} for k in keys}, "required": keys}}
    tasks = [{"id": f"t{i}", "group": "g", "tools": [tool], "messages": [{"role": "user", "content": "A car, please."}]}
             for i in range(4)]
    train = tmp_path / "train.jsonl"  # a training file whose call writes the arguments backwards
    write_jsonl(train, [{"id": "r", "group": "g", "tools": [tool], "messages": [
        {"role": "user", "content": "?"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("rent", {k: "x" for k in keys[::-1]})]}]}])
    write_jsonl(tmp_path / "tasks.jsonl", tasks)
    evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "out", max_steps=3, max_new_tokens=96, decoding="grammar",
             temperature=1.0, argument_order_from=train)
    assert json.loads((tmp_path / "out" / "settings.json").read_text())["argument_order"] == "as_trained"
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    written = [list(args) for r in records for _, args in judge.calls_of(r)]
    assert written and all(k == keys[::-1] for k in written), written


def write_without_closing(tok, task: dict, max_new_tokens: int, close: bool) -> tuple[str, grammar.GrammarConstraint]:
    """An adversary under the grammar: it opens a call of the task's first tool, then always prefers the shortest
    allowed token free of JSON punctuation (one character a token), so once inside a string it never ends it; run
    to the step's token limit as ``generate`` would."""
    opening = tok(f'{tbf.THOUGHT}x{tbf.ACTION}{task["tools"][0]["name"]}{tbf.ACTION_INPUT}{{', add_special_tokens=False).input_ids
    liking = torch.tensor([-1.0 if set(v) & set('"\\{}[],:\n') else 1.0 / len(v) for v in grammar.vocabulary(tok).texts])
    proc = grammar.GrammarConstraint(tok, 0, [grammar.for_task(task, max_new_tokens).text],
                                     max_new_tokens if close else None)
    ids = torch.zeros((1, 0), dtype=torch.long)
    for _ in range(max_new_tokens):
        scores = liking.clone()[None]
        if ids.shape[1] < len(opening):
            scores[0, opening[ids.shape[1]]] = 100.0
        scores = proc(ids, scores)  # takes the last token, then masks
        if proc.matchers[0].is_accepting():
            break  # the step is whole: StopAtStepEnd ends it here
        ids = torch.cat([ids, scores.argmax(-1)[:, None]], 1)
    return tok.decode(ids[0]), proc


# A tool whose shortest call is long: required keys after the string, a bounded integer, an array, an enum, a boolean.
MANY_REQUIRED = {"name": "many_required", "parameters": {"type": "object", "required": ["a", "b", "c", "mode", "d"],
                 "properties": {"a": {"type": "string"}, "b": {"type": "integer", "minimum": 5},
                                "c": {"type": "array", "items": {"type": "object", "required": ["x"],
                                                                 "properties": {"x": {"type": "string"}}}},
                                "mode": {"type": "string", "enum": ["fast", "slow"]}, "d": {"type": "boolean"}}}}


@pytest.mark.parametrize("max_new_tokens", [64, 256])
@pytest.mark.parametrize("source", ["complexfuncbench", "many_required"])
def test_a_call_that_would_run_past_the_token_limit_is_closed_in_time(data_root, smol_tokenizer, max_new_tokens, source):
    """The only invalid steps seen under grammar were calls cut inside a string at the token limit. With the step's
    budget known, the grammar keeps room to close the step and closes it: the adversary's step parses and its
    arguments are schema-valid, where without the budget the same adversary's step is cut and does not parse."""
    tok = smol_tokenizer
    task = {"id": "t", "tools": [MANY_REQUIRED]} if source == "many_required" else next(
        t for t in data.load("complexfuncbench", data_root, "test")
        if any(v.get("type") == "string" for v in t["tools"][0]["parameters"]["properties"].values()))
    cut, proc = write_without_closing(tok, task, max_new_tokens, close=False)
    assert isinstance(tbf.parse_step(cut), tbf.ParseFailure) and proc.closing == [False]
    closed, proc = write_without_closing(tok, task, max_new_tokens, close=True)
    assert proc.closing == [True] and proc.rejected == 0
    steps_are_valid([closed], [task])
    assert tbf.parse_step(closed).action == task["tools"][0]["name"]
