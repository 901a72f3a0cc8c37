"""URIs to filesystems, local disk and S3: paths joined, files listed with their stamps, looked up, read from
their end, uploaded and deleted, globs, and S3 access checked before any work.

One code path for local disk and object storage: `filesystem(uri)` is the only place a URI becomes a
filesystem. `s3://` goes through s3fs, which takes the endpoint and credentials from the environment
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...) or the instance role; nothing is read from config files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .messages import InputError


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> str:
    """A `file://` URI's path, URL-decoded as pyarrow and Ray Data read one (`file:///data/a%20b` is the folder
    `a b`: it was looked for as `a%20b`, and did not exist); a path as it is."""
    return urllib.parse.unquote(uri[len("file://"):]) if uri.startswith("file://") else uri


def absolute(uri: str) -> str:
    """A local path written out from the working directory; an `s3://` URI in one spelling (`s3a://`, a trailing
    `/`: the same objects), so that a resume spelled otherwise is the same job; another URI as it is."""
    if uri.startswith(("s3://", "s3a://")):
        return "s3://" + uri.split("://", 1)[1].rstrip("/")
    return uri if is_remote(uri) else os.path.abspath(local_path(uri))


def same_place(first: str, second: str) -> bool:
    """Whether two paths name one file or folder: S3's in any spelling (`absolute`), local ones where their links
    lead (a `file://` URI as its path)."""
    if is_remote(first) or is_remote(second):
        return absolute(first) == absolute(second)
    first, second = map(local_path, (first, second))
    return os.path.realpath(first) == os.path.realpath(second)


def file_in_the_way(uri: str) -> Optional[str]:
    """The file on the way to a local path that a job would write (`out.yaml` of `out.yaml/results`), which no
    folder can be made under; None where there is none, and on S3, whose keys hold any path."""
    if is_remote(uri):
        return None
    path = os.path.abspath(local_path(uri))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path if os.path.exists(path) and not os.path.isdir(path) else None


def try_local_folder(uri: str) -> None:
    """Raises the OSError of making the local folder `uri` (a folder of another user, a read-only mount, `/proc`),
    before a job starts Ray: the folders it lacks are made and removed again, and one that is there is looked at for
    writing. Nothing on S3, where any key can be written that the bucket's policy lets."""
    if is_remote(uri):
        return
    path = os.path.abspath(local_path(uri))
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return
    made, lacking = [], path
    while not os.path.exists(lacking) and os.path.dirname(lacking) != lacking:
        made.append(lacking)
        lacking = os.path.dirname(lacking)
    os.makedirs(path, exist_ok=True)  # (made meanwhile by another job on the same output)
    for folder in made:  # deepest first; one another job filled meanwhile is its own
        try:
            os.rmdir(folder)
        except OSError:
            break


def s3_retries() -> dict:
    """botocore's retry settings of the job's S3 client: 8 retries in `adaptive` mode, unless the environment
    sets botocore's own `AWS_MAX_ATTEMPTS` (attempts in all) or `AWS_RETRY_MODE`, which a client's settings
    would override.

    They set how long a store that does not answer (stalled, overloaded, its connections taken and left silent)
    holds a job. Each request is retried by botocore (9 attempts, backoff up to 20 s) and, where botocore gave up,
    by s3fs (5 times), and each attempt waits s3fs's `read_timeout` (15 s) for an answer and `connect_timeout`
    (5 s) for a connection (`s3_session` bounds the rest): a look-up or a write fails after about 15 minutes,
    naming the endpoint's URL (886-921 s against moto under SIGSTOP, 2026-12-01). A read from a file already open
    is retried by s3fs 5 times more around that, as it retries a broken download: up to 75 minutes, past Ray
    Data's no-progress limit (30 minutes, which fails the job naming no store). `AWS_MAX_ATTEMPTS=3` brings 15
    minutes to 4 (measured 233-245 s), 75 to about 20; `AWS_MAX_ATTEMPTS=1`, to 77 s and 387 s (measured). A
    store that refuses connections (down) fails a request in 35-60 s; a shorter pause is ridden out.
    """
    retries = {}
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        retries["max_attempts"] = 8
    if not os.environ.get("AWS_RETRY_MODE"):
        retries["mode"] = "adaptive"
    return retries


class _S3Handler(pafs.FSSpecHandler):
    """pyarrow's handler asks `isfile` before opening a file for reading, which answers False for any error: a
    store that timed out or could not be reached read as `FileNotFoundError: <path>` (a score job's input file,
    after 15 minutes of a store that did not answer). Here the store's own error goes through, from s3fs's own
    look-up of the file as it opens it (its size, and the ETag its reads are held to): one HEAD request, where a
    look-up before it cost a second one for each file a job reads."""

    def _file(self, path: str):
        from pyarrow import PythonFile

        f = self.fs.open(path, mode="rb")  # FileNotFoundError where there is nothing
        if f.details["type"] != "file":  # a folder
            f.close()
            raise FileNotFoundError(path)
        return PythonFile(f, mode="r")

    def open_input_stream(self, path):
        return self._file(path)

    def open_input_file(self, path):
        return self._file(path)


def read_tail(fs: pafs.FileSystem, path: str, size: int, length: int) -> bytes:
    """The last `length` bytes of a file whose `size` a listing gave, in one read. On S3 that is one ranged GET:
    opening the file first, as pyarrow does, costs two HEAD requests more (the handler's and s3fs's own)."""
    start = max(size - length, 0)
    if start >= size:  # an empty file (an empty range is no valid HTTP range)
        return b""
    handler = getattr(fs, "handler", None)  # a PyFileSystem's
    if isinstance(handler, _S3Handler):
        return handler.fs.cat_file(path, start=start, end=size)
    with fs.open_input_file(path) as f:
        return f.read_at(size - start, start)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """A small file's bytes, in one read: on S3 one GET, where opening the file cost two HEAD requests more."""
    handler = getattr(fs, "handler", None)
    if isinstance(handler, _S3Handler):
        return handler.fs.cat_file(path)
    with fs.open_input_stream(path) as f:
        return f.read()


def remove(fs: pafs.FileSystem, path: str) -> None:
    """Deletes the file or the folder at `path`, if there is one."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


BULK_DELETE_KEYS = 1000  # the most keys S3 deletes in one request (DeleteObjects)


def delete_files(fs: pafs.FileSystem, paths: Sequence[str]) -> None:
    """Deletes files. On S3 in one request per 1,000 (DeleteObjects), where deleting each file costs two (pyarrow's
    look-up, the delete): a resume of 1,000 parts cut short deleted them in 2,000 requests. A key the store did not
    delete (its answer lists it) fails the call, naming it: s3fs's own bulk delete passes over those."""
    handler = getattr(fs, "handler", None)
    if not isinstance(handler, pafs.FSSpecHandler):
        in_parallel(fs.delete_file, paths)
        return
    s3 = handler.fs
    buckets: Dict[str, List[str]] = {}
    for path in paths:
        bucket, key, _ = s3.split_path(path)
        buckets.setdefault(bucket, []).append(key)
    for bucket, keys in buckets.items():
        for start in range(0, len(keys), BULK_DELETE_KEYS):
            objects = [{"Key": key} for key in keys[start:start + BULK_DELETE_KEYS]]
            answer = s3.call_s3("delete_objects", Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
            failed = answer.get("Errors") or []
            if failed:
                raise OSError(f"the store did not delete {len(failed)} of {len(objects)} object(s), e.g. "
                              f"{bucket}/{failed[0].get('Key')}: {failed[0].get('Code')} {failed[0].get('Message')}")


FOOTER_BYTES = 64 << 10  # read from a parquet file's end: its footer and more, for all but very wide tables


def parquet_footer(fs: pafs.FileSystem, path: str, size: int) -> pq.FileMetaData:
    """The footer of a parquet file of `size` bytes, read from its end alone (parquet ends with the footer, its
    length and `PAR1`): one read for most files, two where the footer is larger than `FOOTER_BYTES`. Raises
    pyarrow's ArrowInvalid for a file too short for a footer or without parquet's magic."""
    tail = read_tail(fs, path, size, FOOTER_BYTES)
    length = int.from_bytes(tail[-8:-4], "little") + 8 if tail[-4:] == b"PAR1" else 0
    if len(tail) < length <= size:
        tail = read_tail(fs, path, size, length)
    return pq.ParquetFile(pa.BufferReader(tail)).metadata


def in_parallel(function, items: Sequence) -> list:
    """`function` of each item, 16 at a time: what a look-up per file (an S3 request, ~20 ms or more) costs a
    thousand files is the time of 63 rather than 1,000."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(function, items))


def filesystem(uri: str) -> Tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path, `file://` or `s3://` URI."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        import s3fs

        from .s3_session import BoundedSession

        # s3fs (botocore) reads AWS_ENDPOINT_URL, keys and region from the environment or instance role.
        # Retries with backoff cover transient errors (throttling, 5xx, dropped connections). s3fs keeps one
        # instance per process, and by default every listing it made for the process's life: a second job of
        # a process (the Python API, a notebook) would not see objects written or rewritten since, by another
        # process (Ray's workers write the outputs), and fail reading a rewritten one (`FileExpired`).
        # Every request is bounded in time (`s3_session`); how long a store that does not answer holds a job:
        # `s3_retries`.
        fs = s3fs.S3FileSystem(use_listings_cache=False,
                               config_kwargs={"retries": s3_retries(), "http_session_cls": BoundedSession})
        # `s3://b/out/` and `s3://b/out` are one folder: paths joined to it must not hold `//`.
        return pafs.PyFileSystem(_S3Handler(fs)), uri.split("://", 1)[1].rstrip("/")
    uri = local_path(uri)
    if "://" in uri:
        raise InputError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def last_ones_last(names: Sequence[str], last: Sequence[str]) -> List[str]:
    """`names` with those of `last` moved to the end, in `last`'s order."""
    return [name for name in names if name not in last] + [name for name in last if name in names]


def upload_folder(local_dir: str, fs: pafs.FileSystem, path: str, last: Sequence[str] = ()) -> None:
    """Copies a local folder's files to `path` in `fs`, failing where a file could not be written; those of a
    folder named in `last` after its others, in that order.
    `pyarrow.fs.copy_files` is not used: it ignores the error of closing an output stream of a Python filesystem
    (pyarrow 26), and s3fs uploads a file when it closes it: files that a store down or not answering did not take
    were left out of a trained model without a word (`config.json` of one, whose run failed only at its next
    request, a listing)."""
    for root, _, names in os.walk(local_dir):
        folder = posixpath.join(path, os.path.relpath(root, local_dir).replace(os.sep, "/")).removesuffix("/.")
        if names and folder != path:
            fs.create_dir(folder, recursive=True)
        for name in last_ones_last(names, last):
            with open(os.path.join(root, name), "rb") as f, fs.open_output_stream(f"{folder}/{name}") as out:
                while chunk := f.read(8 << 20):
                    out.write(chunk)


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri.rstrip("/"), *parts) if is_remote(uri) else os.path.join(uri, *parts)


GLOB_CHARS = "*?["


def leaves_its_folder(name: str) -> bool:
    """Whether a name under a folder, as an object store lists it, reaches outside a local folder it is joined to:
    an empty, `.` or `..` part (`model/../../x`), or an absolute rest (`model//home/u/x`, which `os.path.join` takes
    whole). An object store holds such keys; a copy that wrote them wrote anywhere its user may."""
    return any(part in ("", ".", "..") for part in name.split("/"))


def is_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


# A glob character written as a class of itself (`[[]`, `[*]`, `[?]`) is that character, as fnmatch reads it: the
# way the "matches no files" error says to name a folder whose name holds one (`pairs[[]v2]/*`).
_ESCAPED = re.compile(r"\[([*?\[])\]")


def glob_base(path: str) -> str:
    """The folder a glob lists (`data/*.parquet`: `data`; its `*` matches inside subfolders too), else the path: the
    folders before the first name that holds a glob character of its own, their escaped characters as themselves
    (`pairs[[]v2]/*`: `pairs[v2]`, where the `[` of the escape made the base the folder above, and every output
    beside the input was refused as inside it)."""
    if is_glob(path):
        names = path.split("/")
        first = next((i for i, name in enumerate(names) if is_glob(_ESCAPED.sub("", name))), len(names) - 1)
        prefix = "/".join(_ESCAPED.sub(r"\1", name) for name in names[:first])
        path = (prefix or "/") if first else "."
    return path.rstrip("/") or "/"


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _folders(input_uri: str, output_uri: str) -> tuple:
    """The input's filesystem, its folder (a glob's), and the output's path, as `check_apart` compares them. A path
    whose own name holds a glob character and is there as written (`pairs[v2]`) is a pattern that matches no file,
    which the listing says next, with the way to name it: it is taken as written here, where its parent was the
    glob's folder, and an output beside it was refused as inside it. Local paths are compared where their links
    lead: an input reached by a link into the output's results/ was deleted by an overwrite."""
    fs, source = filesystem(input_uri)
    written = is_glob(source) and fs.get_file_info(source).type != pafs.FileType.NotFound
    source, target = source if written else glob_base(source), filesystem(output_uri)[1].rstrip("/") or "/"
    if not is_remote(input_uri) and not is_remote(output_uri):
        source, target = os.path.realpath(source), os.path.realpath(target)
    return fs, source, target


def refuse_written_inside(input_uri: str, output_uri: str, input_name: str = "input",
                          output_name: str = "output") -> None:
    """Refuses an output inside the input: a later run would read what it holds as pairs (a score job's results, and
    delete them as it overwrites its output while reading them; a training run's model and checkpoints, and could not
    resume). The names: what the two are to the job (a training run's `train_data`, its checkpoints)."""
    fs, source, target = _folders(input_uri, output_uri)
    # Under a file nothing can be written (that write fails, saying so); a folder or a glob's folder is checked.
    if _inside(target, source) and (named_as_a_folder(input_uri)
                                    or fs.get_file_info(source).type != pafs.FileType.File):
        raise InputError(f"the {output_name} {output_uri} is inside the {input_name} {input_uri}: later runs would "
                         "read its results as pairs; write it elsewhere")


def named_as_a_folder(uri: str) -> bool:
    """Whether `uri` names a folder as it is written: an `s3://` URI with a last `/` is the prefix, where an object
    of its name is beside it too (S3 holds both; `s3://b/dup/` and the object `dup`)."""
    return is_remote(uri) and uri.endswith("/")


def is_inside(uri: str, folder_uri: str) -> bool:
    """Whether `uri` is in the folder `folder_uri` (a glob's folder), or is it, as `refuse_written_inside` sees it."""
    _, folder, path = _folders(folder_uri, uri)
    return _inside(path, folder)


def check_apart(input_uri: str, output_uri: str) -> None:
    """Refuses an output inside the input (`refuse_written_inside`) or an input inside the output (overwriting
    would delete it)."""
    refuse_written_inside(input_uri, output_uri)
    _, source, target = _folders(input_uri, output_uri)
    if _inside(source, target):
        raise InputError(f"the input {input_uri} is inside the output {output_uri}, whose results a run "
                         "replaces: write the output elsewhere")


def size_and_stamp(fs: pafs.FileSystem, path: str) -> Tuple[int, str]:
    """A file's size in bytes, and its stamp: `<bytes>:<modified, ns>` of a local file, `<bytes>:<ETag>` of an
    S3 object (s3fs gives Arrow no time, and a new upload gets a new ETag). One look-up (a HEAD on S3): a listing
    gives the same of every file it holds (`list_tree`)."""
    handler = getattr(fs, "handler", None)
    if isinstance(handler, pafs.FSSpecHandler):
        return object_stamp(handler.fs.info(path))
    return _stat_stamp(fs.get_file_info(path))


DIGEST_BLOCK = 4 << 20  # 1, 4 and 8 MiB read alike here (1.5 GiB/s); fewer calls than hashlib.file_digest's 256 KiB


def content_digest(path: str) -> str:
    """The sha256 of a local file's bytes, hex: what tells a file only touched or copied again (same bytes, another
    modification time) from one rewritten. ~1.5 GiB/s on one core of a Xeon from the page cache (2026-12-04): a
    disk's read is the limit; hashlib releases the GIL, so files hash in parallel (`in_parallel`)."""
    import hashlib

    digest, block = hashlib.sha256(), bytearray(DIGEST_BLOCK)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        while read := f.readinto(block):
            digest.update(view[:read])
    return digest.hexdigest()


def look_up(fs: pafs.FileSystem, path: str) -> Tuple[pafs.FileType, Optional[Tuple[int, str]]]:
    """What `path` is, and a file's size and stamp (`size_and_stamp`'s), in one look-up: pyarrow's of an S3 object
    drops the ETag, which took a second HEAD."""
    handler = getattr(fs, "handler", None)
    if isinstance(handler, pafs.FSSpecHandler):
        try:
            info = handler.fs.info(path)
        except FileNotFoundError:
            return pafs.FileType.NotFound, None
        if info.get("type") == "file":
            return pafs.FileType.File, object_stamp(info)
        return pafs.FileType.Directory if info.get("type") == "directory" else pafs.FileType.Unknown, None
    info = fs.get_file_info(path)
    return info.type, _stat_stamp(info) if info.type == pafs.FileType.File else None


def object_stamp(info: dict) -> Tuple[int, str]:
    """An S3 object's size and stamp from s3fs's details of it, a HEAD's or a listing's: both give the ETag as S3
    does, in its quotes, the stamp that `_ce_ray/inputs.json` of earlier runs holds."""
    return info.get("size"), f"{info.get('size')}:{info.get('ETag') or info.get('LastModified') or ''}"


def _stat_stamp(info: pafs.FileInfo) -> Tuple[int, str]:
    return _stamp(info.size, info.mtime_ns)


def _stamp(size: int, mtime_ns: Optional[int]) -> Tuple[int, str]:
    return size, f"{size}:{mtime_ns or ''}"


# The empty objects that tools write on S3 to show a folder (the console's and Hadoop S3A's `<folder>/`, EMRFS's
# `<folder>_$folder$`), which s3fs lists as files: read as data they failed an input given its format, and were
# named as files skipped (an empty name) where it was not given.
FOLDER_MARKERS = ("/", "_$folder$")


def list_tree(fs: pafs.FileSystem, folder: str) -> Dict[str, Tuple[int, str]]:
    """Every file under `folder` (none where there is no folder), at any depth, with its size and stamp as the
    listing gives them (`size_and_stamp`'s, without a request a file). On S3 one listing (a request per 1,000
    objects): pyarrow's listing of a folder asks first whether it is one, which s3fs answers by listing it as well,
    and drops the ETags."""
    handler = getattr(fs, "handler", None)
    if isinstance(handler, pafs.FSSpecHandler):
        try:
            found = handler.fs.find(folder, withdirs=False, detail=True)
        except FileNotFoundError:  # no bucket
            return {}
        return {path: object_stamp(info) for path, info in found.items()
                if info.get("type") == "file" and not path.endswith(FOLDER_MARKERS)}
    return _local_tree(folder)


def _local_tree(folder: str) -> Dict[str, Tuple[int, str]]:
    """`list_tree` of a local folder: its files under their own names, links followed (a file reached by two names,
    `latest -> 2024-01-02`, is read once: `input_files.each_file_once`), but not a link to a folder on the way to it
    or above it, a loop, which pyarrow's listing went round some 40 times, its files read as many times, exit 0.
    A file or folder gone while it is listed (a temporary renamed) is passed over, as pyarrow's listing passed over
    it."""
    files: Dict[str, Tuple[int, str]] = {}

    def walk(path: str, real: str, above: frozenset) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda entry: entry.name)
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                link = entry.is_symlink()
                target = os.path.realpath(entry.path) if link else os.path.join(real, entry.name)
                if entry.is_dir():
                    if not (link and any(target == on_the_way or on_the_way.startswith(target + os.sep)
                                         for on_the_way in above)):
                        walk(entry.path, target, above | {target})
                elif entry.is_file():
                    stat = entry.stat()
                    files[entry.path] = _stamp(stat.st_size, stat.st_mtime_ns)
            except FileNotFoundError:
                continue

    top = os.path.realpath(folder)
    walk(folder, top, frozenset({top}))
    return files


def s3_location(uri: str) -> Tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def s3_endpoint() -> str:
    """The S3 endpoint the environment names (botocore's variables, the S3-only one first); '' for AWS's own."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def _client_endpoint(fs) -> str:
    """The endpoint an s3fs client took: the environment's, else the AWS config file's (`endpoint_url`), which
    errors called AWS S3; '' for AWS's own."""
    endpoint = s3_endpoint()
    with contextlib.suppress(Exception):  # no client made (a configuration botocore refused)
        endpoint = endpoint or fs.s3.meta.endpoint_url
    return "" if re.fullmatch(r"https://s3[\w.-]*\.amazonaws\.com(\.cn)?/?", endpoint) else endpoint


def check_s3_access(uri: str) -> None:
    """Fails fast, before any work, when the S3 endpoint cannot be reached or refuses the credentials.

    The job's own filesystem retries transient errors with backoff for minutes; this one look-up
    (list one key under the prefix) gives up after a few seconds with a message that names the endpoint
    and bucket. Credentials are never part of a message.
    """
    if not uri.startswith(("s3://", "s3a://")):
        return
    import s3fs
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = s3_location(uri)
    if not bucket:  # `s3://`, `s3:///pairs`: botocore's refusal of the name was said as an endpoint not reached
        raise InputError(f"{uri} names no bucket: an S3 location is s3://<bucket>/<prefix>")
    key = re.split(r"[*?\[]", key, maxsplit=1)[0]  # a glob lists from its fixed prefix
    fs = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs={
        "retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 20})
    fs.retries = 1
    try:
        fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
    except (BotoCoreError, ClientError, OSError) as e:
        raise _access_error(e, bucket, _client_endpoint(fs)) from None


def _access_error(e: Exception, bucket: str, written: str) -> InputError:
    """`check_s3_access`'s error of its look-up in `bucket`, at the endpoint `written` ('' for AWS's own)."""
    # An endpoint that holds a user and password (`http://user:pass@host`) is named without them, here and in
    # botocore's words, which repeat it.
    endpoint = re.sub(r"(?<=://)[^/@]*@", "", written) or "AWS S3"
    where = f"s3://{bucket} at {endpoint}"
    if isinstance(e, PermissionError):
        return InputError(f"{where} refused the credentials from the environment or instance role ({e}): check "
                          "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role's permissions")
    if isinstance(e, FileNotFoundError):
        return InputError(f"bucket {bucket} does not exist at {endpoint}")
    said = str(e).replace(written, endpoint) if written else str(e)
    return InputError(f"cannot reach {where}: {type(e).__name__}: {said}")


def _temporary(path: str) -> str:
    folder, name = path.rsplit("/", 1)
    return f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"  # hidden: readers of the folder skip it


def _atomically(fs: pafs.FileSystem, path: str, remote: bool, write, through_links: bool = False) -> None:
    """`write(target)` writes `path` whole or not at all: an S3 object is, a local file is written into a hidden
    temporary moved into place. An error removes the temporary, which a disk that filled left beside the output (a
    file written in place was left cut short), and names `path`, where the filesystem's (ENOSPC) named no file.
    A link at `path` is replaced, unless `through_links` (a path the user named, `eval --output`), when its file is
    written; what is no file (`eval --output /dev/null`, a FIFO a reader waits on) is written in place then, as
    moving a file over it would replace it. A job's own files through links were written where they led: a link
    planted in a shared output folder (`/tmp/scored/_ce_ray/job.json -> ~/notes.txt`) had the job write over its
    target."""
    if not remote and through_links:
        path = os.path.realpath(path)
    in_place = remote or (not os.path.islink(path) and os.path.exists(path) and not os.path.isfile(path))
    target = path if in_place else _temporary(path)
    try:
        write(target)
        if not in_place:
            fs.move(target, path)
    except Exception as e:
        if not in_place:
            with contextlib.suppress(OSError):
                fs.delete_file(target)
        if path not in str(e):
            e.add_note(f"writing {path}")
        raise


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes, remote: bool,
                       through_links: bool = False) -> None:
    def write(target: str) -> None:
        with fs.open_output_stream(target) as f:
            f.write(data)

    _atomically(fs, path, remote, write, through_links)


def write_table_atomic(fs: pafs.FileSystem, path: str, table: pa.Table, remote: bool) -> None:
    _atomically(fs, path, remote, lambda target: pq.write_table(table, target, filesystem=fs))
