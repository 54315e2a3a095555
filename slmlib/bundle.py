"""``python -m slmlib bundle --out DIR``: what a GPU machine without internet needs to run a profile.

A GPU node of a cluster often has a CUDA build of torch installed and no internet. The bundle carries
everything else, for a target Python and platform given as options (a cluster's Python need not be ours):

* ``wheels/``: our dependencies at the exact versions this checkout runs with (the distributions of its
  environment, without torch and torch's CUDA stack, which the machine has), plus ``pip`` and
  ``setuptools`` to install them;
* ``cache/wheels/``: the PyPI carriers of the embedded models and of ComplexFuncBench (``slmlib.assets``);
* ``shared/data/``: the profile's data sources (``data.root``).

They go into one tar cut into parts of at most ``--part-mb`` MB (``bundle.tar.000``, ...), with
``SHA256SUMS`` and ``INSTALL.md`` (the commands, also in the README).
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from slmlib import assets, config

MACHINE_OWN = ("torch", "triton")  # and every nvidia-* package: the GPU machine's own CUDA build brings them
SELF = "slmlib"

INSTALL = """# Installing and running from this bundle (no internet)

On the GPU machine, in a checkout of the repository at commit `{commit}`, with this folder at `BUNDLE`:

```bash
(cd BUNDLE && sha256sum -c SHA256SUMS && cat bundle.tar.* | tar -x)
mkdir -p ../shared && cp -r BUNDLE/shared/data ../shared/   # the profile's data.root, ../shared/data
python{python} -m venv --system-site-packages .venv      # sees the machine's CUDA torch
.venv/bin/pip install --no-index --no-deps BUNDLE/wheels/*.whl
.venv/bin/pip install --no-index --no-deps --no-build-isolation --ignore-requires-python -e .
.venv/bin/python -m ipykernel install --sys-prefix --name python3 > /dev/null   # the notebooks' kernel, as make sets it up
touch .venv/.installed                                 # make's stamp: the environment is set up
SLMLIB_CACHE=BUNDLE/cache HF_HUB_OFFLINE=1 make run PROFILE={profile}
```

Made for Python {version} on {platform}; {n_wheels} wheels, the carriers {carriers}.
Check first that the machine's torch imports with CUDA: `python{python} -c "import torch; print(torch.cuda.is_available())"`.
"""


class NoWheels(ValueError):
    """A pinned package has no wheel for the target Python and platform (or PyPI cannot be reached)."""


def pins() -> list[str]:
    """``name==version`` of every distribution this environment runs with, but torch's stack and ourselves."""
    from importlib.metadata import distributions
    names = {}
    for d in distributions():
        name = d.metadata["Name"]
        low = name.lower()
        if low in MACHINE_OWN or low.startswith("nvidia-") or low == SELF:
            continue
        names[low] = f"{name}=={d.version}"
    return sorted(names.values())


def download(requirements: list[str], dest: Path, python_version: str, platforms: list[str]) -> None:
    """Wheels of exactly these versions for the target; a package without one for it is named in the error."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(dest),
           "--python-version", python_version, *[a for p in platforms for a in ("--platform", p)],
           "--implementation", "cp", *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        missing = [line for line in proc.stderr.splitlines() if line.startswith("ERROR: No matching distribution")]
        reason = missing[-1].removeprefix("ERROR: ") if missing else proc.stderr.strip().splitlines()[-1]
        if "require a different python version" in proc.stderr and python_version.count(".") == 1:
            # pip reads 3.11 as 3.11.0, below a Requires-Python such as soupsieve 4.1.3's >=3.11.5
            reason += f" (its wheels need a later {python_version}.x: give the machine's full version, e.g. {python_version}.7)"
        raise NoWheels(f"no wheels for Python {python_version} on {platforms[-1]}..{platforms[0]}: {reason}")


def pack(folder: Path, out: Path, part_bytes: int) -> list[Path]:
    """``folder`` as one tar, cut into parts of at most ``part_bytes``; writes ``SHA256SUMS``."""
    parts: list[Path] = []

    class Parts(io.RawIOBase):
        def __init__(self):
            self.file, self.left = None, 0

        def writable(self):
            return True

        def write(self, data) -> int:
            view, done = memoryview(data), 0
            while done < len(view):
                if self.left == 0:
                    if self.file:
                        self.file.close()
                    parts.append(out / f"bundle.tar.{len(parts):03d}")
                    self.file, self.left = open(parts[-1], "wb"), part_bytes
                n = min(self.left, len(view) - done)
                self.file.write(view[done:done + n])
                done, self.left = done + n, self.left - n
            return done

        def close(self):
            if self.file:
                self.file.close()
            super().close()

    sink = Parts()
    with tarfile.open(fileobj=sink, mode="w|") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(folder)))
    sink.close()
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in parts)
    (out / "SHA256SUMS").write_text(sums)
    return parts


# x86_64 Linux with glibc 2.35 (Ubuntu 22.04) or older; llguidance 1.9.1 needs 2.31 (not RHEL 8's 2.28)
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(35, 16, -1)] + ["manylinux2014_x86_64"]


def bundle(out: str | Path, params: str | Path, python_version: str, platforms: list[str] = PLATFORMS,
           part_mb: int = 50) -> dict:
    """Write the bundle into ``out`` (a new folder); returns what it holds."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: give a new folder")
    profile = config.load(params)
    staging = out / ".staging"
    requirements, carriers = pins(), []
    try:
        download(requirements, staging / "wheels", python_version, platforms)
        for carrier in assets.CARRIERS.values():
            dest = staging / "cache" / "wheels"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(assets.wheel_path(carrier), dest)
            carriers.append(f"{carrier.package}=={carrier.version}")
        root = Path(profile.data.root)
        for source in [*profile.data.required, *profile.data.optional]:
            if (root / source).is_dir():
                shutil.copytree(root / source, staging / "shared" / "data" / source)
        parts = pack(staging, out, part_mb * 1_000_000)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    from slmlib.run import git_sha
    summary = {"parts": [p.name for p in parts], "bytes": sum(p.stat().st_size for p in parts),
               "wheels": len(requirements), "carriers": carriers, "python": python_version, "platforms": platforms,
               "profile": Path(params).stem, "commit": git_sha(config.REPO)}
    interpreter = ".".join(python_version.split(".")[:2])  # python3.11, whichever 3.11.x the wheels were chosen for
    (out / "INSTALL.md").write_text(INSTALL.format(commit=summary["commit"], python=interpreter, version=python_version,
                                                    platform=f"{platforms[-1]} to {platforms[0]}" if len(platforms) > 1 else platforms[0],
                                                    profile=summary["profile"], n_wheels=len(requirements),
                                                    carriers=", ".join(carriers)))
    (out / "bundle.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
