"""Writing a label store to a URL: every file is written locally first (crash-safe as always, in a staging
directory), uploaded once complete, and the manifest goes last, so a reader never sees a partial store.

An object store replaces an object in one step (a PUT, or a multipart upload's completion), so an upload
killed midway leaves the old object or none, never half a file; the manifest that makes shards a store is
uploaded only after every shard is there. A rerun finds the shards already uploaded (same size, same footer:
the footer holds the index CRC) and skips them, and uploads what is missing; the local staging directory
holds what a resumed labeling run continues from (``generate --resume`` on the same machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path

from sparselabels.errors import CompatibilityError, OutputExistsError
from sparselabels.format.layout import FOOTER_SIZE
from sparselabels.io.manifest import MANIFEST_NAME, manifest_body
from sparselabels.io.reader import LabelFile
from sparselabels.io.remote import RemoteOptions, filesystem, url_join
from sparselabels.io.shards import RUN_SHARD_RE, SHARD_SUFFIX

STAGING_ENV = "SPARSELABELS_STAGING_DIR"


def staging_dir(url: str) -> Path:
    """Where files bound for ``url`` are written first: ``$SPARSELABELS_STAGING_DIR`` (default: the system's
    temporary directory) / ``sparselabels-staging`` / a hash of the URL, the same for every rerun."""
    base = Path(os.environ.get(STAGING_ENV) or tempfile.gettempdir()) / "sparselabels-staging"
    return base / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class RemoteTarget:
    """A directory-like URL that label files are uploaded to (``storage_options`` go to fsspec)."""

    def __init__(self, url: str, storage_options: dict | None = None, staging: str | os.PathLike | None = None) -> None:
        self.url = url.rstrip("/")
        self.options = RemoteOptions(storage_options=dict(storage_options or {}))
        self.fs, self.path = filesystem(self.url, self.options.storage_options)
        self.path = self.path.rstrip("/")
        self.staging = Path(staging) if staging is not None else staging_dir(self.url)

    def _remote(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _info(self, name: str) -> dict | None:
        path = self._remote(name)
        self.fs.invalidate_cache(path)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        return info if info.get("type", "file") == "file" else None

    def names(self) -> set[str]:
        """The object names directly under the URL (empty when nothing is there yet)."""
        self.fs.invalidate_cache(self.path)
        try:
            return {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self.fs.ls(self.path, detail=True)}
        except FileNotFoundError:
            return set()

    def check_run_output(self, world_size: int, *, resume: bool, overwrite: bool, rank: int) -> None:
        """What ``generate`` refuses locally, refused at the URL too: label files of other runs, or a finished
        store without ``resume``/``overwrite``. With ``overwrite``, rank 0 removes the manifest first, so no
        reader takes the old manifest over a mix of old and new shards."""
        names = self.names()
        for name in sorted(names):
            m = RUN_SHARD_RE.match(name)
            if (m and int(m.group(2)) != world_size) or (not m and name.endswith(SHARD_SUFFIX)):
                raise CompatibilityError(f"{self.url!r} holds {name}, which is not a shard of this {world_size}-rank "
                                         "run; use another output URL")
        if MANIFEST_NAME in names and not (resume or overwrite):
            raise OutputExistsError(f"{url_join(self.url, MANIFEST_NAME)!r} exists; pass resume=True to keep the "
                                    "finished shards or overwrite=True to start again")
        if overwrite and rank == 0 and MANIFEST_NAME in names:
            self.fs.rm_file(self._remote(MANIFEST_NAME))

    def uploaded(self, local: Path, name: str) -> bool:
        """True when the object ``name`` holds ``local``'s bytes as far as size and footer tell (a complete
        label file's footer holds its index CRC and counts)."""
        info = self._info(name)
        size = local.stat().st_size
        if info is None or int(info["size"]) != size:
            return False
        with open(local, "rb") as f:
            f.seek(max(size - FOOTER_SIZE, 0))
            tail = f.read()
        return self.fs.cat_file(self._remote(name), start=max(size - FOOTER_SIZE, 0), end=size) == tail

    def upload(self, local: Path, name: str | None = None) -> str:
        """Upload a complete local file as ``name`` (default: its own name) unless it is there already; return
        its URL."""
        name = name or local.name
        if not self.uploaded(local, name):
            self.fs.put_file(os.fspath(local), self._remote(name))
            info = self._info(name)
            if info is None or int(info["size"]) != local.stat().st_size:
                raise OSError(f"upload of {str(local)!r} to {url_join(self.url, name)!r} did not complete")
        return url_join(self.url, name)

    def write_manifest(self, names: list[str]) -> str:
        """The manifest over the uploaded shards ``names``, built from the objects themselves (their footers and
        indexes, so every rank's shard counts, wherever it was written), uploaded last."""
        body = manifest_body(
            (n, url_join(self.url, n), lambda n=n: LabelFile(url_join(self.url, n), remote=self.options))
            for n in names
        )
        self.staging.mkdir(parents=True, exist_ok=True)
        tmp = self.staging / f"{MANIFEST_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.write_text(json.dumps(body, indent=1) + "\n")
            self.fs.put_file(os.fspath(tmp), self._remote(MANIFEST_NAME))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return url_join(self.url, MANIFEST_NAME)
