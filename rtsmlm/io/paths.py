"""The one check every file writer makes before it creates a file, and the file hash that keys caches."""

from __future__ import annotations

from pathlib import Path

from rtsmlm.core.errors import RtsmlmError


class OutputExistsError(RtsmlmError, FileExistsError):
    """An output file is already there and overwriting was not asked for."""


class OutputFolderMissingError(RtsmlmError, FileNotFoundError):
    """The folder an output file should go to does not exist."""


def check_new_file(path: Path, overwrite: bool) -> None:
    """Refuse to replace ``path`` unless ``overwrite``; refuse a missing parent folder."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: file exists; pass overwrite=True (output.overwrite, --overwrite) "
                                "to replace it")
    if not path.parent.is_dir():
        raise OutputFolderMissingError(f"cannot write {path}: folder {path.parent} does not exist")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB blocks (model and ONNX hashes that key caches)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
