"""Run folders at any fsspec URL: every read and write of a run folder goes through here.

A run folder is a local path (or file://...) or an fsspec URL: s3://bucket/prefix (s3fs; the endpoint from
AWS_ENDPOINT_URL for MinIO or another S3-compatible store, credentials as boto finds them), gs://, az://,
memory:// (tests of this module only: a command refuses it, see output_location). Used by the pipeline
(`c123 evaluate`, which imports it under its own package name too) and by `c123 reconstruct --out URL`.
Local folders keep their plain-file behaviour (Path in, Path out); URLs stay strings.

Case folders are computed in a local scratch folder on the node that runs them, then uploaded file by file
(one put each), and committed by writing their `cache_key` last: a reader (the cache, the resume) takes a
case folder as finished only when that marker is there, so a half-uploaded folder is never used.
An unknown scheme, a missing filesystem package or missing credentials is one StorageError line naming the
URL and what is missing.
"""

from __future__ import annotations

import posixpath
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from c123.atomic import atomic_path, is_url, local_path, write_atomic
from c123.errors import C123Error

Location = Path | str
"""A local folder or file (Path) or an fsspec URL (str)."""

SKIP_UPLOAD = ("checkpoints",)
"""Subfolders of a case folder that stay on the node's scratch disk (resume state, large)."""


CREDENTIALS_HINT = {
    scheme: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, an instance role), and "
            "AWS_ENDPOINT_URL for MinIO or another S3-compatible store" for scheme in ("s3", "s3a")}
"""How to give credentials, per scheme (others: the store's own message)."""


class StorageError(C123Error):
    """A run folder URL that cannot be used: unknown scheme, filesystem package or credentials missing."""


def location(url: str | Path) -> Location:
    """A run folder argument as a Location: local paths resolved (Path), URLs without a trailing '/' (str)."""
    if is_url(url):
        fs, path = filesystem(str(url))  # unknown scheme or package: the one line now
        return fs.unstrip_protocol(path.rstrip("/"))  # one spelling per folder (as subfolders() lists them)
    return local_path(url).expanduser().resolve()


IN_PROCESS = ("memory",)
"""Schemes whose files live in this process only: a command's output there would vanish when it exits."""


def output_location(url: str | Path) -> Location:
    """`location` of a folder a command writes its results to (`--out`, $C123_RUNS): StorageError for an
    unknown scheme, a missing filesystem package, or a store that would vanish at exit (memory://)."""
    scheme = str(url).split("://", 1)[0].lower() if is_url(url) else ""
    if scheme in IN_PROCESS:
        raise StorageError(f"run folder {url}: {scheme}:// lives in this process's memory and would vanish when "
                           "the command exits: use a local folder or a store such as s3://bucket/prefix")
    return location(url)


def filesystem(url: str):
    """(fsspec filesystem, path inside it) of a URL; StorageError naming the URL and what is missing."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url)
    except ValueError as err:  # fsspec: "Protocol not known: xyz"
        raise StorageError(f"run folder {url}: unknown storage scheme '{url.split('://')[0]}' ({err}); use a "
                           "local folder or an fsspec URL such as s3://bucket/prefix") from None
    except ImportError as err:  # the scheme's package (s3fs, gcsfs, adlfs) is not installed
        raise StorageError(f"run folder {url}: {' '.join(str(err).split())}") from None


def describe(err: BaseException, url: str) -> StorageError:
    """A store's error as one line naming the URL and what is missing (credentials, bucket, endpoint)."""
    name = type(err).__name__
    msg = " ".join(str(err).split())[:200]
    if name in ("NoCredentialsError", "PartialCredentialsError") or "credentials" in msg.lower():
        what = "no credentials for it: " + CREDENTIALS_HINT.get(url.split("://")[0], f"{name}: {msg}")
    elif isinstance(err, FileNotFoundError) or name == "NoSuchBucket":
        what = f"its bucket does not exist ({msg}): create it first"
    elif isinstance(err, PermissionError):
        what = f"access denied ({msg}): check the credentials' permissions"
    else:
        what = f"{name}: {msg}"
    return StorageError(f"run folder {url}: {what}")


def check_reachable(url: Location) -> None:
    """Before any compute: the store answers with these credentials and the bucket exists (URLs only)."""
    if not is_url(url):
        return
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        fs.invalidate_cache()
        fs.ls(bucket)  # needs the credentials; a missing bucket is FileNotFoundError
    except StorageError:
        raise
    except Exception as err:  # noqa: BLE001 - turned into the one line
        raise describe(err, url) from None


def join(base: Location, *parts: str) -> Location:
    """base/parts... (a Path for a local base, a URL string otherwise)."""
    if is_url(base):
        return posixpath.join(str(base), *parts)
    return Path(base).joinpath(*parts)


def parent(path: Location) -> Location:
    return posixpath.dirname(str(path)) if is_url(path) else Path(path).parent


def subfolders(folder: Location) -> list[Location]:
    """The folders directly inside `folder` ([] when it does not exist)."""
    if not is_url(folder):
        return sorted(p for p in Path(folder).iterdir() if p.is_dir()) if Path(folder).is_dir() else []
    fs, inner = filesystem(folder)
    try:
        entries = fs.ls(inner, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(fs.unstrip_protocol(e["name"]) for e in entries if e["type"] == "directory")


def is_file(path: Location) -> bool:
    if not is_url(path):
        return Path(path).is_file()
    fs, inner = filesystem(path)
    try:
        return fs.isfile(inner)
    except FileNotFoundError:
        return False


def read_bytes(path: Location) -> bytes:
    """The file's bytes (OSError when missing, local or remote)."""
    if not is_url(path):
        return Path(path).read_bytes()
    fs, inner = filesystem(path)
    return fs.cat_file(inner)


def read_text(path: Location) -> str:
    return read_bytes(path).decode()


def read_json_object(path: Location) -> dict:
    """A JSON file holding an object, {} when absent; OSError or ValueError when it cannot be read as one."""
    import json

    if not is_file(path):
        return {}
    data = json.loads(read_text(path))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def write(path: Location, data: str | bytes) -> Location:
    """Atomic write (c123.atomic.write_atomic) of text or bytes to a local path or URL."""
    return write_atomic(path, data)


@contextmanager
def atomic_file(path: Location) -> Iterator[Path]:
    """A local temp file to write `path` through (for writers that want a file name, e.g. Parquet): replaces a
    local `path` atomically (c123.atomic.atomic_path), or is uploaded to a URL atomically, on success."""
    if not is_url(path):
        with atomic_path(path) as tmp:
            yield tmp
        return
    folder = Path(tempfile.mkdtemp(prefix="c123-upload-"))
    try:
        tmp = folder / posixpath.basename(str(path))
        yield tmp
        write(path, tmp.read_bytes())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def upload_folder(local: Path, url: Location, skip: tuple[str, ...] = SKIP_UPLOAD, last: tuple[str, ...] = ()) -> None:
    """Every file under `local` to the same relative path under `url` (one put each), except `skip` subfolders;
    the files named in `last` (relative paths, e.g. the result.json that marks a folder finished) go after all
    others. A local target is left alone (it is the folder itself)."""
    if not is_url(url):
        return
    fs, inner = filesystem(url)
    files = [p for p in sorted(Path(local).rglob("*")) if p.is_file()]
    for path in sorted(files, key=lambda p: p.relative_to(local).as_posix() in last):  # stable: others first
        rel = path.relative_to(local)
        if rel.parts[0] not in skip and not path.name.startswith("."):
            fs.put_file(str(path), posixpath.join(inner, *rel.parts))


def download_folder(url: Location, local: Path, skip: tuple[str, ...] = ()) -> Path:
    """Every file under `url` into `local` (same relative paths), except those under a `skip` subfolder (any
    depth); returns `local`."""
    fs, inner = filesystem(url)
    local.mkdir(parents=True, exist_ok=True)
    for remote in fs.find(inner):
        rel = posixpath.relpath(remote, inner)
        if set(rel.split("/")[:-1]) & set(skip):
            continue
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local / rel))
    return local


@contextmanager
def local_copy(url: Location, skip: tuple[str, ...] = ()) -> Iterator[Path]:
    """A local folder with the content of `url`: the folder itself when local, else a temporary download
    (without the `skip` subfolders)."""
    if not is_url(url):
        yield Path(url)
        return
    tmp = Path(tempfile.mkdtemp(prefix="c123-copy-"))
    try:
        yield download_folder(url, tmp, skip)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scratch_folder(url: str) -> Path:
    """This node's local working folder for the case folder `url` (the same URL gets the same folder, so a
    retry on this node resumes from its checkpoints)."""
    import hashlib

    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "c123-scratch" / digest
    folder.mkdir(parents=True, exist_ok=True)
    return folder
