"""ToolBench's DFSDT (ToolLLaMA-DFS, ``DFS_woFilter_w2``): depth-first search over ReAct chains.

Read from ``toolbench/inference/Algorithms/DFS.py``. Each node is a conversation; expanding it asks
the model for one step (one model call) and acts on it. A node expands at most ``width`` children; when
it already has children, the model is shown ``DIVERSITY_PROMPT`` listing them (not kept in the child's
conversation). ``Finish`` with ``give_answer`` ends the whole search; ``give_up_and_restart`` makes the
node's parent drop its remaining tries and the level above try a new child; a chain that reaches
``chain_steps`` steps without Finish, or whose step failed (unparsable, a call repeated past the judge's
limit, a conversation over the window), lets its parent try its next child. An error observation does not
backtrack: the chain goes on with it. The search stops when ``budget`` model calls are spent; as in
ToolBench, the call that reaches the budget is not used.

The judge sees one chain, root to the first ``give_answer`` (else the first give-up, where ToolBench picks
one at random; else the last chain tried), as ToolEval does; the record keeps the whole tree.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Generator, Iterable, Iterator

from slmlib import rollout
from slmlib.config import SearchConfig as Search
from slmlib.errors import ErrorLabel
from slmlib.schema import FINISH

# ToolBench's Prompts/Tree_search_prompts.py, word for word
DIVERSITY_PROMPT = '''This is not the first time you try this task, all previous trails failed.
Before you generate my thought for this state, I will first show you your previous actions for this state, and then you must generate actions that is different from all of them. Here are some previous actions candidates:
{previous_candidate}
Remember you are now in the intermediate state of a trail, you will first analyze the now state and previous action candidates, then make actions that is different from all the previous.'''
# what ToolBench's environment answers a Finish (rapidapi.py), shown to the model in the diversity prompt
FINISH_OBSERVATIONS = {"give_answer": '{"response":"successfully giving the final answer."}',
                       "give_up_and_restart": '{"response":"chose to give up and restart"}'}
ANSWER_BACK, PRUNE_BACK, STOP = 2, 2, 100_000  # DFS.py's final_answer_back_length, prune_back_length, exit value


@dataclass
class Node:
    ep: rollout.Episode               # the conversation up to and including this node's step
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    diversity: bool = False           # its step was written under the diversity prompt
    step: dict | None = None          # its own step's record (None for the root, or a step that did not fit the window)

    @property
    def kind(self) -> str:
        """answer, give_up, failed (the step ended the chain), or open."""
        if self.ep.finish is not None:
            return "give_up" if self.ep.finish.get("return_type") == "give_up_and_restart" else "answer"
        return "failed" if self.ep.failure else "open"


def candidates(node: Node) -> list[dict]:
    """The earlier children of ``node`` as DFS.py lists them for the diversity prompt (parsed steps only)."""
    out = []
    for child in node.children:
        record = child.step or {}
        step = record.get("step")
        if step is None:
            continue
        output = record.get("observation")
        if output is None:  # a Finish: ToolBench's environment answered it
            output = FINISH_OBSERVATIONS.get((child.ep.finish or {}).get("return_type"), "")
        out.append({"name": step["action"], "arguments": step["action_input"], "function_output": output,
                    "mento-carlo-action-value": 0.0})
    return out


def diversity_message(node: Node) -> dict | None:
    listed = candidates(node)
    if not listed:
        return None
    text = f"{json.dumps(listed, indent=2)}\n"
    if node.ep.steps and "observation" in node.ep.steps[-1]:
        text += f"again, your former observation: {node.ep.steps[-1]['observation']}\n"
    return {"role": "user", "content": DIVERSITY_PROMPT.replace("{previous_candidate}", text)}


class Tree:
    """One task's search, written as a generator: it yields the conversation it wants a step for and is
    sent the policy's answer, so that many trees share each batched ``generate`` call."""

    def __init__(self, task: dict, env, dec: rollout.Decoding, search: Search, reuse: bool = False):
        self.env, self.search = env, search
        self.root = Node(rollout.new_episode(task, dataclasses.replace(dec, max_steps=search.chain_steps), reuse))
        self.nodes: list[Node] = [self.root]
        self.calls = self.new_tokens = 0
        self.seconds = 0.0
        self.answer: Node | None = None
        self.exhausted = False

    def expand(self, node: Node) -> Generator[rollout.Episode, rollout.Written | None, int]:
        """DFS.py's ``DFS``: returns how many levels to go back."""
        if node.kind == "answer":
            self.answer = node
            return ANSWER_BACK
        if node.kind == "give_up":
            return PRUNE_BACK
        if node.kind == "failed" or node.ep.done or len(node.ep.steps) >= self.search.chain_steps:
            return 1
        for _ in range(self.search.width):
            message = diversity_message(node) if node.children else None
            asking = copy.copy(node.ep)
            asking.messages = node.ep.messages + [message] if message else node.ep.messages
            result = yield asking
            self.calls += 1
            if result is not None:
                self.new_tokens += result.tokens
                self.seconds += result.seconds
            if self.calls >= self.search.budget:
                self.exhausted = True
                return STOP
            child = Node(copy.copy(node.ep), parent=node, diversity=message is not None)
            child.ep.messages, child.ep.steps = list(node.ep.messages), list(node.ep.steps)
            if result is None:
                rollout.overflow(child.ep)
            else:
                rollout.advance(child.ep, result, self.env)
            child.step = child.ep.steps[-1] if len(child.ep.steps) > len(node.ep.steps) else None
            node.children.append(child)
            self.nodes.append(child)
            back = yield from self.expand(child)
            if self.answer is not None or self.exhausted:
                return STOP
            if back > 1:
                return back - 1
        return 1

    def judged(self) -> Node:
        """The chain the judge sees: the first answer, else the first give-up, else the last chain tried."""
        if self.answer is not None:
            return self.answer
        give_up = next((n for n in self.nodes if n.kind == "give_up"), None)
        return give_up or self.nodes[-1]

    def record(self) -> dict:
        """The judged chain as a ReAct episode's record, with the whole tree and what the search cost."""
        end = self.judged()
        ep = copy.copy(end.ep)
        if self.exhausted and self.answer is None:
            ep.failure = (ErrorLabel.BUDGET_EXHAUSTED.value, f"the search spent its budget of {self.search.budget} model calls")
        ep.new_tokens, ep.seconds = self.new_tokens, self.seconds
        record = rollout.episode_record(ep)
        chain = set()
        node = end
        while node is not None:
            chain.add(id(node))
            node = node.parent
        index = {id(n): i for i, n in enumerate(self.nodes)}
        record["model_calls"] = self.calls
        record["tree"] = [{"node": i, "parent": index[id(n.parent)] if n.parent else None, "kind": n.kind,
                           "step": n.step, "diversity": n.diversity,
                           "judged": id(n) in chain} for i, n in enumerate(self.nodes)]
        return record


def run(policy: rollout.Policy, tasks: Iterable[dict], env, dec: rollout.Decoding, search: Search = Search(),
        batch_size: int = 8, reuse: bool = False) -> Iterator[dict]:
    """Search every task; yields each task's record (the judged chain, ``tree``, ``model_calls``) as it ends.
    Up to ``batch_size`` trees run at once, their pending steps written in one policy call."""
    queue = iter(tasks)
    active: list[tuple[Tree, Generator, rollout.Episode]] = []
    while True:
        while len(active) < batch_size and (task := next(queue, None)) is not None:
            tree = Tree(task, env, dec, search, reuse)
            walk = tree.expand(tree.root)
            active.append((tree, walk, next(walk)))
        if not active:
            return
        results = policy([asking for _, _, asking in active])
        still = []
        for (tree, walk, _), result in zip(active, results):
            try:
                still.append((tree, walk, walk.send(result)))
            except StopIteration:
                tree.root.ep.prefix = None  # free its KV cache
                yield tree.record()
        active = still
