"""Where the bytes of job files and input sandboxes live: a folder under the data dir (the
embedded default, one controller machine) or an S3-compatible object store (`file_store =
"s3://bucket/prefix"`, for several controller processes or machines; boto3, credentials from
its usual places: environment, ~/.aws, an instance role; never from cloudpilot's config).

Keys are made by the controller (never from a user's file name). A file arrives in chunks of
CHUNK bytes (controller/domain/files.py); a chunk sent again overwrites itself with the same
bytes. A file of one chunk is written whole; a longer one is an S3 multipart upload (a part per
chunk) or a `.partial` file written at offsets, renamed when complete."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from controller.domain.files import CHUNK
from controller.errors import ConfigError, FileStoreFull

READ = 1024 * 1024


class Blobs(Protocol):
    def begin(self, key: str, size: int) -> str | None:
        """Start a file of `size` bytes; an upload id to keep (None: nothing to keep)."""
        ...

    def put(self, key: str, upload: str | None, offset: int, data: bytes, size: int) -> None:
        ...

    def finish(self, key: str, upload: str | None, size: int) -> None: ...

    def read(self, key: str, first: int = 0, last: int | None = None) -> Iterator[bytes]: ...

    def delete(self, key: str, upload: str | None = None) -> None: ...

    def free(self) -> int | None:
        """Bytes the store can still take (None: no limit known)."""
        ...


def digest(blobs: Blobs, key: str) -> str:
    h = hashlib.sha256()
    for piece in blobs.read(key):
        h.update(piece)
    return h.hexdigest()


class FolderBlobs:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, key: str) -> Path:
        return self.root / key

    def begin(self, key: str, size: int) -> str | None:
        return None

    def put(self, key: str, upload: str | None, offset: int, data: bytes, size: int) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = p.with_name(p.name + ".partial")
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                with contextlib.suppress(OSError):
                    part.unlink()  # the half-written file; everything complete stays
                raise FileStoreFull(f"the file store's disk is full ({self.root}): {e}; "
                                    "nothing already stored was lost") from None
            raise

    def finish(self, key: str, upload: str | None, size: int) -> None:
        p = self._path(key)
        part = p.with_name(p.name + ".partial")
        if size == 0 and not part.exists():
            part.touch(0o600)
        os.replace(part, p)

    def read(self, key: str, first: int = 0, last: int | None = None) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            f.seek(first)
            left = None if last is None else last - first + 1
            while left is None or left > 0:
                piece = f.read(READ if left is None else min(READ, left))
                if not piece:
                    return
                if left is not None:
                    left -= len(piece)
                yield piece

    def delete(self, key: str, upload: str | None = None) -> None:
        p = self._path(key)
        for q in (p, p.with_name(p.name + ".partial")):
            with contextlib.suppress(FileNotFoundError):
                q.unlink()

    def free(self) -> int | None:
        return shutil.disk_usage(self.root).free


class S3Blobs:
    """An S3 bucket (any S3-compatible store: `endpoint_url`)."""

    def __init__(self, url: str, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        try:
            import boto3  # an optional dependency (cloudpilot[spot])
        except ImportError:
            raise ConfigError("file_store = s3://... needs boto3: pip install "
                              "'cloudpilot[spot]' (or boto3)") from None
        rest = url.removeprefix("s3://")
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise ConfigError(f"file_store {url!r} names no bucket (s3://bucket/prefix)")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.s3: Any = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def begin(self, key: str, size: int) -> str | None:
        if size <= CHUNK:
            return None
        out = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))
        return str(out["UploadId"])

    def put(self, key: str, upload: str | None, offset: int, data: bytes, size: int) -> None:
        if upload is None:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        else:
            self.s3.upload_part(Bucket=self.bucket, Key=self._key(key), UploadId=upload,
                                PartNumber=offset // CHUNK + 1, Body=data)

    def finish(self, key: str, upload: str | None, size: int) -> None:
        if upload is None:
            if size == 0:
                self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=b"")
            return
        parts = self.s3.list_parts(Bucket=self.bucket, Key=self._key(key), UploadId=upload,
                                   MaxParts=10_000)["Parts"]
        self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=self._key(key), UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]}
                                       for p in parts]})

    def read(self, key: str, first: int = 0, last: int | None = None) -> Iterator[bytes]:
        args: dict[str, Any] = {}
        if first or last is not None:
            args["Range"] = f"bytes={first}-{'' if last is None else last}"
        body = self.s3.get_object(Bucket=self.bucket, Key=self._key(key), **args)["Body"]
        try:
            yield from body.iter_chunks(READ)
        finally:
            body.close()

    def delete(self, key: str, upload: str | None = None) -> None:
        if upload is not None:
            with contextlib.suppress(Exception):
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key),
                                               UploadId=upload)
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def free(self) -> int | None:
        return None


def open_blobs(file_store: str | None, data_dir: Path, endpoint_url: str | None = None,
               region: str | None = None) -> Blobs:
    if file_store and file_store.startswith("s3://"):
        return S3Blobs(file_store, endpoint_url, region)
    return FolderBlobs(Path(file_store) if file_store else data_dir / "files")
