"""List and read the images that a dataset spec's ``source`` names, safely.

Kinds of source (``open_source`` picks by scheme and suffix):

- a local folder, a ``file://`` URI or a single local image file: the folder is walked
  recursively in sorted order; links that leave the folder are rejected, not followed;
- an ``http(s)://`` folder served as a directory index (``python -m http.server``, nginx
  ``autoindex``, Apache ``mod_autoindex``): ``<a href>`` links ending in an image extension are
  the items, links to sub-folders below the start page are followed, other hosts are ignored;
- a ``.zip``, ``.tar``, ``.tar.gz`` or ``.tgz`` archive, local, over http(s) or in the cloud:
  members are read straight from the archive and never extracted under their own names;
- ``s3://`` and ``gs://`` folders or archives through ``pyarrow.fs.FileSystem.from_uri``.

Safety rules (OWASP "Path Traversal" and "Server Side Request Forgery" cheat sheets; the
zip-slip advisory by Snyk, 2018; CPython's ``tarfile`` extraction-filter rationale, PEP 706):

- an archive member with an absolute name or a ``..`` component, a symlink, a hardlink or a
  device is *rejected with a reason* and listed in ``Source.rejected``, while the good members
  are still listed, so a batch job can report per file and go on; a member count or total
  uncompressed size over the caps refuses the whole archive (``UnsafeSource``);
- an http(s) host whose address is private, loopback, link-local, reserved, multicast or
  unspecified is refused unless ``allow_private=True`` (the local CLI passes it, the web
  service never does). Every address the name resolves to is checked before connecting, and the
  address actually connected to is checked again, so DNS rebinding and redirects to an internal
  address are refused too;
- downloads stop at a byte cap and a wall-clock cap; environment proxies and ``.netrc`` are not
  used, because a proxy would make the address check meaningless.

Items are plain strings so Ray Data can ship them to workers, which read them back with
``read_item(uri, path)``; that re-opens the source once per process (``functools.lru_cache``).
"""

from __future__ import annotations

import functools
import gzip
import html.parser
import io
import ipaddress
import logging
import os
import re
import socket
import stat
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import requests
import urllib3
from pydantic import BaseModel, ConfigDict, Field
from requests.adapters import HTTPAdapter

from deepfix.errors import ImageTooLarge, SourceError, UnsafeSource
from deepfix.io import extensions_for

__all__ = [
    "ARCHIVE_SUFFIXES",
    "REJECT_REASONS",
    "ArchiveSource",
    "ArrowSource",
    "HttpIndexSource",
    "Listing",
    "LocalFileSource",
    "LocalFolderSource",
    "Rejected",
    "Source",
    "SourceItem",
    "SourceLimits",
    "archive_kind",
    "check_host",
    "list_images",
    "open_arrow_source",
    "open_source",
    "read_item",
]

logger = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

# Why an entry was left out of a listing; the tags are stable, jobs count them.
REJECT_REASONS = {
    "absolute_path": "absolute member name would escape the destination",
    "path_traversal": "a '..' component would escape the destination",
    "bad_name": "the name contains a NUL byte or is empty",
    "symlink": "symbolic links are not followed",
    "symlink_outside_root": "the link points outside the source folder",
    "hardlink": "hard links are not followed",
    "special_file": "not a regular file (device, FIFO, socket)",
    "encrypted": "encrypted archive members cannot be read",
    "duplicate_name": "another member has the same name",
    "too_large": "over the per-image byte cap",
    "other_host": "links to another host are not followed",
}

_HTTP_SCHEMES = ("http", "https")
_CLOUD_SCHEMES = ("s3", "gs")
_CHUNK = 1 << 16


class SourceLimits(BaseModel):
    """Caps that keep a hostile or mistaken source from exhausting memory, disk or time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_items: int = Field(1_000_000, ge=1, description="files in a folder / archive members")
    max_total_bytes: int = Field(64 << 30, ge=1, description="uncompressed archive content")
    max_item_bytes: int = Field(50 << 20, ge=1, description="one image file")
    max_download_bytes: int = Field(8 << 30, ge=1, description="one http(s) archive download")
    max_index_bytes: int = Field(8 << 20, ge=1, description="one directory index page")
    max_index_pages: int = Field(1000, ge=1, description="index pages visited per listing")
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0, description="silence allowed between packets")
    max_download_s: float = Field(1800.0, gt=0, description="wall-clock cap per download")
    max_redirects: int = Field(5, ge=0)


@dataclass(frozen=True)
class SourceItem:
    """One image of a source. ``path`` is relative to the source (folder, archive, cloud
    prefix) or, for an http index, the absolute URL; ``size`` is in bytes when known."""

    path: str
    size: int | None = None


@dataclass(frozen=True)
class Rejected:
    """An entry left out of a listing; ``reason`` is one of ``REJECT_REASONS``."""

    path: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Listing:
    """What ``list_images`` returns: the readable items and the rejected entries."""

    uri: str
    kind: str
    items: list[SourceItem]
    rejected: list[Rejected]


class Source(ABC):
    """An opened source: ``items`` to read, ``rejected`` entries with reasons, ``read``."""

    kind: ClassVar[str]

    def __init__(self, uri: str, *, image_type: str, limits: SourceLimits) -> None:
        self.uri = uri
        self.image_type = image_type
        self.limits = limits
        self._extensions = extensions_for(image_type)
        self._listing: tuple[list[SourceItem], list[Rejected]] | None = None

    @property
    def items(self) -> list[SourceItem]:
        """Readable images in deterministic (sorted) order; listed on first use."""
        return self._listed()[0]

    @property
    def rejected(self) -> list[Rejected]:
        """Entries that look like images (or are unsafe) but were left out, with reasons."""
        return self._listed()[1]

    def listing(self) -> Listing:
        items, rejected = self._listed()
        return Listing(uri=self.uri, kind=self.kind, items=items, rejected=rejected)

    def read(self, item: SourceItem | str) -> bytes:
        """The bytes of one item, by ``SourceItem`` or by its ``path``.

        Raises:
            UnsafeSource: the path escapes the source or names a rejected entry.
            ImageTooLarge: over ``limits.max_item_bytes``.
            SourceError: missing or unreadable.
        """
        path = item.path if isinstance(item, SourceItem) else item
        if not self._wanted(path):
            raise SourceError(f"{path!r} is not a {self.image_type} image of {self.uri}")
        return self._read(path)

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release open files and temporary copies."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[SourceItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def _listed(self) -> tuple[list[SourceItem], list[Rejected]]:
        if self._listing is None:
            items, rejected = self._list()
            items.sort(key=lambda it: it.path)
            rejected.sort(key=lambda r: r.path)
            self._listing = (items, rejected)
            logger.info("%s: %d images, %d rejected", self.uri, len(items), len(rejected))
        return self._listing

    def _wanted(self, path: str) -> bool:
        return _wanted(path, self._extensions)

    def _count(self, n: int) -> None:
        if n > self.limits.max_items:
            raise UnsafeSource(
                f"too_many_items: {self.uri} has more than {self.limits.max_items} entries"
            )

    @abstractmethod
    def _list(self) -> tuple[list[SourceItem], list[Rejected]]: ...

    @abstractmethod
    def _read(self, path: str) -> bytes: ...


def _wanted(path: str, extensions: tuple[str, ...]) -> bool:
    """An image extension, and no hidden component (``.git``, macOS ``._x.jpg``,
    ``__MACOSX/``): those are metadata, never images, and would only fail to decode."""
    if not path.lower().endswith(extensions):
        return False
    parts = path.replace("\\", "/").split("/")
    return not any((p.startswith(".") and p not in (".", "..")) or p == "__MACOSX" for p in parts)


def _name_problem(name: str) -> str | None:
    """The reason an entry name is unsafe to resolve below a root, or None."""
    if not name or "\x00" in name:
        return "bad_name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute_path"
    if ".." in norm.split("/"):
        return "path_traversal"
    return None


def _refuse_name(path: str) -> None:
    problem = _name_problem(path)
    if problem is not None:
        raise UnsafeSource(f"{problem}: {path!r}: {REJECT_REASONS[problem]}")


def _read_capped(f: IO[bytes], cap: int, what: str) -> bytes:
    data = f.read(cap + 1)
    if len(data) > cap:
        raise ImageTooLarge(f"{what} is over the cap of {cap} bytes")
    return data


def archive_kind(name: str) -> str | None:
    """``"zip"``, ``"tar"`` or ``"tar.gz"`` from a file name or URL path, or None."""
    low = name.lower()
    if low.endswith(".zip"):
        return "zip"
    if low.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if low.endswith(".tar"):
        return "tar"
    return None


# ------------------------------------------------------------------------------ local files


class LocalFolderSource(Source):
    """A local folder, walked recursively without following directory links."""

    kind = "folder"

    def __init__(self, root: Path, *, uri: str, image_type: str, limits: SourceLimits) -> None:
        super().__init__(uri, image_type=image_type, limits=limits)
        self.root = root
        self._real_root = os.path.realpath(root)

    def _inside(self, real: str) -> bool:
        return real == self._real_root or real.startswith(self._real_root + os.sep)

    def _list(self) -> tuple[list[SourceItem], list[Rejected]]:
        items: list[SourceItem] = []
        rejected: list[Rejected] = []
        seen = 0
        for dirpath, dirnames, filenames in os.walk(
            self.root, followlinks=False, onerror=self._walk_error
        ):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for d in dirnames:
                if os.path.islink(os.path.join(dirpath, d)):
                    rejected.append(Rejected(rel_dir + d, "symlink", "folder links not followed"))
            for name in filenames:
                seen += 1
                self._count(seen)
                rel = rel_dir + name
                if not self._wanted(rel):
                    continue
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    if not self._inside(os.path.realpath(full)):
                        rejected.append(Rejected(rel, "symlink_outside_root"))
                        continue
                    try:
                        st = os.stat(full)
                    except OSError:
                        rejected.append(Rejected(rel, "symlink", "dangling link"))
                        continue
                if not stat.S_ISREG(st.st_mode):
                    rejected.append(Rejected(rel, "special_file"))
                elif st.st_size > self.limits.max_item_bytes:
                    rejected.append(Rejected(rel, "too_large", f"{st.st_size} bytes"))
                else:
                    items.append(SourceItem(rel, st.st_size))
        return items, rejected

    def _walk_error(self, exc: OSError) -> None:
        # An unreadable sub-folder should not sink the whole listing; say so and go on.
        logger.warning("%s: cannot list %s: %s", self.uri, exc.filename, exc.strerror)

    def _read(self, path: str) -> bytes:
        _refuse_name(path)
        real = os.path.realpath(os.path.join(self.root, path))
        if not self._inside(real):
            raise UnsafeSource(f"symlink_outside_root: {path!r} resolves outside {self.uri}")
        try:
            st = os.stat(real)
            if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block forever
                raise UnsafeSource(f"special_file: {path!r} is not a regular file")
            with open(real, "rb") as f:
                return _read_capped(f, self.limits.max_item_bytes, path)
        except FileNotFoundError as exc:
            raise SourceError(f"{path!r} not found in {self.uri}") from exc
        except OSError as exc:
            raise SourceError(f"cannot read {path!r} in {self.uri}: {exc}") from exc


class LocalFileSource(Source):
    """A single local image file; its one item is the file name."""

    kind = "file"

    def __init__(self, file: Path, *, uri: str, image_type: str, limits: SourceLimits) -> None:
        super().__init__(uri, image_type=image_type, limits=limits)
        self.file = file

    def _list(self) -> tuple[list[SourceItem], list[Rejected]]:
        if not self._wanted(self.file.name):
            return [], []
        size = self.file.stat().st_size
        if size > self.limits.max_item_bytes:
            return [], [Rejected(self.file.name, "too_large", f"{size} bytes")]
        return [SourceItem(self.file.name, size)], []

    def _read(self, path: str) -> bytes:
        if path != self.file.name:
            raise SourceError(f"{path!r} is not the file {self.uri}")
        try:
            with open(self.file, "rb") as f:
                return _read_capped(f, self.limits.max_item_bytes, path)
        except OSError as exc:
            raise SourceError(f"cannot read {self.uri}: {exc}") from exc


# --------------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class _Member:
    ref: Any  # zipfile.ZipInfo or tarfile.TarInfo
    size: int


class ArchiveSource(Source):
    """A zip or tar archive read member by member, never extracted under member names.

    Zip and plain tar are read in place (random access through the central directory or the
    member offsets). A gzip-compressed tar has no random access, so it is decompressed once
    into a private temporary file (capped like the members) and read from there.
    """

    kind = "archive"

    def __init__(
        self,
        opener: Callable[[], IO[bytes]],
        *,
        archive: str,
        uri: str,
        image_type: str,
        limits: SourceLimits,
        keep: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        """Open and index the archive.

        Args:
            opener: returns a fresh seekable binary file of the archive.
            archive: ``"zip"``, ``"tar"`` or ``"tar.gz"``.
            keep: a temporary directory the archive lives in, removed by ``close``.

        Raises:
            UnsafeSource: over the member count or total size caps.
            SourceError: not a readable archive of that kind.
        """
        super().__init__(uri, image_type=image_type, limits=limits)
        self.archive = archive
        self._temps: list[tempfile.TemporaryDirectory[str]] = [keep] if keep else []
        self._lock = threading.Lock()  # tarfile and our seeks share one file position
        self._members: dict[str, _Member] = {}
        self._rejected: dict[str, Rejected] = {}
        self._file: IO[bytes] | None = None
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        try:
            self._file = opener()
            if archive == "zip":
                self._index_zip()
            elif archive in ("tar", "tar.gz"):
                if archive == "tar.gz":
                    self._file = self._gunzip(self._file)
                self._index_tar()
            else:
                raise SourceError(f"unknown archive kind {archive!r}; known: zip, tar, tar.gz")
        except BaseException:
            self.close()
            raise

    def _reject(self, name: str, reason: str, detail: str = "") -> None:
        self._rejected[name] = Rejected(name, reason, detail)

    def _accept(self, name: str, ref: Any, size: int) -> None:
        if name in self._members or name in self._rejected:
            self._members.pop(name, None)
            self._reject(name, "duplicate_name")
        elif size > self.limits.max_item_bytes:
            self._reject(name, "too_large", f"{size} bytes")
        else:
            self._members[name] = _Member(ref, size)

    def _check_total(self, total: int) -> None:
        if total > self.limits.max_total_bytes:
            raise UnsafeSource(
                f"archive_too_large: {self.uri} holds more than {self.limits.max_total_bytes} "
                "uncompressed bytes"
            )

    def _index_zip(self) -> None:
        assert self._file is not None
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise SourceError(f"{self.uri} is not a readable zip archive: {exc}") from exc
        infos = self._zip.infolist()
        self._count(len(infos))
        self._check_total(sum(i.file_size for i in infos))
        for info in infos:
            name = info.filename
            mode = info.external_attr >> 16  # Unix st_mode when made on Unix, else 0
            problem = _name_problem(name)
            if problem:
                self._reject(name, problem)
            elif info.is_dir():
                continue
            elif stat.S_ISLNK(mode):
                self._reject(name, "symlink")
            elif mode and not stat.S_ISREG(mode) and stat.S_IFMT(mode):
                self._reject(name, "special_file")
            elif not self._wanted(name):
                continue
            elif info.flag_bits & 0x1:
                self._reject(name, "encrypted")
            else:
                self._accept(name, info, info.file_size)

    def _gunzip(self, compressed: IO[bytes]) -> IO[bytes]:
        # Cap the decompressed stream, which stops a gzip bomb before it fills the disk. Tar
        # adds a 512-byte header and up to 511 bytes of padding per member, plus long-name and
        # pax records, so allow a generous per-member overhead on top of the content cap.
        cap = self.limits.max_total_bytes + 4096 * self.limits.max_items + (1 << 20)
        tmp = tempfile.TemporaryDirectory(prefix="deepfix-tar-")
        self._temps.append(tmp)
        out = open(os.path.join(tmp.name, "archive.tar"), "w+b")  # noqa: SIM115 - kept open
        total = 0
        try:
            with gzip.GzipFile(fileobj=compressed, mode="rb") as gz:
                while chunk := gz.read(_CHUNK):
                    total += len(chunk)
                    if total > cap:
                        raise UnsafeSource(
                            f"archive_too_large: {self.uri} decompresses to more than {cap} bytes"
                        )
                    out.write(chunk)
        except (OSError, EOFError, zlib.error) as exc:
            out.close()
            raise SourceError(f"{self.uri} is not a readable gzip stream: {exc}") from exc
        except BaseException:
            out.close()
            raise
        finally:
            compressed.close()
        out.seek(0)
        return out

    def _index_tar(self) -> None:
        assert self._file is not None
        try:
            self._tar = tarfile.open(fileobj=self._file, mode="r:")  # noqa: SIM115 - kept open
            count = total = 0
            while (m := self._tar.next()) is not None:
                count += 1
                self._count(count)
                total += m.size if m.isreg() else 0
                self._check_total(total)
                self._classify_tar(m)
        except tarfile.TarError as exc:
            raise SourceError(f"{self.uri} is not a readable tar archive: {exc}") from exc

    def _classify_tar(self, m: tarfile.TarInfo) -> None:
        problem = _name_problem(m.name)
        if problem:
            self._reject(m.name, problem)
        elif m.issym():
            self._reject(m.name, "symlink", f"-> {m.linkname}")
        elif m.islnk():
            self._reject(m.name, "hardlink", f"-> {m.linkname}")
        elif m.isdir():
            return
        elif not m.isreg():
            self._reject(m.name, "special_file")
        elif self._wanted(m.name):
            self._accept(m.name, m, m.size)

    def _list(self) -> tuple[list[SourceItem], list[Rejected]]:
        items = [SourceItem(name, m.size) for name, m in self._members.items()]
        return items, list(self._rejected.values())

    def _read(self, path: str) -> bytes:
        if path in self._rejected:
            r = self._rejected[path]
            raise UnsafeSource(f"{r.reason}: member {path!r} of {self.uri} was rejected")
        member = self._members.get(path)
        if member is None:
            raise SourceError(f"no member {path!r} in {self.uri}")
        cap = self.limits.max_item_bytes
        with self._lock:
            try:
                if self._zip is not None:
                    with self._zip.open(member.ref) as f:
                        return _read_capped(f, cap, path)
                assert self._tar is not None
                member_file = self._tar.extractfile(member.ref)
                assert member_file is not None  # _classify_tar admits regular files only
                with member_file:
                    return _read_capped(member_file, cap, path)
            except (zipfile.BadZipFile, tarfile.TarError, OSError, zlib.error, EOFError) as exc:
                raise SourceError(f"member {path!r} of {self.uri} is damaged: {exc}") from exc

    def close(self) -> None:
        for closable in (self._zip, self._tar, self._file):
            if closable is not None:
                closable.close()
        self._zip = self._tar = self._file = None
        for tmp in self._temps:
            tmp.cleanup()
        self._temps.clear()


def _open_local_archive(
    path: Path, archive: str, *, uri: str, image_type: str, limits: SourceLimits
) -> ArchiveSource:
    def opener() -> IO[bytes]:
        try:
            return open(path, "rb")
        except OSError as exc:
            raise SourceError(f"cannot open {uri}: {exc}") from exc

    return ArchiveSource(opener, archive=archive, uri=uri, image_type=image_type, limits=limits)


# ------------------------------------------------------------------------------------- http


def _address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is off limits to the service, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 reaches the IPv4 loopback
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    return next((kind for kind, hit in checks if hit), None)


def _check_address(address: str, host: str) -> None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    kind = _address_kind(ip)
    if kind is not None:
        raise UnsafeSource(
            f"private_address: {host} resolves to {ip}, a {kind} address; "
            "only public addresses are allowed here"
        )


def check_host(host: str, port: int | None = None) -> list[str]:
    """Resolve ``host`` and refuse it unless every address is public.

    Returns:
        The resolved addresses.

    Raises:
        UnsafeSource: some address is private, loopback, link-local, reserved, multicast or
            unspecified (the message names it).
        SourceError: the name does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SourceError(f"cannot resolve host {host!r}: {exc}") from exc
    addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        _check_address(address, host)
    return addresses


class _PeerCheck:
    """Mixin for urllib3 connections: refuse the socket if the connected peer is private.

    The check before the request cannot stop DNS rebinding (the name may resolve again,
    differently) or a redirect to an internal host; checking the connected peer does.
    """

    host: str

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        try:
            _check_address(str(sock.getpeername()[0]), self.host)
        except BaseException:
            sock.close()
            raise
        return sock


class _GuardedHTTPConnection(_PeerCheck, urllib3.connection.HTTPConnection):
    pass


class _GuardedHTTPSConnection(_PeerCheck, urllib3.connection.HTTPSConnection):
    pass


class _GuardedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPPool,
            "https": _GuardedHTTPSPool,
        }


class _Http:
    """A requests session with the address policy, caps and timeouts of one source."""

    def __init__(self, *, allow_private: bool, limits: SourceLimits) -> None:
        self.allow_private = allow_private
        self.limits = limits
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.max_redirects = limits.max_redirects
        if not allow_private:
            adapter = _GuardedAdapter()
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in _HTTP_SCHEMES or not parts.hostname:
            raise SourceError(f"not an http(s) URL with a host: {url!r}")
        if not self.allow_private:
            check_host(parts.hostname, parts.port)

    def download(
        self, url: str, sink: IO[bytes], *, cap: int, too_large: Callable[[str], Exception]
    ) -> str:
        """Stream ``url`` into ``sink``; returns the final URL after redirects."""
        self.check_url(url)
        started = time.monotonic()
        timeout = (self.limits.connect_timeout_s, self.limits.read_timeout_s)
        try:
            with self.session.get(url, stream=True, timeout=timeout) as response:
                if response.status_code != 200:
                    raise SourceError(f"HTTP {response.status_code} for {url}")
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise too_large(f"{url} declares {declared} bytes, over the cap of {cap}")
                total = 0
                # read1 returns whatever has arrived, so a trickling server cannot hold us
                # past the wall-clock cap inside one large read (iter_content waits to fill).
                while chunk := response.raw.read1(_CHUNK, decode_content=True):
                    total += len(chunk)
                    if total > cap:
                        raise too_large(f"{url} sent more than the cap of {cap} bytes")
                    if time.monotonic() - started > self.limits.max_download_s:
                        raise UnsafeSource(
                            f"download_timeout: {url} took longer than "
                            f"{self.limits.max_download_s:g} s"
                        )
                    sink.write(chunk)
                return str(response.url)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            # raw.read1 raises urllib3's errors (read timeout, protocol) unwrapped by requests.
            raise SourceError(f"cannot fetch {url}: {exc}") from exc

    def get_bytes(self, url: str, *, cap: int, too_large: Callable[[str], Exception]) -> bytes:
        buf = io.BytesIO()
        self.download(url, buf, cap=cap, too_large=too_large)
        return buf.getvalue()


def _unsafe_too_large(reason: str) -> Callable[[str], Exception]:
    return lambda msg: UnsafeSource(f"{reason}: {msg}")


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


class HttpIndexSource(Source):
    """An http(s) folder served as an HTML directory index; items are absolute URLs.

    Image links on the same scheme, host and port are items wherever they point; links to
    folders are followed only below the start page, up to ``limits.max_index_pages`` pages.
    """

    kind = "http_index"

    def __init__(
        self, url: str, *, image_type: str, allow_private: bool, limits: SourceLimits
    ) -> None:
        super().__init__(url, image_type=image_type, limits=limits)
        self._http = _Http(allow_private=allow_private, limits=limits)
        self._http.check_url(url)
        parts = urlsplit(url)
        self._origin = (parts.scheme.lower(), parts.netloc.lower())
        self._prefix = url if parts.path.endswith("/") else urljoin(url, ".")

    def _wanted(self, path: str) -> bool:
        return _wanted(unquote(urlsplit(path).path), self._extensions)

    def _same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme.lower(), parts.netloc.lower()) == self._origin

    def _list(self) -> tuple[list[SourceItem], list[Rejected]]:
        if self._wanted(self.uri):  # the URL of one image, not of an index page
            return [SourceItem(self.uri)], []
        items: dict[str, SourceItem] = {}
        rejected: dict[str, Rejected] = {}
        queue, visited = deque([self.uri]), {self.uri}
        while queue:
            page = queue.popleft()
            body = self._http.get_bytes(
                page,
                cap=self.limits.max_index_bytes,
                too_large=_unsafe_too_large("index_too_large"),
            )
            parser = _LinkParser()
            parser.feed(body.decode("utf-8", errors="replace"))
            for href in parser.hrefs:
                url = urldefrag(urljoin(page, href.strip())).url
                parts = urlsplit(url)
                path = unquote(parts.path)
                if parts.scheme.lower() not in _HTTP_SCHEMES:
                    continue
                if path.endswith("/"):
                    if (
                        self._same_origin(url)
                        and not parts.query
                        and url.startswith(self._prefix)
                        and url not in visited
                        and len(visited) < self.limits.max_index_pages
                    ):
                        visited.add(url)
                        queue.append(url)
                elif self._wanted(url):
                    if not self._same_origin(url):
                        rejected[url] = Rejected(url, "other_host")
                    else:
                        items[url] = SourceItem(url)
                        self._count(len(items))
        return list(items.values()), list(rejected.values())

    def _read(self, path: str) -> bytes:
        if not self._same_origin(path):
            raise UnsafeSource(f"other_host: {path} is not on the host of {self.uri}")
        return self._http.get_bytes(path, cap=self.limits.max_item_bytes, too_large=ImageTooLarge)


def _open_http_archive(
    url: str, archive: str, *, image_type: str, allow_private: bool, limits: SourceLimits
) -> ArchiveSource:
    # Downloaded once per opening into a private temporary folder; workers that read items
    # with read_item() therefore download the archive once per process.
    http = _Http(allow_private=allow_private, limits=limits)
    tmp = tempfile.TemporaryDirectory(prefix="deepfix-dl-")
    try:
        path = os.path.join(tmp.name, "archive")
        with open(path, "wb") as sink:
            http.download(
                url,
                sink,
                cap=limits.max_download_bytes,
                too_large=_unsafe_too_large("download_too_large"),
            )
        return ArchiveSource(
            lambda: open(path, "rb"),
            archive=archive,
            uri=url,
            image_type=image_type,
            limits=limits,
            keep=tmp,
        )
    except BaseException:
        tmp.cleanup()
        raise


# ---------------------------------------------------------------------------- cloud (arrow)


class ArrowSource(Source):
    """A folder (prefix) on any ``pyarrow.fs`` filesystem: S3, GCS, or local for tests."""

    kind = "cloud"

    def __init__(
        self, fs: Any, root: str, *, uri: str, image_type: str, limits: SourceLimits
    ) -> None:
        super().__init__(uri, image_type=image_type, limits=limits)
        self.fs = fs
        self.root = root.rstrip("/")

    def _list(self) -> tuple[list[SourceItem], list[Rejected]]:
        from pyarrow import fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot list {self.uri}: {exc}") from exc
        self._count(len(infos))
        items: list[SourceItem] = []
        rejected: list[Rejected] = []
        for info in infos:
            rel = info.path[len(self.root) + 1 :]
            if info.type != pafs.FileType.File or not self._wanted(rel):
                continue
            if info.size is not None and info.size > self.limits.max_item_bytes:
                rejected.append(Rejected(rel, "too_large", f"{info.size} bytes"))
            else:
                items.append(SourceItem(rel, info.size))
        return items, rejected

    def _read(self, path: str) -> bytes:
        _refuse_name(path)
        try:
            with self.fs.open_input_stream(f"{self.root}/{path}") as f:
                return _read_capped(f, self.limits.max_item_bytes, path)
        except FileNotFoundError as exc:
            raise SourceError(f"{path!r} not found in {self.uri}") from exc
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot read {path!r} in {self.uri}: {exc}") from exc


def open_arrow_source(
    uri: str, *, image_type: str = "any", limits: SourceLimits | None = None
) -> Source:
    """Open a folder or archive through ``pyarrow.fs.FileSystem.from_uri``.

    This is the ``s3://`` / ``gs://`` path of ``open_source``; it accepts any URI pyarrow
    understands (``file://`` included, which is how it is tested offline).
    """
    from pyarrow import fs as pafs

    limits = limits or SourceLimits()
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot open {uri}: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"{uri} does not exist")
    archive = archive_kind(path)
    if archive is not None and info.type == pafs.FileType.File:
        # Random-access file: zipfile and tarfile seek in it, reading only what they need.
        return ArchiveSource(
            lambda: fs.open_input_file(path),
            archive=archive,
            uri=uri,
            image_type=image_type,
            limits=limits,
        )
    if info.type != pafs.FileType.Directory:
        raise SourceError(f"{uri} is neither a folder nor a .zip/.tar/.tar.gz/.tgz archive")
    return ArrowSource(fs, path, uri=uri, image_type=image_type, limits=limits)


# ------------------------------------------------------------------------------ entry points


def _file_uri_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise SourceError(f"file:// URI with a remote host is not supported: {uri}")
    return Path(url2pathname(unquote(parts.path)))


def _open_local(path: Path, *, uri: str, image_type: str, limits: SourceLimits) -> Source:
    if path.is_dir():
        return LocalFolderSource(path, uri=uri, image_type=image_type, limits=limits)
    if not path.exists():
        raise SourceError(f"{uri} does not exist")
    archive = archive_kind(path.name)
    if archive is not None:
        return _open_local_archive(path, archive, uri=uri, image_type=image_type, limits=limits)
    if path.is_file() and _wanted(path.name, extensions_for("any")):
        return LocalFileSource(path, uri=uri, image_type=image_type, limits=limits)
    raise SourceError(f"{uri} is neither a folder, an image nor a .zip/.tar/.tar.gz/.tgz archive")


def open_source(
    uri: str,
    *,
    image_type: str = "any",
    allow_private: bool = False,
    limits: SourceLimits | None = None,
) -> Source:
    """Open the source a spec names; list with ``.items``/``.rejected``, read with ``.read``.

    Args:
        uri: a folder path, ``file://``, ``http(s)://`` (directory index or archive),
            ``s3://`` or ``gs://`` URI, or a path or URL ending in .zip/.tar/.tar.gz/.tgz.
        image_type: ``any``, ``jpg``, ``png``, ``bmp``, ``tiff`` or ``webp`` (by extension).
        allow_private: allow http(s) hosts on private, loopback and similar addresses. Only
            the local CLI sets this; the web service never does.
        limits: caps on items, sizes and time.

    Raises:
        UnsafeSource: refused by the address policy or a cap.
        SourceError: missing, unreachable or not a source this module can read.
    """
    extensions_for(image_type)  # ValueError on an unknown name, before any I/O
    limits = limits or SourceLimits()
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme in _HTTP_SCHEMES:
        archive = archive_kind(unquote(urlsplit(uri).path))
        if archive is not None:
            return _open_http_archive(
                uri, archive, image_type=image_type, allow_private=allow_private, limits=limits
            )
        return HttpIndexSource(
            uri, image_type=image_type, allow_private=allow_private, limits=limits
        )
    if scheme in _CLOUD_SCHEMES:
        return open_arrow_source(uri, image_type=image_type, limits=limits)
    if scheme == "file":
        return _open_local(_file_uri_path(uri), uri=uri, image_type=image_type, limits=limits)
    if scheme:
        raise SourceError(f"unsupported source scheme {scheme!r} in {uri}")
    return _open_local(Path(uri).expanduser(), uri=uri, image_type=image_type, limits=limits)


def list_images(
    uri: str,
    *,
    image_type: str = "any",
    allow_private: bool = False,
    limits: SourceLimits | None = None,
) -> Listing:
    """Open, list and close a source: the images and the rejected entries with reasons."""
    with open_source(
        uri, image_type=image_type, allow_private=allow_private, limits=limits
    ) as source:
        return source.listing()


@functools.lru_cache(maxsize=16)
def _cached_source(uri: str, image_type: str, allow_private: bool, limits: SourceLimits) -> Source:
    # One open source per process and arguments: a local archive keeps its handle open, an
    # http archive is downloaded once per worker process. Evicted sources clean up on GC.
    return open_source(uri, image_type=image_type, allow_private=allow_private, limits=limits)


def read_item(
    uri: str,
    path: str,
    *,
    image_type: str = "any",
    allow_private: bool = False,
    limits: SourceLimits | None = None,
) -> bytes:
    """Read one item of a source by ``(uri, item path)``, as a Ray worker does.

    The source is opened once per process and reused. Same errors as ``Source.read``.
    """
    source = _cached_source(uri, image_type, allow_private, limits or SourceLimits())
    return source.read(path)
