"""The dataset web page in real headless Chromium: create, show, edit, conflict, validation,
preview and delete, against uvicorn and the real etcd.

Screenshots go to the ``artifacts_dir`` (``test-artifacts/web-*.png``). The preview runs on
``LocalPipeline`` (library-built); the Serve ingress's pipeline replaces it in production.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config_store import ConfigStore
from tests.serve import webapp_helpers as web

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian chromium is not installed at /usr/bin/chromium (the Makefile installs it)",
    ),
]


@pytest.fixture(scope="module")
def base_url(store: ConfigStore) -> Iterator[str]:
    with web.running(web.make_app(store, web.LocalPipeline())) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, base_url: str) -> Iterator[Any]:
    """A fresh browser context (own cookies).

    Fails the test on a script error, a console error (a CSP refusal, ...) or a failed
    sub-resource; pages answered 409/422 on purpose are documents, not failures.
    """
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    def on_response(response: Any) -> None:
        kind = response.request.resource_type
        if response.status >= 400 and kind not in ("document", "fetch"):
            errors.append(f"{response.status} {kind} {response.url}")

    pg.on("console", on_console)
    pg.on("response", on_response)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"browser console errors: {errors}"


@pytest.fixture
def name(store: ConfigStore) -> Iterator[str]:
    n = f"ui-{uuid.uuid4().hex[:8]}"
    yield n
    if store.exists("datasets", n):
        store.delete("datasets", n)


@pytest.fixture
def existing(store: ConfigStore, name: str) -> str:
    store.create(
        "datasets",
        name,
        {"name": name, "source": "/data/faces", "details": "CelebA subset for the paper"},
    )
    return name


def _field(page: Any, key: str) -> Any:
    return page.locator(f'[name="{key}"]')


def test_create_through_the_form_lists_the_new_item(
    page: Any, store: ConfigStore, name: str, artifacts_dir: Path
) -> None:
    page.goto("/")
    page.click("#create-new")
    _field(page, "name").fill(name)
    _field(page, "source").fill("/data/celeba")
    _field(page, "details").fill("Faces, 128 px tiles, no motion blur")
    page.check('input[name="crop.mode"][value="128x128"]')
    page.uncheck('[name="degradations.motion_blur.enabled"]')
    page.screenshot(path=str(artifacts_dir / "web-form.png"), full_page=True)
    page.click("#save")
    page.wait_for_url("**/")
    assert page.locator("#flash").inner_text() == "Item created successfully"
    assert page.locator(f'tr[data-name="{name}"] td.details').inner_text().startswith("Faces")
    page.screenshot(path=str(artifacts_dir / "web-list.png"), full_page=True)
    value = store.get("datasets", name).value
    assert value["crop"] == {"mode": "128x128", "width": 128, "height": 128}
    assert "motion_blur" not in [d["type"] for d in value["degradations"]]


def test_show_page_displays_the_stored_values(
    page: Any, existing: str, artifacts_dir: Path
) -> None:
    page.goto("/")
    page.locator(f'tr[data-name="{existing}"]').get_by_role("link", name="Show").click()
    assert page.locator("h1").inner_text() == existing
    assert page.locator("#show-source").inner_text() == "/data/faces"
    assert page.locator("#show-size").inner_text() == "256 x 256"
    assert page.locator("#show-degradations tbody tr").count() == 7
    page.screenshot(path=str(artifacts_dir / "web-show.png"), full_page=True)


def test_edit_saves_the_change(page: Any, store: ConfigStore, existing: str) -> None:
    page.goto("/")
    page.locator(f'tr[data-name="{existing}"]').get_by_role("link", name="Edit").click()
    _field(page, "details").fill("now with JPEG only")
    _field(page, "height").fill("320")
    page.click("#save")
    page.wait_for_url("**/")
    assert page.locator("#flash").inner_text() == "Item updated successfully"
    value = store.get("datasets", existing).value
    assert (value["details"], value["height"]) == ("now with JPEG only", 320)


def test_stale_edit_shows_the_conflict_and_offers_the_current_version(
    page: Any, store: ConfigStore, existing: str, artifacts_dir: Path
) -> None:
    page.goto(f"/datasets/{existing}/edit")
    # Someone else (here: the store directly, as deepfix-config would) changes it meanwhile.
    store.modify("datasets", existing, lambda v: {**v, "source": "/data/theirs", "width": 512})
    _field(page, "source").fill("/data/mine")
    page.click("#save")
    conflict = page.locator("#conflict")
    assert "Someone else changed this item" in conflict.inner_text()
    current = store.get("datasets", existing)
    assert current.value["source"] == "/data/theirs"  # nothing was overwritten
    diff = page.locator("#conflict-diff").inner_text()
    assert "/data/mine" in diff and "/data/theirs" in diff and "512" in diff
    assert _field(page, "source").input_value() == "/data/mine"  # what was typed is kept
    assert _field(page, "revision").input_value() == str(current.revision)
    assert page.locator("#save").inner_text() == "Save anyway"
    page.screenshot(path=str(artifacts_dir / "web-conflict.png"), full_page=True)
    page.click("#conflict-reload")
    assert _field(page, "source").input_value() == "/data/theirs"
    assert page.locator("#conflict").count() == 0


def test_validation_error_is_shown_next_to_the_field_with_the_typed_value(
    page: Any, store: ConfigStore, name: str, artifacts_dir: Path
) -> None:
    page.goto("/new")
    _field(page, "name").fill(name)
    _field(page, "source").fill("/data/x")
    _field(page, "degradations.gaussian_blur.sigma.0").fill("3.5")
    _field(page, "degradations.gaussian_blur.sigma.1").fill("1.25")
    page.click("#save")
    fieldset = page.locator('fieldset[data-degradation="gaussian_blur"]')
    message = fieldset.locator('[data-error-for="degradations.gaussian_blur.sigma"]')
    assert "sigma range [3.5, 1.25] has low > high" in message.inner_text()
    assert (
        _field(page, "degradations.gaussian_blur.sigma.0").get_attribute("aria-invalid") == "true"
    )
    assert _field(page, "degradations.gaussian_blur.sigma.0").input_value() == "3.5"
    assert _field(page, "name").input_value() == name
    assert page.locator("#form-errors").is_visible()
    page.screenshot(path=str(artifacts_dir / "web-validation.png"), full_page=True)
    assert not store.exists("datasets", name)


def test_custom_crop_size_fields_show_only_for_custom(page: Any) -> None:
    page.goto("/new")
    custom = page.locator("[data-crop-custom]")
    assert not custom.is_visible()
    page.check('input[name="crop.mode"][value="custom"]')
    assert custom.is_visible()
    page.check('input[name="crop.mode"][value="64x64"]')
    assert not custom.is_visible()


def test_uploading_an_image_previews_crop_degraded_and_enhanced(
    page: Any, artifacts_dir: Path, tmp_path: Path
) -> None:
    image = tmp_path / "astronaut.png"
    image.write_bytes(web.face_png())
    page.goto("/new")
    _field(page, "height").fill("192")
    _field(page, "width").fill("192")
    page.set_input_files("#preview-file", str(image))
    page.wait_for_selector('#preview-result[data-state="done"]')
    for img in ("#preview-face", "#preview-degraded", "#preview-enhanced"):
        size = page.eval_on_selector(img, "e => [e.naturalWidth, e.naturalHeight]")
        assert size == [192, 192], img
    assert "face found" in page.locator("#preview-status").inner_text()
    assert page.locator("#preview-applied li").count() >= 1
    page.screenshot(path=str(artifacts_dir / "web-preview.png"), full_page=True)


def test_delete_asks_for_confirmation_then_deletes(
    page: Any, store: ConfigStore, existing: str, artifacts_dir: Path
) -> None:
    page.goto("/")
    page.locator(f'tr[data-name="{existing}"]').get_by_role("link", name="Delete").click()
    assert store.exists("datasets", existing)  # the link only asks
    assert existing in page.locator("h1").inner_text()
    page.screenshot(path=str(artifacts_dir / "web-delete-confirm.png"), full_page=True)
    page.click("#confirm-delete")
    page.wait_for_url("**/")
    assert page.locator("#flash").inner_text() == "Item deleted successfully"
    assert page.locator(f'tr[data-name="{existing}"]').count() == 0
    assert not store.exists("datasets", existing)
