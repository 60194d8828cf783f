"""Turn one decoded mammogram and its full-resolution mask into the prepared square uint8 pair.

Steps, each switchable in `data.preprocess`:
  1. find the breast from the image alone (`find_breast`, method below), on a small copy;
  2. breast_crop: cut image and mask to the breast's bounding rectangle. The rectangle never depends on the
     mask. Where mask pixels fall outside it, `mask_outside_crop` decides: `uncropped` keeps the whole image,
     `skip` drops the image (`MaskOutsideCrop`); the loaders count and list such images in the report;
  3. flip_to_left: mirror so the breast touches the left edge (side measured from the breast region, so it
     needs no laterality tag and cannot be misled by a wrong one);
  4. clip_percentiles: clip to percentiles of the breast pixels and scale to 0..255;
  5. resize to image_size x image_size: area averaging for the image, nearest neighbour for the mask.

Breast segmentation, for scanned films (CBIS-DDSM) and digital mammograms (INbreast) alike:
  - background from the image: the film base of a scanned film (not zero, uneven) or the zero background of
    a detector is the dominant peak of the grey-level histogram. Zack's triangle threshold (OpenCV
    THRESH_TRIANGLE; Zack et al., J Histochem Cytochem 1977) puts a threshold at that peak's foot on its
    bright side: dense and fatty tissue are both above it (Otsu would split dense from fatty tissue and
    lose the faint part of the breast);
  - a morphological opening with a disk wider than scanner border strips and their glow, label strokes
    and tape edges detaches them from the breast; the largest connected component is the breast, with the
    pectoral muscle (as bright as the breast or brighter, and joined to it);
  - a geodesic dilation by the disk's radius, through pixels brighter than the background peak's upper
    half-width (half maximum), gives back what the opening shaved off (nipple, corners at the image edge)
    and the faintest fatty tissue up to the skin line, without spreading further along a border's glow;
    holes are filled.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from benchmark.data.real.settings import PreprocessSettings

# A decoded file must look like a picture before it is trusted as a mammogram: neighbouring pixels of every real
# film and detector image correlate (lag-1 correlation >= 0.98 on all 1,231 CBIS-DDSM films of
# shared/reference/real-samples/cbis-boxes and the 10 real films, sampled at WORK_SIDE), random pixels do not (~0).
MIN_NEIGHBOUR_CORRELATION = 0.5
WORK_SIDE = 512  # the breast is found on a copy this big: morphology on 15 Mpx would cost more than decoding
MEDIAN_SIDE = 5  # px on the small copy: film grain, dust and JPEG noise out before the histogram is taken
# Top of the grey-level stretch, as a percentile: a small label at the scanner's maximum must not squeeze
# the breast and the film base into a few grey levels.
STRETCH_PERCENTILE = 99.5
# Opening disk diameter as a share of the small copy's short side. On DDSM films, scanner borders with the
# glow along them reach ~6% into the image above the triangle threshold; the breast is far wider.
OPENING_SHARE = 0.08


class MaskOutsideCrop(Exception):
    """Mask pixels lie outside the breast crop and `data.preprocess.mask_outside_crop` is `skip`."""


@dataclass(frozen=True)
class Breast:
    box: tuple[int, int, int, int]  # y0, y1, x0, x1 in full-resolution pixels, end-exclusive
    on_left: bool  # the breast's centre of mass lies in the left half
    pixels: np.ndarray  # full-resolution values sampled inside the breast, for the intensity percentiles


def _small_copy(image: np.ndarray) -> tuple[np.ndarray, float]:
    height, width = image.shape
    scale = min(1.0, WORK_SIDE / max(height, width))
    small = image.astype(np.float32)
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
    return small, scale


def _largest_component(foreground: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=8)
    if count <= 1:
        return foreground.astype(bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _background_upper_halfwidth(grey: np.ndarray) -> int:
    """Grey level where the background peak has fallen to half its height on the bright side, measured
    as the mirror of its dark side (which no tissue contaminates)."""
    hist = np.bincount(grey.ravel(), minlength=256)
    mode = int(np.argmax(hist))
    darker = np.flatnonzero(hist[:mode + 1] < hist[mode] / 2)
    return mode + max(1, mode - int(darker[-1]) if darker.size else 0)


def breast_region(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The breast as a boolean mask on the small copy, and the copy's scale (small = full * scale)."""
    small, scale = _small_copy(image)
    low, high = float(small.min()), float(np.percentile(small, STRETCH_PERCENTILE))
    if high <= low:
        high = float(small.max())
    if high <= low:  # a flat image has no breast to find: keep everything
        return np.ones(small.shape, dtype=bool), scale
    grey = np.clip((small - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
    grey = cv2.medianBlur(grey, MEDIAN_SIDE)
    _, foreground = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_TRIANGLE)
    radius = max(1, round(OPENING_SHARE * min(grey.shape) / 2))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    # Zero outside the image: a strip along the edge must be eroded from both sides to disappear.
    opened = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, disk, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    region = _largest_component(opened if opened.any() else foreground).astype(np.uint8)
    tissue = (grey > _background_upper_halfwidth(grey)).astype(np.uint8) | foreground
    step = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    for _ in range(radius):  # geodesic dilation: one pixel per step, only through tissue
        region = cv2.dilate(region, step) & tissue
    return ndimage.binary_fill_holes(region > 0), scale


def find_breast(image: np.ndarray) -> Breast:
    """Locate the breast from the pixels alone (method: see the module docstring)."""
    height, width = image.shape
    region, scale = breast_region(image)
    rows, cols = np.nonzero(region)
    small_h, small_w = region.shape
    box = (int(np.floor(rows.min() / scale)), min(height, int(np.ceil((rows.max() + 1) / scale))),
           int(np.floor(cols.min() / scale)), min(width, int(np.ceil((cols.max() + 1) / scale))))
    # Sample real (not averaged) pixels at the small grid's cell centres so the percentiles see true extremes.
    row_at = np.minimum(((np.arange(small_h) + 0.5) / scale).astype(int), height - 1)
    col_at = np.minimum(((np.arange(small_w) + 0.5) / scale).astype(int), width - 1)
    pixels = image[np.ix_(row_at, col_at)][region]
    return Breast(box, bool(cols.mean() < small_w / 2.0), pixels)


def mask_outside(box: tuple[int, int, int, int], mask: np.ndarray) -> int:
    """How many mask pixels a crop to `box` (y0, y1, x0, x1) would cut off."""
    y0, y1, x0, x1 = box
    return int(np.count_nonzero(mask)) - int(np.count_nonzero(mask[y0:y1, x0:x1]))


def outside_crop_report(results: list[dict], settings: PreprocessSettings, id_key: str) -> dict:
    """Report section on the images whose mask leaves the breast crop (worker results carry a nonzero
    `mask_outside_crop`): how many, which, and what was done with them."""
    listed = [result[id_key] for result in results if result.get("mask_outside_crop")]
    return {"images": len(listed), "action": settings.mask_outside_crop if settings.breast_crop else "no crop",
            "listed": listed}


def clip_and_scale(image: np.ndarray, reference: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Clip to the given percentiles of `reference` (breast pixels) and map linearly onto 0..255, as float32."""
    low, high = np.percentile(reference if reference.size else image, percentiles)
    if high <= low:
        high = low + 1.0
    scaled = (image.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Area-resize the image, nearest-resize the mask; returns (image uint8, mask {0,1} uint8, rescued)."""
    image = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_AREA)
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    small = (cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 0).astype(np.uint8)
    rescued = bool(mask.any() and not small.any())
    if rescued:  # nearest sampling missed a tiny mass entirely; keep it as the cells it overlaps
        small = (cv2.resize(mask * np.uint8(255), (size, size), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
    return np.rint(image).clip(0, 255).astype(np.uint8), small, rescued


class NotAnImage(ValueError):
    """The decoded pixels are no picture (constant, or uncorrelated noise): a damaged or placeholder file."""


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    scale = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / scale if scale else 0.0


def check_image_content(image: np.ndarray) -> None:
    """Raise NotAnImage for a constant image (e.g. all zero) or one whose neighbouring pixels do not correlate
    (random bytes): either would become a training image with its mask, without a warning."""
    low, high = float(image.min()), float(image.max())
    if low == high:
        raise NotAnImage(f"every pixel is {low:g}: no image")
    step = max(1, max(image.shape) // WORK_SIDE)
    small = image[::step, ::step].astype(np.float64)
    correlation = min(_correlation(small[:, :-1], small[:, 1:]), _correlation(small[:-1], small[1:]))
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        raise NotAnImage(f"neighbouring pixels correlate at {correlation:.2f} (a mammogram: above 0.98): noise, "
                         "not an image")


def preprocess_pair(image: np.ndarray, mask: np.ndarray, settings: PreprocessSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    """Full-resolution image (any dtype, brighter = denser) and mask -> prepared (S, S) uint8 image and {0,1} mask.

    info: breast_box (from the image alone), crop_box (what was cut: the breast box, or the whole image),
    mask_outside_crop (mask pixels outside the breast box), flipped, mask_rescued.
    Raises MaskOutsideCrop when mask pixels fall outside the breast box and the setting says `skip`, NotAnImage
    when the pixels are constant or noise.
    """
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ")
    check_image_content(image)
    breast = find_breast(image)
    height, width = image.shape
    outside = mask_outside(breast.box, mask) if settings.breast_crop else 0
    crop = breast.box if settings.breast_crop else (0, height, 0, width)
    if outside:
        if settings.mask_outside_crop == "skip":
            raise MaskOutsideCrop(f"{outside} mask pixels lie outside the breast crop {list(breast.box)} "
                                  "(data.preprocess.mask_outside_crop: skip)")
        crop = (0, height, 0, width)
    y0, y1, x0, x1 = crop
    image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    flipped = settings.flip_to_left and not breast.on_left
    if flipped:
        image, mask = image[:, ::-1], mask[:, ::-1]
    scaled = clip_and_scale(image, breast.pixels, settings.clip_percentiles)
    image_u8, mask_u8, rescued = resize_pair(scaled, mask, settings.image_size)
    return image_u8, mask_u8, {"breast_box": list(breast.box), "crop_box": [y0, y1, x0, x1],
                               "mask_outside_crop": outside, "flipped": flipped, "mask_rescued": rescued}
