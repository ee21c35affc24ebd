"""On-disk embedding cache keyed by (image content hash, backbone name).

Layout: one directory per backbone holding two append-only files,

- ``vectors.f32``: row ``i`` is the ``dim`` float32 values of the ``i``-th vector stored;
- ``index.sha``: row ``i`` is the 32 raw bytes of the sha256 of that vector's image;

plus ``meta.json`` with ``dim``. Readers read ``vectors.f32`` straight into the result, one read
per run of consecutive rows, so the vectors of 100,000 tasks stored together load in a few reads,
not 100,000 file opens (nor one page fault per 4 KiB of a memory map). Writers append under an
exclusive ``flock`` (so the scheduler, workers and the API can share one cache), vectors first and
their index rows after: a row listed in ``index.sha`` always has its vector on disk. A torn tail
(a crash in the middle of an append) is cut off by the next writer; rows are never rewritten, so
what a reader has listed stays valid while others append. The cache can always be deleted and
rebuilt.

Entries of the old layout (``<backbone>/<sha[:2]>/<sha>.npy``, one file per vector) are read on
a miss and copied into the arrays, so an existing cache is not computed again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
SHA_BYTES = 32


def content_hash(data: bytes) -> str:
    """sha256 hex digest of the image bytes: the cache key half that names the image."""
    return hashlib.sha256(data).hexdigest()


def safe_name(name: str) -> str:
    """``name`` usable as one path component (the backbone's directory)."""
    return _UNSAFE.sub("_", name)


class _Shelf:
    """The arrays of one backbone: an in-memory sha -> row index over an append-only matrix file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index_path = root / "index.sha"
        self.vectors_path = root / "vectors.f32"
        self.meta_path = root / "meta.json"
        self.rows: dict[bytes, int] = {}
        self.dim: int | None = None
        self._n = 0  # rows read from index.sha so far
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def _read_dim(self) -> int | None:
        if self.dim is None:
            try:
                self.dim = int(json.loads(self.meta_path.read_text())["dim"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                return None
        return self.dim

    def refresh(self) -> None:
        """Learn the rows appended since the last look (by any process)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        dim = self._read_dim()
        if dim is None:
            return
        try:
            n_index = self.index_path.stat().st_size // SHA_BYTES
            n_vectors = self.vectors_path.stat().st_size // (4 * dim)
        except FileNotFoundError:
            return
        n = min(n_index, n_vectors)
        if n <= self._n:
            return
        with self.index_path.open("rb") as handle:
            handle.seek(self._n * SHA_BYTES)
            raw = handle.read((n - self._n) * SHA_BYTES)
        for offset in range(0, len(raw), SHA_BYTES):
            self.rows.setdefault(raw[offset : offset + SHA_BYTES], self._n + offset // SHA_BYTES)
        self._n = n

    def rows_of(self, keys: Iterable[bytes]) -> dict[bytes, int]:
        with self._lock:
            wanted = list(keys)
            if any(key not in self.rows for key in wanted):
                self._refresh()
            return {key: self.rows[key] for key in wanted if key in self.rows}

    def take(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """(len(rows), dim) float32 vectors of the given rows (rows of :meth:`rows_of`).

        Rows that are one run of consecutive stored rows (a warm cycle's, in task order, mostly
        are) come as a copy-on-write map of the file: no fresh memory to fault in (reading
        100,000 x 1,280 into a new array took 0.14-0.9 s, most of it the kernel handing out
        pages). Stored rows are never rewritten, and a torn tail cut off is past them.
        Others are copied, one read per run."""
        with self._lock:
            dim, stored = self.dim, self._n
        if dim is None or (len(rows) and int(rows.max()) >= stored):
            raise LookupError("rows not in the embedding cache; take rows of rows_of()")
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        if len(rows) and not len(breaks):
            mapped = np.memmap(
                self.vectors_path,
                dtype=np.float32,
                mode="c",
                offset=int(rows[0]) * 4 * dim,
                shape=(len(rows), dim),
            )
            view: NDArray[np.float32] = np.asarray(mapped)  # a plain array over the map
            return view
        out = np.empty((len(rows), dim), dtype=np.float32)
        # Runs where consecutive outputs are consecutive rows: each is one read into ``out``.
        starts, ends = np.r_[0, breaks], np.r_[breaks, len(rows)]
        with self.vectors_path.open("rb", buffering=0) as handle:
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                _read_exactly(handle, out[start:end].data.cast("B"), int(rows[start]) * 4 * dim)
        return out

    # ------------------------------------------------------------------ writing

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, items: Mapping[bytes, NDArray[np.floating[Any]]]) -> None:
        """Store the vectors whose keys are not stored yet (one locked append for all)."""
        if not items:
            return
        dims = {int(np.asarray(v).shape[-1]) for v in items.values()}
        if len(dims) != 1:
            raise ValueError(f"vectors of one backbone must have one length, got {sorted(dims)}")
        dim = dims.pop()
        with self._lock, self._exclusive():
            known = self._read_dim()
            if known is None:
                self.meta_path.write_text(json.dumps({"dim": dim}))
                self.dim = known = dim
            if known != dim:
                raise ValueError(f"cache holds {known}-long vectors, got {dim}")
            n = self._repair(dim)
            self._refresh()
            new = [(k, v) for k, v in items.items() if k not in self.rows]
            if not new:
                return
            block = np.stack([np.asarray(v, dtype=np.float32).reshape(dim) for _, v in new])
            with self.vectors_path.open("r+b" if self.vectors_path.exists() else "wb") as handle:
                handle.seek(n * 4 * dim)
                handle.write(block.tobytes())
                handle.flush()
                os.fsync(handle.fileno())
            with self.index_path.open("ab") as handle:
                handle.write(b"".join(k for k, _ in new))
                handle.flush()
            self._refresh()

    def _repair(self, dim: int) -> int:
        """Cut a torn tail off both files (caller holds the lock); returns the stored rows."""
        index = self.index_path.stat().st_size if self.index_path.exists() else 0
        vectors = self.vectors_path.stat().st_size if self.vectors_path.exists() else 0
        n = min(index // SHA_BYTES, vectors // (4 * dim))
        if index != n * SHA_BYTES:
            os.truncate(self.index_path, n * SHA_BYTES)
        if vectors != n * 4 * dim:
            os.truncate(self.vectors_path, n * 4 * dim)
        if n < self._n:  # someone deleted or cut the files: start over
            self.rows.clear()
            self._n = 0
        return n


def _read_exactly(handle: Any, into: memoryview, offset: int) -> None:
    """Fill ``into`` from ``offset`` (a read may return less: Linux caps one at about 2 GiB)."""
    done = 0
    while done < len(into):
        got = os.preadv(handle.fileno(), [into[done:]], offset + done)
        if got <= 0:
            raise LookupError("the embedding cache file is shorter than its index")
        done += got


class EmbeddingCache:
    """Embeddings on disk, reused across cycles and processes.

    Args:
        root: directory holding one sub-directory per backbone.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._shelves: dict[str, _Shelf] = {}
        self._legacy_folders: dict[str, bool] = {}
        self._lock = threading.Lock()

    def _shelf(self, backbone: str) -> _Shelf:
        with self._lock:
            shelf = self._shelves.get(backbone)
            if shelf is None:
                shelf = self._shelves[backbone] = _Shelf(self.root / safe_name(backbone))
            return shelf

    def _legacy_path(self, sha: str, backbone: str) -> Path:
        return self.root / safe_name(backbone) / sha[:2] / f"{sha}.npy"

    def _legacy(self, shas: Iterable[str], backbone: str) -> dict[str, NDArray[np.float32]]:
        """Vectors of the one-file-per-vector layout, copied into the arrays."""
        found: dict[str, NDArray[np.float32]] = {}
        if backbone not in self._legacy_folders:
            folder = self.root / safe_name(backbone)
            self._legacy_folders[backbone] = folder.is_dir() and any(
                p.is_dir() for p in folder.iterdir()
            )
        if not self._legacy_folders[backbone]:
            return found
        for sha in shas:
            path = self._legacy_path(sha, backbone)
            try:
                found[sha] = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, EOFError):
                log.warning("embedding cache entry %s is unreadable; recomputing", path.name)
                path.unlink(missing_ok=True)
        if found:
            self.put_many(found, backbone)
        return found

    def get(self, sha: str, backbone: str) -> NDArray[np.float32] | None:
        """The cached (dim,) float32 vector, or None on a miss."""
        return self.get_many([sha], backbone).get(sha)

    def get_many(self, shas: Iterable[str], backbone: str) -> dict[str, NDArray[np.float32]]:
        """The cached vectors among ``shas`` (misses are left out), read in one pass.

        The values are rows of one (n, dim) array, so handing out 100,000 of them copies the
        memory map once.
        """
        wanted = {sha: bytes.fromhex(sha) for sha in dict.fromkeys(shas) if len(sha) == 64}
        shelf = self._shelf(backbone)
        rows = shelf.rows_of(wanted.values())
        hits = [sha for sha, key in wanted.items() if key in rows]
        found: dict[str, NDArray[np.float32]] = {}
        if hits:
            block = shelf.take(np.array([rows[wanted[sha]] for sha in hits], dtype=np.int64))
            found = dict(zip(hits, block, strict=True))
        missing = [sha for sha in wanted if sha not in found]
        if missing:
            found.update(self._legacy(missing, backbone))
        return found

    def take_in_order(
        self, shas: Sequence[str], backbone: str
    ) -> tuple[NDArray[np.bool_], NDArray[np.float32]]:
        """Which of ``shas`` are cached, and their vectors in ``shas`` order (a hash given twice
        comes twice): an (hits, dim) block read in one pass (runs of consecutive rows in one
        read each), for the caller to keep as it is."""
        keys = [bytes.fromhex(sha) if len(sha) == 64 else None for sha in shas]
        distinct = {key for key in keys if key is not None}
        shelf = self._shelf(backbone)
        rows = shelf.rows_of(distinct)
        missing = {sha for sha, key in zip(shas, keys, strict=True) if key and key not in rows}
        if missing and self._legacy(sorted(missing), backbone):  # moved into the shelf
            rows = shelf.rows_of(distinct)
        index = np.array([-1 if k is None else rows.get(k, -1) for k in keys], dtype=np.int64)
        hit = index >= 0
        if not hit.any():
            return hit, np.zeros((0, shelf.dim or 0), dtype=np.float32)
        return hit, shelf.take(index[hit])

    def put(self, sha: str, backbone: str, vector: NDArray[np.floating[Any]]) -> None:
        """Store one (dim,) vector; storing a key that is already there changes nothing."""
        self.put_many({sha: vector}, backbone)

    def put_many(self, vectors: Mapping[str, NDArray[np.floating[Any]]], backbone: str) -> None:
        """Store many vectors in one append (one lock, one fsync)."""
        self._shelf(backbone).append({bytes.fromhex(sha): v for sha, v in vectors.items()})

    def __contains__(self, key: tuple[str, str]) -> bool:
        sha, backbone = key
        return bool(self._shelf(backbone).rows_of([bytes.fromhex(sha)]))
