"""Run paths: every read and write of a run (its workdir, sample and output folders) goes here.

A run path is a local path or a URL such as `gs://bucket/runs/dit7b`. Local paths are made
absolute (so a run records where it lives); URLs pass through untouched to `etils.epath`,
the path layer Orbax uses too. On GCS, epath talks through gcsfs (the `gcs` extra) and
Orbax's arrays through TensorStore.

    run_path(p)                      epath.Path (absolute if local); checks the URL's client
    read_text / write_text           whole files; local writes are atomic (temp + rename),
    read_bytes / write_bytes         an object store's single PUT is atomic already
    read_json / write_json
    local_file(p)                    a local filename for writers that need one (PyAV, PIL),
                                     copied to p when the block ends
    local_copy(p)                    a local filename to read p from (downloaded if remote)
    AppendLog(p)                     an append-only text log (metrics.jsonl); object stores
                                     cannot append, so a remote log is rewritten whole
    MirroredDir(p)                   a temporary local folder whose files are copied to p on
                                     sync() (TensorBoard's writer thread appends to files)

`tests/test_gcs_workdir.py` keeps run-path code from using `open()` / `os.path` directly.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Iterator

from etils import epath

# Remote logs are rewritten whole: at most this often (an object store throttles updates of
# one object to about one per second), and always when closed.
REMOTE_UPLOAD_INTERVAL_S = 30.0
# The client each URL scheme needs, and the extra that installs it.
_CLIENTS = {"gs": ("gcsfs", "gcs")}


def is_url(path) -> bool:
    return "://" in os.fspath(path)


def run_path(path) -> epath.Path:
    """`path` as an epath.Path: local paths absolute, URLs untouched (their client checked)."""
    text = os.fspath(path)
    if not text:
        raise ValueError("empty path; pass a directory such as --workdir=runs/x or gs://bucket/x")
    if not is_url(text):
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    scheme = text.split("://", 1)[0]
    if scheme in _CLIENTS:
        module, extra = _CLIENTS[scheme]
        if importlib.util.find_spec(module) is None and importlib.util.find_spec("tensorflow") is None:
            raise ValueError(f"{text}: {scheme}:// paths need the {module} client; install it with "
                             f"`pip install -e '.[{extra}]'` (or `pip install {module}`)")
    return epath.Path(text)


def display(path) -> str:
    """How a run path is shown and recorded (absolute local path or the URL)."""
    return os.fspath(run_path(path))


def read_text(path) -> str:
    return run_path(path).read_text()


def read_bytes(path) -> bytes:
    return run_path(path).read_bytes()


def write_text(path, text: str) -> epath.Path:
    """Write a whole file, creating its folder; readers never see half a local file."""
    return write_bytes(path, text.encode())


def write_bytes(path, data: bytes) -> epath.Path:
    """Write a whole file, creating its folder; readers never see half a local file."""
    path = run_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_url(path):
        path.write_bytes(data)  # one PUT: an object appears whole or not at all
        return path
    fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())   # what open() would give (mkstemp makes it 0600)
        os.replace(tmp, os.fspath(path))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path) -> Any:
    return json.loads(read_text(path))


def write_json(path, obj, indent: int | None = 2) -> epath.Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


@contextlib.contextmanager
def local_file(path, suffix: str | None = None) -> Iterator[str]:
    """Yields a local filename to write; it becomes `path` when the block ends without error."""
    path = run_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_url(path):
        yield os.fspath(path)
        return
    fd, tmp = tempfile.mkstemp(suffix=suffix if suffix is not None else path.suffix)
    os.close(fd)
    try:
        yield tmp
        path.write_bytes(epath.Path(tmp).read_bytes())
    finally:
        os.remove(tmp)


@contextlib.contextmanager
def local_copy(path) -> Iterator[str]:
    """Yields a local filename holding `path`'s bytes (the file itself when local)."""
    path = run_path(path)
    if not is_url(path):
        yield os.fspath(path)
        return
    fd, tmp = tempfile.mkstemp(suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(path.read_bytes())
        yield tmp
    finally:
        os.remove(tmp)


class AppendLog:
    """Lines appended to a text file. Local: a file opened for append. Remote: the lines are
    kept and the object rewritten on each flush (metrics are small; flushes are per log).
    `keep(line) -> bool`, if given, first drops the existing lines it rejects (a resumed run
    forgets the records of steps after its checkpoint)."""

    def __init__(self, path, keep=None, min_upload_interval_s: float = REMOTE_UPLOAD_INTERVAL_S):
        self._interval, self._uploaded = min_upload_interval_s, -math.inf
        self.path = run_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remote = is_url(self.path)
        text = self.path.read_text() if self.path.exists() else ""
        if keep is not None and text:
            kept = "".join(line for line in text.splitlines(keepends=True) if keep(line))
            if kept != text:
                write_text(self.path, kept)
                text = kept
        if self._remote:
            self._text = text
            self._file = None
        else:
            self._file = open(os.fspath(self.path), "a")

    def write(self, line: str) -> None:
        if self._remote:
            self._text += line
        else:
            self._file.write(line)

    def flush(self, force: bool = False) -> None:
        """Local: flush. Remote: upload the whole log, at most every `min_upload_interval_s`
        unless forced (object stores throttle rewrites of one object)."""
        if not self._remote:
            self._file.flush()
        elif force or time.monotonic() - self._uploaded >= self._interval:
            self.path.write_text(self._text)
            self._uploaded = time.monotonic()

    def close(self) -> None:
        try:
            self.flush(force=True)
        finally:
            if self._file is not None:
                self._file.close()


class MirroredDir:
    """A temporary local folder for writers that append to files in the background
    (TensorBoard's event writer thread); `sync()` copies each file whose size changed to
    `path`. Local or remote alike, so a full or read-only workdir fails in `sync()`, where the
    trainer reports it, not in the writer's thread."""

    def __init__(self, path, min_upload_interval_s: float = REMOTE_UPLOAD_INTERVAL_S):
        self.path = run_path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.local = tempfile.mkdtemp(prefix="seaweed_mirror_")
        self._sizes: dict[str, int] = {}
        self._interval = min_upload_interval_s if is_url(self.path) else 0.0
        self._synced = -math.inf

    def sync(self, force: bool = False) -> None:
        """Copy changed files to `path` (remote: at most every `min_upload_interval_s`
        unless forced)."""
        if not force and time.monotonic() - self._synced < self._interval:
            return
        self._synced = time.monotonic()
        for root, _, files in os.walk(self.local):
            for name in files:
                src = os.path.join(root, name)
                rel = os.path.relpath(src, self.local)
                size = os.path.getsize(src)
                if self._sizes.get(rel) != size:
                    dst = self.path / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(epath.Path(src).read_bytes())
                    self._sizes[rel] = size

    def close(self) -> None:
        try:
            self.sync(force=True)
        finally:
            shutil.rmtree(self.local, ignore_errors=True)
