import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slmlib import encode, schema
from slmlib import toolbench_format as tbf
from slmlib.data import toolbench
from slmlib.errors import ErrorLabel


def answer_files(data_root: Path) -> list[Path]:
    return sorted((data_root / "toolbench" / "data_example" / "answer").rglob("*.json"))


def test_rendered_prompt_equals_toolbench_system_message(data_root):
    """Our system prompt, built from the tools and toolkits, is byte-identical to a real one."""
    answer = json.loads((data_root / "toolbench/data_example/answer/G1_answer/10_ChatGPT_DFS_woFilter_w2.json").read_text())
    gen = answer["answer_generation"]
    original = gen["train_messages"][-1][0]["content"]
    task = {"id": "x", "group": "g", "messages": [{"role": "user", "content": gen["query"]}],
            "tools": [f for f in gen["function"] if f["name"] != "Finish"],
            "toolkits": [{"name": "transitaires", "description": "Transitaires de dédouanement en Nouvelle-Calédonie"}]}
    finish = next(f for f in gen["function"] if f["name"] == "Finish")
    expected = tbf.process_system_message(original, [*task["tools"], finish])
    ours = tbf.system_prompt(task)
    assert ours.split(tbf.API_LIST_PREFIX)[0] == expected.split(tbf.API_LIST_PREFIX)[0]
    assert tbf.rendered_messages(task)[1][1] == gen["train_messages"][-1][1]["content"]


def test_answer_trees_round_trip_byte_exact(data_root):
    """Answer tree -> ToolBench rows -> schema -> rows again: every row, byte for byte."""
    n = 0
    for path in answer_files(data_root):
        for i, row in enumerate(toolbench.answer_rows(json.loads(path.read_text()))):
            task = toolbench.row_to_task(row, i)
            assert tbf.to_toolllama_row(task, row["id"]) == row
            n += 1
    assert n == 50  # 52 step prefixes; two end in a plain reply, which ToolBench's preprocessing skips


steps = st.builds(
    tbf.Step,
    thought=st.text().filter(lambda t: tbf.ACTION not in t),
    action=st.text(min_size=1).filter(lambda a: "\n" not in a and tbf.ACTION_INPUT.strip() not in a and a.strip() == a),
    action_input=st.dictionaries(st.text(), st.one_of(st.none(), st.integers(), st.text(), st.booleans()))
    .map(lambda d: json.dumps(d, ensure_ascii=False)))


@given(steps)
@settings(max_examples=300, deadline=None)
def test_parse_inverts_render(step):
    assert tbf.parse_step(tbf.render_step(step)) == step


@given(st.text())
@settings(max_examples=500, deadline=None)
def test_parser_never_raises(text):
    result = tbf.parse_step(text)
    assert isinstance(result, (tbf.Step, tbf.ParseFailure))


@pytest.mark.parametrize("text,label", [
    ("I will call the weather API.", ErrorLabel.DECODER_FAILED),
    ("Thought: x\nAction: f", ErrorLabel.DECODER_FAILED),
    ("Thought: x\nAction: f\nAction Input: {'city': 'Paris'}", ErrorLabel.INVALID_JSON_INPUT),
    ("Thought: x\nAction: f\nAction Input: [1, 2]", ErrorLabel.INVALID_JSON_INPUT),
])
def test_parse_failures_are_classified(text, label):
    result = tbf.parse_step(text)
    assert isinstance(result, tbf.ParseFailure) and result.label == label


def test_model_output_with_trailing_eos_parses():
    step = tbf.parse_step('Thought: go\nAction: f\nAction Input: {"a": 1}</s>')
    assert step == tbf.Step("go", "f", '{"a": 1}')


def trajectory():
    return {"id": "t", "group": "g",
            "tools": [{"name": "get_weather", "description": "Weather.", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
            "messages": [{"role": "user", "content": "Weather in Paris?"},
                         schema.assistant_call("get_weather", {"city": "Paris"}, "I need the weather."),
                         {"role": "tool", "name": "get_weather", "content": '{"error": "", "response": "sunny"}'},
                         schema.finish_call("It is sunny in Paris.", "I have it.")]}


@pytest.mark.parametrize("tok_fixture", ["tiny", "smol_tokenizer"])
def test_loss_mask_covers_exactly_the_assistant_text(tok_fixture, request):
    tok = request.getfixturevalue(tok_fixture)
    tok = tok[1] if isinstance(tok, tuple) else tok
    task = trajectory()
    steps = [tbf.render_step(tbf.message_step(m)) for m in task["messages"] if m["role"] == "assistant"]
    last = encode.encode(tbf.segments(task, "last"), tok)
    assert tok.decode([t for t, lab in zip(last.input_ids, last.labels) if lab != encode.IGNORE]) == steps[-1] + tok.eos_token
    full = encode.encode(tbf.segments(task, "all"), tok)
    spans = encode.learned_text(full, tok)
    assert spans == [steps[0], steps[1] + tok.eos_token]
    assert "Function:" not in "".join(spans) and "Paris?" not in "".join(spans)


def test_a_synthetic_answer_is_context_not_loss_when_masked(smol_tokenizer):
    """ComplexFuncBench records no final answer; masked, its template sentence is not learned, the rest is."""
    from slmlib import train
    from slmlib.data import complexfuncbench
    cfb = next(t for t in complexfuncbench.tasks("train") if t["messages"][-1]["tool_calls"][0]["function"]["name"] == schema.FINISH)
    written = trajectory()  # an answer someone wrote is learned either way
    (learned, mine), _ = train.encode_rows([cfb, written], smol_tokenizer, "all", 1 << 30)
    (masked, mine_masked), _ = train.encode_rows([cfb, written], smol_tokenizer, "all", 1 << 30, "masked")
    assert mine == mine_masked and masked["input_ids"] == learned["input_ids"]
    answer = json.loads(cfb["messages"][-1]["tool_calls"][0]["function"]["arguments"])["final_answer"]
    spans = lambda row: encode.learned_text(encode.Encoded(row["input_ids"], row["labels"]), smol_tokenizer)  # noqa: E731
    assert answer in "".join(spans(learned)) and answer[:-1] not in "".join(spans(masked))
    assert spans(masked)[-2].endswith('Action: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "')
    assert spans(masked)[:-2] == spans(learned)[:-1]  # every call before it is learned as it was


def test_prompt_is_the_training_prefix(smol_tokenizer):
    task = trajectory()
    history = {**task, "messages": task["messages"][:3]}
    prompt = encode.encode(tbf.prompt_segments(history), smol_tokenizer, add_eos=False)
    train = encode.encode(tbf.segments(task, "last"), smol_tokenizer)
    assert train.input_ids[:len(prompt)] == prompt.input_ids
    assert tbf.text(tbf.prompt_segments(history)).endswith("\nFunction: " + task["messages"][2]["content"] + "\nAssistant: ")


def test_render_refuses_ambiguous_steps():
    with pytest.raises(ValueError):
        tbf.render_step(tbf.Step("a\nAction: b", "f", "{}"))
