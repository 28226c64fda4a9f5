"""A node's shared files, content-addressed by SHA-256.

:class:`FileStore` indexes the regular files of one directory tree (symbolic links are
skipped, so a share never reaches outside its directory) by the lowercase hex SHA-256 of
their bytes. A download names a file by that hash; its cost in the access gate is its size
in bytes (see :mod:`node.resources`). The index is built once by :meth:`FileStore.scan`;
files are read on each download and checked against their hash, so a file changed on
disk after the scan is refused rather than served under the wrong name.

This module deliberately knows nothing about access control: the service asks the gate
first and only then calls :meth:`FileStore.read`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import OutOfRangeError, TooLargeError
from protocol.kinds import FILES

SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: Most files one node shares, and the largest one (bytes): limits as data.
MAX_FILES = 10_000
MAX_FILE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedFile:
    sha256: str
    size: int
    path: Path

    @property
    def resource(self) -> str:
        """The access request's ``resource`` naming this file."""
        name = FILES.resource_of(self.sha256)
        assert name is not None  # files are itemised: a prefix and the hash
        return name

    @property
    def cost(self) -> int:
        """Micro-units a download costs: its size in bytes (at least 1)."""
        return max(1, self.size)


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class FileStore:
    """The index ``sha256 -> SharedFile`` of one directory."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self._files: dict[str, SharedFile] = {}

    def scan(self) -> int:
        """(Re)index the directory; returns the number of files shared."""
        found: dict[str, SharedFile] = {}
        if self.root is not None:
            for dirpath, _dirs, names in os.walk(self.root, followlinks=False):
                for name in sorted(names):
                    path = Path(dirpath) / name
                    if path.is_symlink() or not path.is_file():
                        continue
                    size = path.stat().st_size
                    if size > MAX_FILE_BYTES:
                        continue
                    if len(found) >= MAX_FILES:
                        raise TooLargeError(f"more than {MAX_FILES} files under {self.root}")
                    digest = sha256_file(path)
                    found.setdefault(digest, SharedFile(sha256=digest, size=size, path=path))
        self._files = found
        return len(found)

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._files

    def get(self, sha256: str) -> SharedFile | None:
        return self._files.get(sha256)

    def listing(self) -> list[dict[str, str | int]]:
        """``[{"sha256", "size"}]`` sorted by hash (what ``GET /v1/files`` answers)."""
        return [{"sha256": f.sha256, "size": f.size} for _, f in sorted(self._files.items())]

    def costs(self) -> dict[str, int]:
        """``resource -> cost`` for the gate."""
        return {f.resource: f.cost for f in self._files.values()}

    def read(self, sha256: str) -> bytes:
        """The file's bytes, checked against its hash (blocking: call it in a thread)."""
        if not SHA256_RE.fullmatch(sha256):
            raise OutOfRangeError("not a lowercase hex SHA-256")
        entry = self._files.get(sha256)
        if entry is None:
            raise OutOfRangeError(f"no file {sha256[:16]}... here")
        data = entry.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            # The host's fault, not the requester's: an internal error, not a refusal.
            raise OSError(f"file {sha256[:16]}... changed on disk since it was shared")
        return data
