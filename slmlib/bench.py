"""``python -m slmlib bench train`` and ``bench eval``: our pipeline against a plain baseline.

``bench eval`` runs the same ComplexFuncBench tasks with the batched rollout (early stop at each
step's end) and with one task at a time running ``generate`` to the token limit, checks that the
greedy trajectories are the same, and prints ``speedup: R.RRx`` in tasks per second. ``bench workers``
runs ``evaluate`` back to back under several settings of worker processes and episodes batched in each
(:func:`main_workers`); ``bench step`` the teacher-forced step mode batched, one prompt at a time, and
reusing each prompt's prefix, one at a time or batched (:func:`main_step`).

``bench train``:

Both see the same trajectories and learn the same assistant tokens in the same number of
optimizer steps. The baseline is ToolLLaMA's layout (one row per assistant step, the history
re-read each time), TRL's default collator, random order, fp32. The variants add one lever at a
time: every assistant turn of a trajectory in one sequence, length-grouped batches, the precision
``auto`` chooses (bf16 autocast where the CPU has it natively, fp32 where it is emulated), LoRA,
tcmalloc in place of glibc's allocator (Debian's libtcmalloc-minimal4, preloaded into that child), and
the LM head scoring only the positions with a label. Each run is a child process (its own peak RSS,
also read at steps 10, 50, 100 and 200); the final loss of each model is measured on the same held-out
trajectories (with ``--next-call``, teacher-forced next-call accuracy too). Hardware use is the model's
FLOPs per second over a dense matmul's, measured on this machine in the training's precision. With
``--seconds`` every variant trains for the same wall time (full against LoRA at its own learning rate,
``--lora-lr``). Prints a table and ``speedup: R.RRx`` (supervised tokens per second, ours over the
baseline; ours is the way ``make run`` trains: every turn in one sequence, length-grouped, auto
precision, the learned positions' head, tcmalloc where installed; LoRA is measured beside it but not
chosen, since at the same learning rate it does not reach the same loss).
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

# A variant is "baseline" or levers joined by "+": one_sequence (every assistant turn of a trajectory in one row),
# grouped (length-grouped batches), auto (the precision auto chooses: bf16 autocast only where the hardware has it
# natively), lora, tcmalloc (preloaded into that child), learned_head (the LM head scores only labelled positions).
LEVERS = ("one_sequence", "grouped", "auto", "lora", "tcmalloc", "learned_head")
VARIANTS = ("baseline", "one_sequence", "one_sequence+grouped+auto", "one_sequence+grouped+auto+lora",
            "one_sequence+grouped+auto+tcmalloc", "one_sequence+grouped+auto+learned_head",
            "one_sequence+grouped+auto+tcmalloc+learned_head")
OURS = ("one_sequence+grouped+auto+tcmalloc+learned_head", "one_sequence+grouped+auto+learned_head")  # as make run trains, with tcmalloc or without


def variant(name: str) -> dict:
    """A variant's settings from its name; an unknown lever is a ValueError naming the known ones."""
    levers = set() if name == "baseline" else set(name.split("+"))
    unknown = sorted(levers - set(LEVERS))
    if unknown:
        raise ValueError(f"bench variant {name!r}: unknown lever {unknown[0]!r} (a variant is 'baseline' or some of {', '.join(LEVERS)} joined by '+')")
    return {"rows": "trajectory" if "one_sequence" in levers else "per_step",
            "precision": "auto" if "auto" in levers else "fp32",
            "sampler": "group_by_length" if "grouped" in levers else "random",
            "method": "lora" if "lora" in levers else "full",
            "allocator": "tcmalloc" if "tcmalloc" in levers else "glibc",
            "lm_head": "learned" if "learned_head" in levers else "all"}


RSS_STEPS = (10, 50, 100, 200)


def select(model: str, n_train: int, n_eval: int, max_length: int, seed: int, data_root: str) -> tuple[list, list]:
    """Multi-step ComplexFuncBench and glaive trajectories that fit ``max_length`` whole."""
    from slmlib import budget, data, models
    from slmlib import toolbench_format as tbf
    count = budget.make_counter(models.load_tokenizer(model))
    pool = [*data.load("complexfuncbench", data_root, "train")]
    if data.available("glaive", data_root):
        pool += list(data.load("glaive", data_root))
    fits = []
    for task in pool:
        budget.truncate_observations(task, 1024)
        if sum(m["role"] == "assistant" for m in task["messages"]) >= 2 and count(tbf.segments(task, "all")) <= max_length:
            fits.append(task)
    random.Random(seed).shuffle(fits)
    return fits[:n_train], fits[n_train:n_train + n_eval]


def eval_loss(model, tokenizer, tasks) -> float:
    """Mean loss per learned token, every assistant turn of each task's gold trajectory, fp32, teacher-forced."""
    import torch
    from slmlib import encode, evaluate
    from slmlib import toolbench_format as tbf
    total, n = 0.0, 0
    model.eval()
    window = evaluate.context_window(model)  # a test trajectory may run past a small model's positions
    with torch.no_grad():
        for task in tasks:
            enc = encode.encode(tbf.segments({**task, "messages": evaluate.gold_trajectory(task)}, "all"), tokenizer)
            ids, labels = torch.tensor([enc.input_ids[:window]]), torch.tensor([enc.labels[:window]])
            logits = model(input_ids=ids).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=encode.IGNORE, reduction="sum")
            total, n = total + loss.item(), n + int((labels[0, 1:] != encode.IGNORE).sum())
    return total / n


def model_flops(model, lengths: list[int], learned: int, lm_head: str) -> float:
    """Training FLOPs the model's arithmetic needs, forward and backward (PaLM's count): 6 per weight of every linear
    layer per token, the LM head only at the positions it scores, and 12 x layers x width x length per token for
    attention (every key counted, as nanoGPT and PaLM count it). The same count for full and LoRA training."""
    import torch
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    tokens = sum(lengths)
    scored = learned if lm_head == "learned" else tokens - len(lengths)
    layers, width = model.config.num_hidden_layers, model.config.hidden_size
    return 6 * linear * tokens + 6 * head.weight.numel() * scored + 12 * layers * width * sum(n * n for n in lengths)


def matmul_peak(precision: str, size: int = 2048, repeats: int = 5) -> float:
    """This machine's dense-matmul FLOP/s in the training's precision: the best of a few ``size``-cubed products on
    every thread torch uses (a measured ceiling; a CPU's datasheet peak is not known to the process)."""
    import torch
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def time_limit(t0: float, seconds: float | None):
    """A callback that ends a training at its first optimizer step after ``seconds`` from ``t0`` (None: never), for
    comparisons at equal wall time (transformers is imported here: this module stays light to import)."""
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if seconds is not None and time.perf_counter() - t0 >= seconds:
                control.should_training_stop = True
    return TimeLimit()


def next_call(model, tokenizer, tasks: list[dict]) -> dict:
    """Teacher-forced next-step accuracy of the model just trained on the held-out trajectories (``evaluate --mode
    step``: greedy, free decoding, 256 new tokens), overall and by call position."""
    from slmlib import evaluate, rollout
    dec = rollout.Decoding(max_new_tokens=256, max_context=evaluate.context_window(model))
    m = evaluate.step_metrics([s for r in evaluate.step_records(model, tokenizer, tasks, dec, 1) for s in r["steps"]])
    return {"step_call_match_rate": m["step_call_match_rate"],
            **{k: v["step_call_match_rate"] for k, v in m["by_position"].items()}}


def run_one(spec: dict) -> dict:
    """One training run as the child process of :func:`main` (reads and prints JSON)."""
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTTrainer
    from slmlib import config, memory, models, train
    from slmlib.schema import read_jsonl
    v = variant(spec["variant"])
    set_seed(spec["seed"])
    model, tokenizer = models.load(spec["model"])
    tasks = read_jsonl(spec["train_file"])
    rows_in = train.per_step_rows(tasks) if v["rows"] == "per_step" else tasks
    loss_on = "last" if v["rows"] == "per_step" else "all"
    rows, _ = train.encode_rows(rows_in, tokenizer, loss_on, 1 << 30)
    learned = train.learned_tokens(rows)
    lm_head = v["lm_head"]
    flops = model_flops(model, [r["length"] for r in rows], learned, lm_head)
    batch = spec["batch"]
    accumulation = math.ceil(len(rows) / (batch * spec["steps"]))
    lr = spec["lora_lr"] if v["method"] == "lora" and spec.get("lora_lr") else spec["lr"]
    cfg = config.TrainConfig(method=v["method"], max_steps=spec["steps"], learning_rate=lr, warmup_steps=0,
                             per_device_batch_size=batch, gradient_accumulation=accumulation,
                             precision=v["precision"], lora_targets=spec["lora_targets"], save_steps=10**6,
                             logging_steps=1)
    if v["method"] == "lora":
        model = train.apply_lora(model, cfg)
    args = train.sft_config(cfg, Path(spec["out"]), spec["seed"], len(rows), save_strategy="no", disable_tqdm=True)
    args.train_sampling_strategy = v["sampler"]
    steps_log = Path(spec["out"]) / "train_log.jsonl"
    steps_log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[train.ThroughputLog(steps_log, learned / len(rows)), time_limit(t0, spec.get("seconds"))])
    with train.lm_head_positions(lm_head):
        trainer.train()
    wall = time.perf_counter() - t0
    done = trainer.state.global_step * batch * accumulation / len(rows)  # passes over the rows (under a time limit, a share)
    merged = (trainer.model.merge_and_unload() if v["method"] == "lora" else trainer.model).float()
    logged = {e["step"]: e["peak_rss_gb"] for e in map(json.loads, steps_log.read_text().splitlines())}
    eval_tasks = read_jsonl(spec["eval_file"])
    return {"variant": spec["variant"], "rows": len(rows), "tokens": sum(r["length"] for r in rows), "lr": lr,
            "supervised_tokens": learned, "steps": trainer.state.global_step, "wall_s": wall,
            "supervised_tokens_per_s": learned * done / wall, "model_flops": flops, "flops_per_s": flops * done / wall,
            "eval_loss": eval_loss(merged, tokenizer, eval_tasks),
            "next_call": next_call(merged, tokenizer, eval_tasks) if spec.get("next_call") else None,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "rss_gb_at_step": {step: logged[step] for step in RSS_STEPS if step in logged},
            "threads": torch.get_num_threads(), "allocator": memory.allocator(), "lm_head": lm_head}


def child_env(allocator: str) -> dict[str, str]:
    """The environment of a variant's process: tcmalloc preloaded, or none (glibc's malloc)."""
    from slmlib import memory
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if allocator == "tcmalloc":
        library = memory.tcmalloc()
        if library is None:
            raise FileNotFoundError(f"no tcmalloc at {memory.TCMALLOC_GLOB}: apt-get install libtcmalloc-minimal4")
        env["LD_PRELOAD"] = library
    return env


def main(args) -> int:
    from slmlib.config import REPO
    from slmlib.schema import read_jsonl, write_jsonl
    # each variant's environment up front: a missing allocator fails now, not after the others ran
    envs = {name: child_env(variant(name)["allocator"]) for name in args.variants}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.train_file:  # a run's own data, e.g. <run>/data/train.jsonl and a test file (gold calls and replay)
        train_tasks, eval_tasks = read_jsonl(args.train_file)[:args.n_train], read_jsonl(args.eval_file)[:args.n_eval]
    else:
        train_tasks, eval_tasks = select(args.model, args.n_train, args.n_eval, args.max_length, args.seed,
                                         str(REPO / "../shared/data") if args.data_root is None else args.data_root)
    write_jsonl(work / "train.jsonl", train_tasks)
    write_jsonl(work / "eval.jsonl", eval_tasks)
    from slmlib.train import choose_precision
    precision, why = choose_precision("auto")
    peak = matmul_peak(precision)  # before the variants, while this process is the machine's only load
    results = []
    for name in args.variants:
        spec = {"variant": name, "model": args.model, "seed": args.seed, "steps": args.steps, "lr": args.lr,
                "lora_lr": args.lora_lr, "seconds": args.seconds, "next_call": args.next_call,
                "batch": args.batch, "train_file": str(work / "train.jsonl"), "eval_file": str(work / "eval.jsonl"),
                "out": str(work / name), "lora_targets": args.lora_targets}
        proc = subprocess.run([sys.executable, "-m", "slmlib.bench", json.dumps(spec)], capture_output=True, text=True,
                              env=envs[name])
        if proc.returncode != 0:
            raise RuntimeError(f"bench variant {name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    base = results[0]
    budget = f"at most {args.seconds:.0f} s each (equal wall time) of " if args.seconds else ""
    print(f"model {args.model}, {len(train_tasks)} trajectories ({base['supervised_tokens']} supervised tokens), "
          f"{budget}{args.steps} optimizer steps, lr {args.lr} (LoRA {args.lora_lr or args.lr}), held-out loss "
          f"{'and teacher-forced next-call accuracy ' if args.next_call else ''}on {len(eval_tasks)} trajectories; "
          f"CPU {cpu_capability()}, precision auto = {why}")
    print(f"hardware use: model FLOP/s (slmlib.bench.model_flops) over this CPU's measured {precision} matmul peak, "
          f"{peak / 1e9:.1f} GFLOP/s (2048-cubed, {results[-1]['threads']} threads)")
    steps = [s for s in RSS_STEPS if s <= max(r["steps"] for r in results)]
    positions = sorted({k for r in results if r["next_call"] for k in r["next_call"] if k != "step_call_match_rate"})
    print(f"{'variant':48} {'rows':>5} {'tokens':>7} {'steps':>5} {'sup.tok/s':>9} {'wall s':>8} {'eval loss':>9} {'Δloss':>7} "
          f"{'GFLOP/s':>7} {'of peak':>7} {'RSS GB':>6} " + "".join(f"{'peak@' + str(s):>9}" for s in steps)
          + (f" {'next call':>9}" + "".join(f"{'@' + p:>6}" for p in positions) if args.next_call else "") + f" {'speed':>6}")
    for r in results:
        at, nc = r["rss_gb_at_step"], r["next_call"] or {}
        print(f"{r['variant']:48} {r['rows']:5d} {r['tokens']:7d} {r['steps']:5d} {r['supervised_tokens_per_s']:9.1f} "
              f"{r['wall_s']:8.1f} {r['eval_loss']:9.4f} {100 * (r['eval_loss'] / base['eval_loss'] - 1):+6.2f}% "
              f"{r['flops_per_s'] / 1e9:7.1f} {100 * r['flops_per_s'] / peak:6.1f}% {r['peak_rss_gb']:6.2f} "
              + "".join(f"{at[str(s)]:9.2f}" if str(s) in at else f"{'-':>9}" for s in steps)
              + (f" {nc['step_call_match_rate']:9.3f}" + "".join(f"{nc[p]:6.3f}" if p in nc else f"{'-':>6}" for p in positions)
                 if args.next_call else "")
              + f" {r['supervised_tokens_per_s'] / base['supervised_tokens_per_s']:5.2f}x")
    (work / "results.json").write_text(json.dumps({"matmul_peak_flops": peak, "variants": results}, indent=2))
    ours = next((r for name in OURS for r in results if r["variant"] == name), results[-1])
    print(f"speedup: {ours['supervised_tokens_per_s'] / base['supervised_tokens_per_s']:.2f}x ({ours['variant']}, "
          f"supervised tokens per second)")
    return 0


# name -> (batched rows, stop at each step's end, reuse each episode's KV cache, decoding, draft tokens a forward)
EVAL_CONFIGS = {"one_at_a_time": (1, False, False, "free", 0), "batched": (None, True, False, "free", 0),
                "prefix_reuse": (1, True, True, "free", 0), "batched_prefix_reuse": (None, True, True, "free", 0),
                "prefix_reuse_lookup": (1, True, True, "free", 15),
                "grammar": (1, True, True, "grammar", 0), "batched_grammar": (None, True, False, "grammar", 0),
                "batched_prefix_reuse_grammar": (None, True, True, "grammar", 0),
                "grammar_lookup": (1, True, True, "grammar", 15)}


def eval_one(spec: dict) -> dict:
    """One rollout configuration (``EVAL_CONFIGS``) as a child process."""
    from slmlib import envs, models, rollout
    from slmlib.schema import read_jsonl
    model, tok = models.load(spec["model"])
    tasks = read_jsonl(spec["tasks_file"])
    rows, early_stop, reuse, decoding, lookup_tokens = EVAL_CONFIGS[spec["config"]]
    dec = rollout.Decoding(max_steps=spec["max_steps"], max_new_tokens=spec["max_new_tokens"], early_stop=early_stop,
                           reuse_prefix=reuse, decoding=decoding, max_context=8192, lookup_tokens=lookup_tokens)
    t0 = time.perf_counter()
    eps = list(rollout.run(model, tok, tasks, envs.make("replay"), dec, batch_size=rows or spec["batch_size"]))
    wall = time.perf_counter() - t0
    return {"config": spec["config"], "tasks": len(tasks), "wall_s": wall,
            "tasks_per_s": len(tasks) / wall, "seconds_per_task": wall / len(tasks),
            "steps": sum(len(e.steps) for e in eps), "new_tokens": sum(e.new_tokens for e in eps),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "outputs": {e.task["id"]: [s["raw"] for s in e.steps] for e in eps}}


def cpu_capability() -> str:
    import torch
    return torch.backends.cpu.get_cpu_capability()


def all_valid(task: dict, raws: list[str]) -> bool:
    """Whether every step written parses, names a declared tool or Finish, and fits that tool's schema."""
    from slmlib import rollout
    from slmlib import toolbench_format as tbf
    from slmlib.schema import FINISH
    from slmlib.values import schema_errors
    tools = {t["name"]: t for t in task["tools"]}
    for raw in raws:
        step, _ = rollout.parse_generated(raw)
        if not isinstance(step, tbf.Step) or (step.action != FINISH and (
                step.action not in tools or schema_errors(tools[step.action], step.arguments()))):
            return False
    return True


def main_eval(args) -> int:
    from slmlib.data import complexfuncbench
    from slmlib.schema import write_jsonl
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tasks = list(complexfuncbench.tasks("test"))[: args.n_tasks]
    write_jsonl(work / "tasks.jsonl", tasks)
    results = []
    for config in args.configs:
        spec = {"model": args.model, "tasks_file": str(work / "tasks.jsonl"), "max_steps": args.max_steps,
                "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "config": config}
        proc = subprocess.run([sys.executable, "-m", "slmlib.bench", "eval", json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"bench eval failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = results[0]
    valid = [t["id"] for t in tasks if all_valid(t, base["outputs"][t["id"]])]
    print(f"model {args.model}, {len(tasks)} ComplexFuncBench test tasks, replay, greedy, <= {args.max_steps} steps, "
          f"<= {args.max_new_tokens} new tokens a step, batch {args.batch_size}; baseline {base['config']}; "
          f"CPU {cpu_capability()}")
    print(f"{'config':28} {'tasks/s':>8} {'s/task':>8} {'steps':>6} {'new tok':>8} {'ms/tok':>7} {'RSS GB':>7} "
          f"{'identical':>9} {'where valid':>11} {'speedup':>8} {'per token':>9}")
    for r in results:
        same = sum(base["outputs"][k] == r["outputs"].get(k) for k in base["outputs"])
        same_valid = sum(base["outputs"][k] == r["outputs"].get(k) for k in valid)
        per_token = 1000 * r["wall_s"] / max(r["new_tokens"], 1)
        print(f"{r['config']:28} {r['tasks_per_s']:8.4f} {r['seconds_per_task']:8.2f} {r['steps']:6d} {r['new_tokens']:8d} "
              f"{per_token:7.1f} {r['peak_rss_gb']:7.2f} {same:>4d}/{len(base['outputs']):<4d} {same_valid:>5d}/{len(valid):<5d} "
              f"{r['tasks_per_s'] / base['tasks_per_s']:7.2f}x {per_token / (1000 * base['wall_s'] / max(base['new_tokens'], 1)):8.2f}x")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    return 0


def main_workers(args) -> int:
    """``evaluate`` under each of ``--settings`` (worker processes sharing the cores x episodes batched in each), back
    to back on the same tasks; prints ``speedup: R.RRx`` of the last over the first in tasks per hour and whether the
    episodes are the same."""
    import shutil
    from slmlib.data import complexfuncbench
    from slmlib.eval_workers import threads_each
    from slmlib.evaluate import evaluate
    from slmlib.schema import read_jsonl, write_jsonl
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tasks_file = work / "tasks.jsonl"
    write_jsonl(tasks_file, read_jsonl(args.tasks)[:args.n_tasks] if args.tasks else list(complexfuncbench.tasks("test"))[:args.n_tasks])
    rows = []
    for n, batch in args.settings:
        out = work / f"workers-{n}-batch-{batch}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh rollout: a resumed one would time nothing
        t0 = time.perf_counter()
        m = evaluate(args.model, tasks_file, out, batch_size=batch, max_steps=args.max_steps, max_new_tokens=args.max_new_tokens,
                     decoding=args.decoding, workers=n)
        wall = time.perf_counter() - t0
        episodes = {r["id"]: [s["raw"] for s in r["steps"]] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
        rows.append({"workers": n, "batch_size": batch, "threads": threads_each(n), "wall_s": wall, "tasks": m["n_tasks"],
                     "seconds_per_task": m["seconds_per_task"], "peak_rss_gb": m["peak_rss_gb"], "episodes": episodes})
    base = rows[0]
    print(f"model {args.model}, {base['tasks']} tasks ({args.tasks or 'ComplexFuncBench test'}), {args.decoding} decoding, greedy, "
          f"<= {args.max_steps} steps, <= {args.max_new_tokens} new tokens a step; CPU {cpu_capability()}, "
          f"{len(os.sched_getaffinity(0))} cores")
    print(f"{'workers':>7} {'batch':>5} {'threads each':>12} {'wall s':>8} {'tasks/h':>8} {'s/episode':>9} {'RSS GB':>7} "
          f"{'identical':>9} {'speedup':>8}")
    for r in rows:
        same = sum(base["episodes"][k] == r["episodes"].get(k) for k in base["episodes"])
        print(f"{r['workers']:7d} {r['batch_size']:5d} {r['threads']:12d} {r['wall_s']:8.1f} {3600 * r['tasks'] / r['wall_s']:8.1f} "
              f"{r['seconds_per_task']:9.2f} {r['peak_rss_gb']:7.2f} {same:>4d}/{len(base['episodes']):<4d} "
              f"{base['wall_s'] / r['wall_s']:7.2f}x")
    last = rows[-1]
    return write_rows(work, rows, f"{last['workers']} workers x batch {last['batch_size']} over {base['workers']} x "
                      f"{base['batch_size']}, tasks per hour; s/episode is each episode's own time, which sharing the machine lengthens")


def write_rows(work: Path, rows: list[dict], what: str) -> int:
    """Keep a back-to-back comparison's rows and print its last row's speedup over the first in wall time."""
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"speedup: {rows[0]['wall_s'] / rows[-1]['wall_s']:.2f}x ({what})")
    return 0


# name -> (rows per generate call, None for --batch-size; reuse the prefix each prompt shares with the one before;
# processes sharing the cores)
STEP_CONFIGS = {"batched": (None, False, 1, 0), "one_at_a_time": (1, False, 1, 0), "prefix_reuse": (1, True, 1, 0),
                "prefix_reuse_workers": (1, True, 2, 0), "batched_prefix_reuse": (None, True, 1, 0),
                "batched_prefix_reuse_workers": (None, True, 2, 0), "prefix_reuse_lookup": (1, True, 1, 15),
                "prefix_reuse_lookup_workers": (1, True, 2, 15)}


def main_step(args) -> int:
    """Teacher-forced step mode (``evaluate --mode step``), each config back to back on the same steps: batched
    (``--batch-size``, left-padded, every prompt prefilled whole), one prompt at a time, reusing the prefix each prompt
    shares with the one before (a task's next step is its last prompt plus the gold step and observation) one at a
    time or batched from the rows' own caches, and those in two one-thread worker processes taking tasks as they free up."""
    import torch
    from slmlib import rollout
    from slmlib.data import complexfuncbench
    from slmlib.eval_workers import TeacherForced
    from slmlib.evaluate import step_mode
    from slmlib.schema import read_jsonl
    work = Path(args.work)
    tasks = (read_jsonl(args.tasks) if args.tasks else list(complexfuncbench.tasks("test")))[:args.n_tasks]
    rows = []
    for config in args.configs:
        rows_per_call, reuse, workers, lookup_tokens = STEP_CONFIGS[config]
        dec = rollout.Decoding(max_new_tokens=args.max_new_tokens, reuse_prefix=reuse, decoding=args.decoding,
                               lookup_tokens=lookup_tokens)
        spec = TeacherForced(args.model, None, "float32", dec, rows_per_call or args.batch_size)
        t0 = time.perf_counter()
        m = step_mode(spec, tasks, work / config, workers)
        wall = time.perf_counter() - t0
        raws = [json.loads(x)["raw"] for x in (work / config / "step_predictions.jsonl").read_text().splitlines()]
        rows.append({"config": config, "batch_size": m["batch_size"], "workers": m["workers"], "wall_s": wall,
                     "steps": m["n_steps"], "call_match": m["step_call_match_rate"], "peak_rss_gb": m["peak_rss_gb"], "raws": raws})
    base = rows[0]
    print(f"model {args.model}, {len(tasks)} tasks ({args.tasks or 'ComplexFuncBench test'}), {base['steps']} steps, "
          f"{args.decoding} decoding, greedy, <= {args.max_new_tokens} new tokens a step; baseline {base['config']}; "
          f"CPU {cpu_capability()}, {torch.get_num_threads()} threads")
    print(f"{'config':28} {'batch':>5} {'workers':>7} {'wall s':>8} {'s/step':>7} {'call match':>10} {'RSS GB':>7} "
          f"{'identical':>9} {'speedup':>8}")
    for r in rows:
        same = sum(a == b for a, b in zip(base["raws"], r["raws"]))
        print(f"{r['config']:28} {r['batch_size']:5d} {r['workers']:7d} {r['wall_s']:8.1f} {r['wall_s'] / r['steps']:7.2f} "
              f"{r['call_match']:10.1%} {r['peak_rss_gb']:7.2f} {same:>4d}/{r['steps']:<4d} {base['wall_s'] / r['wall_s']:7.2f}x")
    return write_rows(work, rows, f"{rows[-1]['config']} over {base['config']}, steps per second")


if __name__ == "__main__":
    if sys.argv[1] == "eval":
        print(json.dumps(eval_one(json.loads(sys.argv[2]))))
    else:
        print(json.dumps(run_one(json.loads(sys.argv[1]))))
