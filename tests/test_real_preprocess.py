"""Preprocessing steps one by one (breast crop, flip, percentile clip, resize), settings checks, DICOM I/O."""
from __future__ import annotations

import numpy as np
import pytest

from benchmark.data.real import RealDataError
from benchmark.data.real.dicomio import read_header, read_pixels, write_dicom
from benchmark.data.real.preprocess import (
    MaskOutsideCrop,
    NotAnImage,
    check_image_content,
    clip_and_scale,
    find_breast,
    preprocess_pair,
    resize_pair,
)
from benchmark.data.real.settings import PreprocessSettings, preprocess_settings, real_settings


def scanned_film(height: int, width: int, breast_on_left: bool = True) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A digitised-film-like image: half-ellipse breast on one edge, a bright label, a scanner border strip.
    Returns the image and the breast's true bounding box (y0, y1, x0, x1)."""
    rows, cols = np.mgrid[0:height, 0:width]
    depth = cols if breast_on_left else width - 1 - cols
    semi_y, semi_x, centre = 0.35 * height, 0.55 * width, 0.45 * height
    breast = (depth / semi_x) ** 2 + ((rows - centre) / semi_y) ** 2 < 1
    image = np.random.default_rng(1).normal(3000, 150, (height, width))
    image[breast] = 20000 + 4000 * np.sin(rows[breast] / 7.0)
    label_cols = (slice(int(0.75 * width), int(0.9 * width)) if breast_on_left
                  else slice(int(0.1 * width), int(0.25 * width)))
    image[int(0.85 * height):int(0.95 * height), label_cols] = 60000  # a bright label, apart from the breast
    border = slice(width - max(2, width // 100), width) if breast_on_left else slice(0, max(2, width // 100))
    image[:, border] = 50000  # scanner border along the far edge
    ys, xs = np.nonzero(breast)
    return image.clip(0, 65535).astype(np.uint16), (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1)


@pytest.mark.parametrize("shape", [(200, 120), (1500, 900)])  # the second is found on a downscaled copy
def test_breast_box_ignores_labels_and_borders(shape):
    image, (y0, y1, x0, x1) = scanned_film(*shape)
    box = find_breast(image).box
    slack = max(3, int(np.ceil(max(shape) / 512)) + 2)  # one small-grid cell plus the blur
    assert abs(box[0] - y0) <= slack and abs(box[1] - y1) <= slack
    assert box[2] == 0 and abs(box[3] - x1) <= slack  # the chest wall stays at the image edge
    assert box[1] < int(0.85 * shape[0]) and box[3] < int(0.75 * shape[1])  # neither label nor border inside


@pytest.mark.parametrize("policy", ["uncropped", "skip"])
def test_a_mask_outside_the_breast_never_shapes_the_crop(policy):
    image, _ = scanned_film(200, 120)
    inside = np.zeros(image.shape, dtype=bool)
    inside[60:80, 20:40] = True
    outside = inside.copy()
    outside[150:190, 100:110] = True  # a (pathological) mass beside the breast, near the label
    settings = PreprocessSettings(image_size=32, mask_outside_crop=policy)
    _, _, kept = preprocess_pair(image, inside, settings)
    assert kept["mask_outside_crop"] == 0 and kept["crop_box"] == kept["breast_box"] == list(find_breast(image).box)
    if policy == "skip":
        with pytest.raises(MaskOutsideCrop, match="400 mask pixels lie outside"):
            preprocess_pair(image, outside, settings)
        return
    _, out_mask, info = preprocess_pair(image, outside, settings)
    assert info["breast_box"] == kept["breast_box"]  # the breast box comes from the image alone
    assert info["mask_outside_crop"] == 400 and info["crop_box"] == [0, 200, 0, 120]  # whole image kept
    assert out_mask.sum() > 0


def test_preprocess_crops_image_and_mask_together():
    image, (y0, y1, x0, x1) = scanned_film(200, 120)
    mask = np.zeros(image.shape, dtype=bool)
    mask[60:80, 20:40] = True
    settings = PreprocessSettings(image_size=64, breast_crop=True, clip_percentiles=(0.0, 100.0))
    out_image, out_mask, info = preprocess_pair(image, mask, settings)
    cy0, cy1, cx0, cx1 = info["crop_box"]
    assert (cy0, cx0) != (0, 0) or (cy1, cx1) != image.shape
    # The mass sits at the same relative place in the crop as in the prepared square.
    rows, cols = np.nonzero(out_mask)
    assert abs(rows.mean() - (70 - cy0) / (cy1 - cy0) * 64) < 2
    assert abs(cols.mean() - (30 - cx0) / (cx1 - cx0) * 64) < 2
    assert out_image.dtype == np.uint8 and out_mask.dtype == np.uint8 and set(np.unique(out_mask)) == {0, 1}


@pytest.mark.parametrize("on_left", [True, False])
def test_flip_puts_every_breast_on_the_left(on_left):
    image, _ = scanned_film(200, 120, breast_on_left=on_left)
    mask = np.zeros(image.shape, dtype=bool)
    mask[60:80, 10:30] = on_left
    mask[60:80, 90:110] = not on_left
    settings = PreprocessSettings(image_size=60, breast_crop=False, flip_to_left=True, clip_percentiles=(0.0, 100.0))
    out_image, out_mask, info = preprocess_pair(image, mask, settings)
    assert info["flipped"] is (not on_left)
    assert np.nonzero(out_mask)[1].max() < 30  # the mass moved with its breast
    assert out_image[:, :10].mean() > out_image[:, 30:50].mean()
    unflipped = preprocess_pair(image, mask, PreprocessSettings(image_size=60, breast_crop=False, flip_to_left=False))
    assert unflipped[2]["flipped"] is False


def test_clip_maps_the_breast_percentiles_onto_0_and_255():
    reference = np.arange(1001, dtype=np.float64)  # percentiles 10 and 90 are 100 and 900
    image = np.array([[50, 100, 500, 900, 950]], dtype=np.uint16)
    np.testing.assert_allclose(clip_and_scale(image, reference, (10.0, 90.0)), [[0, 0, 127.5, 255, 255]])


def test_clip_uses_breast_pixels_not_the_background():
    image, _ = scanned_film(200, 120)
    breast = find_breast(image)
    low, high = np.percentile(breast.pixels, [0.5, 99.5])
    assert low > 10000  # background (~3000), labels (60000) and the border do not set the range
    assert high < 30000


def test_resize_area_for_images_nearest_for_masks():
    image = np.arange(16, dtype=np.float32).reshape(4, 4) * 10
    mask = np.zeros((4, 4), dtype=bool)
    mask[0:2, 2:4] = True
    mask[3, 0] = True
    small, small_mask, rescued = resize_pair(image, mask, 2)
    np.testing.assert_array_equal(small, np.rint(image.reshape(2, 2, 2, 2).mean(axis=(1, 3))).astype(np.uint8))
    np.testing.assert_array_equal(small_mask, mask[::2, ::2])  # cv2 nearest samples the top-left pixel
    assert not rescued and small_mask.dtype == np.uint8


def test_resize_keeps_a_tiny_mass_that_nearest_sampling_misses():
    mask = np.zeros((100, 100), dtype=bool)
    mask[55, 37] = True
    _, small, rescued = resize_pair(np.zeros((100, 100), np.float32), mask, 10)
    assert rescued and small.sum() == 1 and small[5, 3] == 1


def test_monochrome1_read_is_inverted(tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    path = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1",
                       series_description="full mammogram images")
    np.testing.assert_array_equal(read_pixels(path), 65535 - stored)
    header = read_header(path)
    assert (header.rows, header.cols, header.series_description) == (3, 4, "full mammogram images")
    plain = write_dicom(tmp_path / "m2.dcm", stored.astype(np.uint8))
    np.testing.assert_array_equal(read_pixels(plain), stored.astype(np.uint8))


@pytest.mark.parametrize("data, key", [
    ({"image_size": "352"}, "data.image_size"),
    ({"image_size": 352, "preprocess": {"clip_percentiles": [99, 1]}}, "data.preprocess.clip_percentiles"),
    ({"image_size": 352, "preprocess": {"breast_crop": "yes"}}, "data.preprocess.breast_crop"),
    ({"image_size": 352, "real": {"cbis_root": "/x", "inbreast_root": "/y", "cbis_layout": "png"}},
     "data.real.cbis_layout"),
    ({"image_size": 352, "real": {"cbis_root": "/x", "inbreast_root": "/y", "workers": -1}}, "data.real.workers"),
    ({"image_size": 352, "real": {"inbreast_root": "/y"}}, "data.real.cbis_root"),
])
def test_bad_settings_name_their_key(data, key):
    with pytest.raises(RealDataError, match=key.replace(".", r"\.")):
        real_settings({"real": {"cbis_root": "/x", "inbreast_root": "/y"}, **data})


def test_settings_defaults():
    settings = preprocess_settings({"image_size": 352})
    assert settings == PreprocessSettings(352, breast_crop=True, flip_to_left=False, clip_percentiles=(0.5, 99.5))
    real = real_settings({"image_size": 352, "real": {"cbis_root": "~/cbis", "inbreast_root": "/data/inbreast"}})
    assert real.cbis_layout == "auto" and real.workers >= 1 and "~" not in str(real.cbis_root)


@pytest.mark.parametrize("kind", ["all zero", "constant", "random pixels"])
def test_a_file_of_no_picture_is_refused(kind):
    """An all-zero or random-pixel DICOM used to become a training image with its mask, without a warning."""
    rng = np.random.default_rng(0)
    image = {"all zero": np.zeros((300, 200), np.uint16), "constant": np.full((300, 200), 4095, np.uint16),
             "random pixels": rng.integers(0, 1 << 14, (300, 200)).astype(np.uint16)}[kind]
    mask = np.zeros(image.shape, np.uint8)
    mask[100:140, 80:120] = 1
    with pytest.raises(NotAnImage, match="no image" if kind != "random pixels" else "noise, not an image"):
        preprocess_pair(image, mask, PreprocessSettings(image_size=32))


def test_every_real_film_is_a_picture():
    """No false alarm on the real films (the 1,231 CBIS-DDSM films of cbis-boxes and the ten with masks)."""
    import cv2

    from tests.conftest import real_samples

    root = real_samples("cbis-boxes/images", "films/images", missing="shared/reference/real-samples not present")
    paths = sorted((root / "cbis-boxes" / "images").iterdir()) + sorted((root / "films" / "images").iterdir())
    assert len(paths) > 1000
    for path in paths:
        check_image_content(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
