"""The dataset web page's REST API and form posts, over real HTTP against the real etcd.

The routers run in a plain FastAPI app under uvicorn on a loopback port (``webapp_helpers``);
the preview uses ``LocalPipeline``, a library-built stand-in for the Serve ingress's pipeline.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from config_store import ConfigStore
from config_store.server import free_port
from deepfix.spec import DatasetSpec
from tests.serve import webapp_helpers as web


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return web.LocalPipeline()


@pytest.fixture(scope="module")
def base_url(store: ConfigStore, pipeline: Any) -> Iterator[str]:
    with web.running(web.make_app(store, pipeline)) as url:
        yield url


@pytest.fixture(scope="module")
def bare_url(store: ConfigStore) -> Iterator[str]:
    """The routers without ``app.state.pipeline``."""
    with web.running(web.make_app(store, None)) as url:
        yield url


@pytest.fixture(scope="module")
def down_url() -> Iterator[str]:
    """The routers with a store whose etcd is not there."""
    dead = ConfigStore(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    with web.running(web.make_app(dead, None)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


@pytest.fixture
def name(store: ConfigStore) -> Iterator[str]:
    """A fresh document name, deleted again after the test."""
    n = f"web-{uuid.uuid4().hex[:10]}"
    yield n
    if store.exists("datasets", n):
        store.delete("datasets", n)


@pytest.fixture
def existing(store: ConfigStore, name: str) -> str:
    store.create("datasets", name, {"name": name, "source": "/data/faces", "details": "first"})
    return name


def _token(client: httpx.Client, path: str = "/new") -> str:
    """Load a page (which sets the CSRF cookie in the client) and return its form token."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert match
    return match.group(1)


def _form(**values: str) -> dict[str, str]:
    """A complete form as the browser posts it: the spec's defaults plus ``values``."""
    from serve.web.routes import default_values

    return {**default_values(), **values}


def _png(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    raw = np.frombuffer(base64.b64decode(data_url.split(",", 1)[1]), np.uint8)
    image = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    assert image is not None
    return image


# ---------------------------------------------------------------------------------- REST API


def test_list_returns_every_document_with_its_revision(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    resp = client.get("/api/datasets")
    assert resp.status_code == 200
    items = {i["name"]: i for i in resp.json()["items"]}
    assert items[existing]["revision"] == store.get("datasets", existing).revision
    assert items[existing]["value"]["source"] == "/data/faces"


def test_get_returns_revision_in_body_and_etag_header(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    resp = client.get(f"/api/datasets/{existing}")
    assert resp.status_code == 200
    revision = store.get("datasets", existing).revision
    assert resp.json()["revision"] == revision
    assert resp.headers["etag"] == f'"{revision}"'
    assert resp.json()["value"]["height"] == 256  # stored with the spec's defaults


def test_get_with_matching_if_none_match_is_304(client: httpx.Client, existing: str) -> None:
    etag = client.get(f"/api/datasets/{existing}").headers["etag"]
    assert (
        client.get(f"/api/datasets/{existing}", headers={"If-None-Match": etag}).status_code == 304
    )


def test_get_unknown_is_404_with_json_error(client: httpx.Client, name: str) -> None:
    resp = client.get(f"/api/datasets/{name}")
    assert resp.status_code == 404
    assert resp.json()["error"] == "not_found"
    assert name in resp.json()["detail"]


def test_create_is_201_with_location_and_etag(
    client: httpx.Client, store: ConfigStore, name: str
) -> None:
    resp = client.post("/api/datasets", json={"name": name, "source": "/data/x", "height": 128})
    assert resp.status_code == 201, resp.text
    doc = store.get("datasets", name)
    assert doc.value["height"] == 128
    assert resp.headers["location"] == f"/api/datasets/{name}"
    assert resp.headers["etag"] == f'"{doc.revision}"'


def test_create_existing_name_is_409(client: httpx.Client, existing: str) -> None:
    resp = client.post("/api/datasets", json={"name": existing, "source": "/other"})
    assert resp.status_code == 409
    assert resp.json()["error"] == "already_exists"


def test_create_invalid_is_422_with_field_errors(
    client: httpx.Client, store: ConfigStore, name: str
) -> None:
    resp = client.post(
        "/api/datasets",
        json={"name": name, "source": "/d", "height": 2, "split": {"train": 0.9}},
    )
    assert resp.status_code == 422
    body = resp.json()
    assert body["error"] == "invalid"
    locs = [e["loc"] for e in body["errors"]]
    assert ["height"] in locs and ["split"] in locs
    assert not store.exists("datasets", name)


def test_create_without_name_is_422(client: httpx.Client) -> None:
    resp = client.post("/api/datasets", json={"source": "/d"})
    assert resp.status_code == 422
    assert resp.json()["errors"] == [{"loc": ["name"], "msg": "Field required"}]


def test_create_with_a_non_slug_name_is_422(client: httpx.Client) -> None:
    resp = client.post("/api/datasets", json={"name": "Not A Slug", "source": "/d"})
    assert resp.status_code == 422


def test_create_with_form_encoding_is_415(client: httpx.Client, name: str) -> None:
    # Also the API's CSRF defence: a cross-site HTML form cannot send application/json.
    resp = client.post("/api/datasets", data={"name": name, "source": "/d"})
    assert resp.status_code == 415
    assert resp.json()["error"] == "unsupported_media_type"


def test_create_with_malformed_json_is_400(client: httpx.Client) -> None:
    resp = client.post(
        "/api/datasets", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "bad_json"


def test_create_with_a_json_array_is_422(client: httpx.Client) -> None:
    resp = client.post("/api/datasets", json=[1, 2])
    assert resp.status_code == 422


def test_create_with_an_oversized_body_is_413(client: httpx.Client, name: str) -> None:
    resp = client.post("/api/datasets", json={"name": name, "source": "/d", "details": "x" * 2**21})
    assert resp.status_code == 413


def test_create_with_a_document_over_the_store_cap_is_413(
    client: httpx.Client, store: ConfigStore, name: str
) -> None:
    # Under the 1 MiB body cap, over the store's 256 KiB document cap (model_path is the one
    # string field the spec leaves unbounded).
    long = "/m" * 150_000
    resp = client.post(
        "/api/datasets",
        json={"name": name, "source": "/d", "face_detection": {"model_path": long}},
    )
    assert resp.status_code == 413
    assert resp.json()["error"] == "document_too_large"
    assert not store.exists("datasets", name)


def test_put_without_if_match_is_428(client: httpx.Client, existing: str) -> None:
    resp = client.put(f"/api/datasets/{existing}", json={"source": "/new"})
    assert resp.status_code == 428
    assert resp.json()["error"] == "precondition_required"


def test_put_with_the_current_etag_updates_and_returns_the_new_etag(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    etag = client.get(f"/api/datasets/{existing}").headers["etag"]
    resp = client.put(
        f"/api/datasets/{existing}", json={"source": "/new"}, headers={"If-Match": etag}
    )
    assert resp.status_code == 200, resp.text
    doc = store.get("datasets", existing)
    assert doc.value["source"] == "/new"
    assert resp.headers["etag"] == f'"{doc.revision}"' != etag


def test_put_with_a_stale_etag_is_412_and_writes_nothing(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    etag = client.get(f"/api/datasets/{existing}").headers["etag"]
    store.modify("datasets", existing, lambda v: {**v, "details": "changed meanwhile"})
    resp = client.put(
        f"/api/datasets/{existing}", json={"source": "/mine"}, headers={"If-Match": etag}
    )
    assert resp.status_code == 412
    body = resp.json()
    assert body["error"] == "precondition_failed"
    assert body["current_revision"] == store.get("datasets", existing).revision
    assert store.get("datasets", existing).value["source"] == "/data/faces"


@pytest.mark.parametrize("header", ['W/"1"', '"abc"', "soon"])
def test_put_with_a_weak_or_foreign_if_match_is_412(
    client: httpx.Client, existing: str, header: str
) -> None:
    resp = client.put(
        f"/api/datasets/{existing}", json={"source": "/x"}, headers={"If-Match": header}
    )
    assert resp.status_code == 412


def test_put_with_if_match_star_updates_whatever_is_current(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    resp = client.put(
        f"/api/datasets/{existing}", json={"source": "/star"}, headers={"If-Match": "*"}
    )
    assert resp.status_code == 200
    assert store.get("datasets", existing).value["source"] == "/star"


def test_put_of_an_unknown_name_is_404(client: httpx.Client, name: str) -> None:
    resp = client.put(f"/api/datasets/{name}", json={"source": "/x"}, headers={"If-Match": '"5"'})
    assert resp.status_code == 404


def test_put_invalid_is_422(client: httpx.Client, existing: str) -> None:
    etag = client.get(f"/api/datasets/{existing}").headers["etag"]
    resp = client.put(
        f"/api/datasets/{existing}",
        json={"source": "/x", "crop": {"mode": "custom"}},
        headers={"If-Match": etag},
    )
    assert resp.status_code == 422
    assert [e["loc"] for e in resp.json()["errors"]] == [["crop"]]


def test_put_renaming_through_the_body_is_422(client: httpx.Client, existing: str) -> None:
    etag = client.get(f"/api/datasets/{existing}").headers["etag"]
    resp = client.put(
        f"/api/datasets/{existing}",
        json={"name": "someone-else", "source": "/x"},
        headers={"If-Match": etag},
    )
    assert resp.status_code == 422


def test_delete_is_204_and_the_document_is_gone(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    assert client.delete(f"/api/datasets/{existing}").status_code == 204
    assert not store.exists("datasets", existing)
    assert client.get(f"/api/datasets/{existing}").status_code == 404


def test_delete_with_the_current_etag_is_204(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    etag = client.get(f"/api/datasets/{existing}").headers["etag"]
    resp = client.delete(f"/api/datasets/{existing}", headers={"If-Match": etag})
    assert resp.status_code == 204
    assert not store.exists("datasets", existing)


def test_delete_with_a_stale_etag_is_412_and_keeps_the_document(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    etag = client.get(f"/api/datasets/{existing}").headers["etag"]
    store.modify("datasets", existing, lambda v: {**v, "details": "changed"})
    resp = client.delete(f"/api/datasets/{existing}", headers={"If-Match": etag})
    assert resp.status_code == 412
    assert store.exists("datasets", existing)


def test_delete_of_an_unknown_name_is_404(client: httpx.Client, name: str) -> None:
    assert client.delete(f"/api/datasets/{name}").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/datasets"), ("GET", "/api/datasets/x"), ("DELETE", "/api/datasets/x")],
)
def test_store_unavailable_is_503(down_url: str, method: str, path: str) -> None:
    resp = httpx.request(method, down_url + path, timeout=30)
    assert resp.status_code == 503
    assert resp.json()["error"] == "store_unavailable"


def test_store_unavailable_page_is_503_html(down_url: str) -> None:
    resp = httpx.get(down_url + "/", timeout=30)
    assert resp.status_code == 503
    assert "text/html" in resp.headers["content-type"]
    assert "configuration store is unavailable" in resp.text


# ----------------------------------------------------------------------------------- preview


def test_preview_returns_face_crop_degraded_and_enhanced_images(
    client: httpx.Client, pipeline: Any
) -> None:
    token = _token(client)
    form = _form(height="128", width="96", seed="7")
    resp = client.post(
        "/api/preview",
        data=form,
        files={"image": ("face.png", web.face_png(), "image/png")},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["policy"] == "faces" and len(body["boxes"]) == 1
    for key in ("face", "degraded", "enhanced"):
        assert _png(body[key]).shape == (128, 96, 3)
    assert body["applied"], "at least one degradation always fires"
    assert not np.array_equal(_png(body["face"]), _png(body["degraded"]))
    assert {"detect", "degrade", "enhance"} <= set(pipeline.calls)


def test_preview_with_only_an_image_uses_the_default_spec(client: httpx.Client) -> None:
    token = _token(client)
    resp = client.post(
        "/api/preview",
        files={"image": ("face.png", web.face_png(), "image/png")},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 200
    assert _png(resp.json()["face"]).shape == (256, 256, 3)


def test_preview_without_a_pipeline_is_503(bare_url: str) -> None:
    with httpx.Client(base_url=bare_url, timeout=30) as c:
        token = _token(c)
        resp = c.post(
            "/api/preview",
            files={"image": ("face.png", web.face_png(), "image/png")},
            headers={"X-CSRF-Token": token},
        )
    assert resp.status_code == 503
    assert resp.json()["error"] == "pipeline_unavailable"


def test_preview_without_the_csrf_token_is_403(client: httpx.Client) -> None:
    _token(client)
    resp = client.post("/api/preview", files={"image": ("f.png", web.face_png(), "image/png")})
    assert resp.status_code == 403
    assert resp.json()["error"] == "csrf_failed"


def test_preview_over_10_mib_is_413(client: httpx.Client) -> None:
    token = _token(client)
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (10 * 1024 * 1024 + 1)
    resp = client.post(
        "/api/preview",
        files={"image": ("big.png", big, "image/png")},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 413


def test_preview_of_a_non_image_is_415(client: httpx.Client) -> None:
    token = _token(client)
    resp = client.post(
        "/api/preview",
        files={"image": ("x.png", b"GIF89a not really", "image/png")},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 415


def test_preview_without_an_image_field_is_422(client: httpx.Client) -> None:
    token = _token(client)
    resp = client.post(
        "/api/preview",
        files={"other": ("x.png", web.face_png(), "image/png")},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 422
    assert resp.json()["error"] == "no_image"


def test_preview_sent_as_json_is_415(client: httpx.Client) -> None:
    token = _token(client)
    resp = client.post(
        "/api/preview", json={"url": "http://example.com/x.png"}, headers={"X-CSRF-Token": token}
    )
    assert resp.status_code == 415


def test_preview_with_invalid_settings_is_422_naming_the_field(client: httpx.Client) -> None:
    token = _token(client)
    resp = client.post(
        "/api/preview",
        data=_form(height="tall"),
        files={"image": ("face.png", web.face_png(), "image/png")},
        headers={"X-CSRF-Token": token},
    )
    assert resp.status_code == 422
    assert ["height"] in [e["loc"] for e in resp.json()["errors"]]


# ------------------------------------------------------------------------ HTML forms (no JS)


def test_form_post_without_csrf_token_is_403_and_creates_nothing(
    client: httpx.Client, store: ConfigStore, name: str
) -> None:
    _token(client)
    resp = client.post("/new", data=_form(name=name, source="/d"))
    assert resp.status_code == 403
    assert not store.exists("datasets", name)


def test_form_post_with_a_token_of_another_cookie_is_403(
    base_url: str, store: ConfigStore, name: str
) -> None:
    with httpx.Client(base_url=base_url) as a, httpx.Client(base_url=base_url) as b:
        token_a = _token(a)
        _token(b)
        resp = b.post("/new", data=_form(name=name, source="/d", csrf_token=token_a))
    assert resp.status_code == 403
    assert not store.exists("datasets", name)


def test_form_create_redirects_with_a_flash_message(
    client: httpx.Client, store: ConfigStore, name: str
) -> None:
    token = _token(client)
    resp = client.post("/new", data=_form(name=name, source="/data/faces", csrf_token=token))
    assert resp.status_code == 303
    assert resp.headers["location"] == "/"
    doc = store.get("datasets", name)
    assert DatasetSpec.model_validate(doc.value).source == "/data/faces"
    page = client.get("/")
    assert "Item created successfully" in page.text
    assert "Item created successfully" not in client.get("/").text  # shown once


def test_form_create_invalid_is_422_with_the_message_and_the_typed_value(
    client: httpx.Client, store: ConfigStore, name: str
) -> None:
    token = _token(client)
    form = _form(name=name, source="/d", csrf_token=token)
    form["degradations.gaussian_blur.sigma.0"] = "3.5"
    form["degradations.gaussian_blur.sigma.1"] = "1.25"
    resp = client.post("/new", data=form)
    assert resp.status_code == 422
    assert 'data-error-for="degradations.gaussian_blur.sigma"' in resp.text
    assert "has low &gt; high" in resp.text
    assert 'value="3.5"' in resp.text and 'value="1.25"' in resp.text
    assert not store.exists("datasets", name)


def test_form_create_with_a_taken_name_is_409_on_the_name_field(
    client: httpx.Client, existing: str
) -> None:
    token = _token(client)
    resp = client.post("/new", data=_form(name=existing, source="/d", csrf_token=token))
    assert resp.status_code == 409
    assert 'data-error-for="name"' in resp.text


def test_form_edit_of_a_stale_revision_is_409_showing_the_current_version(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    token = _token(client, f"/datasets/{existing}/edit")
    loaded = store.get("datasets", existing)
    store.modify("datasets", existing, lambda v: {**v, "details": "theirs"})
    form = _form(
        name=existing,
        source="/mine",
        details="mine",
        csrf_token=token,
        revision=str(loaded.revision),
    )
    resp = client.post(f"/datasets/{existing}/edit", data=form)
    assert resp.status_code == 409
    current = store.get("datasets", existing)
    assert current.value["source"] == "/data/faces"  # nothing overwritten
    assert f'<input type="hidden" name="revision" value="{current.revision}">' in resp.text
    assert "Someone else changed this item" in resp.text
    assert "theirs" in resp.text and 'value="/mine"' in resp.text


def test_form_edit_saves_with_the_loaded_revision(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    token = _token(client, f"/datasets/{existing}/edit")
    rev = store.get("datasets", existing).revision
    form = _form(name=existing, source="/mine", csrf_token=token, revision=str(rev))
    resp = client.post(f"/datasets/{existing}/edit", data=form)
    assert resp.status_code == 303
    assert store.get("datasets", existing).value["source"] == "/mine"


def test_form_edit_of_a_document_deleted_meanwhile_offers_to_create_it_again(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    token = _token(client, f"/datasets/{existing}/edit")
    rev = store.get("datasets", existing).revision
    store.delete("datasets", existing)
    form = _form(name=existing, source="/mine", csrf_token=token, revision=str(rev))
    resp = client.post(f"/datasets/{existing}/edit", data=form)
    assert resp.status_code == 404
    assert "was deleted by someone else" in resp.text
    assert 'action="/new"' in resp.text and 'value="/mine"' in resp.text
    assert not store.exists("datasets", existing)


def test_a_dataset_named_new_has_its_own_show_page(
    client: httpx.Client, store: ConfigStore
) -> None:
    store.put("datasets", "new", {"name": "new", "source": "/n"})
    try:
        assert "/n" in client.get("/datasets/new").text
        assert client.get("/api/datasets/new").json()["name"] == "new"
    finally:
        store.delete("datasets", "new")


def test_form_delete_of_a_stale_revision_is_409_and_keeps_the_document(
    client: httpx.Client, store: ConfigStore, existing: str
) -> None:
    token = _token(client, f"/datasets/{existing}/delete")
    rev = store.get("datasets", existing).revision
    store.modify("datasets", existing, lambda v: {**v, "details": "theirs"})
    resp = client.post(
        f"/datasets/{existing}/delete", data={"csrf_token": token, "revision": str(rev)}
    )
    assert resp.status_code == 409
    assert store.exists("datasets", existing)


def test_pages_of_an_unknown_name_are_404(client: httpx.Client, name: str) -> None:
    for path in (f"/datasets/{name}", f"/datasets/{name}/edit", f"/datasets/{name}/delete"):
        assert client.get(path).status_code == 404


def test_pages_escape_stored_text(client: httpx.Client, store: ConfigStore, name: str) -> None:
    store.create(
        "datasets", name, {"name": name, "source": "/d", "details": "<script>x()</script>"}
    )
    for path in ("/", f"/datasets/{name}", f"/datasets/{name}/edit"):
        html = client.get(path).text
        assert "<script>x()</script>" not in html
        assert "&lt;script&gt;x()&lt;/script&gt;" in html


def test_pages_send_a_content_security_policy(client: httpx.Client) -> None:
    resp = client.get("/")
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    assert resp.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/static/web/web.css", 200),
        ("/static/web/web.js", 200),
        ("/static/web/nothing.css", 404),
        ("/static/web/..%2Froutes.py", 404),
    ],
)
def test_static_files_are_a_fixed_set(client: httpx.Client, path: str, status: int) -> None:
    assert client.get(path).status_code == status


# ------------------------------------------------------------------- form <-> document mapping


def test_form_values_round_trip_to_the_same_document() -> None:
    from serve.web.routes import doc_to_values, values_to_doc

    spec = DatasetSpec.model_validate(
        {
            "name": "rt",
            "source": "s3://bucket/faces",
            "details": "  keeps spaces  ",
            "crop": {"mode": "custom", "width": 96, "height": 64},
            "face_detection": {"enabled": False, "on_missing": "whole", "model_path": "/m.onnx"},
            "degradations": [{"type": "jpeg", "p": 0.9, "quality": [5, 10]}],
            "split": {"train": 0.5, "val": 0.25, "test": 0.25},
            "seed": 12,
            "reference_image": "/ref.png",
        }
    )
    value = spec.model_dump(mode="json")
    again = DatasetSpec.model_validate(values_to_doc(doc_to_values(value), "rt"))
    assert again == spec


def test_store_error_locations_map_to_form_fields_by_degradation_type() -> None:
    from serve.web.routes import map_errors

    doc = {"degradations": [{"type": "shadow"}, {"type": "jpeg"}]}
    errors: list[dict[str, object]] = [
        {"loc": ["degradations", 1, "jpeg", "quality", 0], "msg": "bad"},
        {"loc": ["split"], "msg": "Value error, must sum to 1"},
        {"loc": [], "msg": "too big"},
    ]
    assert map_errors(errors, doc) == {
        "degradations.jpeg.quality.0": ["bad"],
        "split": ["must sum to 1"],
        "": ["too big"],
    }
