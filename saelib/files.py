"""Every file saelib writes goes through `atomic_write`: readers (and the next run, after a crash) see
either the previous file or the complete new one, never half a file.

    atomic_write(path, lambda tmp: save_file(tensors, tmp))    # any writer that takes a file name
    atomic_write_bytes(path, blob)
    atomic_write_text(path, text)
    atomic_write_json(path, obj, indent=1)

The steps: write a temporary file in the same folder (same file system, so the rename is atomic; its
name keeps the target's suffix, for writers that pick a format from it), flush and fsync it,
`os.replace` it onto the target, then fsync the folder so the rename itself survives a power cut.
A process killed at any moment (SIGKILL included) leaves at most a stray `.<name>.tmp-*` file beside
the target, which no reader looks at. Readers of caches still validate what they load
(a file can be damaged by other means), and treat a bad entry as missing.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir",
           "read_json"]

TEMP_MARK = ".tmp-"


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a folder, so that renames and deletions in it are durable (a no-op where folders cannot be
    opened, e.g. Windows, where the rename is still atomic)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:          # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then fsync it, rename it onto `path`
    and fsync the folder. The folder is created if needed. Returns `path`.

    On any error (or KeyboardInterrupt) the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:          # like tempfile.mkstemp, but with the usual permissions (0o666 less the umask)
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None, trailing_newline: bool = False,
                      **json_kwargs: Any) -> Path:
    """Serialise `obj` first (so an unserialisable object never touches the disk), then write it atomically."""
    text = json.dumps(obj, indent=indent, **json_kwargs)
    return atomic_write_text(path, text + ("\n" if trailing_newline else ""))


def read_json(path: str | os.PathLike) -> Any:
    """json.loads of a file; a missing, unreadable, truncated or otherwise invalid file raises ValueError
    naming it (so callers that treat a bad cache entry as missing catch one exception type)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError as e:
        raise ValueError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON (truncated or corrupt?): {e}") from e
