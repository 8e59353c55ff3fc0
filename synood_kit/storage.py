"""Atomic files, JSONL records and output-folder locks: how every stage writes to disk.

Every file the kit writes appears whole or not at all: it is written to a temporary name in the same folder,
flushed to disk and renamed over the target (``os.replace`` is atomic on POSIX). A run killed mid-write leaves
at most a ``*.tmp-*`` file that is never read and is cleaned up by the next run. A full disk or a read-only
folder raises :class:`OutputError` naming the path, and earlier outputs stay intact.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = [
    "OutputError",
    "OutputLock",
    "append_jsonl",
    "claim_output",
    "setting_differences",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_path",
    "read_jsonl",
    "remove_stale_temporaries",
    "sha256_text",
    "value_at",
]


class OutputError(OSError):
    """Raised when an output cannot be written (full disk, read-only folder, lock held by another run)."""


def sha256_text(text: str, n: int = 16) -> str:
    """Return the first ``n`` hex digits of the SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _explain(e: OSError, path: Path) -> OutputError:
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied (is the output folder read-only?)",
        errno.EPERM: "operation not permitted",
        errno.EDQUOT: "the disk quota is exceeded",
    }.get(e.errno, e.strerror or str(e))
    return OutputError(e.errno, f"cannot write {path}: {reason}; earlier outputs were left intact")


def check_output_path(path: str | Path, kind: str = "folder") -> Path:
    """Check, without writing, that an output ``folder`` (or ``file``) exists as one or can be created: nothing of
    another kind is in the way, and the nearest existing folder above it is writable on a file system that has room.

    Raises:
        OutputError: naming the path and the reason (a file in the way, read-only file system, no permission, full
            disk).
    """
    path = Path(path).expanduser()
    if path.exists() and (path.is_dir() != (kind == "folder")):
        raise OutputError(
            errno.EEXIST, f"cannot write {path}: it is a {'file' if kind == 'folder' else 'folder'}, not a {kind}"
        )
    parent = path if path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(errno.ENOTDIR, f"cannot create {path}: {parent} is a file, not a folder")
    try:
        fs = os.statvfs(parent)
    except OSError as e:
        raise _explain(e, path) from e
    if fs.f_flag & os.ST_RDONLY:
        raise _explain(OSError(errno.EROFS, "read-only"), path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _explain(OSError(errno.EACCES, "permission denied"), path)
    if fs.f_blocks and fs.f_bavail == 0:  # pseudo file systems (/proc) have no blocks at all
        raise _explain(OSError(errno.ENOSPC, "no space"), path)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``.

    Use it for writers that want a file name (``safetensors.save_file``, ``PIL.Image.save``). If the block
    raises, the temporary file is removed and ``path`` is untouched.

    Raises:
        OutputError: when the folder cannot be written (full disk, read-only, no permission).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{_writer_token(os.getpid())}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # some writers (safetensors) create 0600 files
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OutputError):
            raise
        raise _explain(e, path) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically and return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON record as one line, flushed and fsynced before returning.

    A crash can at worst leave a truncated last line, which :func:`read_jsonl` reports and skips; the next
    record starts on a new line, so a truncated line never swallows it.

    Raises:
        OutputError: when the file cannot be written.
    """
    path = Path(path)
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab+") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _explain(e, path) from e


def read_jsonl(path: str | Path, strict: bool = False) -> tuple[list[dict], list[str]]:
    """Return ``(records, problems)`` of a JSONL file; malformed lines are skipped and described.

    Args:
        path: the file; a missing file gives no records.
        strict: raise ``ValueError`` at the first malformed line instead of skipping it.

    Returns:
        The records that parse as JSON objects, in file order, and one message per skipped line.
    """
    path = Path(path)
    records: list[dict] = []
    problems: list[str] = []
    if not path.exists():
        return records, problems
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
                message = f"{path}:{number}: malformed JSONL line skipped ({type(e).__name__}: {e})"
                if strict:
                    raise ValueError(message) from e
                problems.append(message)
                continue
            records.append(record)
    return records, problems


def weights_only_refusal(e: Exception) -> str:
    """Return the line of a ``torch.load(weights_only=True)`` refusal that names what was blocked."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")[:300]


def _start_ticks(pid: int) -> str:
    """Return a process's start time in clock ticks since boot (``""`` where ``/proc`` is not available)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _writer_token(pid: int) -> str:
    """Return ``<pid>-<start ticks>``: it names a temporary's writer, and is not reused by a later process."""
    return f"{pid}-{_start_ticks(pid)}"


def _is_live_writer(token: str) -> bool:
    """Return whether ``<pid>-<start ticks>`` names another process that is still running."""
    pid, _, ticks = token.partition("-")
    if not pid.isdigit() or int(pid) == os.getpid() or not _:
        return False
    if ticks:
        return ticks == _start_ticks(int(pid))
    try:  # no /proc: the PID alone
        os.kill(int(pid), 0)
    except OSError:
        return False
    return True


def remove_stale_temporaries(folder: str | Path) -> int:
    """Remove ``.*.tmp-*`` files left in ``folder`` by killed writers; return how many were removed.

    A temporary whose writer is another live process (``tmp-<pid>-<start ticks>`` of a running process) is kept,
    so two runs sharing a folder (e.g. one feature cache) never delete each other's files mid-write.
    """
    count = 0
    for tmp in Path(folder).glob(".*.tmp-*"):
        if _is_live_writer(tmp.name.rsplit(".tmp-", 1)[1]):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            count += 1
    return count


_SHARED: dict[str, int] = {}  # lock files held by a claim in this process -> nested locks let through


class OutputLock:
    """An exclusive, advisory lock on an output folder, so two runs cannot write into it at once.

    The lock is an ``fcntl.flock`` on ``<folder>/.lock`` (or ``<folder>/<name>``): the kernel releases it when the
    process dies, so a killed run never leaves a stale lock behind. A second lock on it is refused, in this process
    too, unless the first was taken with ``share=True`` (:func:`claim_output` does): a run that holds its folder may
    call a stage that locks it again.

    Raises:
        OutputError: on entry, if another holder has the lock (naming its PID and command), or the folder cannot
            be created (read-only or full file system, a file in the way).
    """

    def __init__(self, folder: str | Path, purpose: str = "run", name: str = ".lock", share: bool = False):
        self.folder = Path(folder)
        self.purpose = purpose
        self.path = self.folder / name
        self.share = share
        self._fd: int | None = None
        self._key = ""

    def __enter__(self) -> OutputLock:
        self._key = os.path.realpath(self.path)
        if self._key in _SHARED:
            _SHARED[self._key] += 1
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _explain(e, self.path) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise OutputError(
                errno.EBUSY, f"{self.folder} is in use by {holder}; wait for it or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({self.purpose})".encode(), 0)
        self._fd = fd
        if self.share:
            _SHARED[self._key] = 1
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:  # a nested lock inside a shared one
            _SHARED[self._key] -= 1
            return
        _SHARED.pop(self._key, None)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


RUN_RECORD = "run.json"  # what run an output folder holds: its purpose and settings


def setting_differences(have, want, prefix: str = "") -> list[str]:
    """Return the dotted keys where two JSON-like values differ (``"(the whole record)"`` for non-mappings)."""
    if not (isinstance(have, dict) and isinstance(want, dict)):
        return [prefix or "(the whole record)"] if have != want else []
    out = []
    for key in sorted(set(have) | set(want)):
        name = f"{prefix}.{key}" if prefix else key
        if key not in have or key not in want:
            out.append(name)
        else:
            out += setting_differences(have[key], want[key], name)
    return out


def value_at(tree, dotted: str):
    """Return the value at a dotted key of a JSON-like mapping (``"(absent)"`` where there is none)."""
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return "(absent)"
        tree = tree[key]
    return tree


@contextlib.contextmanager
def claim_output(
    folder: str | Path,
    purpose: str,
    settings: dict,
    overwrite: bool = False,
    outputs: Sequence[str] = (),
    lock_folder: str | Path | None = None,
) -> Iterator[Path]:
    """Hold an output folder for one run: lock it, then check that it holds no other run, before the first write.

    The folder's ``run.json`` records the run's ``purpose`` and ``settings``. A folder without one is taken (and
    the record written); a folder holding the same run is taken again (to resume, or to recompute the same
    outputs); a folder holding another run (another purpose, or settings that differ) is refused, naming the
    difference, unless ``overwrite``: then ``outputs`` (the run's files and folders, relative names) are removed and
    the record replaced. A run that fails before writing anything but the record removes it again, so a corrected
    rerun is not refused.

    Args:
        folder: the output folder (created).
        purpose: what the run is, e.g. ``"evaluation"``.
        settings: everything that fixes the run's outputs, JSON-ready.
        overwrite: replace another run's record and remove its ``outputs``.
        outputs: what ``overwrite`` removes; none: the folder cannot be overwritten (the refusal does not offer it).
        lock_folder: where the lock lives (default ``folder``; sharded runs lock one sub-folder per rank).

    Yields:
        The folder.

    Raises:
        OutputError: if another process holds the folder, or it cannot be created or written.
        ValueError: if it holds another run and ``overwrite`` is off.
    """
    folder = Path(folder)
    want = {"purpose": purpose, "settings": json.loads(json.dumps(settings, default=str))}
    with OutputLock(folder if lock_folder is None else lock_folder, purpose=purpose, share=True):
        path = folder / RUN_RECORD
        have = None
        if path.is_file():
            try:
                have = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError) as e:
                have = {"unreadable": f"{type(e).__name__}: {e}"}
        if have is not None and have != want:
            if not overwrite:
                diff = setting_differences(have, want)
                shown = "; ".join(f"{k}: {value_at(have, k)!r} there, {value_at(want, k)!r} now" for k in diff[:3])
                what = have.get("purpose", "another") if isinstance(have, dict) else "another"
                raise ValueError(
                    f"{folder} holds {f'another {what} run' if what == purpose else f'a run of another kind ({what})'} with other "
                    f"settings (differs in {diff[:8]}{' ...' if len(diff) > 8 else ''}: {shown}); use a new folder"
                    + (
                        ", the same settings to continue, or overwrite it (--overwrite)"
                        if outputs
                        else " or the same settings to continue"
                    )
                )
            if not outputs:
                raise ValueError(f"{folder} holds another run and cannot be overwritten; use a new folder")
            for name in outputs:
                target = folder / name
                try:
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink(missing_ok=True)
                except OSError as e:
                    raise _explain(e, target) from e
        if have != want:
            atomic_write_json(path, want)
        try:
            yield folder
        except BaseException:
            if have is None and _holds_only_bookkeeping(folder):
                path.unlink(missing_ok=True)  # a run that failed before its first output leaves the folder free
            raise


def _holds_only_bookkeeping(folder: Path) -> bool:
    """Return whether ``folder`` holds nothing but its run record, lock files and temporaries."""
    for entry in folder.rglob("*"):
        if entry.is_dir() or entry.name in (RUN_RECORD, ".lock") or ".tmp-" in entry.name:
            continue
        return False
    return True
