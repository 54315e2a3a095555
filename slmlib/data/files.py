"""Finding a source's file whether the user points at the data root, the source folder or the file."""
from __future__ import annotations

from pathlib import Path


def locate(path: str | Path, relative: Path) -> Path:
    """``path`` itself when it is a file, else ``path/relative`` or ``path/relative-minus-its-first-folder``."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = (path / relative, path / Path(*relative.parts[1:]))
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"{path}: no {relative} there (point --input at the data root or the file)")
    return found
