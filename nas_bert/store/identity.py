"""What made an artefact, and writing an artefact whole.

`fingerprint(...)` is the one hash every stage and every saved artefact is keyed on: the canonical
JSON of all that made it (the space file's content, the teacher, the corpus and its preprocessing,
the stage's settings, the upstream artefact's hash, the latency device). A changed input gives a new
fingerprint, so nothing is ever resumed from an artefact made by other inputs.

`atomic_file` and `atomic_folder` are the one way anything is written: to a temporary name beside
the target (unique to the call, so threads and processes writing the same artefact never share one),
then renamed into place when complete, so a kill at any moment leaves either the old artefact or the
new one, never half of one.

A model folder or a corpus file is known by its content: `cached_sha256` hashes a file once and
remembers the hash by path, size and modification time (in `cache_dir()/file-hashes.json`), so new
weights of the same size are seen while a run does not rehash gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nas_bert.errors import NasBertError


def sha256_hex(data: str | bytes, length: int | None = None) -> str:
    """The one hash: sha256 of bytes (text as UTF-8) in hex, cut to `length` characters when given."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:length]


def fingerprint(*parts: Any, length: int = 16) -> str:
    """Short sha256 of the canonical JSON of `parts` (dicts are key-sorted; anything else via str)."""
    return sha256_hex(json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str), length)


def json_hash(obj: Any, length: int | None = 16, compact: bool = False) -> str:
    """sha256 of `json.dumps(obj, sort_keys=True)`: the form of the keys that the latency table, the
    calibration, the search space, the finalists' protocol and the evaluation protocol were stored under
    before `fingerprint`; kept as it is so that every study already in a database stays current."""
    separators = (",", ":") if compact else None
    return sha256_hex(json.dumps(obj, sort_keys=True, separators=separators), length)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmp_name(path: Path, tag: str = "tmp") -> Path:
    # unique per call: two threads of one process (the service's downloads) once renamed one shared name
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """`with atomic_file(p) as f: f.write(...)`: written to a temporary name, fsynced, renamed onto `p`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """`with atomic_folder(d) as tmp: write into tmp`: on success `tmp` replaces `d` (the old one is moved
    aside first and deleted only once the new one is in place; a failure leaves `d` as it was)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _tmp_name(folder), _tmp_name(folder, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        try:
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
        except BaseException:  # an error or an interrupt between the two renames: the old folder goes back
            if old.exists() and not folder.exists():
                os.replace(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def safe_torch_load(path: str | Path, sha256: str | None = None, what: str = "checkpoint") -> Any:
    """Load a torch file without arbitrary unpickling (`weights_only=True`), after checking its sha256 when
    one is recorded; a corrupt, truncated or foreign file is a one-line error naming it and the fix."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise NasBertError(f"{what} {path} is missing; rerun the command to rebuild it")
    if sha256 is not None and file_sha256(path) != sha256:
        raise NasBertError(f"{what} {path} does not match the sha256 recorded for it (changed or truncated); "
                           f"delete it and rerun: the stage resumes from what is left")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NasBertError(f"{what} {path} is corrupt or not a nas-bert file ({first[:120]}); "
                           f"delete it and rerun: the stage resumes from what is left") from None


# -- what a study's stages are made from ----------------------------------------------------------
def cache_dir() -> Path:
    """nas-bert's cache: $NAS_BERT_CACHE, else ~/.cache/nas-bert (the tiny teacher, the file hashes)."""
    return Path(os.environ.get("NAS_BERT_CACHE", Path.home() / ".cache" / "nas-bert"))


_HASHES_LOCK = threading.Lock()


def cached_sha256(path: str | Path) -> str:
    """A file's sha256, computed once per content: remembered by absolute path, size and mtime (ns)."""
    return cached_sha256s([Path(path)])[0]


def cached_sha256s(paths: list[Path]) -> list[str]:
    """`cached_sha256` of several files, the cache read and written once."""
    store = cache_dir() / "file-hashes.json"
    with _HASHES_LOCK:
        try:
            known = json.loads(store.read_text()) if store.is_file() else {}
        except (OSError, ValueError):  # a damaged cache is only a cache: start it again
            known = {}
        out, changed = [], False
        for path in paths:
            path = path.resolve()
            st = path.stat()
            key, stamp = str(path), [st.st_size, st.st_mtime_ns]
            hit = known.get(key)
            if not (isinstance(hit, list) and hit[:2] == stamp and isinstance(hit[2], str)):
                hit, changed = [*stamp, file_sha256(path)], True
                known[key] = hit
            out.append(hit[2])
        if changed:
            try:  # another process may write it too: the last one wins, a lost entry is only rehashed
                atomic_write_text(store, json.dumps(known))
            except OSError:
                pass
        return out


def folder_identity(path: str | Path) -> str:
    """A model folder's identity: the name and content hash of every file in it (hidden files aside), so
    retrained weights of the same size are a new identity; each file is hashed once (`cached_sha256`)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return fingerprint(sorted(zip((str(p.relative_to(path)) for p in files), cached_sha256s(files), strict=True)))
