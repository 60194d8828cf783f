"""Turn one decoded mammogram and its full-resolution mask into the prepared square uint8 pair.

Steps, each switchable in `data.preprocess`:
  1. find the breast: blur, Otsu threshold, largest connected component (on a small copy);
  2. breast_crop: cut image and mask to the breast's bounding rectangle (never cutting a mass);
  3. flip_to_left: mirror so the breast touches the left edge (side measured from the breast blob, so it
     needs no laterality tag and cannot be misled by a wrong one);
  4. clip_percentiles: clip to percentiles of the breast pixels and scale to 0..255;
  5. resize to image_size x image_size: area averaging for the image, nearest neighbour for the mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from benchmark.real.settings import PreprocessSettings

WORK_SIDE = 512  # the breast is found on a copy this big: Otsu and labelling on 15 Mpx would cost more than decoding
EDGE_FRAME = 0.02  # scanner borders and tape hug the image edge; clearing this frame stops them joining the breast


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


def find_breast(image: np.ndarray) -> Breast:
    """Locate the breast as the largest bright blob, ignoring labels, tape and scanner borders."""
    height, width = image.shape
    small, scale = _small_copy(image)
    low, high = float(small.min()), float(small.max())
    if high <= low:  # a flat image has no breast to find: keep everything
        return Breast((0, height, 0, width), True, image.ravel()[:: max(1, image.size // 65536)])
    grey = ((small - low) * (255.0 / (high - low))).astype(np.uint8)
    grey = cv2.GaussianBlur(grey, (5, 5), 0)
    _, foreground = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    frame = max(1, round(EDGE_FRAME * min(foreground.shape)))
    inner = np.zeros_like(foreground)
    inner[frame:-frame, frame:-frame] = foreground[frame:-frame, frame:-frame]
    # Opening cuts the thin bridges through which a label or a border strip touches the breast.
    inner = cv2.morphologyEx(inner, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    region = _largest_component(inner if inner.any() else foreground)
    rows, cols = np.nonzero(region)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    small_h, small_w = region.shape
    # The chest wall lies on an image edge; where the breast reaches the cleared frame, give the frame back.
    y0, x0 = (0 if y0 <= frame else y0), (0 if x0 <= frame else x0)
    y1, x1 = (small_h if y1 >= small_h - frame else y1), (small_w if x1 >= small_w - frame else x1)
    box = (int(np.floor(y0 / scale)), min(height, int(np.ceil(y1 / scale))),
           int(np.floor(x0 / scale)), min(width, int(np.ceil(x1 / scale))))
    # Sample real (not averaged) pixels at the small grid's cell centres so the percentiles see true extremes.
    row_at = np.minimum(((np.arange(small_h) + 0.5) / scale).astype(int), height - 1)
    col_at = np.minimum(((np.arange(small_w) + 0.5) / scale).astype(int), width - 1)
    pixels = image[np.ix_(row_at, col_at)][region]
    return Breast(box, bool(cols.mean() < small_w / 2.0), pixels)


def crop_box(breast: Breast, mask: np.ndarray) -> tuple[int, int, int, int]:
    """The breast rectangle grown to contain every mask pixel: a crop must never remove part of a mass."""
    y0, y1, x0, x1 = breast.box
    rows, cols = np.nonzero(mask)
    if rows.size:
        y0, y1 = min(y0, int(rows.min())), max(y1, int(rows.max()) + 1)
        x0, x1 = min(x0, int(cols.min())), max(x1, int(cols.max()) + 1)
    return y0, y1, x0, x1


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


def preprocess_pair(image: np.ndarray, mask: np.ndarray, settings: PreprocessSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    """Full-resolution image (any dtype, brighter = denser) and mask -> prepared (S, S) uint8 image and {0,1} mask."""
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ")
    breast = find_breast(image)
    height, width = image.shape
    y0, y1, x0, x1 = crop_box(breast, mask) if settings.breast_crop else (0, height, 0, width)
    image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    flipped = settings.flip_to_left and not breast.on_left
    if flipped:
        image, mask = image[:, ::-1], mask[:, ::-1]
    scaled = clip_and_scale(image, breast.pixels, settings.clip_percentiles)
    image_u8, mask_u8, rescued = resize_pair(scaled, mask, settings.image_size)
    return image_u8, mask_u8, {"crop_box": [y0, y1, x0, x1], "flipped": flipped, "mask_rescued": rescued}
