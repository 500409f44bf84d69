"""Where stage directories and inputs live: local paths, `file://`, or object stores (`s3://`,
`gs://`, anything fsspec knows) through fsspec, the filesystem layer pyarrow, HF datasets, Ray and
datatrove share.

    out = stage_path("s3://bucket/runs/data")     # a UPath: `/`, .name, .exists(), .read_text() ...
    out = stage_path("runs/data")                 # a plain pathlib.Path, as before
    with open_binary(out / "shards" / "a.parquet") as f: ...
    work_dir(out)     # OUT/_work locally; a local scratch folder for a stage on an object store

Object stores have no rename, so nothing there is written to a temporary name and renamed:
`pretrain.core.files.atomic_path` writes a local temporary file and uploads it to the final name in
one request (an object appears whole or not at all), and every task writes its done record after
its outputs, so a resume trusts an output only when the record that lists it exists (the scheme
datatrove uses). A stage's intermediate files (`_work/`: sorted runs that reducers memory-map, task
records) stay on a POSIX filesystem, as a shuffle's spill files do in Spark: OUT/_work for a local
stage, `$PRETRAIN_WORK_ROOT/<stage>-<hash of its URL>/_work` (default under the system temp folder)
for a stage on an object store. On a cluster of several nodes, PRETRAIN_WORK_ROOT must be a folder
every node mounts (NFS, Lustre, EFS, Filestore); on one node the default works.

Credentials and endpoints come from the object store's usual settings (for S3: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION or ~/.aws; for GCS: application default
credentials), which Ray passes on to its workers (`pretrain.core.runner.ensure_ray`). Listings are
not cached (`use_listings_cache=False`): tasks in other processes write the files a driver lists.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

LOCAL_PROTOCOLS = ("file", "local")
WORK_ROOT_ENV = "PRETRAIN_WORK_ROOT"
STORE_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS", "FSSPEC_", "PRETRAIN_WORK_ROOT")
"""Environment variables Ray workers need to reach the same stores as the driver."""

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def protocol(p: str | os.PathLike) -> str | None:
    """The URL scheme of `p` (`s3`, `gs`, ...), None for a plain path or `file://`."""
    if isinstance(p, Path):
        return None
    proto = getattr(p, "protocol", None)
    if isinstance(proto, str) and proto:
        return None if proto in LOCAL_PROTOCOLS else proto
    m = _URL.match(str(p))
    if not m or m.group(1) in LOCAL_PROTOCOLS:
        return None
    return m.group(1)


def is_remote(p: str | os.PathLike) -> bool:
    return protocol(p) is not None


def stage_path(p: str | os.PathLike) -> Any:
    """`p` as a path object: pathlib.Path for local paths (and `file://` URLs), a UPath (pathlib's
    API over fsspec) for object stores."""
    if not is_remote(p):
        s = str(p)
        return Path(s[len("file://") :] if s.startswith("file://") else s)
    _configure()
    from upath import UPath  # noqa: I001  (only stages on object stores need it)

    return p if isinstance(p, UPath) else UPath(str(p))


def filesystem(p: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a remote `p`."""
    _configure()
    import fsspec  # noqa: I001  (object stores only)

    fs, path = fsspec.core.url_to_fs(str(p))
    return fs, path


def url(fs: Any, path: str) -> str:
    """The URL of `path` on `fs` (what `filesystem` split)."""
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{proto}://{path}"


_configured = False


def _configure() -> None:
    """Turn off fsspec's listing caches for object stores: files appear from other processes."""
    global _configured
    if _configured:
        return
    import fsspec  # noqa: I001  (object stores only)

    for proto in ("s3", "s3a", "gs", "gcs", "az", "abfs"):
        fsspec.config.conf.setdefault(proto, {}).setdefault("use_listings_cache", False)
    _configured = True


def open_binary(p: str | os.PathLike, mode: str = "rb") -> IO[bytes]:
    """A binary file object (seekable when reading) for a local path or a URL."""
    if not is_remote(p):
        return open(stage_path(p), mode)  # noqa: SIM115 (the caller closes it)
    fs, path = filesystem(p)
    return fs.open(path, mode)


def exists(p: str | os.PathLike) -> bool:
    if not is_remote(p):
        return os.path.exists(stage_path(p))
    fs, path = filesystem(p)
    return fs.exists(path)


def is_dir(p: str | os.PathLike) -> bool:
    if not is_remote(p):
        return os.path.isdir(stage_path(p))
    fs, path = filesystem(p)
    return fs.isdir(path)


def is_file(p: str | os.PathLike) -> bool:
    if not is_remote(p):
        return os.path.isfile(stage_path(p))
    fs, path = filesystem(p)
    return fs.isfile(path)


def find_files(root: str | os.PathLike) -> list[Any]:
    """Every file under `root`, recursively, sorted, as path objects (`stage_path`)."""
    if not is_remote(root):
        return sorted(p for p in stage_path(root).rglob("*") if p.is_file())
    fs, path = filesystem(root)
    return [stage_path(url(fs, f)) for f in sorted(fs.find(path))]


def glob_files(pattern: str) -> list[Any]:
    """Files matching a glob (`**` recursive) on a local disk or an object store, sorted."""
    if not is_remote(pattern):
        import glob  # noqa: I001  (local globs only)

        return [Path(m) for m in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(m)]
    fs, path = filesystem(pattern)
    return [stage_path(url(fs, f)) for f in sorted(fs.glob(path)) if fs.isfile(f)]


def remove(p: str | os.PathLike) -> None:
    """Delete a file (missing is fine)."""
    if not is_remote(p):
        Path(stage_path(p)).unlink(missing_ok=True)
        return
    fs, path = filesystem(p)
    if fs.exists(path):
        fs.rm_file(path)


def remove_tree(p: str | os.PathLike) -> None:
    """Delete a folder and everything under it (missing is fine)."""
    if not is_remote(p):
        shutil.rmtree(stage_path(p), ignore_errors=True)
        return
    fs, path = filesystem(p)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def upload(local: str | os.PathLike, p: str | os.PathLike) -> None:
    """Copy a finished local file to its final name on an object store, in one request (a
    multipart upload for large files, which also becomes visible only when complete)."""
    fs, path = filesystem(p)
    fs.put_file(str(local), path)


def stat(p: str | os.PathLike) -> dict[str, Any]:
    """{"size", "mtime_ns"} of a file, plus the object store's "etag" (a content digest for a
    single-request upload, a digest of digests for a multipart one) where there is one. Raises
    FileNotFoundError (an OSError) when it is missing."""
    if not is_remote(p):
        st = os.stat(stage_path(p))
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    fs, path = filesystem(p)
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(str(p))
    out: dict[str, Any] = {"size": int(info["size"])}
    modified = info.get("LastModified") or info.get("updated") or info.get("mtime")
    if isinstance(modified, str):
        modified = _dt.datetime.fromisoformat(modified.replace("Z", "+00:00"))
    if isinstance(modified, _dt.datetime):
        out["mtime_ns"] = int(modified.timestamp() * 1e9)
    elif modified is not None:
        out["mtime_ns"] = int(float(modified) * 1e9)
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:
        out["etag"] = str(etag).strip('"')
    return out


def work_dir(out: str | os.PathLike) -> Path:
    """A stage's folder of intermediate files and task records: OUT/_work for a local stage; for
    a stage on an object store, `$PRETRAIN_WORK_ROOT` (default: the temp folder's
    `pretrain-work/`) / `<last part of the URL>-<sha256 of the URL, 12 hex>` / `_work`: the same
    folder for every run of the same URL, so a rerun resumes from it."""
    if not is_remote(out):
        return stage_path(out) / "_work"
    key = str(out).rstrip("/")
    root = Path(os.environ.get(WORK_ROOT_ENV) or Path(tempfile.gettempdir()) / "pretrain-work")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", key.rsplit("/", 1)[-1])[:40] or "stage"
    return root / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}" / "_work"


def store_env() -> dict[str, str]:
    """The driver's object-store settings, for Ray's workers (`runtime_env`)."""
    return {k: v for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES)}
