"""Folders and files written whole or not at all: a model folder is written under a hidden name beside its target and
renamed into place when complete, so a failure (a full disk, an exception, Ctrl-C) never leaves a target that loads
but mixes old and new files. Used by ``selftok-convert``, the trainers' exports and their checkpoints. Single files
(the checkpoints' state and ``latest`` pointer, the training log) the same way: :func:`atomic_write`.

A process killed outright (SIGKILL, power loss) can leave only a hidden ``.tmp-NAME-*`` folder beside the target,
or, in the instant between the two renames of a replacement, the previous folder under ``.replaced-NAME``
(:func:`replaced_path`); the target itself is always a complete old or new copy.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_folder",
    "atomic_write",
    "atomic_write_text",
    "check_export_target",
    "export_folder",
    "install_folder",
    "is_non_empty_folder",
    "replaced_path",
]

# What save_pretrained writes at the top of a folder: a folder holding one of these is a previous export.
SAVED_MODEL_FILES = ("model_index.json", "config.json", "adapter_config.json")


def _file_mode() -> int:
    """The permissions of a new file under the current umask (``mkstemp`` makes its files private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(temporary_path)`` on a temporary file beside ``path`` (same suffix), then rename it onto ``path``.

    If ``write`` fails (a full disk, an interrupt), ``path`` keeps its previous content and the temporary file is
    removed. The new file keeps a previous ``path``'s permissions (a new one gets the umask's) and is flushed to
    disk before the rename, so a power loss leaves the old or the new content, never an empty file."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o7777 if path.exists() else _file_mode())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def replaced_path(target: str | os.PathLike) -> Path:
    """Where :func:`install_folder` keeps the previous ``target`` while the new one is renamed in."""
    target = Path(target)
    return target.with_name(f".replaced-{target.name}")


def is_non_empty_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any(path.iterdir())


def install_folder(staged: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the complete folder ``staged`` onto ``target`` (same file system). An existing ``target`` is moved to
    :func:`replaced_path` first and deleted only once the new one is in place: at every moment one complete copy
    exists under a known name."""
    staged, target = Path(staged), Path(target)
    replaced = replaced_path(target)
    if target.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(target, replaced)
    try:
        os.replace(staged, target)
    except BaseException:
        if replaced.exists() and not target.exists():
            os.replace(replaced, target)
        raise
    shutil.rmtree(replaced, ignore_errors=True)


@contextmanager
def atomic_folder(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty folder to write into, named like ``target`` inside a hidden ``.tmp-NAME-*`` folder beside it;
    on a normal exit it replaces ``target`` (:func:`install_folder`), on an exception it is deleted and ``target``
    is untouched.

    Checked on entry, before any work: ``target`` must not be a file, and a non-empty ``target`` folder is only
    replaced with ``overwrite`` (``FileExistsError`` otherwise). Missing parent folders are created.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a folder")
    if not overwrite and is_non_empty_folder(target):
        raise FileExistsError(f"{target} is not empty; refusing to replace it without overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The folder written into has the target's own name (inside a hidden scratch folder beside it): what reads the
    # folder's name while saving (the model card's usage snippets, a push's default repo id) sees the final one.
    # os.mkdir, not tempfile.mkdtemp (which makes it private): the permissions of any new folder.
    scratch = target.with_name(f".tmp-{target.name}-{secrets.token_hex(4)}")
    os.mkdir(scratch)
    staged = scratch / target.name
    try:
        os.mkdir(staged)
        yield staged
        install_folder(staged, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_export_target(target: str | os.PathLike) -> None:
    """Raise ``FileExistsError`` when ``target`` is a non-empty folder that is not a previous export (it holds none
    of ``SAVED_MODEL_FILES``): an ``--export-dir`` given by mistake is refused rather than replaced."""
    target = Path(target)
    if is_non_empty_folder(target) and not any((target / name).is_file() for name in SAVED_MODEL_FILES):
        raise FileExistsError(
            f"{target} holds files but no saved model ({', '.join(SAVED_MODEL_FILES)}), so it is not a previous "
            "export and is not replaced; export to another folder"
        )


def export_folder(target: str | os.PathLike):
    """:func:`atomic_folder` for a trainer's export: a previous export is replaced once the new one is complete
    (:func:`check_export_target` refuses any other non-empty folder)."""
    check_export_target(target)
    return atomic_folder(target, overwrite=True)
