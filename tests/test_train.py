import datetime
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from slmlib import config, curve, deadline, models, schema, train
from slmlib.data import apibank
from slmlib.run import RunExists, read_json

from conftest import REPO

ENV = {**os.environ, "SLMLIB_DISABLE_TQDM": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def small(tmp_path_factory, data_root):
    """12 short real trajectories and a 6-step tiny-opt profile that checkpoints every 2 steps."""
    folder = tmp_path_factory.mktemp("small")
    tasks = sorted(list(apibank.tasks(data_root))[:200], key=lambda t: len(json.dumps(t)))[:12]
    schema.write_jsonl(folder / "train.jsonl", tasks)
    (folder / "p.yaml").write_text(
        "model: {name: tiny-opt}\ndata: {max_length: 1024}\n"
        "train: {max_steps: 6, warmup_steps: 0, learning_rate: 1.0e-3, per_device_batch_size: 2, precision: fp32, "
        "gradient_accumulation: 1, save_steps: 2, logging_steps: 1}\n")
    return folder


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "slmlib", *args], capture_output=True, text=True, env=ENV, **kw)


def train_cmd(small, out):
    return ["train", "--params", str(small / "p.yaml"), "--out", str(out), "--train-file", str(small / "train.jsonl")]


@pytest.fixture(scope="module")
def uninterrupted(small, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = cli(*train_cmd(small, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "train_summary.json").read_text())


def test_smoke_profile_trains_from_the_cli(tmp_path):
    proc = cli("train", "--params", str(REPO / "params" / "smoke.yaml"), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["supervised_tokens"] > 0 and summary["final_loss"] > 0
    assert 0.1 < summary["peak_rss_gb"] < 16  # the training process's own peak, kept with the model it made
    model_dir = tmp_path / "model"
    rendering = json.loads((model_dir / "rendering.json").read_text())
    assert rendering["format"] == "toolbench-react" and rendering["loss_on"] == "all"
    card = (model_dir / "README.md").read_text()
    assert "tiny-opt" in card and "final training loss" in card
    # smoke leaves the precision to auto: bf16 where this CPU has it natively, fp32 where it would be emulated
    native = train.cpu_bf16_native()
    assert summary["precision"] == ("bf16" if native else "fp32")
    assert torch.backends.cpu.get_cpu_capability() in summary["precision_reason"] and summary["precision_reason"] in card
    model, tok = models.load(str(model_dir))
    assert model.config.model_type == "opt" and tok.pad_token == "<pad>"
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4] and all(e["supervised_tokens_per_s"] > 0 for e in log)
    peaks = [e["peak_rss_gb"] for e in log]  # the memory of every logged step: now, and the peak so far
    assert peaks == sorted(peaks) and all(0.1 < e["rss_gb"] <= e["peak_rss_gb"] <= summary["peak_rss_gb"] for e in log)


def test_auto_precision_takes_bf16_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # oneDNN says it supports bf16 on an AVX-512 CPU that only emulates it: the CPU's own flags decide
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    for avx512_bf16, amx, chosen, words in ((True, False, "bf16", "with native bf16"), (False, True, "bf16", "with native bf16"),
                                            (False, False, "fp32", "without native (emulated) bf16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        precision, why = train.choose_precision("auto")
        assert precision == chosen and why == f"{chosen} by auto: CPU {torch.backends.cpu.get_cpu_capability()} {words}"
    assert train.choose_precision("bf16") == ("bf16", f"bf16 as the profile sets; CPU {torch.backends.cpu.get_cpu_capability()} "
                                               "without native (emulated) bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Old GPU")
    for native, chosen in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: native)
        assert train.choose_precision("auto")[0] == chosen
    assert config.TrainConfig().precision == "auto"


def test_kill_and_resume_reaches_the_same_loss(small, uninterrupted, tmp_path):
    _, full = uninterrupted
    proc = subprocess.Popen([sys.executable, "-m", "slmlib", *train_cmd(small, tmp_path)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 240
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert state.is_file() and proc.poll() is None, "the run ended before its first checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "train_summary.json").exists()
    # the kill may land after a later checkpoint too (steps take milliseconds here), or inside one's writing: the
    # resume takes the newest one whose trainer state (written last) is whole, never a half-written one
    done = max(int(c.parent.name.split("-")[1]) for c in (tmp_path / "checkpoints").glob("checkpoint-*/trainer_state.json")
               if c.read_text().rstrip().endswith("}"))
    half = tmp_path / "checkpoints" / f"checkpoint-{done + 1}"
    half.mkdir(exist_ok=True)
    (half / "model.safetensors").write_bytes(b"cut short")
    again = cli(*train_cmd(small, tmp_path))
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((tmp_path / "train_summary.json").read_text())
    assert resumed["resumed_from"].endswith(f"checkpoint-{done}") and resumed["steps"] == full["steps"] == 6
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-5)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6]  # the killed run's steps after the checkpoint are not logged twice
    seconds = [e["elapsed_s"] for e in log]  # counted across the resume: the resumed steps go on from the checkpoint's
    assert seconds == sorted(seconds) and resumed["train_seconds_before_resume"] == seconds[done - 1] > 0
    assert resumed["train_seconds"] > seconds[-1] > seconds[done - 1] and "s of it before the last resume" in (
        tmp_path / "model" / "README.md").read_text()
    assert train.logged_seconds([{"elapsed_s": s} for s in (5, 9, 2, 4, 11)]) == 20  # an older log, reset at its resume


def test_a_time_to_stop_by_is_read_as_a_user_writes_it():
    at = datetime.datetime(2026, 12, 2, 11, 0).timestamp()
    assert deadline.parse("90m", at) == deadline.parse("1h30m", at) == deadline.parse("1.5h", at) == at + 5400
    assert deadline.parse("12:30", at) == datetime.datetime(2026, 12, 2, 12, 30).timestamp()
    assert deadline.parse("10:30", at) == datetime.datetime(2026, 12, 3, 10, 30).timestamp()  # its next occurrence
    assert deadline.parse("2026-12-02T12:30", at) == datetime.datetime(2026, 12, 2, 12, 30).timestamp()
    for bad in ("soon", "90", "25:00", "1h 30m"):
        with pytest.raises(ValueError, match="give a duration from now"):
            deadline.parse(bad, at)


def test_training_stops_by_its_time_with_a_checkpoint_and_resumes(small, uninterrupted, tmp_path, monkeypatch):
    _, full = uninterrupted
    clock = iter(range(100, 10**6, 100))  # every look at the clock 100 s later: each step seems to take 100 s
    monkeypatch.setattr(deadline, "now", lambda: next(clock))
    profile = config.load(small / "p.yaml")
    # checked at 100, training begins at 200, steps end at 300, 400, 500: after step 3 a fourth (150 s) would end late
    with pytest.raises(deadline.Stopped, match=r"stopped at step 3 of 6 to end by .*checkpoint-3 saved"):
        train.train(profile, small / "train.jsonl", tmp_path, stop_by=600)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert not (tmp_path / "train_summary.json").exists() and not (tmp_path / "model").exists()
    with pytest.raises(deadline.Stopped, match="not trained, the time to stop by .* has passed"):
        train.train(profile, small / "train.jsonl", tmp_path, stop_by=50)
    monkeypatch.undo()
    resumed = train.train(profile, small / "train.jsonl", tmp_path)
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["steps"] == full["steps"] == 6
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-4)
    # from the command line: one line, status 75 (not an error: the same command goes on)
    proc = cli(*train_cmd(small, tmp_path / "cli"), "--stop-by", "2000-01-01T00:00")
    assert proc.returncode == 75 and proc.stderr.strip().splitlines()[-1] == (
        f"stopped: {tmp_path / 'cli'}: not trained, the time to stop by (2000-01-01T00:00) has passed")
    proc = cli(*train_cmd(small, tmp_path / "cli"), "--stop-by", "soon")
    assert proc.returncode == 2 and "--stop-by: stop by 'soon': give a duration from now" in proc.stderr


def test_two_processes_under_accelerate_launch(small, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "params" / "accelerate" / "ddp.yaml"), "--num_processes", "2",
           "-m", "slmlib", *train_cmd(small, tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6


def test_lora_saves_an_adapter_and_checks_targets(small, tmp_path):
    profile = config.load(small / "p.yaml")
    lora = config.build(config.Profile, {**profile.to_dict(), "train": {**profile.to_dict()["train"], "method": "lora", "max_steps": 2}}, "test")
    summary = train.train(lora, small / "train.jsonl", tmp_path)
    assert (tmp_path / "model" / "adapter_config.json").is_file() and summary["steps"] == 2
    bad = config.build(config.Profile, {**lora.to_dict(), "train": {**lora.to_dict()["train"], "lora_targets": ["o_proj"]}}, "test")
    with pytest.raises(ValueError, match="o_proj.*not modules of opt"):
        train.train(bad, small / "train.jsonl", tmp_path / "bad")


def test_bad_input_fails_early_and_clearly(small, uninterrupted, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("train: {learning_rte: 0.1}\n")
    t0 = time.time()
    proc = cli("train", "--params", str(typo), "--out", str(tmp_path / "x"))
    assert proc.returncode != 0 and "learning_rte" in proc.stderr and "typo.yaml" in proc.stderr
    assert time.time() - t0 < 30 and not (tmp_path / "x").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(train.EmptyDataset):
        train.train(config.load(small / "p.yaml"), empty, tmp_path / "e")
    with pytest.raises(RunExists):
        train.train(config.load(small / "p.yaml"), small / "train.jsonl", uninterrupted[0])
    reused = train.train(config.load(small / "p.yaml"), small / "train.jsonl", uninterrupted[0], reuse=True)
    assert reused == read_json(uninterrupted[0] / "train_summary.json")


def test_a_bench_variant_runs_with_the_allocator_it_names(monkeypatch):
    from slmlib import bench, memory
    probe = [sys.executable, "-c", "from slmlib import memory; import pathlib; "
             "print(memory.allocator(), 'tcmalloc' in pathlib.Path('/proc/self/maps').read_text())"]
    assert subprocess.run(probe, env=bench.child_env("glibc"), capture_output=True, text=True).stdout.split() == ["glibc", "False"]
    if memory.tcmalloc():  # Debian's libtcmalloc-minimal4 (.ci/run installs it)
        out = subprocess.run(probe, env=bench.child_env("tcmalloc"), capture_output=True, text=True).stdout.split()
        assert out == ["tcmalloc", "True"]  # preloaded, so mapped into the process
    monkeypatch.setattr(memory, "TCMALLOC_GLOB", "/nonexistent/libtcmalloc_minimal.so.4")
    with pytest.raises(FileNotFoundError, match="apt-get install libtcmalloc-minimal4"):
        bench.child_env("tcmalloc")


def test_the_head_scores_only_learned_positions_with_the_same_loss_and_gradient(monkeypatch):
    from trl.trainer import utils as trl_utils
    model, _ = models.load("tiny-opt", dtype="float32")
    trl_utils.add_fused_lm_head(model)
    ids = torch.randint(3, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :25], labels[1, :10], labels[1, 30:] = -100, -100, -100  # 15 + 20 learned, as a prompt and a tool reply
    scored, apply = [], trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", lambda hidden, *a: scored.append(len(hidden)) or apply(hidden, *a))

    def loss_and_grad(which):
        model.zero_grad()
        with train.lm_head_positions(which):
            loss = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    (all_loss, all_grad), (learned_loss, learned_grad) = loss_and_grad("all"), loss_and_grad("learned")
    assert scored == [2 * 39, 15 + 20]  # every position with a next token, then only those whose next token is learned
    assert learned_loss == pytest.approx(all_loss, rel=1e-6)
    assert torch.allclose(learned_grad, all_grad, rtol=1e-4, atol=1e-7)
    assert trl_utils._use_triton(torch.device("cpu")) is False  # the switch is put back


def test_snapshot_and_episode_points_are_spread_evenly():
    assert curve.snapshot_steps(28, 3) == [7, 14, 21] and curve.snapshot_steps(4, 1) == [2]
    assert curve.snapshot_steps(3, 8) == [1, 2]  # never the final step, which the final model stands for
    assert curve.episode_points(4, 2) == [0, 3] and curve.episode_points(5, 3) == [0, 2, 4]
    assert curve.episode_points(4, 1) == [3] and curve.episode_points(1, 2) == [0] and curve.episode_points(4, 0) == []


def test_snapshots_give_a_learning_curve_that_resumes(small, tmp_path):
    from slmlib.data import complexfuncbench
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    schema.write_jsonl(run / "data" / "test_complexfuncbench.jsonl", list(complexfuncbench.tasks("test"))[:2])
    text = (small / "p.yaml").read_text().replace("logging_steps: 1}", "logging_steps: 1, snapshots: 2}")
    (tmp_path / "p.yaml").write_text(text + "eval: {max_steps: 2, max_new_tokens: 16, batch_size: 2, baselines: [], curve_limit: 1}\n")
    profile = config.load(tmp_path / "p.yaml")
    summary = train.train(profile, small / "train.jsonl", run / "train")
    assert summary["rows_per_step"] == 2 and sorted(p.name for p in (run / "train" / "snapshots").iterdir()) == [
        "index.json", "step-2", "step-4"]
    learned = curve.evaluate_curve(profile, run)
    points = learned["points"]
    assert [p["step"] for p in points] == [2, 4, 6]
    seen = [p["supervised_tokens_seen"] for p in points]
    assert seen == sorted(seen) and seen[-1] == round(6 * 2 * summary["supervised_tokens"] / summary["n_rows"])
    assert ["pass_rate" in p for p in points] == [True, False, True]  # curve_episodes 2: the first and the final model
    assert read_json(run / "eval" / "curve" / "step-6" / "episode" / "metrics.json")["n_tasks"] == 1  # curve_limit
    assert read_json(run / "eval" / "curve" / "step-2" / "step" / "metrics.json")["n_tasks"] == 1
    assert all(0 <= p["step_call_match_rate"] <= 1 and "call_match_at_1" in p for p in points)
    assert learned["paper_supervised_tokens"] > curve.PAPER_ROWS  # many learned tokens per ToolLLaMA row
    assert read_json(run / "eval" / "curve" / "curve.json") == learned
    kept = (run / "eval" / "curve" / "step-2" / "step" / "metrics.json").stat().st_mtime_ns
    assert curve.evaluate_curve(profile, run) == learned  # a rerun reads what each point has
    assert (run / "eval" / "curve" / "step-2" / "step" / "metrics.json").stat().st_mtime_ns == kept


def test_bench_variants_are_levers_joined_by_plus():
    from slmlib import bench
    assert bench.variant("baseline") == {"rows": "per_step", "precision": "fp32", "sampler": "random", "method": "full",
                                         "allocator": "glibc", "lm_head": "all"}
    assert bench.variant("one_sequence+grouped+auto+tcmalloc+learned_head") == {
        "rows": "trajectory", "precision": "auto", "sampler": "group_by_length", "method": "full", "allocator": "tcmalloc",
        "lm_head": "learned"}
    assert all(name in bench.VARIANTS for name in bench.OURS)
    proc = cli("bench", "train", "--variants", "baseline", "one_sequence+fast")
    assert proc.returncode == 2 and "unknown lever 'fast'" in proc.stderr and "Traceback" not in proc.stderr
