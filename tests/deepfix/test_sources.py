from __future__ import annotations

import dataclasses
import http.server
import io
import json
import os
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from deepfix import sources
from deepfix.errors import ImageTooLarge, SourceError, UnsafeSource
from deepfix.sources import (
    Rejected,
    SourceItem,
    SourceLimits,
    check_host,
    list_images,
    open_arrow_source,
    open_source,
    read_item,
)

Encoded = Callable[..., bytes]


def _paths(source: sources.Source) -> list[str]:
    return [item.path for item in source.items]


def _reasons(source: sources.Source) -> dict[str, str]:
    return {r.path: r.reason for r in source.rejected}


@pytest.fixture
def folder(tmp_path: Path, encoded: Encoded) -> Path:
    root = tmp_path / "data"
    files = {
        "a.jpg": encoded(".jpg", seed=1),
        "b.JPEG": encoded(".jpg", seed=2),
        "sub/c.png": encoded(".png", seed=3),
        "sub/deeper/d.tif": encoded(".tiff", seed=4),
        "e.webp": encoded(".webp", seed=5),
        "f.bmp": encoded(".bmp", seed=6),
        "notes.txt": b"not an image",
        ".hidden/x.png": encoded(".png"),
        "._resource.jpg": b"macOS metadata",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


ALL_IN_FOLDER = ["a.jpg", "b.JPEG", "e.webp", "f.bmp", "sub/c.png", "sub/deeper/d.tif"]


# ------------------------------------------------------------------------------ local folders


def test_folder_lists_images_recursively_in_sorted_order(folder: Path) -> None:
    with open_source(str(folder)) as source:
        assert _paths(source) == ALL_IN_FOLDER
        assert source.kind == "folder" and source.rejected == []


@pytest.mark.parametrize(
    ("image_type", "expected"),
    [
        ("jpg", ["a.jpg", "b.JPEG"]),
        ("png", ["sub/c.png"]),
        ("tiff", ["sub/deeper/d.tif"]),
        ("webp", ["e.webp"]),
        ("bmp", ["f.bmp"]),
    ],
)
def test_image_type_filters_by_extension(
    folder: Path, image_type: str, expected: list[str]
) -> None:
    assert _paths(open_source(str(folder), image_type=image_type)) == expected


def test_file_uri_lists_the_same_as_the_path(folder: Path) -> None:
    assert _paths(open_source(folder.as_uri())) == ALL_IN_FOLDER


def test_folder_read_returns_the_file_bytes(folder: Path) -> None:
    source = open_source(str(folder))
    assert source.read(SourceItem("sub/c.png")) == (folder / "sub/c.png").read_bytes()
    assert source.read("a.jpg") == (folder / "a.jpg").read_bytes()


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd.png", "sub/../../outside.png"])
def test_folder_read_refuses_paths_that_escape(folder: Path, path: str) -> None:
    (folder.parent / "outside.png").write_bytes(b"secret")
    with pytest.raises(UnsafeSource):
        open_source(str(folder)).read(path)


def test_folder_read_of_a_missing_or_non_image_file_is_a_source_error(folder: Path) -> None:
    source = open_source(str(folder))
    with pytest.raises(SourceError, match="not found"):
        source.read("missing.png")
    with pytest.raises(SourceError, match="not a any image"):
        source.read("notes.txt")


def test_symlink_leaving_the_folder_is_rejected_but_one_inside_is_listed(
    folder: Path, encoded: Encoded
) -> None:
    outside = folder.parent / "secret.png"
    outside.write_bytes(encoded(".png"))
    (folder / "escape.png").symlink_to(outside)
    (folder / "alias.jpg").symlink_to(folder / "a.jpg")
    source = open_source(str(folder))
    assert "alias.jpg" in _paths(source) and "escape.png" not in _paths(source)
    assert _reasons(source)["escape.png"] == "symlink_outside_root"
    with pytest.raises(UnsafeSource, match="symlink_outside_root"):
        source.read("escape.png")


def test_fifo_named_like_an_image_is_rejected_not_opened(folder: Path) -> None:
    os.mkfifo(folder / "pipe.png")
    source = open_source(str(folder))
    assert _reasons(source)["pipe.png"] == "special_file"
    with pytest.raises(UnsafeSource, match="special_file"):
        source.read("pipe.png")


def test_oversized_file_is_rejected_at_listing_and_at_read(folder: Path) -> None:
    size = (folder / "a.jpg").stat().st_size
    source = open_source(str(folder), limits=SourceLimits(max_item_bytes=size - 1))
    assert _reasons(source)["a.jpg"] == "too_large"
    with pytest.raises(ImageTooLarge):
        source.read("a.jpg")


def test_folder_over_the_item_cap_is_refused(folder: Path) -> None:
    with pytest.raises(UnsafeSource, match="too_many_items"):
        _paths(open_source(str(folder), limits=SourceLimits(max_items=3)))


def test_single_image_file_is_a_source_of_one(folder: Path) -> None:
    source = open_source(str(folder / "a.jpg"))
    assert _paths(source) == ["a.jpg"]
    assert source.read("a.jpg") == (folder / "a.jpg").read_bytes()


@pytest.mark.parametrize(
    ("uri", "match"),
    [("/no/such/folder", "does not exist"), ("ftp://host/x", "unsupported source scheme")],
)
def test_unusable_uris_are_source_errors(uri: str, match: str) -> None:
    with pytest.raises(SourceError, match=match):
        open_source(uri)


def test_unknown_image_type_is_refused_before_any_io() -> None:
    with pytest.raises(ValueError, match="known"):
        open_source("/no/such/folder", image_type="gif")


def test_items_are_plain_serialisable_records(folder: Path) -> None:
    listing = list_images(str(folder))
    assert listing.kind == "folder"
    rows = [dataclasses.asdict(item) for item in listing.items]
    assert json.loads(json.dumps(rows))[0] == {"path": "a.jpg", "size": listing.items[0].size}


def test_read_item_reopens_the_source_from_uri_and_path(folder: Path) -> None:
    data = read_item(str(folder), "sub/c.png")
    assert data == (folder / "sub/c.png").read_bytes()
    assert read_item(str(folder), "sub/c.png") == data


# ------------------------------------------------------------------------------------ archives


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tar(
    path: Path, members: Sequence[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w"
) -> Path:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tf.addfile(info, io.BytesIO(member[1]))
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def test_zip_lists_good_members_and_rejects_zip_slip(tmp_path: Path, encoded: Encoded) -> None:
    good = encoded(".png")
    path = _zip(
        tmp_path / "set.zip",
        {
            "faces/a.png": good,
            "faces/b.jpg": encoded(".jpg"),
            "../evil.png": b"x",
            "/abs.png": b"x",
            "readme.txt": b"hello",
            "__MACOSX/faces/._a.png": b"junk",
        },
        symlinks={"link.png": "/etc/passwd"},
    )
    with open_source(str(path)) as source:
        assert _paths(source) == ["faces/a.png", "faces/b.jpg"]
        assert _reasons(source) == {
            "../evil.png": "path_traversal",
            "/abs.png": "absolute_path",
            "link.png": "symlink",
        }
        assert source.read("faces/a.png") == good
        with pytest.raises(UnsafeSource, match="path_traversal"):
            source.read("../evil.png")
    assert not (tmp_path.parent / "evil.png").exists()


def test_tar_rejects_traversal_links_and_devices(tmp_path: Path, encoded: Encoded) -> None:
    good = encoded(".png")
    path = _tar(
        tmp_path / "set.tar",
        [
            ("ok/a.png", good),
            ("/etc/abs.png", b"x"),
            ("ok/../../up.png", b"x"),
            _special("sym.png", tarfile.SYMTYPE, "/etc/passwd"),
            _special("hard.png", tarfile.LNKTYPE, "ok/a.png"),
            _special("dev.png", tarfile.CHRTYPE),
            _special("fifo.png", tarfile.FIFOTYPE),
        ],
    )
    with tarfile.open(path) as tf:  # the archive really holds the hostile names
        assert "/etc/abs.png" in tf.getnames()
    with open_source(str(path)) as source:
        assert _paths(source) == ["ok/a.png"]
        assert _reasons(source) == {
            "/etc/abs.png": "absolute_path",
            "ok/../../up.png": "path_traversal",
            "sym.png": "symlink",
            "hard.png": "hardlink",
            "dev.png": "special_file",
            "fifo.png": "special_file",
        }
        assert source.read("ok/a.png") == good
        with pytest.raises(UnsafeSource, match="symlink"):
            source.read("sym.png")


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz"])
def test_gzipped_tar_is_read_without_extracting_member_names(
    tmp_path: Path, encoded: Encoded, suffix: str
) -> None:
    members = {f"img/{i}.png": encoded(".png", seed=i) for i in range(3)}
    path = _tar(tmp_path / f"set{suffix}", list(members.items()), mode="w:gz")
    with open_source(str(path), image_type="png") as source:
        assert _paths(source) == sorted(members)
        assert all(source.read(name) == data for name, data in members.items())
    assert not (tmp_path / "img").exists()


def test_archive_over_the_member_cap_is_refused_whole(tmp_path: Path, encoded: Encoded) -> None:
    members = {f"{i}.png": encoded(".png") for i in range(5)}
    limits = SourceLimits(max_items=4)
    with pytest.raises(UnsafeSource, match="too_many_items"):
        open_source(str(_zip(tmp_path / "many.zip", members)), limits=limits)
    with pytest.raises(UnsafeSource, match="too_many_items"):
        open_source(str(_tar(tmp_path / "many.tar", list(members.items()))), limits=limits)


def test_archive_over_the_total_size_cap_is_refused_whole(tmp_path: Path) -> None:
    members = [(f"{i}.png", b"\0" * 1000) for i in range(3)]
    limits = SourceLimits(max_total_bytes=2500)
    with pytest.raises(UnsafeSource, match="archive_too_large"):
        open_source(str(_zip(tmp_path / "big.zip", dict(members))), limits=limits)
    with pytest.raises(UnsafeSource, match="archive_too_large"):
        open_source(str(_tar(tmp_path / "big.tar", members)), limits=limits)


def test_gzip_bomb_stops_at_the_decompression_cap(tmp_path: Path) -> None:
    path = _tar(tmp_path / "bomb.tar.gz", [("zeros.png", b"\0" * (4 << 20))], mode="w:gz")
    assert path.stat().st_size < 64 << 10
    with pytest.raises(UnsafeSource, match="archive_too_large"):
        open_source(str(path), limits=SourceLimits(max_total_bytes=1 << 20, max_items=1))


def test_damaged_archive_is_a_source_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(SourceError, match="zip"):
        open_source(str(bad))


def test_read_item_reads_archive_members(tmp_path: Path, encoded: Encoded) -> None:
    good = encoded(".png")
    path = _zip(tmp_path / "w.zip", {"a.png": good, "../evil.png": b"x"})
    assert read_item(str(path), "a.png") == good
    with pytest.raises(UnsafeSource):
        read_item(str(path), "../evil.png")
    with pytest.raises(SourceError, match="no member"):
        read_item(str(path), "missing.png")


# ------------------------------------------------------------------------------- http(s)


@pytest.fixture
def site(tmp_path: Path, folder: Path, encoded: Encoded) -> Path:
    """Web root: ``data/`` (an auto index), ``custom/`` (a hand-written page), archives."""
    root = folder.parent
    custom = root / "custom"
    custom.mkdir()
    (custom / "x.png").write_bytes(encoded(".png", seed=9))
    (custom / "index.html").write_text(
        '<html><body><a href="x.png">x</a> <a href="http://203.0.113.5/y.png">off-host</a>'
        ' <a href="../data/a.jpg#frag">up</a> <a href="?C=N;O=D">sort</a></body></html>'
    )
    _zip(root / "set.zip", {"a.png": encoded(".png"), "../evil.png": b"x"})
    return root


def test_http_directory_index_is_listed_recursively(site: Path, serve: Callable[..., str]) -> None:
    base = serve(site)
    source = open_source(f"{base}/data/", allow_private=True)
    assert _paths(source) == [f"{base}/data/{p}" for p in ALL_IN_FOLDER]
    assert source.read(source.items[0]) == (site / "data" / ALL_IN_FOLDER[0]).read_bytes()


def test_http_index_keeps_same_host_links_and_rejects_others(
    site: Path, serve: Callable[..., str]
) -> None:
    base = serve(site)
    source = open_source(f"{base}/custom/index.html", allow_private=True)
    assert _paths(source) == [f"{base}/custom/x.png", f"{base}/data/a.jpg"]
    assert source.rejected == [Rejected("http://203.0.113.5/y.png", "other_host")]
    with pytest.raises(UnsafeSource, match="other_host"):
        source.read("http://203.0.113.5/y.png")


def test_http_url_of_one_image_is_a_source_of_one(site: Path, serve: Callable[..., str]) -> None:
    url = serve(site) + "/data/sub/c.png"
    source = open_source(url, allow_private=True)
    assert _paths(source) == [url]
    assert source.read(url) == (site / "data/sub/c.png").read_bytes()


def test_http_archive_is_downloaded_and_read_safely(site: Path, serve: Callable[..., str]) -> None:
    url = serve(site) + "/set.zip"
    with open_source(url, allow_private=True) as source:
        assert _paths(source) == ["a.png"]
        assert _reasons(source) == {"../evil.png": "path_traversal"}
    assert read_item(url, "a.png", allow_private=True)[:4] == b"\x89PNG"


@pytest.mark.parametrize("path", ["/data/", "/set.zip"])
def test_service_path_refuses_a_loopback_url(
    site: Path, serve: Callable[..., str], path: str
) -> None:
    url = serve(site) + path
    with pytest.raises(UnsafeSource, match=r"127\.0\.0\.1.*loopback"):
        open_source(url)
    with pytest.raises(UnsafeSource, match="private_address"):
        read_item(url, "a.png")


def test_service_path_refuses_localhost_by_name(site: Path, serve: Callable[..., str]) -> None:
    port = serve(site).rsplit(":", 1)[1]
    with pytest.raises(UnsafeSource, match="localhost resolves to"):
        open_source(f"http://localhost:{port}/data/")


def test_connected_address_is_checked_again_against_dns_rebinding(
    site: Path, serve: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The name check passes (as if DNS answered a public address), then the connection lands
    # on loopback: the guarded connection must still refuse it.
    monkeypatch.setattr(sources, "check_host", lambda host, port=None: ["198.51.100.1"])
    source = open_source(serve(site) + "/data/")
    with pytest.raises(UnsafeSource, match="loopback"):
        _paths(source)


@pytest.mark.parametrize(
    "address",
    ["10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "224.0.0.1",
     "240.0.0.1", "100.64.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(UnsafeSource, match="private_address"):
        check_host(address)


def test_public_addresses_pass() -> None:
    assert check_host("8.8.8.8", 80) == ["8.8.8.8"]
    assert check_host("2606:4700:4700::1111") == ["2606:4700:4700::1111"]


def test_http_download_stops_at_the_byte_cap(site: Path, serve: Callable[..., str]) -> None:
    url = serve(site) + "/set.zip"
    with pytest.raises(UnsafeSource, match="download_too_large"):
        open_source(url, allow_private=True, limits=SourceLimits(max_download_bytes=100))


def test_http_item_over_the_byte_cap_is_too_large(site: Path, serve: Callable[..., str]) -> None:
    base = serve(site)
    limits = SourceLimits(max_item_bytes=50)
    source = open_source(f"{base}/data/", allow_private=True, limits=limits)
    with pytest.raises(ImageTooLarge):
        source.read(f"{base}/data/a.jpg")


class _SlowHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b"x" * 100)
                self.wfile.flush()
                time.sleep(0.02)
        except OSError:
            pass  # the client hung up, as it should


def test_http_download_stops_at_the_time_cap(tmp_path: Path, serve: Callable[..., str]) -> None:
    url = serve(tmp_path, _SlowHandler) + "/slow.zip"
    started = time.monotonic()
    with pytest.raises(UnsafeSource, match="download_timeout"):
        open_source(url, allow_private=True, limits=SourceLimits(max_download_s=0.2))
    assert time.monotonic() - started < 1.5


def test_http_error_status_is_a_source_error(site: Path, serve: Callable[..., str]) -> None:
    with pytest.raises(SourceError, match="HTTP 404"):
        open_source(serve(site) + "/missing.zip", allow_private=True)


# ------------------------------------------------------------------------- cloud (pyarrow.fs)


def test_arrow_path_lists_and_reads_a_folder(folder: Path) -> None:
    # s3:// and gs:// take this code path; pyarrow's local filesystem stands in offline.
    source = open_arrow_source(folder.as_uri())
    assert source.kind == "cloud"
    assert _paths(source) == ALL_IN_FOLDER
    assert source.read("sub/c.png") == (folder / "sub/c.png").read_bytes()
    with pytest.raises(UnsafeSource):
        source.read("../data/a.jpg")


def test_arrow_path_reads_archives_in_place(tmp_path: Path, encoded: Encoded) -> None:
    good = encoded(".png")
    path = _zip(tmp_path / "cloud.zip", {"a.png": good, "../evil.png": b"x"})
    with open_arrow_source(path.as_uri()) as source:
        assert _paths(source) == ["a.png"] and _reasons(source) == {"../evil.png": "path_traversal"}
        assert source.read("a.png") == good


def test_arrow_path_missing_object_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_arrow_source((tmp_path / "nothing").as_uri())


@pytest.mark.parametrize("kind", ["http", "https"])
def test_connection_to_a_private_peer_is_refused_after_connect(kind: str) -> None:
    """The peer check catches what the pre-request check cannot (rebinding, redirects)."""
    import socket

    from deepfix.sources import _GuardedHTTPConnection, _GuardedHTTPSConnection

    cls = _GuardedHTTPConnection if kind == "http" else _GuardedHTTPSConnection
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        conn = cls("127.0.0.1", listener.getsockname()[1])
        with pytest.raises(UnsafeSource, match="private_address"):
            conn._new_conn()
