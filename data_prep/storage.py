"""One set of file operations for local paths and ``s3://`` (fsspec / s3fs), with atomic writes.

S3 settings come from the usual AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``) plus ``AWS_ENDPOINT_URL`` for an S3-compatible server (MinIO, moto).
:func:`s3_env` returns those variables so a driver can hand them to Ray workers (which apply them
with :func:`pvq_common.env.scoped_env` while they work).
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from typing import Iterator

import fsspec

from pvq_common.env import is_remote

S3_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
               "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED")


class StorageError(OSError):
    """A path cannot be read or written; the message names the path and the likely fix."""


class HostNotAllowed(StorageError):
    """An http(s) request (or a redirect it received) would go to a host outside ``allowed_hosts``."""


def host_allowed(uri: str, allowed: list[str] | tuple[str, ...] | None) -> bool:
    """Whether an http(s) ``uri`` may be fetched under ``allowed`` (``name`` or ``name:port``; empty:
    any host). Other schemes are not network fetches and always pass."""
    from urllib.parse import urlsplit

    if not allowed or not uri.lower().startswith(("http://", "https://")):
        return True
    u = urlsplit(uri)
    host = (u.hostname or "").lower()
    names = {a.lower() for a in allowed}
    return host in names or (u.port is not None and f"{host}:{u.port}" in names)


def host_refusal(exc: BaseException | None) -> HostNotAllowed | None:
    """The :class:`HostNotAllowed` behind ``exc`` (fsspec wraps it, e.g. in a FileNotFoundError), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, HostNotAllowed):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@functools.lru_cache(maxsize=None)
def _guarded_client(allowed: tuple[str, ...]):
    """fsspec's ``get_client`` for an aiohttp session that refuses to follow a redirect to a host
    outside ``allowed``: checked on the redirect response, before the next request is made."""
    async def get_client(**kwargs):
        import aiohttp

        async def on_redirect(session, ctx, params) -> None:
            target = str(params.url.join(type(params.url)(params.response.headers.get("Location", ""))))
            if not host_allowed(target, allowed):
                raise HostNotAllowed(f"{redact(str(params.url))} redirects to {redact(target)}: host not in "
                                     f"allowed_hosts {list(allowed)}")

        trace = aiohttp.TraceConfig()
        trace.on_request_redirect.append(on_redirect)
        return aiohttp.ClientSession(trace_configs=[*kwargs.pop("trace_configs", []), trace], **kwargs)
    return get_client


# query parameters whose values are secrets (presigned URLs, tokens, API keys), matched ignoring case
SECRET_QUERY_KEYS = ("x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "sig", "token",
                     "access_token", "id_token", "refresh_token", "api_key", "api-key", "apikey", "key", "secret",
                     "password", "passwd", "pwd", "auth", "client_secret")
_SECRET_QUERY = re.compile("(?i)^(" + "|".join(SECRET_QUERY_KEYS) + ")$")
_URI = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s'\"<>]+)")
REDACTED = "***"


def _credentials_regex() -> str:
    """A URI with userinfo (``user:pw@``, ``token@``) or a secret query key anywhere in a string; no
    inline flags (case folded by hand), so the same text is a valid JSON-schema / JavaScript pattern."""
    uri, stop = r"\b[a-zA-Z][a-zA-Z0-9+.-]*://", "\\s'\"<>"  # where _URI's match of a URI ends
    keys = "|".join("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in k) for k in SECRET_QUERY_KEYS)
    return rf"{uri}[^{stop}?/]*@|{uri}[^{stop}?]*\?([^{stop}#]*&)?({keys})="


_CREDENTIALS = re.compile(_credentials_regex())
NO_CREDENTIALS_PATTERN = rf"^(?![\s\S]*({_credentials_regex()}))"
"""A pattern that a string matches only when it carries no credential in a URI (for JSON schemas)."""


def has_credentials(text: str) -> bool:
    """Whether ``text`` holds a URI with a password or token in it: everything :func:`redact` hides
    (userinfo, secret query values), plus such a URI nested in another's query."""
    return isinstance(text, str) and _CREDENTIALS.search(text) is not None


def _redact_one(scheme: str, rest: str) -> str:
    head, sep, query = rest.partition("?")
    authority, slash, path = head.partition("/")
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user = userinfo.split(":", 1)[0]
        authority = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
    out = scheme + authority + slash + path
    if sep:
        fragment = ""
        if "#" in query:
            query, fragment = query.split("#", 1)
            fragment = "#" + fragment
        parts = []
        for kv in query.split("&"):
            k, eq, v = kv.partition("=")
            parts.append(f"{k}={REDACTED}" if eq and _SECRET_QUERY.match(k) else kv)
        out += "?" + "&".join(parts) + fragment
    return out


def redact(text: str) -> str:
    """``text`` with the password of every URI's userinfo (``http://user:pw@host``) and the values of
    secret-looking query parameters (``?token=``, ``X-Amz-Signature=``, ...) replaced by ``***``.

    For everything that is logged, printed or stored as a run parameter; never for the URI that is used.
    """
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URI.sub(lambda m: _redact_one(m.group(1), m.group(2)), text)


def redact_tree(value):
    """:func:`redact` applied to every string in a nested dict / list (a config, an environment)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v) for v in value)
    return value


def s3_env() -> dict[str, str]:
    return {k: os.environ[k] for k in S3_ENV_KEYS if k in os.environ}


def strip_file(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def fs_of(uri: str, allowed_hosts: list[str] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for ``uri``; with ``allowed_hosts``, an http(s) filesystem
    whose requests never follow a redirect to another host (:class:`HostNotAllowed`)."""
    uri = strip_file(uri)
    if uri.startswith("s3://"):
        opts: dict = {"use_listings_cache": False, "skip_instance_cache": False}
        if os.environ.get("AWS_ENDPOINT_URL"):
            opts["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            # explicit, so that s3fs's instance cache (keyed by these options) never hands out a
            # filesystem that still holds credentials the environment no longer has
            opts.update(key=os.environ["AWS_ACCESS_KEY_ID"], secret=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                        token=os.environ.get("AWS_SESSION_TOKEN"))
        fs = fsspec.filesystem("s3", **opts)
        return fs, uri[len("s3://"):]
    if "://" in uri:
        proto = uri.split("://", 1)[0]
        if allowed_hosts and proto.lower() in ("http", "https"):
            return fsspec.filesystem(proto, get_client=_guarded_client(tuple(allowed_hosts))), uri
        return fsspec.filesystem(proto), uri
    return fsspec.filesystem("file"), os.path.abspath(uri)


def _with_proto(uri: str, path: str) -> str:
    return f"s3://{path}" if strip_file(uri).startswith("s3://") else path


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(strip_file(base), *parts)


def dirname(uri: str) -> str:
    return posixpath.dirname(uri.rstrip("/")) if is_remote(uri) else os.path.dirname(os.path.abspath(strip_file(uri)))


def _wrap(uri: str, e: Exception) -> StorageError:
    hint = ""
    text = str(e)
    if uri.startswith("s3://") and (isinstance(e, PermissionError) or any(
            w in text for w in ("credentials", "Credentials", "AccessDenied", "InvalidAccessKeyId", "Forbidden",
                                "403", "SignatureDoesNotMatch", "signature"))):
        hint = " (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL)"
    return StorageError(f"{uri}: {type(e).__name__}: {text}{hint}")


def exists(uri: str) -> bool:
    fs, p = fs_of(uri)
    try:
        return fs.exists(p)
    except Exception as e:  # noqa: BLE001 - credentials/endpoint errors become StorageError
        raise _wrap(uri, e) from None


def isdir(uri: str) -> bool:
    fs, p = fs_of(uri)
    try:
        return fs.isdir(p)
    except Exception as e:  # noqa: BLE001
        raise _wrap(uri, e) from None


def find(uri: str) -> list[str]:
    """All files under ``uri``, sorted, with the protocol kept."""
    fs, p = fs_of(uri)
    try:
        return sorted(_with_proto(uri, f) for f in fs.find(p))
    except Exception as e:  # noqa: BLE001
        raise _wrap(uri, e) from None


def _stat(i: dict) -> dict:
    version = i.get("ETag") or i.get("etag") or i.get("mtime") or i.get("LastModified") or ""
    return {"size": int(i.get("size") or 0), "version": str(version).strip('"')}


def info(uri: str, allowed_hosts: list[str] | None = None) -> dict:
    """``{"size": int, "version": str}``: version is the mtime (local) or the ETag (S3)."""
    fs, p = fs_of(uri, allowed_hosts)
    return _stat(fs.info(p))


def find_remote_info(uri: str) -> dict[str, dict]:
    """Every file under a remote ``uri`` with its :func:`info`, taken from the listing itself (S3: the
    size and ETag of each LIST response, 1000 objects a request, instead of a HEAD per object)."""
    fs, p = fs_of(uri)
    try:
        found = fs.find(p, detail=True)
    except Exception as e:  # noqa: BLE001
        raise _wrap(uri, e) from None
    return {_with_proto(uri, f): _stat(i) for f, i in sorted(found.items())}


def read_bytes(uri: str, start: int | None = None, end: int | None = None) -> bytes:
    fs, p = fs_of(uri)
    try:
        return fs.cat_file(p, start=start, end=end)
    except Exception as e:  # noqa: BLE001
        raise _wrap(uri, e) from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8", errors="replace")


def open_read(uri: str):
    fs, p = fs_of(uri)
    return fs.open(p, "rb")


@contextmanager
def atomic_write(uri: str) -> Iterator:
    """Open ``uri`` for binary writing; it appears under its name only once complete.

    Local: a hidden temporary file in the same folder, renamed over the target on success (removed on
    error). S3: objects are only visible after the upload completes, so we write the key directly.
    """
    fs, p = fs_of(uri)
    if is_remote(uri):
        with fs.open(p, "wb") as f:
            yield f
        return
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(uri: str, data: bytes) -> None:
    with atomic_write(uri) as f:
        f.write(data)


def remove_temporaries(uri: str) -> int:
    """Delete leftover ``.*.tmp-*`` files of killed writers under a local folder; returns the count."""
    if is_remote(uri) or not os.path.isdir(strip_file(uri)):
        return 0
    n = 0
    for root, _, files in os.walk(strip_file(uri)):
        for name in files:
            if name.startswith(".") and ".tmp-" in name:
                os.unlink(os.path.join(root, name))
                n += 1
    return n


@contextmanager
def local_copy(uri: str, tmp_dir: str, allowed_hosts: list[str] | None = None) -> Iterator[str]:
    """A local file path for ``uri``: the path itself when local, else a temporary download (http(s)
    redirects checked against ``allowed_hosts``, see :func:`fs_of`)."""
    if not is_remote(uri):
        yield strip_file(uri)
        return
    d = tempfile.mkdtemp(prefix="pvq-src-", dir=scratch_dir(tmp_dir))
    try:
        local = os.path.join(d, "src" + posixpath.splitext(uri.split("?")[0])[1])
        fs, p = fs_of(uri, allowed_hosts)
        fs.get_file(p, local)
        yield local
    finally:
        shutil.rmtree(d, ignore_errors=True)


def scratch_dir(preferred: str) -> str:
    usable = preferred and os.path.isdir(preferred) and os.access(preferred, os.W_OK)
    return preferred if usable else tempfile.gettempdir()
