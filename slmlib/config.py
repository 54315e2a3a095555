"""Typed parameter profiles (``params/*.yaml``).

A profile is checked completely before any model or data is touched: an unknown key or a value
of the wrong type raises :class:`ConfigError` naming the file and the dotted key.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


REPO = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class DataConfig:
    root: str = "../shared/data"           # folder holding the GitHub-hosted sources; relative to the repo
    required: list[str] = field(default_factory=lambda: ["complexfuncbench"])  # fail early when missing
    optional: list[str] = field(default_factory=list)  # reported in the manifest when missing
    max_length: int = 2048                 # tokens per training sequence / prompt window
    max_observation_chars: int = 1024      # ToolBench truncates observations to 1,024 characters
    distractor_tools: int = 4              # tools kept besides the gold ones when the tool list is trimmed
    train_limit: int = -1                  # training trajectories per group of each source; -1 = all
    train_limits: dict[str, int] = field(default_factory=dict)  # per-source overrides: {complexfuncbench: -1} weights the mix
    test_limit: int = -1                   # ComplexFuncBench test tasks per group; -1 = all 200
    stabletoolbench_limit: int = -1        # StableToolBench queries per group (seeded sample); -1 = all 765
    groups: list[str] = field(default_factory=list)  # only these groups of the training sources; [] = all
    min_calls: int = 0                     # training trajectories that call fewer tools are left out
    heldout: list[str] = field(default_factory=list)  # training sources whose held-out dialogues become test_heldout (slmlib.heldout)
    heldout_limit: int = -1                # held-out tasks per group (seeded sample); -1 = all
    argument_order: Literal["as_written", "schema"] = "as_written"  # schema: training calls' arguments in their tool's property order, the grammar's
    date_thoughts: bool = False            # a training step without a Thought that passes a date or time gets one working it out (slmlib.dates)
    choice_thoughts: bool = False          # ... that picks a listed value gets one naming the request's word for it (slmlib.choices)
    role_thoughts: bool = False            # ... whose observation gives later calls arguments gets one naming them (slmlib.roles)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "smollm2-135m-instruct"    # embedded name, local folder or Hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["full", "lora"] = "full"
    epochs: float = 1.0
    max_steps: int = -1                    # optimizer steps; -1 = run the epochs
    learning_rate: float = 5e-5
    warmup_steps: int = 100
    per_device_batch_size: int = 8
    gradient_accumulation: int = 4
    max_grad_norm: float = 0.3
    weight_decay: float = 0.01
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 where the hardware has it natively (slmlib.train)
    gradient_checkpointing: bool = False
    lm_head: Literal["learned", "all"] = "learned"  # positions the LM head scores: those with a label, or every one
    loss_on: Literal["last", "all"] = "all"  # last assistant turn (ToolLLaMA) or every assistant turn
    # a Finish answer the source never wrote (ComplexFuncBench's template sentence): learned as every earlier
    # run did, or masked (context, not loss), so the answers learned are the ones people wrote
    synthetic_answers: Literal["learned", "masked"] = "learned"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    save_steps: int = 50
    logging_steps: int = 10
    snapshots: int = 0                     # weights kept at this many evenly spaced steps: the learning curve (slmlib.curve)


Decoding = Literal["free", "grammar"]
# The order the grammar writes a call's arguments in: each schema's own, or (the fine-tuned model only) the one its
# training calls write (slmlib.schema.argument_orders of the run's data/train.jsonl); llguidance keeps a schema's order.
ArgumentOrder = Literal["schema", "as_trained"]


@dataclass(frozen=True)
class SearchConfig:
    """ToolBench's DFSDT (``DFS_woFilter_w2``, slmlib.agents.dfsdt) and its constants."""
    width: int = 2                         # children per node
    chain_steps: int = 4                   # model steps per chain, Finish included (12 tree nodes / 3)
    budget: int = 200                      # model calls per task (max_query_count)


@dataclass(frozen=True)
class Variant:
    """Another way the fine-tuned model (with ``baselines``, every model) plays the run's tasks: what is not
    given is the profile's own. Its episodes go to ``eval/<model>+<what differs>/`` (``+dfsdt``, ``+cfb``)."""
    agent: Literal["react", "dfsdt"] | None = None
    env: Literal["auto", "cfb"] | None = None
    decoding: Decoding | None = None
    temperature: float | None = None       # ToolLLaMA samples DFSDT's children at 0.5: its one source of diversity
    argument_order: ArgumentOrder | None = None
    task_sets: list[str] = field(default_factory=list)  # only these test sets, e.g. [complexfuncbench]; [] = every one
    baselines: bool = False                # the untuned baselines too

    def settings(self) -> dict[str, Any]:
        """The evaluation settings it gives (``agent``, ``env``, ``decoding``, ``temperature``, ``argument_order``),
        in label order."""
        given = {k: getattr(self, k) for k in ("agent", "env", "temperature", "decoding", "argument_order")}
        return {k: x for k, x in given.items() if x is not None}


@dataclass(frozen=True)
class EvalConfig:
    temperature: float = 0.0               # 0 = greedy; the paper uses 0.1
    max_steps: int = 10                    # actions per episode, the paper's budget
    max_new_tokens: int = 256              # per step
    batch_size: int = 8
    workers: int = 1                       # processes rolling episodes out, the cores shared among them (slmlib.eval_workers)
    key_guard: bool = True                 # end an Action Input at its first repeated key (slmlib.rollout)
    lookup_tokens: int = 15                # at batch 1, tokens drafted from the context and checked in one forward (slmlib.lookup); 0 = off
    fit_window: int = 0                    # a prompt past this many tokens (less a step) shows older observations cut, as training fitted them; 0 = off
    decoding: Decoding = "free"            # "grammar": every step under its task's grammar (slmlib.grammar)
    decodings: list[Decoding] = field(default_factory=list)  # every model also evaluated with these; [] = decoding alone
    argument_order: ArgumentOrder = "schema"
    baselines: list[str] = field(default_factory=lambda: ["smollm2-135m-instruct", "gemma-3-270m"])
    env: Literal["auto", "cfb"] = "auto"   # cfb: ComplexFuncBench's own protocol for its tasks (slmlib.envs.cfb)
    agent: Literal["react", "dfsdt"] = "react"  # one chain, or ToolBench's depth-first search over chains
    search: SearchConfig = field(default_factory=SearchConfig)  # with agent: dfsdt
    curve_set: str = "complexfuncbench"    # the task set every training snapshot is evaluated on (train.snapshots)
    curve_episodes: int = 2                # snapshots also played as episodes, spread evenly, the final model included
    curve_limit: int = -1                  # the first this many tasks of curve_set (a seeded sample already); -1 = all
    variants: list[Variant] = field(default_factory=list)  # the fine-tuned model also played these ways (after the decodings)

    def all_decodings(self) -> list[str]:
        """The decodings every model is evaluated with, the reported one first."""
        return [self.decoding, *[d for d in dict.fromkeys(self.decodings) if d != self.decoding]]

    def variant_suffix(self, v: Variant) -> str:
        """What a variant changes, as its evaluations' label ends: ``+dfsdt``, ``+cfb``, ``+dfsdt+t0.5``, ``+dfsdt+free``."""
        return "".join(f"+t{x:g}" if k == "temperature" else f"+{x}"
                       for k, x in v.settings().items() if x != getattr(self, k))


@dataclass(frozen=True)
class Profile:
    name: str
    about: str = ""                        # what a run of this profile is for, and what it is not evidence of (05_results)
    seed: int = 0
    notebooks: list[str] = field(default_factory=list)  # stems to run; empty = every notebook in order
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, where, prefix=key + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: '{key}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _check(value, inner, key, where)
    if origin is dict:
        key_type, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a mapping of {_type_name(key_type)} to {_type_name(item)}, got {value!r}")
        return {_check(k, key_type, f"{key} key", where): _check(v, item, f"{key}.{k}", where) for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: '{key}' must be a list of {_type_name(item)}, got {value!r}")
        return [_check(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(cls: type, data: dict[str, Any], where: str, prefix: str = ""):
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing key '{prefix}{missing[0]}'")
    return cls(**{k: _check(v, hints[k], prefix + k, where) for k, v in data.items()})


def _merged(base: dict, over: dict) -> dict:
    return {**base, **{k: _merged(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                       for k, v in over.items()}}


def read(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A profile file's mapping; one that names a ``base`` (another profile of its folder, by stem) is that
    profile with this file's keys laid over it, mappings merged key by key, so a variant says only what it
    changes."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile is a mapping of keys, got {type(data).__name__}")
    if "base" not in data:
        return data
    base = path.parent / f"{data.pop('base')}.yaml"
    if not base.is_file():
        raise ConfigError(f"{path}: 'base' names {base}, which is not a profile")
    if base.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' names {base}, which bases itself on this profile")
    inherited = read(base, (*_seen, path.resolve()))
    inherited.pop("name", None)
    return _merged(inherited, data)


def load(path: str | Path) -> Profile:
    """Read and validate a profile; ``name`` defaults to the file's stem."""
    path = Path(path)
    data = read(path)
    data.setdefault("name", path.stem)
    profile = build(Profile, data, str(path))
    unused = sorted(set(profile.data.train_limits) - {*profile.data.required, *profile.data.optional})
    if unused:
        raise ConfigError(f"{path}: 'data.train_limits.{unused[0]}' names a source the profile does not read "
                          f"(its sources: {', '.join([*profile.data.required, *profile.data.optional])})")
    sources = {*profile.data.required, *profile.data.optional}
    bad = [s for s in profile.data.heldout if s not in sources or s in ("complexfuncbench", "stabletoolbench")]
    if bad:
        raise ConfigError(f"{path}: 'data.heldout' names {bad[0]!r}, which is not a training source the profile reads "
                          f"(ComplexFuncBench has its own split, StableToolBench is a test set)")
    if profile.eval.decodings and profile.eval.decoding not in profile.eval.decodings:
        raise ConfigError(f"{path}: 'eval.decodings' {profile.eval.decodings} must include 'eval.decoding' "
                          f"({profile.eval.decoding!r}), the decoding the run's results are reported with")
    taken = {f"+{d}" for d in profile.eval.all_decodings()[1:]}
    for i, v in enumerate(profile.eval.variants):
        suffix = profile.eval.variant_suffix(v)
        if not suffix or suffix in taken:
            raise ConfigError(f"{path}: 'eval.variants[{i}]' {'changes nothing' if not suffix else f'repeats {suffix!r}'}: "
                              "a variant names an agent, env, temperature, decoding or argument order the evaluations before it do not use")
        taken.add(suffix)
    if profile.eval.workers < 1:
        raise ConfigError(f"{path}: 'eval.workers' must be at least 1, got {profile.eval.workers}")
    root = Path(profile.data.root)
    if not root.is_absolute():  # relative to the repository, wherever the caller runs; a symlinked ../shared
        root = Path(os.path.normpath(REPO / root))  # stays where it is linked, so exports can name it relatively
    return dataclasses.replace(profile, data=dataclasses.replace(profile.data, root=str(root)))

