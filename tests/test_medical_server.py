"""POST /v1/volume and the slice viewer: limits (413/415/422/404), the masks and windowed
slices; and the page's Scan tab in Chromium. The tiny random SAM proposes nothing, so the
segmenter here takes the bright regions of each slice as its proposals (the method still
scores and chooses)."""

from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np
import pytest
from medical_support import dicom_file, nibabel
from server_support import BackgroundServer

from hybridgl.masks import rle_to_mask
from hybridgl.server import ServerSettings, create_app

httpx = pytest.importorskip("httpx")


class BrightRegions:
    """The tiny segmenter with the connected bright regions of a slice as proposals."""

    def __init__(self, segmenter: Any) -> None:
        self._seg = segmenter

    def encode_image(self, image: Any, proposals: Any = None, **kw: Any) -> Any:
        if proposals is None:
            count, lab = cv2.connectedComponents((image[:, :, 0] > 150).astype(np.uint8))
            masks = [lab == c for c in range(1, count)]
            proposals = np.stack(masks) if masks else np.zeros((0, *image.shape[:2]), bool)
        return self._seg.encode_image(image, proposals=proposals, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._seg, name)


def ball_nifti(path, slices: int = 5) -> np.ndarray:
    """A synthetic CT-like NIfTI (air, a body, a 200 HU ball in the middle slices)."""
    i, j, k = np.meshgrid(np.arange(40), np.arange(36), np.arange(slices), indexing="ij")
    data = np.full((40, 36, slices), -1000, np.int16)
    data[3:37, 3:33] = 40
    ball = (i - 18) ** 2 + (j - 17) ** 2 + ((k - slices // 2) * 6) ** 2 <= 10**2
    data[ball] = 200
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.8, 0.8, 3.0, 1.0])), str(path))
    return ball


@pytest.fixture(scope="module")
def server(tiny_segmenter):
    settings = ServerSettings(max_upload_bytes=2_000_000)
    with BackgroundServer(create_app(BrightRegions(tiny_segmenter), settings)) as srv:
        yield srv


def post(server, name: str, data: bytes, expression: str = "the ball", **params: Any):
    form = {"expression": expression}
    if "window" in params:
        form["window"] = params.pop("window")
    return httpx.post(f"{server.url}/v1/volume", files={"file": (name, data)}, data=form,
                      params=params, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_volume_masks_and_windowed_slices(server, tmp_path) -> None:
    from PIL import Image

    ball = ball_nifti(tmp_path / "ball.nii.gz")
    r = post(server, "ball.nii.gz", (tmp_path / "ball.nii.gz").read_bytes(), window="100,400",
             keyslice=2)  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["num_slices"] == 5 and body["shape"] == [40, 36, 5] and body["key_slice"] == 2
    assert body["window"]["source"] == "explicit" and "not a diagnostic device" in body["note"]
    assert body["masks"] and set(body["masks"]) <= {str(k) for k in range(5)}
    for k, rle in body["masks"].items():
        mask = rle_to_mask(rle)
        assert mask.shape == (36, 40)  # rows: the second voxel axis (docs/MEDICAL.md)
        chosen = ball[:, :, int(k)].T
        assert (mask & chosen).sum() == 0 or np.array_equal(mask, chosen)
    vid = body["volume_id"]
    png = httpx.get(f"{server.url}/v1/volume/{vid}/slice/2.png", params={"window": "40,80"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(png.content)))
    assert img.shape[:2] == (36, 40)
    # level 40 width 80: the 200 HU ball is white, the 40 HU body mid-grey, air black
    assert img[17, 18, 0] == 255 and img[0, 0, 0] == 0 and 100 < img[5, 5, 0] < 160
    assert httpx.get(f"{server.url}/v1/volume/{vid}/slice/9.png").status_code == 404
    assert httpx.get(f"{server.url}/v1/volume/nope/slice/0.png").status_code == 404
    # a DICOM file pydicom ships (read where it keeps it)
    with open(dicom_file("CT_small.dcm"), "rb") as f:
        r = post(server, "CT_small.dcm", f.read(), window="abdomen")
    assert r.status_code == 200, r.text
    assert r.json()["num_slices"] == 1 and r.json()["modality"] == "CT"


def test_volume_limits_and_bad_input(server, tmp_path) -> None:
    def code(r) -> tuple[int, str]:
        return r.status_code, r.json()["error"]["code"]

    assert code(post(server, "x.nii", b"")) == (415, "invalid_volume")
    assert code(post(server, "x.nii", b"not a nifti at all" * 30)) == (415, "invalid_volume")
    assert code(post(server, "x.nii", b"\0" * 2_000_001)) == (413, "payload_too_large")
    many = tmp_path / "many.nii"
    nibabel.save(nibabel.Nifti1Image(np.zeros((2, 2, 300), np.int16), np.eye(4)), str(many))
    r = post(server, "many.nii", many.read_bytes())
    assert code(r) == (413, "volume_too_large") and "300 slices" in r.json()["error"]["message"]
    ball_nifti(tmp_path / "b.nii")
    data = (tmp_path / "b.nii").read_bytes()
    assert code(post(server, "b.nii", data, expression="  ")) == (422, "empty_expression")
    assert code(post(server, "b.nii", data, window="nope")) == (422, "invalid_parameter")
    assert code(post(server, "b.nii", data, keyslice=9)) == (422, "invalid_parameter")


@pytest.mark.browser
def test_scan_tab_in_chromium(server, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_browser import CHROMIUM_ARGS, chromium_path

    exe = chromium_path()
    ball_nifti(tmp_path / "ball.nii.gz")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(120_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_selector("#tabs:not([hidden])")
            page.click("#tab-scan")
            page.wait_for_selector("#scan-view:not([hidden])")
            assert page.locator("#segment-view").is_hidden()
            page.set_input_files("#scan-file", str(tmp_path / "ball.nii.gz"))
            page.fill("#scan-phrase", "the ball")
            page.select_option("#scan-preset", "abdomen")
            page.click("#scan-submit")
            page.wait_for_selector("#scan-result:not([hidden])")
            page.wait_for_function(
                "Number(document.getElementById('scan-canvas').dataset.loaded) >= 1"
            )
            canvas = page.locator("#scan-canvas")
            key = page.evaluate("window.hybridglScan.state.body.key_slice")
            assert canvas.get_attribute("data-slice") == str(key)
            assert canvas.get_attribute("data-mask") == "1"  # the key slice has the mask
            assert (
                page.input_value("#scan-level") == "50" and page.input_value("#scan-width") == "400"
            )
            # the slider shows another slice; a window change reloads it
            other = 0 if key != 0 else 4
            page.eval_on_selector(
                "#scan-slice",
                f"el => {{ el.value = '{other}'; el.dispatchEvent(new Event('input')); }}",
            )
            page.wait_for_function(
                f"document.getElementById('scan-canvas').dataset.slice === '{other}'"
            )
            loaded = int(canvas.get_attribute("data-loaded"))
            page.select_option("#scan-preset", "bone")
            page.wait_for_function(
                f"Number(document.getElementById('scan-canvas').dataset.loaded) > {loaded}"
            )
            assert page.input_value("#scan-level") == "400"
            assert "slice" in page.inner_text("#scan-slice-info")
            assert errors == []
        finally:
            browser.close()
