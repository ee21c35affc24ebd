"""On-disk embedding cache keyed by (image content hash, backbone name).

Layout: ``root/<backbone name>/<sha[:2]>/<sha>.npy``, one small file per image, written atomically
(temp file + ``os.replace``) so readers never see half a vector. A file that cannot be read is
treated as a miss and removed; the cache can always be deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from backend.files import atomic_write

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def content_hash(data: bytes) -> str:
    """sha256 hex digest of the image bytes: the cache key half that names the image."""
    return hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    """Embeddings on disk, reused across cycles and processes.

    Args:
        root: directory holding one sub-directory per backbone.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, sha: str, backbone: str) -> Path:
        return self.root / _UNSAFE.sub("_", backbone) / sha[:2] / f"{sha}.npy"

    def get(self, sha: str, backbone: str) -> np.ndarray | None:
        """The cached (dim,) float32 vector, or None on a miss or an unreadable entry."""
        path = self._path(sha, backbone)
        try:
            vector = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            log.warning("embedding cache entry %s is unreadable; recomputing", path.name)
            path.unlink(missing_ok=True)
            return None
        return np.asarray(vector, dtype=np.float32)

    def get_many(self, shas: Iterable[str], backbone: str) -> dict[str, np.ndarray]:
        """The cached vectors among ``shas`` (misses are left out)."""
        found = {}
        for sha in shas:
            vector = self.get(sha, backbone)
            if vector is not None:
                found[sha] = vector
        return found

    def put(self, sha: str, backbone: str, vector: np.ndarray) -> None:
        """Store one (dim,) vector atomically; a concurrent writer of the same key is harmless."""
        with atomic_write(self._path(sha, backbone)) as handle:
            np.save(handle, np.asarray(vector, dtype=np.float32), allow_pickle=False)

    def __contains__(self, key: tuple[str, str]) -> bool:
        sha, backbone = key
        return self._path(sha, backbone).exists()
