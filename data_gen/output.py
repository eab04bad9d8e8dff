"""The files generate and translate write: JSON Lines that survive kill -9, and small files replaced
atomically (the Batch API state, a re-sorted output)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

LINES_PER_WRITE = 1000


class JsonlOutput:
    """An append-only JSON Lines file that survives kill -9: records are written as whole lines, flushed
    and fsync'd; on open, an incomplete last line (a write cut short) is dropped with a warning.

    An exclusive lock (POSIX) stops a second run from appending to the same file concurrently."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = repair_torn_tail(self.path)
        self._open()

    def _open(self) -> None:
        self._file = open(self.path, "a", encoding="utf-8")
        try:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            self._file.close()
            raise OutputError(f"{self.path} is being written by another run; wait for it or pass another --out.") from None

    def lines(self) -> list[tuple[int, dict]]:
        """(line number, object) for every line; raises OutputError naming a bad line."""
        rows = []
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise OutputError(f"{self.path}, line {lineno}: invalid JSON ({e.msg}). This file was not written "
                                      "by this tool alone; fix that line or pass another --out.") from None
                rows.append((lineno, obj))
        return rows

    def append_many(self, records: list[dict]) -> None:
        """Whole lines, LINES_PER_WRITE per write and fsync (an fsync costs milliseconds: one per record
        would cost a 2,000-record batch seconds). A kill mid-write cuts at most the last line."""
        for start in range(0, len(records), LINES_PER_WRITE):
            group = records[start:start + LINES_PER_WRITE]
            self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in group))
            self._file.flush()
            os.fsync(self._file.fileno())

    def rewrite(self, records: list[dict]) -> None:
        """Replace the whole file with `records` at once: a kill leaves the old file or the new one."""
        write_atomic(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._file.close()
        self._open()

    def close(self) -> None:
        self._file.close()


class OutputError(Exception):
    """The output file cannot be resumed or written; the message says what to do."""


def repair_torn_tail(path: Path) -> int:
    """Drop an incomplete last line (no newline, not valid JSON) left by a killed run; returns the
    bytes dropped. A complete record that only lacks its newline gets one."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            complete = isinstance(json.loads(tail.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        if complete:
            f.write(b"\n")
            return 0
        f.truncate(cut)
    logger.warning("%s: dropped an incomplete last line (%d bytes) left by an interrupted run", path, len(tail))
    return len(tail)



def count_records(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file next to `path`, fsync it, and rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the output private
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, or a power cut could bring the old file back.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
