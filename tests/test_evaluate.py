import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from slmlib import envs, judge, lookup, rollout, schema, tooleval
from slmlib.bench import STEP_CONFIGS
from slmlib.errors import ErrorLabel
from slmlib.evaluate import SettingsChanged, evaluate, profile_settings, step_metrics
from slmlib.evaluate import plays as plays_of
from slmlib.models import ModelNotFound
from slmlib.run import read_json

WEATHER = {"name": "get_weather", "description": "Weather now.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
    "required": ["city"]}, "template_response": {"temp": "int", "sky": "str"}}
NEWS = {"name": "get_news", "description": "Headlines.", "parameters": {"type": "object", "properties": {}, "required": []}}


def task(**extra):
    return {"id": "t1", "group": "g", "tools": [WEATHER, NEWS],
            "messages": [{"role": "user", "content": "Weather in Paris?"}], **extra}


def step(action, args, observation=None):
    s = {"raw": "", "step": {"thought": "", "action": action, "action_input": json.dumps(args)}}
    if observation is not None:
        s["observation"] = observation
    return s


def record(steps, finish={"return_type": "give_answer", "final_answer": "Sunny, 20 C."}, failure=None):
    return {"id": "t1", "group": "g", "steps": steps, "finish": finish, "failure": failure}


GOLD = [{"name": "get_weather", "arguments": {"city": ["Paris"], "unit": ["", "C"]}}]


@pytest.mark.parametrize("steps,finish,label", [
    ([step("get_weather", {"city": "paris"})], None, None),
    ([step("get_weather", {"city": "Paris", "unit": "C"})], None, None),
    ([step("get_weather", {"unit": "C"})], None, ErrorLabel.MISSING_REQUIRED),
    ([step("get_weather", {"city": "Rome"})], None, ErrorLabel.VALUE_ERROR),
    ([step("get_weather", {"city": 75001})], None, ErrorLabel.TYPE_ERROR),
    ([step("get_weather", {"city": "Paris", "lang": "fr"})], None, ErrorLabel.UNEXPECTED_PARAM),
    ([step("get_news", {})], None, ErrorLabel.WRONG_FUNC_NAME),
    ([step("get_forecast", {"city": "Paris"})], None, ErrorLabel.UNKNOWN_TOOL),
    ([step("get_weather", {"city": "Paris"})] * 3, None, ErrorLabel.REPEATED_CALL),
    ([], None, ErrorLabel.MISSING_CALL),
    ([step("get_weather", {"city": "Paris"})], {"return_type": "give_up_and_restart"}, ErrorLabel.GIVE_UP),
    ([step("get_weather", {"city": "Paris"})], {"return_type": "give_answer", "final_answer": " "}, ErrorLabel.EMPTY_ANSWER),
])
def test_offline_judge_bfcl_semantics(steps, finish, label):
    fin = finish or {"return_type": "give_answer", "final_answer": "Sunny, 20 C."}
    verdict = judge.judge(task(gold_calls=GOLD), record(steps, fin))
    assert verdict["passed"] == (label is None)
    assert verdict["label"] == (label.value if label else None)


def test_judge_no_finish_and_irrelevance_and_relevant_tools():
    v = judge.judge(task(gold_calls=GOLD), record([step("get_weather", {"city": "Paris"})], finish=None))
    assert v["label"] == ErrorLabel.NO_FINISH
    assert judge.judge(task(gold_calls=[]), record([]))["passed"]
    assert judge.judge(task(gold_calls=[]), record([step("get_news", {})]))["label"] == ErrorLabel.IRRELEVANCE
    rel = task(relevant_tools=["get_weather"])
    assert judge.judge(rel, record([step("get_weather", {"city": "Paris"})]))["passed"]
    assert judge.judge(rel, record([step("get_weather", {"unit": "K"})]))["label"] == ErrorLabel.MISSING_REQUIRED


def test_a_relevant_call_takes_its_text_from_the_task():
    """The stub answers any arguments: a call with text the task never held (a placeholder) solves nothing."""
    rel = task(relevant_tools=["get_weather"])
    verdict = lambda *calls: judge.judge(rel, record(list(calls)))
    assert verdict(step("get_weather", {"city": "example"}))["label"] == ErrorLabel.UNGROUNDED_ARGUMENT
    assert verdict(step("get_weather", {"city": " "}))["label"] == ErrorLabel.UNGROUNDED_ARGUMENT
    assert verdict(step("get_weather", {"city": "PARIS"}))["passed"]  # case does not count
    assert verdict(step("get_weather", {"city": "Paris, France"}))["passed"]  # half its words are in the query
    assert verdict(step("get_weather", {"city": "Paris Texas USA"}))["label"] == ErrorLabel.UNGROUNDED_ARGUMENT
    assert verdict(step("get_weather", {"city": "Par"}))["label"] == ErrorLabel.UNGROUNDED_ARGUMENT  # whole words
    # an earlier observation counts, a later one does not; one grounded call of the tool is enough
    listed = '{"error": "", "response": {"capital": "Lyon"}}'
    assert verdict(step("get_news", {}, listed), step("get_weather", {"city": "Lyon"}))["passed"]
    assert verdict(step("get_weather", {"city": "Lyon"}, listed))["label"] == ErrorLabel.UNGROUNDED_ARGUMENT
    assert verdict(step("get_weather", {"city": "example"}), step("get_weather", {"city": "Paris"}))["passed"]
    # an enum value is the tool's own; a tool whose required arguments hold no text asks nothing of the query
    by_unit = {**WEATHER, "parameters": {**WEATHER["parameters"], "required": ["unit"]}}
    assert judge.judge(task(tools=[by_unit], relevant_tools=["get_weather"]), record([step("get_weather", {"unit": "F"})]))["passed"]
    by_id = {**WEATHER, "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}}
    assert judge.judge(task(tools=[by_id], relevant_tools=["get_weather"]), record([step("get_weather", {"id": 1})]))["passed"]
    news = task(relevant_tools=["get_news"])
    assert judge.judge(news, record([step("get_news", {})]))["passed"]


def test_wilson_interval():
    lo, hi = judge.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert judge.wilson(0, 0) == (0.0, 0.0)
    # the interval holds the observed rate exactly, as error bars need (0 of 108 gave lo = 3.5e-18 by rounding)
    assert all(lo <= k / n <= hi for n in range(1, 301) for k in range(n + 1) for lo, hi in [judge.wilson(k, n)])
    assert judge.wilson(0, 108)[0] == 0.0 and judge.wilson(21, 21)[1] == 1.0


def test_replay_and_stub_environments():
    t = task(replay=[{"name": "get_weather", "arguments": {"city": "Paris"}, "response": {"temp": 20}}])
    assert json.loads(envs.make("replay").call(t, "get_weather", {"city": "paris"}))["response"] == {"temp": 20}
    assert "No recorded response" in envs.make("replay").call(t, "get_weather", {"city": "Rome"})
    assert "No such function name" in envs.make("replay").call(t, "get_forecast", {})
    stub = envs.make("stub")
    oslo = json.loads(stub.call(t, "get_weather", {"city": "Oslo"}))["response"]
    assert set(oslo) == {"temp", "sky"} and 10_000 <= oslo["temp"] < 100_000 and oslo["sky"].startswith("sky-")
    assert stub.call(t, "get_weather", {"city": "Oslo"}) == stub.call(t, "get_weather", {"city": "Oslo"})  # deterministic
    assert stub.call(t, "get_weather", {"city": "Rome"}) != stub.call(t, "get_weather", {"city": "Oslo"})  # distinctive
    assert "missing required parameter 'city'" in stub.call(t, "get_weather", {})
    assert set(json.loads(stub.call(t, "get_news", {}))["response"]) == {"result"}  # no template: still an answer
    cut = task(tools=[{**NEWS, "template_response": '{"items": [{"title": "str"}], "next": "st'}])  # JSON text, cut
    assert set(json.loads(stub.call(cut, "get_news", {}))["response"]) == {"result"}
    as_text = task(tools=[{**NEWS, "template_response": '{"items": [{"title": "str"}]}'}])
    assert json.loads(stub.call(as_text, "get_news", {}))["response"]["items"][0]["title"].startswith("title-")


def test_relevant_tools_answer_must_carry_what_they_returned():
    """A generic answer after the right calls solves nothing: the answer must use each relevant tool's response."""
    rel = task(relevant_tools=["get_weather"], messages=[{"role": "user", "content": "Weather in Paris or Oslo?"}])
    obs = envs.make("stub").call(rel, "get_weather", {"city": "Oslo"})
    sky = json.loads(obs)["response"]["sky"]
    called = [step("get_weather", {"city": "Oslo"}, obs)]
    assert judge.judge(rel, record(called, {"return_type": "give_answer", "final_answer": f"It is {sky.upper()} in Oslo."}))["passed"]
    generic = judge.judge(rel, record(called, {"return_type": "give_answer", "final_answer": "Here is the weather."}))
    assert generic["label"] == ErrorLabel.UNGROUNDED_ANSWER
    assert judge.judge(rel, record(called, {"return_type": "give_answer", "final_answer": sky + "x"}))["label"] == \
        ErrorLabel.UNGROUNDED_ANSWER  # a whole value, not a prefix of a word
    # what the query or the call itself already said is not evidence; an error observation asks for nothing
    echo = '{"error": "", "response": {"city": "Paris", "note": "Oslo", "sky": "mild breeze"}}'
    assert judge.judge(rel, record([step("get_weather", {"city": "Oslo"}, echo)], {"return_type": "give_answer",
                       "final_answer": "Weather in Paris? Oslo."}))["label"] == ErrorLabel.UNGROUNDED_ANSWER
    assert judge.judge(rel, record([step("get_weather", {"city": "Oslo"}, echo)], {"return_type": "give_answer",
                       "final_answer": "Oslo: a  Mild Breeze."}))["passed"]
    failed = '{"error": "API not working error...", "response": ""}'
    assert judge.judge(rel, record([step("get_weather", {"city": "Oslo"}, failed)]))["passed"]


def test_returned_values_of_whole_and_cut_observations():
    whole = '{"error": "", "response": {"a": "Lionel Messi", "b": [12345, 7, 3.25], "ok": true, "c": "no"}}'
    assert sorted(judge.returned_values(whole)) == ["12345", "3.25", "Lionel Messi"]
    cut = '{"error": "", "response": {"a": "Lionel Messi", "b": [12345, 7], "c": "Barcelo' + "..."
    assert sorted(judge.returned_values(cut)) == ["12345", "Lionel Messi"]
    assert judge.returned_values('{"error": "boom", "response": {"a": "Lionel Messi"}}') == []
    as_text = json.dumps({"error": "", "response": json.dumps({"club": "Inter Miami", "goals": [821]})})
    assert sorted(judge.returned_values(as_text)) == ["821", "Inter Miami"]  # JSON inside the response string


@pytest.mark.parametrize("text,end", [
    ('Thought: x\nAction: f\nAction Input: {"a": "}"}\nmore', len('Thought: x\nAction: f\nAction Input: {"a": "}"}')),
    ("Thought: x\nAction: f\nAction Input: {\"a\": {\"b\": 1}", None),
    ("Thought: x\nFunction: y", len("Thought: x")),
    ("Thought: x\nAction: f\nAction Input: none\nThought", len("Thought: x\nAction: f\nAction Input: none")),
])
def test_step_end(text, end):
    assert rollout.step_end(text) == end


LOOP = 'Thought: x\nAction: f\nAction Input: {"a": [1, "a"], "b": {"a": "}"}, "c": "a,\\"", "b": {"a"'


def test_repeated_key_guard_cuts_and_closes_the_object():
    end = rollout.step_end(LOOP)
    assert LOOP[:end].endswith('"c": "a,\\"",')
    step, guarded = rollout.parse_generated(LOOP[:end])
    assert guarded and step.arguments() == {"a": [1, "a"], "b": {"a": "}"}, "c": 'a,"'}
    assert rollout.step_end(LOOP, key_guard=False) is None  # unguarded, it runs on to the token limit
    complete = 'Thought: x\nAction: f\nAction Input: {"a": 1, "b": [2, 3]}'
    assert rollout.close_step(complete) == (complete, False)
    assert rollout.close_step('Thought: x\nAction: f\nAction Input: {"a": "1,') == ('Thought: x\nAction: f\nAction Input: {"a": "1,', False)


def test_prefix_cache_reuses_the_shared_prefix_and_changes_nothing(tiny):
    model, tok = tiny
    dec = rollout.Decoding(max_new_tokens=12, early_stop=False, key_guard=False)
    first = tok("Thought: the weather in Paris\nAction: get_weather", add_special_tokens=False).input_ids
    cache = rollout.PrefixCache()
    text = rollout.generate_steps(model, tok, [first], dec, caches=[cache]).texts
    assert cache.ids[:len(first)] == first and len(cache.ids) > len(first)  # prompt and output are cached
    second = cache.ids + tok("\nObservation: sunny, 21 C", add_special_tokens=False).input_ids
    cached = cache.prepare(second)
    assert cached.get_seq_length() == len(cache.ids)  # only the observation is prefilled anew
    reused = rollout.generate_steps(model, tok, [second], dec, caches=[cache]).texts
    fresh = rollout.generate_steps(model, tok, [second], dec).texts
    assert reused == fresh and text  # same greedy output as a full prefill
    edited = second[:len(first) - 3] + tok(" Oslo", add_special_tokens=False).input_ids
    assert cache.prepare(edited).get_seq_length() == len(first) - 3  # cropped back to the common prefix
    with pytest.raises(ValueError, match="of its own"):
        rollout.generate_steps(model, tok, [first, first], dec, caches=[cache, cache])


@pytest.mark.parametrize("early_stop", [False, True])
def test_a_batch_decodes_from_its_episodes_caches_side_by_side(tiny, early_stop):
    model, tok = tiny
    dec = rollout.Decoding(max_new_tokens=12, early_stop=early_stop, key_guard=False)
    texts = ["Thought: the weather in Paris\nAction: get_weather", "User: hi", "Thought: flights from Oslo to Rome on May 1\nAction:"]
    prompts = [tok(t, add_special_tokens=False).input_ids for t in texts]
    caches = [rollout.PrefixCache() for _ in prompts]
    for step in range(2):
        batched, counts, _ = rollout.generate_steps(model, tok, prompts, dec, caches=caches)
        alone = [rollout.generate_steps(model, tok, [p], dec).texts[0] for p in prompts]
        assert batched == alone and all(counts)  # prompts of unequal length: the same greedy text as each alone
        if early_stop:
            assert len(set(counts)) > 1  # rows that ended at different tokens: each left the batch when it ended
        for c, p in zip(caches, prompts):
            assert c.ids[:len(p)] == p and c.cache.get_seq_length() == len(c.ids) and c.cache.layers[0].keys.shape[0] == 1
        observation = tok("\nObservation: sunny", add_special_tokens=False).input_ids
        prompts = [c.ids + observation for c in caches]
    held = [c.prepare(p).get_seq_length() for c, p in zip(caches, prompts)]
    assert held == [len(p) - len(observation) for p in prompts]  # each row's next step prefills only its observation


def test_a_draft_is_what_followed_the_latest_match_of_the_last_tokens():
    ids = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert lookup.draft(ids, 2) == [7, 8]  # the latest earlier [1, 2, 3], not the first
    assert lookup.draft(ids, 15) == [7, 8, 5, 1, 2, 3]  # up to the end of what is known
    assert lookup.draft([4, 1, 2, 3, 6, 0, 1, 2, 3], 3) == [6, 0, 1]  # a shorter match where the longest has none
    assert lookup.draft([5, 1, 2, 6, 1, 2], 3) == []  # two tokens do not make a match
    assert lookup.draft([1, 2, 3], 4) == lookup.draft(ids, 0) == []


def test_a_prompt_past_the_training_window_has_its_older_observations_cut(data_root):
    """As training fitted a long trajectory: every observation but the last cut to 256 characters, nothing else."""
    from slmlib import data, encode, models
    from slmlib import toolbench_format as tbf
    from slmlib.evaluate import gold_trajectory
    tok = models.load_tokenizer("smollm2-135m-instruct")
    def before_last_step(t):
        gold = gold_trajectory(t)
        return gold, {**t, "messages": gold[:max(i for i, m in enumerate(gold) if m["role"] == "assistant")]}
    gold, state = next(before_last_step(t) for t in data.load("complexfuncbench", data_root, "test")
                       if any(len(m["content"]) > 300 for m in before_last_step(t)[1]["messages"][:-1] if m["role"] == "tool"))
    whole = encode.encode(tbf.prompt_segments(state), tok, add_eos=False).input_ids
    assert rollout.prompt_ids(state, tok, rollout.Decoding()) == whole  # off by default
    assert rollout.prompt_ids(state, tok, rollout.Decoding(fit_window=len(whole) + 256)) == whole  # it fits: unchanged
    fitted = rollout.prompt_ids(state, tok, rollout.Decoding(fit_window=len(whole) + 255))
    observations = [m["content"] for m in state["messages"] if m["role"] == "tool"]
    cut = [o[:256] + "..." if len(o) > 259 else o for o in observations[:-1]] + observations[-1:]
    shown = [m for m in state["messages"] if m["role"] != "tool"]
    expected = {**state, "messages": [{**m, "content": cut.pop(0)} if m["role"] == "tool" else shown.pop(0) for m in state["messages"]]}
    assert fitted == encode.encode(tbf.prompt_segments(expected), tok, add_eos=False).input_ids
    assert len(fitted) < len(whole) and state["messages"] == gold[:len(state["messages"])]  # the episode's own messages kept


@pytest.mark.slow
@pytest.mark.parametrize("decoding", ["free", "grammar"])
def test_prompt_lookup_writes_generates_text_in_fewer_forwards(data_root, decoding):
    """Greedy, several tokens a forward give the text of one at a time, step after step of an episode's cache."""
    from slmlib import data, encode, grammar, models
    from slmlib import toolbench_format as tbf
    from slmlib.evaluate import gold_trajectory
    model, tok = models.load("smollm2-135m-instruct")
    t = next(iter(data.load("complexfuncbench", data_root, "test")))
    gold = gold_trajectory(t)
    histories = [gold[:i] for i, m in enumerate(gold) if m["role"] == "assistant"][:2]  # each extends the one before
    forwards = []
    hook = model.register_forward_hook(lambda module, args, out: forwards.append(1))
    grammars = [grammar.for_task(t, 48).text] if decoding == "grammar" else None
    texts, calls = {}, {}
    for tokens in (0, 15):
        dec = rollout.Decoding(max_new_tokens=48, decoding=decoding, lookup_tokens=tokens)
        cache, forwards[:] = rollout.PrefixCache(), []
        for messages in histories:  # a step, then the next from the same cache after the gold step and its observation
            prompt = encode.encode(tbf.prompt_segments({**t, "messages": messages}), tok, add_eos=False).input_ids
            (text,), (n,), _ = rollout.generate_steps(model, tok, [prompt], dec, caches=[cache], grammars=grammars)
            assert cache.ids[:len(prompt)] == prompt and cache.cache.get_seq_length() == len(cache.ids) == len(prompt) + n - 1
            texts.setdefault(tokens, []).append((text, n))
        calls[tokens] = len(forwards)
    hook.remove()
    assert texts[15] == texts[0] and len(texts[0]) == 2 and sum(n for _, n in texts[0]) > 20, texts
    assert calls[15] < 0.8 * calls[0], calls  # drafts were kept: fewer forwards for the same tokens


def scripted(monkeypatch, outputs):
    """Feed the rollout loop fixed model outputs, to check the loop's bookkeeping exactly."""
    script = iter(outputs)
    monkeypatch.setattr(rollout, "generate_steps", lambda model, tok, prompts, dec, caches=None, grammars=None:
                        rollout.Generated([next(script) for _ in prompts], [5] * len(prompts), [False] * len(prompts)))


FINISH_20C = 'Thought: done\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "20 C"}'


def paris_episode(monkeypatch, tiny, first_step: str, batch_size: int, finish: str = FINISH_20C) -> tuple[dict, dict]:
    """A replayed weather task, scripted as ``first_step`` then ``finish``; returns (task, episode record)."""
    t = task(gold_calls=GOLD, replay=[{"name": "get_weather", "arguments": {"city": "Paris"}, "response": {"temp": 20}}])
    scripted(monkeypatch, [first_step, finish])
    (ep,) = rollout.run(*tiny, [t], envs.make("replay"), rollout.Decoding(max_steps=5), batch_size=batch_size)
    return t, rollout.episode_record(ep)


def test_rollout_loop_acts_observes_and_finishes(monkeypatch, tiny):
    t, rec = paris_episode(monkeypatch, tiny, 'Thought: look\nAction: get_weather\nAction Input: {"city": "Paris"}', 2)
    assert json.loads(rec["steps"][0]["observation"])["response"] == {"temp": 20}
    assert rec["finish"] == {"return_type": "give_answer", "final_answer": "20 C"}
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert judge.judge(t, rec)["passed"]


def test_each_row_is_decoded_under_its_own_tasks_grammar(monkeypatch, tiny):
    seen = []

    def generate(model, tok, prompts, dec, caches=None, grammars=None):
        seen.append(grammars)
        return rollout.Generated([FINISH_20C] * len(prompts), [5] * len(prompts), [False] * len(prompts))
    monkeypatch.setattr(rollout, "generate_steps", generate)
    news_only = {**task(), "id": "t2", "tools": [NEWS]}
    list(rollout.run(*tiny, [task(), news_only], envs.make("stub"), rollout.Decoding(decoding="grammar"), batch_size=2))
    (both,) = seen
    assert '"get_weather\\nAction Input: "' in both[0] and '"get_weather\\nAction Input: "' not in both[1]
    assert all('"get_news\\nAction Input: "' in g and '"Finish\\nAction Input: {' in g for g in both)
    seen.clear()
    list(rollout.run(*tiny, [task()], envs.make("stub"), rollout.Decoding(), batch_size=1))
    assert seen == [None]  # free decoding: no grammar at all


@pytest.mark.parametrize("batch_size,reuse_prefix", [(1, True), (2, True), (2, False)])
def test_a_step_the_grammar_closes_at_its_token_limit_is_marked_in_the_record(tiny, batch_size, reuse_prefix):
    """The untrained tiny model rambles: at 48 tokens a step under the grammar runs to its limit and is closed
    there. The record says so and how many tokens it took, by each decoding path (prompt lookup at batch 1,
    cached rows side by side, ``generate``)."""
    news_only = {**task(), "id": "t2", "tools": [NEWS]}
    dec = rollout.Decoding(max_new_tokens=48, decoding="grammar", max_steps=1, reuse_prefix=reuse_prefix)
    episodes = list(rollout.run(*tiny, [task(), news_only], envs.make("stub"), dec, batch_size=batch_size))
    steps = [s for ep in episodes for s in ep.steps]
    assert len(steps) == 2 and all(s["guard"] == "token_limit" and "error" not in s and s["tokens"] == 48 for s in steps)
    records = [rollout.episode_record(ep) | {"declared_tools": [x["name"] for x in ep.task["tools"]]} for ep in episodes]
    m = judge.metrics([r | {"verdict": judge.judge(ep.task, r)} for r, ep in zip(records, episodes)])
    assert m["closed_step_rate"] == m["guarded_step_rate"] == m["format_valid_rate"] == 1.0
    roomy = list(rollout.run(*tiny, [task()], envs.make("stub"), rollout.Decoding(max_new_tokens=56, decoding="grammar",
                                                                                     max_steps=1), batch_size=1))
    assert [("guard" in s, s["tokens"] < 56) for s in roomy[0].steps] == [(False, True)]  # it ended by itself

def test_guarded_step_is_acted_on_and_counted(monkeypatch, tiny):
    t, rec = paris_episode(monkeypatch, tiny, 'Thought: look\nAction: get_weather\nAction Input: {"city": "Paris",', 1)
    assert rec["steps"][0]["guard"] == "repeated_key" and rec["steps"][0]["step"]["action_input"] == '{"city": "Paris"}'
    rec["declared_tools"], rec["verdict"] = [x["name"] for x in t["tools"]], judge.judge(t, rec)
    m = judge.metrics([rec])
    assert rec["verdict"]["passed"] and m["guarded_step_rate"] == 0.5 and m["format_valid_rate"] == 1.0
    assert m["closed_step_rate"] == 0  # guarded for a repeated key, not closed at the token limit


@pytest.mark.parametrize("finish_input, answer", [
    ('{"return_type": "give_answer", "final_answer": "20\nC"}', "20\nC"),      # a raw newline: json strict=False
    ('{"return_type": "give_answer", "final_answer": "20 C\\n\\n\\n', "20 C\\n\\n\\n"),  # cut off: the rest is the answer
    ('{"final_answer": "20 C", "return_type": "give_answer"', '20 C", "return_type": "give_answer"'),
])
def test_a_finish_toolbench_accepts_is_judged_on_the_calls(monkeypatch, tiny, finish_input, answer):
    call = 'Thought: look\nAction: get_weather\nAction Input: {"city": "Paris"}'
    t, rec = paris_episode(monkeypatch, tiny, call, 1, finish=f"Thought: done\nAction: Finish\nAction Input: {finish_input}")
    assert rec["failure"][0] == rec["steps"][-1]["error"] == ErrorLabel.INVALID_JSON_INPUT and rec["finish"] is None
    assert judge.toolbench_answer(rec) == {"return_type": "give_answer", "final_answer": answer}
    rec["declared_tools"], rec["verdict"] = [x["name"] for x in t["tools"]], judge.judge(t, rec)
    assert rec["verdict"]["passed"] and judge.metrics([rec])["format_valid_rate"] == 0.5


@pytest.mark.parametrize("finish_input", ['{"final_answer": "20 C"', '{"return_type": "give_answer", "answer": "20 C"'])
def test_a_finish_toolbench_rejects_fails_the_episode(monkeypatch, tiny, finish_input):
    call = 'Thought: look\nAction: get_weather\nAction Input: {"city": "Paris"}'
    t, rec = paris_episode(monkeypatch, tiny, call, 1, finish=f"Thought: done\nAction: Finish\nAction Input: {finish_input}")
    assert judge.toolbench_answer(rec) is None
    rec["declared_tools"] = [x["name"] for x in t["tools"]]
    assert judge.judge(t, rec)["label"] == ErrorLabel.INVALID_JSON_INPUT


def test_a_call_repeated_past_the_judges_limit_ends_the_episode(monkeypatch, tiny):
    scripted(monkeypatch, ['Thought: again\nAction: get_news\nAction Input: {"q": 1}'] * 5)
    t = task(gold_calls=GOLD)
    (ep,) = rollout.run(*tiny, [t], envs.make("stub"), rollout.Decoding(max_steps=10), batch_size=1)
    rec = rollout.episode_record(ep)
    assert len(rec["steps"]) == judge.REPEAT_LIMIT + 1 and rec["failure"][0] == ErrorLabel.REPEATED_CALL
    rec["declared_tools"] = [x["name"] for x in t["tools"]]
    assert judge.judge(t, rec)["label"] == ErrorLabel.REPEATED_CALL


def test_rollout_budget_and_garbage(monkeypatch, tiny):
    scripted(monkeypatch, ['Thought: again\nAction: get_news\nAction Input: {}'] * 3 + ["I like turtles"])
    t2 = {**task(gold_calls=GOLD), "id": "t2"}
    eps = {ep.task["id"]: rollout.episode_record(ep) for ep in
           rollout.run(*tiny, [task(gold_calls=GOLD), t2], envs.make("stub"), rollout.Decoding(max_steps=2), batch_size=2)}
    looping = eps["t1"]
    assert len(looping["steps"]) == 2 and looping["finish"] is None
    assert eps["t2"]["failure"][0] in (ErrorLabel.DECODER_FAILED, ErrorLabel.NO_FINISH) or eps["t2"]["steps"]


def test_evaluate_real_tiny_model_resumes_and_classifies(tmp_path, data_root):
    from slmlib.data import complexfuncbench
    tasks = list(complexfuncbench.tasks("test"))[:4]
    schema.write_jsonl(tmp_path / "tasks.jsonl", tasks)
    out = tmp_path / "eval"
    m1 = evaluate("tiny-opt", tmp_path / "tasks.jsonl", out, limit=2, max_steps=2, max_new_tokens=24, batch_size=2)
    first = (out / "predictions.jsonl").read_text().splitlines()
    assert m1["n_tasks"] == 2 and len(first) == 2
    m2 = evaluate("tiny-opt", tmp_path / "tasks.jsonl", out, max_steps=2, max_new_tokens=24, batch_size=2)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert lines[:2] == first and len(lines) == 4 and m2["n_tasks"] == 4
    # a stale verdict is judged again; a line cut by a crash is rolled out again and its fragment dropped
    stale = {**json.loads(lines[0]), "verdict": {"passed": True, "label": None}}
    (out / "predictions.jsonl").write_text("\n".join([json.dumps(stale), *lines[1:3], lines[3][:40]]))
    m3 = evaluate("tiny-opt", tmp_path / "tasks.jsonl", out, max_steps=2, max_new_tokens=24, batch_size=2)
    again = (out / "predictions.jsonl").read_text().splitlines()
    assert again[:3] == lines[:3] and json.loads(again[3])["id"] == json.loads(lines[3])["id"] and len(again) == 4
    assert m3["pass_rate"] == m2["pass_rate"] and m3["error_labels"] == m2["error_labels"]
    # with every episode stored, a rerun judges them again without loading the model, and keeps the rollouts' peak memory
    m4 = evaluate("no-such-model", tmp_path / "tasks.jsonl", out, max_steps=2, max_new_tokens=24, batch_size=2)
    assert m4 == {**m3, "model": "no-such-model"}
    # resuming these episodes with other decoding settings would mix two experiments in one file
    with pytest.raises(SettingsChanged, match="decoding: 'free' then, 'grammar' now; max_steps: 2 then, 3 now"):
        evaluate("no-such-model", tmp_path / "tasks.jsonl", out, max_steps=3, max_new_tokens=24, decoding="grammar")
    assert (out / "predictions.jsonl").read_text().splitlines() == again
    for line in lines:  # a random model's output is a classified failure, never an exception
        assert json.loads(line)["verdict"]["label"] in {e.value for e in ErrorLabel}
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("pass_rate", "pass_rate_ci95", "format_valid_rate", "finish_rate", "give_up_rate", "hallucinated_tool_rate",
                "tool_name_accuracy", "call_match_rate", "avg_steps", "seconds_per_task", "tokens_per_second", "groups",
                "guarded_step_rate"):
        assert key in metrics
    # the stage's own peak (reset before the model loaded): a tiny model needs far less than the test process holds
    assert metrics["peak_rss_is_process_peak"] is False and 0.05 < metrics["peak_rss_gb"] < 8
    assert 0 <= metrics["pass_rate"] <= 1 and set(metrics["groups"]) <= {"single_domain", "cross_domain"}


def test_workers_roll_out_the_same_episodes_and_resume(tmp_path, data_root):
    from slmlib.data import complexfuncbench
    schema.write_jsonl(tmp_path / "tasks.jsonl", list(complexfuncbench.tasks("test"))[:5])
    settings = dict(max_steps=2, max_new_tokens=16, batch_size=1)
    one = evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "one", **settings)
    evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "two", limit=1, workers=2, **settings)  # 1 task: 1 worker
    two = evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "two", workers=2, **settings)  # resumes after it
    def episodes(folder):
        return {r["id"]: [s["raw"] for s in r["steps"]] for r in map(json.loads, (tmp_path / folder / "predictions.jsonl").open())}
    assert episodes("two") == episodes("one") and len(episodes("one")) == 5
    assert two["workers"] == 2 and two["peak_rss_is_process_peak"] is False and 0.05 < two["peak_rss_gb"] < 16
    judged = ("n_tasks", "pass_rate", "error_labels", "format_valid_rate", "call_match_rate", "avg_steps", "floors")
    assert [two[k] for k in judged] == [one[k] for k in judged] and "workers" not in one
    # a worker's error is raised as itself (a user's mistake stays one), its traceback the cause; what was written stays
    kept = (tmp_path / "two" / "predictions.jsonl").read_text()
    schema.write_jsonl(tmp_path / "more.jsonl", list(complexfuncbench.tasks("test"))[5:8])
    with pytest.raises(ModelNotFound, match="no-such-model") as raised:
        evaluate("no-such-model", tmp_path / "more.jsonl", tmp_path / "two", workers=2, **settings)
    assert "Traceback" in str(raised.value.__cause__) and "load_model" in str(raised.value.__cause__)
    assert (tmp_path / "two" / "predictions.jsonl").read_text() == kept


def test_an_evaluation_stops_by_its_time_and_resumes(tmp_path, monkeypatch):
    from slmlib import deadline
    from slmlib.data import complexfuncbench
    schema.write_jsonl(tmp_path / "tasks.jsonl", list(complexfuncbench.tasks("test"))[:3])
    settings = dict(max_steps=2, max_new_tokens=16, batch_size=1)
    monkeypatch.setenv(deadline.ENV, "100")
    monkeypatch.setattr(deadline, "now", lambda: 200.0)  # the time has come when the first episode ends
    with pytest.raises(deadline.Stopped, match=r"1 of 3 episodes rolled out by .*; evaluating again resumes after them"):
        evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "out", **settings)
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()
    metrics = evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "out", **settings)
    assert metrics["n_tasks"] == 3 and len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 3


def test_an_earlier_identical_evaluation_is_taken_instead_of_rolled_out(tmp_path, monkeypatch, caplog):
    from slmlib import eval_workers
    from slmlib.data import complexfuncbench
    from slmlib.evaluate import why_not_taken
    tasks = list(complexfuncbench.tasks("test"))[:3]
    schema.write_jsonl(tmp_path / "tasks.jsonl", tasks)
    settings = dict(max_steps=2, max_new_tokens=16, batch_size=1)
    first = evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "first", **settings)
    (tmp_path / "ours.jsonl").write_bytes((tmp_path / "tasks.jsonl").read_bytes())  # another run's file, the same bytes
    played = []
    play = eval_workers.play
    monkeypatch.setattr(eval_workers, "play", lambda spec, todo, *rest: played.append(len(todo)) or play(spec, todo, *rest))
    taken = evaluate("tiny-opt", tmp_path / "ours.jsonl", tmp_path / "taken", earlier=tmp_path / "first", **settings)
    assert played == [] and taken["taken_from"] == str((tmp_path / "first").resolve())
    assert taken == first | {"tasks": str(tmp_path / "ours.jsonl"), "taken_from": taken["taken_from"]}  # its peaks too
    assert (tmp_path / "taken" / "predictions.jsonl").read_text() == (tmp_path / "first" / "predictions.jsonl").read_text()
    again = evaluate("tiny-opt", tmp_path / "ours.jsonl", tmp_path / "taken", **settings)  # judged again: still says whence
    assert again == taken and played == []
    # anything but the same model, settings, tasks and a finished evaluation is refused, and rolled out here
    ours = dict(model="tiny-opt", adapter=None, tasks_file=tmp_path / "ours.jsonl", tasks=tasks,
                settings=read_json(tmp_path / "first" / "settings.json"))
    assert why_not_taken(tmp_path / "first", **ours) is None
    assert why_not_taken(tmp_path / "first", **ours | {"model": "other"}) == "another model: tiny-opt, adapter None"
    assert why_not_taken(tmp_path / "first", **ours | {"adapter": "a"}) == "another model: tiny-opt, adapter None"
    schema.write_jsonl(tmp_path / "other.jsonl", tasks[:2])
    assert why_not_taken(tmp_path / "first", **ours | {"tasks_file": tmp_path / "other.jsonl"}).startswith("other tasks: ")
    assert why_not_taken(tmp_path / "first", **ours | {"tasks": tasks + [{"id": "more"}]}) == "not every task played there"
    assert why_not_taken(tmp_path / "nothing", **ours) == "no finished evaluation there"
    with caplog.at_level("INFO", logger="slmlib.evaluate"):
        other = evaluate("tiny-opt", tmp_path / "ours.jsonl", tmp_path / "more-steps", earlier=tmp_path / "first",
                         **settings | {"max_steps": 3})
    assert played == [3] and "taken_from" not in other and "(other settings); rolled out here" in caplog.text


def slmlib_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmlib", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_bench_workers_compares_one_process_with_workers_and_batches(tmp_path):
    run = slmlib_cli("bench", "workers", "--model", "tiny-opt", "--n-tasks", "3", "--max-steps", "2", "--max-new-tokens", "8",
                     "--decoding", "free", "--settings", "1x1", "2x1", "2x2", "--work", str(tmp_path))
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[:2] for r in rows] == [["1", "1"], ["2", "1"], ["2", "2"]] and all(r[7] == "3/3" for r in rows)  # the same greedy episodes
    bad = slmlib_cli("bench", "workers", "--settings", "2by4")
    assert bad.returncode == 2 and "is not WORKERSxBATCH" in bad.stderr
    assert "CPU " in run.stdout and run.stdout.splitlines()[-1].startswith("speedup: ")


def test_bench_step_compares_batched_with_one_prompt_at_a_time(tmp_path):
    run = slmlib_cli("bench", "step", "--model", "tiny-opt", "--n-tasks", "2", "--batch-size", "2", "--max-new-tokens", "8",
                     "--work", str(tmp_path))
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line.split()[:1] in ([c] for c in STEP_CONFIGS)]
    assert [(r[0], r[1], r[2]) for r in rows] == [("batched", "2", "1"), ("one_at_a_time", "1", "1"),
                                                  ("prefix_reuse", "1", "1"), ("prefix_reuse_workers", "1", "2"),
                                                  ("batched_prefix_reuse", "2", "1"), ("batched_prefix_reuse_workers", "2", "2"),
                                                  ("prefix_reuse_lookup", "1", "1"), ("prefix_reuse_lookup_workers", "1", "2")]
    assert all(r[7] == "6/6" for r in rows[1:])  # the same greedy steps with the prefix reused or not, batched or not, in
    # workers, with drafts or not
    assert "CPU " in run.stdout and run.stdout.splitlines()[-1].startswith("speedup: ")


def test_a_run_plays_its_decoding_then_each_variant_then_the_other_decodings(tmp_path):
    from slmlib import config
    p = tmp_path / "p.yaml"
    p.write_text("model: {name: tiny-opt, dtype: bfloat16}\neval:\n  decoding: grammar\n  decodings: [grammar, free]\n  baselines: [b]\n"
                 "  variants:\n    - {agent: dfsdt, temperature: 0.5}\n"
                 "    - {env: cfb, task_sets: [complexfuncbench], baselines: true}\n")
    profile = config.load(p)
    (tmp_path / "train" / "model").mkdir(parents=True)
    both = ["complexfuncbench", "stabletoolbench"]
    plays = [(label, model, overrides, sets) for label, model, _, overrides, sets in plays_of(profile, tmp_path, both)]
    trained = str(tmp_path / "train" / "model")
    assert plays == [("tiny-opt-sft", trained, {"decoding": "grammar"}, both), ("b", "b", {"decoding": "grammar"}, both),
                     ("tiny-opt-sft+dfsdt+t0.5", trained, {"agent": "dfsdt", "temperature": 0.5}, both),
                     ("tiny-opt-sft+cfb", trained, {"env": "cfb"}, ["complexfuncbench"]),
                     ("b+cfb", "b", {"env": "cfb"}, ["complexfuncbench"]),
                     ("tiny-opt-sft+free", trained, {"decoding": "free"}, both), ("b+free", "b", {"decoding": "free"}, both)]
    settings = profile_settings(profile, agent="dfsdt", temperature=0.5)
    assert (settings["agent"], settings["temperature"], settings["decoding"], settings["env"]) == ("dfsdt", 0.5, "grammar", "auto")
    assert settings["dtype"] == "bfloat16"  # model.dtype is what every model is evaluated in
    with pytest.raises(config.ConfigError, match=r"eval\.variants\[1\]\.task_sets names 'complexfuncbench'"):
        plays_of(profile, tmp_path, ["stabletoolbench"])


def test_only_the_fine_tuned_model_writes_arguments_in_its_training_order(tmp_path):
    from slmlib import config
    p = tmp_path / "p.yaml"
    p.write_text("model: {name: tiny-opt}\neval:\n  decoding: grammar\n  baselines: [b]\n"
                 "  variants:\n    - {argument_order: as_trained, baselines: true}\n")
    profile = config.load(p)
    (tmp_path / "train" / "model").mkdir(parents=True)
    plays = {label: overrides for label, _, _, overrides, _ in plays_of(profile, tmp_path, ["complexfuncbench"])}
    trained = {"argument_order_from": str(tmp_path / "data" / "train.jsonl")}
    assert plays == {"tiny-opt-sft": {"decoding": "grammar"}, "b": {"decoding": "grammar"},
                     "tiny-opt-sft+as_trained": trained, "b+as_trained": {}}  # an untuned model learned no order
    assert profile_settings(profile, **trained)["argument_order_from"] == trained["argument_order_from"]


def test_a_run_given_an_earlier_one_takes_its_baselines_and_says_so(tmp_path, monkeypatch):
    from slmlib import config, eval_workers
    from slmlib.data import complexfuncbench
    from slmlib.evaluate import evaluate_run
    p = tmp_path / "p.yaml"
    p.write_text("model: {name: tiny-opt}\neval: {max_steps: 2, max_new_tokens: 16, batch_size: 1, baselines: [tiny-opt],"
                 " decodings: [free, grammar]}\n")
    profile = config.load(p)
    for run in ("earlier", "later"):  # no training in either: the baseline alone plays, each decoding
        schema.write_jsonl(tmp_path / run / "data" / "test_complexfuncbench.jsonl", list(complexfuncbench.tasks("test"))[:2])
    before = evaluate_run(profile, tmp_path / "earlier")
    played = []
    play = eval_workers.play
    monkeypatch.setattr(eval_workers, "play", lambda spec, todo, *rest: played.append(len(todo)) or play(spec, todo, *rest))
    (tmp_path / "earlier" / "eval" / "tiny-opt+grammar" / "complexfuncbench" / "metrics.json").unlink()  # cut short there
    after = evaluate_run(profile, tmp_path / "later", evals_from=tmp_path / "earlier")
    assert played == [2] and set(after) == {"tiny-opt", "tiny-opt+grammar"}  # the unfinished one rolled out here
    assert after["tiny-opt"]["complexfuncbench"]["taken_from"] == str(tmp_path / "earlier" / "eval" / "tiny-opt" / "complexfuncbench")
    assert "taken_from" not in after["tiny-opt+grammar"]["complexfuncbench"]
    assert after["tiny-opt"]["complexfuncbench"]["pass_rate"] == before["tiny-opt"]["complexfuncbench"]["pass_rate"]


def test_a_users_mistake_is_one_line_and_status_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "group": "g", "tools": [], "messages": []}\n')
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(task()) + "\n")
    out = str(tmp_path / "o")
    cases = {  # the command line -> what its one line must name
        ("evaluate", "--model", "no-such-model", "--tasks", str(bad), "--out", out): "bad.jsonl:1: field 'messages'",
        ("evaluate", "--model", "no-such-model", "--tasks", str(good), "--out", out + "2"): "'no-such-model' is not an embedded model",
        ("evaluate", "--model", "tiny-opt", "--tasks", str(tmp_path / "nope.jsonl"), "--out", out): "nope.jsonl",
        ("evaluate", "--model", "tiny-opt", "--tasks", str(good), "--out", out, "--decoding", "fancy"): "--decoding: invalid choice: 'fancy'",
        ("evaluate", "--model", "tiny-opt", "--tasks", str(good), "--out", out, "--batch-size", "0"): "--batch-size: must be at least 1",
        ("run", "--params", str(tmp_path / "nope.yaml")): "nope.yaml",
        ("run", "--from", "03_evaluation"): "--from re-executes part of a run",
        ("run", "--resume", "r", "--trained-from", "outputs/x"): "a resumed one keeps the training it began with",
        ("run", "--params", "params/smoke.yaml", "--trained-from", str(tmp_path / "nope")): "no run to take a training from",
        ("run", "--params", "params/smoke.yaml", "--evals-from", str(tmp_path / "nope")): "no other run or export to take evaluations from",
        ("bundle", "--out", str(tmp_path)): "is not empty: give a new folder",
        ("bundle", "--out", str(tmp_path / "b"), "--python-version", "2.7"): "no wheels for Python 2.7",
    }
    for args, named in cases.items():
        proc = slmlib_cli(*args)
        problem = [line for line in proc.stderr.splitlines() if not line.startswith(("INFO ", "WARNING "))]
        assert proc.returncode == 2 and len(problem) == 1 and named in problem[0], (args, proc.stderr)
    debug = slmlib_cli("evaluate", "--model", "no-such-model", "--tasks", str(bad), "--out", out, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "SchemaError" in debug.stderr
    assert not (tmp_path / "o").exists()  # a bad task file stops before anything is written


class Handler(http.server.BaseHTTPRequestHandler):
    requests: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.requests.append((self.path, dict(self.headers), body))
        if self.path == "/virtual":
            reply = {"error": "", "response": {"tool": body["tool_name"], "api": body["api_name"]}}
        else:
            name = body["tool_choice"]["function"]["name"]
            content = body["messages"][0]["content"]
            args = ({"answer_status": "Solved" if "sunny" in content.lower() else "Unsolved", "reason": "r"}
                    if name != "check_task_solvable" else {"task_status": "Solvable", "reason": "r"})
            reply = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Handler.requests.clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_http_environment_speaks_stabletoolbench(server):
    t = {**task(), "tools": [{**WEATHER, "meta": {"category": "Weather", "tool_name": "Open Weather", "api_name": "Get Weather"}}]}
    obs = json.loads(envs.make("http", server).call(t, "get_weather", {"city": "Paris"}))
    assert obs["response"] == {"tool": "open_weather", "api": "get_weather"}
    path, _, body = Handler.requests[-1]
    assert path == "/virtual" and body["category"] == "Weather" and json.loads(body["tool_input"]) == {"city": "Paris"}


def test_tooleval_judge_end_to_end_over_loopback(server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("OPENAI_BASE_URL", server)
    client = tooleval.JudgeClient(model="judge")
    t = task()
    sunny, unsure = ({"return_type": "give_answer", "final_answer": a} for a in ("It is sunny.", "No idea."))
    solved = record([step("get_weather", {"city": "Paris"}, '{"error": "", "response": "sunny"}'), step("Finish", sunny)], sunny)
    unsolved = record([step("get_weather", {"city": "Paris"}, "{}"), step("Finish", unsure)], unsure)
    no_finish = record([step("get_weather", {"city": "Paris"}, "{}")], finish=None)
    assert tooleval.judge_query(client, t, solved) == {"passed": True, "rounds": ["Passed"] * 4}
    assert tooleval.judge_query(client, t, unsolved) == {"passed": False, "rounds": ["Failed"] * 4}
    n = len(Handler.requests)
    assert tooleval.judge_query(client, t, no_finish)["passed"] is False and len(Handler.requests) == n
    _, headers, body = Handler.requests[0]
    assert headers["Authorization"] == "Bearer sk-test-secret"
    assert body["messages"][0]["content"].startswith("\nGiving the query and answer, you need give `answer_status`")
    assert body["tool_choice"]["function"]["name"] == "check_answer_status"
    recs = [{**solved, "verdict": {"passed": False}}]
    tooleval.rejudge(recs, {"t1": t}, model="judge")
    assert recs[0]["verdict"]["passed"] and "sk-test-secret" not in json.dumps(recs)


def test_step_mode_scores_next_steps_against_the_gold_trajectory(tmp_path):
    from slmlib.data import complexfuncbench
    tasks = list(complexfuncbench.tasks("test"))[:2]
    schema.write_jsonl(tmp_path / "tasks.jsonl", tasks)
    m = evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "step", mode="step", max_new_tokens=16, batch_size=4)
    assert m["n_steps"] == sum(len(t["gold_calls"]) for t in tasks)
    assert m["step_format_valid_rate"] == 0.0 and m["step_call_match_rate"] == 0.0  # an untrained model
    lines = (tmp_path / "step" / "step_predictions.jsonl").read_text().splitlines()
    assert len(lines) == m["n_steps"] and json.loads(lines[0])["gold_action"] == tasks[0]["gold_calls"][0]["name"]
    assert [json.loads(x)["position"] for x in lines[:len(tasks[0]["gold_calls"])]] == list(range(1, len(tasks[0]["gold_calls"]) + 1))
    assert sum(p["n_steps"] for p in m["by_position"].values()) == m["n_steps"] and m["by_position"]["1"]["n_steps"] == 2
    assert m["finish_step_accuracy"] is None  # replayed gold calls end without a Finish step


def test_step_mode_one_at_a_time_prefills_only_what_each_step_adds(tmp_path, monkeypatch):
    from slmlib.data import complexfuncbench
    from slmlib.eval_workers import TeacherForced
    from slmlib.evaluate import step_mode
    tasks = list(complexfuncbench.tasks("test"))[:2]
    prompts, real = [], rollout.PrefixCache.prepare
    def prepare(cache, prompt):
        kv = real(cache, prompt)
        prompts.append((len(prompt), kv.get_seq_length()))  # (prompt length, tokens served from the cache)
        return kv
    monkeypatch.setattr(rollout.PrefixCache, "prepare", prepare)
    raws = {}
    for reuse in (True, False):
        spec = TeacherForced("tiny-opt", None, "float32", rollout.Decoding(max_new_tokens=16, reuse_prefix=reuse), 1)
        m = step_mode(spec, tasks, tmp_path / str(reuse))  # in this process, where the patch is
        assert m["prefix_reuse"] is reuse and m["workers"] == 1 and m["peak_rss_gb"] > 0
        raws[reuse] = [json.loads(x)["raw"] for x in (tmp_path / str(reuse) / "step_predictions.jsonl").read_text().splitlines()]
    assert raws[True] == raws[False] and len(raws[True]) == 6  # the same greedy steps as a full prefill each time
    assert len(prompts) == 5 and prompts[0][1] == 0  # one prompt is past the window; the first is prefilled whole
    lengths, kept = zip(*prompts)
    assert kept[1:3] == lengths[:2] and kept[4] == lengths[3]  # a task's later step reuses the whole prompt before it
    assert 1000 < kept[3] < lengths[3]  # the next task shares the system prompt and tools, not the query


def test_step_mode_in_workers_writes_what_one_process_writes(tmp_path):
    from slmlib.data import complexfuncbench
    tasks = list(complexfuncbench.tasks("test"))[:3]
    schema.write_jsonl(tmp_path / "tasks.jsonl", tasks)
    out = {n: evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / f"w{n}", mode="step", max_new_tokens=8, batch_size=1,
                       workers=n) for n in (1, 2)}
    assert out[2]["workers"] == 2 and out[1]["workers"] == 1
    assert {k: v for k, v in out[2].items() if "seconds" not in k and "rss" not in k and k != "workers"} == \
        {k: v for k, v in out[1].items() if "seconds" not in k and "rss" not in k and k != "workers"}
    lines = {n: (tmp_path / f"w{n}" / "step_predictions.jsonl").read_text() for n in (1, 2)}
    assert lines[1] == lines[2] and len(lines[1].splitlines()) == out[1]["n_steps"]  # task order, whoever finished first


def test_step_metrics_by_position():
    rows = [(1, True, True), (1, True, False), (2, True, False), (5, False, False), (4, True, True)]
    results = [{"position": p, "format_valid": True, "guarded": False, "name_match": n, "call_match": c,
                "gold_action": "f"} for p, n, c in rows]
    m = step_metrics(results)
    assert m["by_position"] == {"1": {"n_steps": 2, "step_name_accuracy": 1.0, "step_call_match_rate": 0.5},
                                "2": {"n_steps": 1, "step_name_accuracy": 1.0, "step_call_match_rate": 0.0},
                                "4+": {"n_steps": 2, "step_name_accuracy": 0.5, "step_call_match_rate": 0.5}}
    assert m["step_call_match_rate"] == 0.4 and m["finish_step_accuracy"] is None
