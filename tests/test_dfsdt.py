"""ToolBench's DFSDT (slmlib.agents.dfsdt) driven by scripted policies, and by a real (tiny) model under
grammar decoding in a batch."""
import json

from slmlib import analysis, envs, judge, rollout
from slmlib.agents import dfsdt
from slmlib.config import SearchConfig
from slmlib.errors import ErrorLabel
from test_evaluate import GOLD, task

# ToolBench's Prompts/Tree_search_prompts.py, DIVERSITY_PROMPT, as its file has it
TOOLBENCH_DIVERSITY = (
    "This is not the first time you try this task, all previous trails failed.\n"
    "Before you generate my thought for this state, I will first show you your previous actions for this state, "
    "and then you must generate actions that is different from all of them. Here are some previous actions candidates:\n"
    "{previous_candidate}\n"
    "Remember you are now in the intermediate state of a trail, you will first analyze the now state and previous "
    "action candidates, then make actions that is different from all the previous.")
WEATHER_TASK = task(gold_calls=GOLD, replay=[{"name": "get_weather", "arguments": {"city": "Paris"}, "response": {"temp": 20}}])


def step(action, args, thought="t"):
    return f"Thought: {thought}\nAction: {action}\nAction Input: {json.dumps(args)}"


def finish(kind, answer=""):
    return step("Finish", {"return_type": kind, "final_answer": answer})


def give_up_then_answer(ep):
    """The first branch calls the wrong tool and gives up; told so, the second calls the right one and answers."""
    actions = [s["step"]["action"] for s in ep.steps]
    if ep.messages[-1]["role"] == "user" and len(ep.messages) > 1:
        return step("get_weather", {"city": "Paris"})
    if "get_weather" in actions:
        return finish("give_answer", "20 C in Paris")
    if "get_news" in actions:
        return finish("give_up_and_restart")
    return step("get_news", {})


def test_gives_up_on_the_first_branch_and_answers_on_the_second():
    seen = []

    def policy(episodes):
        seen.extend(ep.messages[-1] for ep in episodes)
        return rollout.scripted(give_up_then_answer)(episodes)
    (record,) = dfsdt.run(policy, [WEATHER_TASK], envs.make("replay"), rollout.Decoding())
    # the judged chain is the second branch: the right call, then the answer
    assert [s["step"]["action"] for s in record["steps"]] == ["get_weather", "Finish"]
    assert judge.judge(WEATHER_TASK, record)["passed"]
    assert record["model_calls"] == 4 and [n["kind"] for n in record["tree"]] == ["open", "open", "give_up", "open", "answer"]
    assert [n["node"] for n in record["tree"] if n["judged"]] == [0, 3, 4] and record["tree"][3]["diversity"]
    # the diversity prompt is ToolBench's, listing the earlier child as DFS.py does
    news = envs.make("replay").call(WEATHER_TASK, "get_news", {})
    listed = json.dumps([{"name": "get_news", "arguments": "{}", "function_output": news, "mento-carlo-action-value": 0.0}], indent=2)
    assert seen[2] == {"role": "user", "content": TOOLBENCH_DIVERSITY.replace("{previous_candidate}", listed + "\n")}
    # it was shown for that one step only: the second branch's conversation goes on without it
    assert all(m["role"] != "user" for m in record["messages"][1:])
    # the inspector draws the tree, the judged chain marked
    assert analysis.search_tree(record).splitlines() == [
        "  1. get_news {} -> open", "    2. Finish " + record["tree"][2]["step"]["step"]["action_input"] + " -> give_up",
        '* 3. get_weather {"city": "Paris"} -> open (after the diversity prompt)',
        "*   4. Finish " + record["steps"][-1]["step"]["action_input"] + " -> answer"]


def test_a_search_that_spends_its_budget_fails_with_the_budget_label():
    wander = rollout.scripted(lambda ep: step("get_weather", {"city": f"city {len(ep.steps)} {len(ep.messages)}"}))
    (record,) = dfsdt.run(wander, [WEATHER_TASK], envs.make("replay"), rollout.Decoding(), SearchConfig(budget=5))
    assert record["model_calls"] == 5 and len(record["tree"]) == 5  # the call that reaches the budget is not used
    assert judge.judge(WEATHER_TASK, record)["label"] == ErrorLabel.BUDGET_EXHAUSTED


def test_a_conversation_over_the_window_fails_its_branch_only():
    answers = iter([None, rollout.Written(finish("give_answer", "20 C"), 3, 0.0)])
    (record,) = dfsdt.run(lambda episodes: [next(answers) for _ in episodes], [WEATHER_TASK], envs.make("replay"),
                          rollout.Decoding())
    assert [n["kind"] for n in record["tree"]] == ["open", "failed", "answer"] and record["tree"][1]["step"] is None
    assert not record["tree"][2]["diversity"]  # nothing parsed to list: no diversity prompt, as DFS.py
    assert "(no step: the conversation exceeds the window)" in analysis.search_tree(record)


def test_chains_stop_at_their_step_limit_and_the_tree_at_its_width():
    wander = rollout.scripted(lambda ep: step("get_weather", {"city": f"city {len(ep.steps)} {len(ep.messages)}"}))
    (record,) = dfsdt.run(wander, [WEATHER_TASK], envs.make("replay"), rollout.Decoding(), SearchConfig(width=2, chain_steps=2))
    assert record["model_calls"] == 2 + 4  # two children of the root, two of each: every chain two steps long
    assert max(len(r["steps"]) for r in [record]) == 2
    assert judge.judge(WEATHER_TASK, record)["label"] == ErrorLabel.NO_FINISH


def test_trees_share_batched_generation_under_grammar(tiny):
    news_only = {**task(relevant_tools=["get_news"]), "id": "t2", "tools": [task()["tools"][1]]}
    dec = rollout.Decoding(max_new_tokens=192, decoding="grammar")
    batches = []
    inner = rollout.model_policy(*tiny, dec)

    def policy(episodes):
        batches.append(len(episodes))
        return inner(episodes)
    records = list(dfsdt.run(policy, [task(), news_only], envs.make("stub"), dec, SearchConfig(width=2, chain_steps=2, budget=5),
                             batch_size=2))
    assert sorted(r["id"] for r in records) == ["t1", "t2"] and max(batches) == 2
    for r in records:
        assert 1 <= r["model_calls"] <= 5 and r["new_tokens"] > 0
        assert all(n["step"] is None or "error" not in n["step"] for n in r["tree"])  # every step parsed


def test_evaluate_with_the_search_records_it_and_its_cost(tmp_path):
    from slmlib import schema
    from slmlib.evaluate import evaluate
    schema.write_jsonl(tmp_path / "tasks.jsonl", [WEATHER_TASK])
    m = evaluate("tiny-opt", tmp_path / "tasks.jsonl", tmp_path / "eval", max_new_tokens=24, batch_size=1, agent="dfsdt",
                 search=SearchConfig(width=2, chain_steps=2, budget=3))
    settings = json.loads((tmp_path / "eval" / "settings.json").read_text())
    assert settings["agent"] == "dfsdt" and settings["search"] == {"width": 2, "chain_steps": 2, "budget": 3}
    (record,) = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert m["model_calls_per_task"] == record["model_calls"] >= 2 and record["tree"][0]["parent"] is None
    assert m["new_tokens_per_task"] == record["new_tokens"] > 0
