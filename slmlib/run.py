"""Run directories: ``outputs/<run-id>/`` with ``run_manifest.json`` and ``metrics.json``.

Every file is written atomically (temporary file, then rename). A finished run is never
overwritten unless the caller asks for it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "papermill", "slmlib")


class RunExists(FileExistsError):
    pass


class CannotResume(ValueError):
    pass


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """``path`` written by ``write`` whole or not at all, through a temporary file of this call's own: processes
    writing the same file at once (evaluation workers unpacking an asset) each replace it whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_copy(src: str | Path, dest: str | Path) -> None:
    with open(src, "rb") as f:
        atomic_write(dest, lambda out: shutil.copyfileobj(f, out, 1 << 20))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def new_run_id(profile: str) -> str:
    return f"{profile}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def git_sha(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def git_dirty(cwd: str | Path | None = None) -> bool | None:
    """Whether tracked files differ from the commit (the SHA alone would not say what ran)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512-BF16 or AMX tiles). oneDNN's own
    ``_is_mkldnn_bf16_supported`` is also true on AVX-512 CPUs without either (it emulates bf16 there): on such
    an Intel Xeon a bf16 matmul of the model's shapes ran 3.0x slower than fp32, a linear layer's forward and
    backward under autocast 2.5x."""
    import torch
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def device_info() -> dict[str, Any]:
    import torch
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
            # speeds depend on it: bf16 is native with AVX-512-BF16 / AMX, emulated (many times slower) elsewhere
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16_native": cpu_bf16_native()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class RunDir:
    """One run's folder. ``finished`` runs refuse a second ``start`` unless ``overwrite``."""

    def __init__(self, root: str | Path, run_id: str):
        self.root = Path(root)
        self.run_id = run_id
        self.path = self.root / run_id

    manifest_path = property(lambda self: self.path / "run_manifest.json")
    metrics_path = property(lambda self: self.path / "metrics.json")

    @property
    def finished(self) -> bool:
        return self.manifest_path.is_file() and read_json(self.manifest_path).get("finished_at") is not None

    def start(self, params: dict[str, Any], seed: int, *, overwrite: bool = False,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create the folder and write the manifest; a finished run needs ``overwrite=True``."""
        if self.finished and not overwrite:
            raise RunExists(f"{self.path} holds a finished run; choose another run id or pass overwrite")
        self.path.mkdir(parents=True, exist_ok=True)
        manifest = {"run_id": self.run_id, "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
                    "finished_at": None, "seed": seed, "params": params, "packages": package_versions(),
                    "git_sha": git_sha(Path(__file__).parent),
                    "git_dirty": git_dirty(Path(__file__).parent), "device": device_info(), **(extra or {})}
        atomic_write_json(self.manifest_path, manifest)
        return manifest

    def resume(self, params: dict[str, Any], *, rerun: bool = False, defaults: dict[str, Any] | None = None,
               **note: Any) -> None:
        """Continue an unfinished run (or, with ``rerun``, reopen a finished one) with the same parameters.

        A parameter added since the run started is absent from its manifest; it counts as ``defaults``
        gives it (a new option's default keeps the behaviour from before it existed). Each resume is
        logged in the manifest with ``note``.
        """
        if not self.manifest_path.is_file():
            raise CannotResume(f"{self.path}: no run to resume (no run_manifest.json)")
        manifest = read_json(self.manifest_path)
        if manifest.get("finished_at") is not None and not rerun:
            raise CannotResume(f"{self.path} finished at {manifest['finished_at']}; nothing to resume "
                               "(name a notebook to re-execute from to rerun part of it)")
        changed = param_changes(manifest.get("params", {}), params, defaults or {})
        if changed:
            raise CannotResume(f"{self.path} was started with other parameters ({', '.join(changed)}); "
                               "resume it with the profile it started with")
        resumes = manifest.get("resumes", []) + [{"at": _dt.datetime.now().isoformat(timespec="seconds"),
                                                  "git_sha": git_sha(Path(__file__).parent),
                                                  "git_dirty": git_dirty(Path(__file__).parent), **note}]
        self.update_manifest(resumes=resumes, finished_at=None)

    def update_manifest(self, **fields: Any) -> None:
        manifest = read_json(self.manifest_path)
        manifest.update(fields)
        atomic_write_json(self.manifest_path, manifest)

    def finish(self) -> None:
        self.update_manifest(finished_at=_dt.datetime.now().isoformat(timespec="seconds"))

    def metrics(self) -> dict[str, Any]:
        return read_json(self.metrics_path) if self.metrics_path.is_file() else {}

    def record(self, key: str, value: Any) -> Any:
        """Add or replace one entry of ``metrics.json`` (atomic) and return the value."""
        metrics = self.metrics()
        metrics[key] = value
        atomic_write_json(self.metrics_path, metrics)
        return value


def param_changes(stored: dict[str, Any], params: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """Dotted keys where parameters a manifest stored differ from ``params``; a key only ``defaults`` has
    (an option added since) counts at its default."""
    as_stored = json.loads(json.dumps(params, default=str))  # the manifest holds JSON: tuples came back as lists
    return sorted(_diff(_with_defaults(stored, defaults), as_stored))


def _with_defaults(stored: Any, defaults: Any) -> Any:
    """``stored`` with the keys only ``defaults`` has (at any depth) taken from it."""
    if not (isinstance(stored, dict) and isinstance(defaults, dict)):
        return stored
    return {**defaults, **{k: _with_defaults(v, defaults.get(k)) for k, v in stored.items()}}


def _diff(a: Any, b: Any, prefix: str = "") -> Iterable[str]:
    """Dotted paths where two parameter trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")
