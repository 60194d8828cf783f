"""Procedural mammograms: the embedded stand-in for CBIS-DDSM and INbreast.

Follows "Synthetic stand-in" in shared/reference/datasets.md:
- parenchyma: isotropic power-law noise P(f) ~ 1/f^beta (beta ~3.0 for the CBIS-like
  domain, ~3.25 for the INbreast-like one), shaped by a breast superellipse on the
  chest-wall edge with intensity falling towards the skin line, optional pectoral muscle;
- masses: r(theta) = R (1 + sum_l a_l cos(l theta + phi_l)) with a_l shrinking as l^-p,
  plus tapered spicules; blurred edges; mean intensity inside the mask about 15% above the
  surrounding ring (spread ~7-30%), so dense tissue sometimes hides them;
- CBIS-like (digitised film): noisy non-zero background, bright label blobs, film grain,
  random gamma; INbreast-like (FFDM): zero background, Poisson-like noise, mild blur.

Every image is drawn at `supersample` x the target size and area-downsampled, so mass
edges are anti-aliased like a resized real mammogram. Everything is deterministic in the
seed: image i of a domain depends only on (seed, domain, i).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from benchmark.data.prepared import DomainArrays

DOMAIN_SALT = {"cbis": 101, "inbreast": 202}


@dataclass(frozen=True)
class DomainStyle:
    beta: float
    film: bool  # digitised film (CBIS-like) vs full-field digital (INbreast-like)


STYLES = {"cbis": DomainStyle(beta=3.0, film=True), "inbreast": DomainStyle(beta=3.25, film=False)}


def power_law_noise(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std noise with power spectrum ~ 1/f^beta (white noise filtered by |f|^(-beta/2))."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) * radius ** (-beta / 2)
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=shape)
    return (field - field.mean()) / (field.std() + 1e-12)


def breast_geometry(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Breast support (bool) and normalised depth from the skin line (0 at skin, 1 deep inside)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = h * rng.uniform(0.45, 0.55)
    semi_y = h * rng.uniform(0.40, 0.50)
    semi_x = w * rng.uniform(0.55, 0.85)
    power = rng.uniform(2.0, 2.8)
    level = np.abs((yy - cy) / semi_y) ** power + np.abs(xx / semi_x) ** power
    breast = level < 1.0
    depth = np.clip(1.0 - level, 0.0, 1.0) ** 0.35
    return breast, depth


def mass_shape(size: int, radius: float, rng: np.random.Generator, spiculated: bool) -> np.ndarray:
    """Binary mass on a (size, size) canvas centred in it: lobulated outline plus optional spicules."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    theta = np.arctan2(yy, xx)
    rho = np.hypot(yy, xx)
    outline = np.ones_like(theta)
    decay = rng.uniform(1.0, 1.6)
    scale = rng.uniform(0.4, 0.8)
    for order in range(2, 9):
        outline += scale * order ** (-decay) * rng.uniform(0.3, 1.0) * np.cos(order * theta + rng.uniform(0, 2 * np.pi))
    elongation = rng.uniform(1.0, 2.0)
    angle = rng.uniform(0, np.pi)
    stretch = np.sqrt((np.cos(theta - angle) / elongation) ** 2 + np.sin(theta - angle) ** 2)
    body = rho * stretch < radius * outline
    if not spiculated:
        return body
    mask = body.copy()
    for _ in range(rng.integers(4, 11)):
        direction = rng.uniform(0, 2 * np.pi)
        length = radius * rng.uniform(0.5, 1.2)
        base_width = radius * rng.uniform(0.12, 0.25)
        along = xx * np.cos(direction) + yy * np.sin(direction)
        across = np.abs(-xx * np.sin(direction) + yy * np.cos(direction))
        start = radius * 0.6
        t = (along - start) / length
        mask |= (t >= 0) & (t <= 1) & (across <= base_width * (1 - t))
    return mask


def _smooth_blob_mask(h: int, w: int, centre: tuple[float, float], radius: float, rng: np.random.Generator,
                      spiculated: bool) -> np.ndarray:
    size = int(np.ceil(radius * 6)) | 1
    shape = mass_shape(size, radius, rng, spiculated)
    mask = np.zeros((h, w), dtype=bool)
    top, left = int(round(centre[0])) - size // 2, int(round(centre[1])) - size // 2
    src_y0, src_x0 = max(0, -top), max(0, -left)
    dst_y0, dst_x0 = max(0, top), max(0, left)
    dst_y1, dst_x1 = min(h, top + size), min(w, left + size)
    mask[dst_y0:dst_y1, dst_x0:dst_x1] = shape[src_y0:src_y0 + dst_y1 - dst_y0, src_x0:src_x0 + dst_x1 - dst_x0]
    return mask


def render_image(index: int, size: int, seed: int, domain: str, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic mammogram (uint8, size x size) and its mass mask (uint8 {0,1})."""
    style = STYLES[domain]
    rng = np.random.default_rng([seed, DOMAIN_SALT[domain], index])
    factor = int(params["supersample"])
    h = w = size * factor
    breast, depth = breast_geometry(h, w, rng)

    coarse = power_law_noise((h, w), style.beta + rng.normal(0, 0.1), rng)
    density = 1 / (1 + np.exp(-(coarse * params["density_contrast"] + rng.normal(params["density_bias"], 0.5))))
    tissue = 0.30 + 0.45 * density
    tissue *= 0.55 + 0.45 * depth  # thinner tissue near the skin line looks darker
    if rng.random() < params["pectoral_probability"]:
        yy, xx = np.mgrid[0:h, 0:w]
        cut = h * rng.uniform(0.25, 0.45), w * rng.uniform(0.15, 0.30)
        pectoral = (yy / cut[0] + xx / cut[1]) < 1.0
        tissue = np.where(pectoral, tissue * 0.4 + 0.55, tissue)

    # The mass: placed inside the breast, away from the skin line.
    area_fraction = np.exp(rng.uniform(np.log(params["mass_area_min"]), np.log(params["mass_area_max"])))
    radius = np.sqrt(area_fraction * h * w / np.pi)
    inner = breast & (depth > 0.55)
    candidates = np.argwhere(ndimage.binary_erosion(inner, iterations=max(1, int(radius))))
    if len(candidates) == 0:
        candidates = np.argwhere(inner if inner.any() else breast)
    centre = candidates[rng.integers(len(candidates))]
    spiculated = rng.random() < params["spiculated_probability"]
    mask_hr = _smooth_blob_mask(h, w, tuple(centre), radius, rng, spiculated) & breast

    contrast = float(np.clip(rng.lognormal(np.log(params["mass_contrast_median"]), 0.35), 0.07, 0.30))
    # margins range from sharp (circumscribed) to ill-defined: the blur scales with the mass radius
    blur = rng.uniform(params["edge_blur_min"], params["edge_blur_max"])
    soft = ndimage.gaussian_filter(mask_hr.astype(np.float64), sigma=max(0.5 * factor, radius * blur))
    texture = 1 + 0.05 * power_law_noise((h, w), 2.0, rng)
    local = ndimage.gaussian_filter(tissue, sigma=radius * 1.5)
    image = tissue + contrast * local * soft * texture
    image = np.where(breast, image, 0.0)

    if style.film:
        background = rng.uniform(0.04, 0.12) + 0.02 * rng.standard_normal((h, w))
        image = np.where(breast, image, background)
        for _ in range(rng.integers(0, 3)):  # scanner labels: bright rectangles away from the breast
            bh, bw = int(h * rng.uniform(0.04, 0.1)), int(w * rng.uniform(0.08, 0.2))
            y0, x0 = rng.integers(0, h - bh), rng.integers(int(w * 0.7), w - bw)
            image[y0:y0 + bh, x0:x0 + bw] = rng.uniform(0.8, 1.0)
        image = image + params["film_grain"] * power_law_noise((h, w), 0.5, rng)
        image = np.clip(image, 0, 1) ** rng.uniform(0.8, 1.25)
    else:
        photons = params["photon_count"]
        image = rng.poisson(np.clip(image, 0, None) * photons) / photons
        image = ndimage.gaussian_filter(image, sigma=0.6 * factor)
        image = np.where(breast, image, 0.0)

    image = image.reshape(size, factor, size, factor).mean(axis=(1, 3))
    mask = mask_hr.reshape(size, factor, size, factor).mean(axis=(1, 3)) >= 0.5
    image_u8 = np.clip(np.round(image / max(image.max(), 1e-6) * 255), 0, 255).astype(np.uint8)
    return image_u8, mask.astype(np.uint8)


def generate_domain(domain: str, count: int, size: int, seed: int, params: dict) -> DomainArrays:
    images = np.zeros((count, size, size), dtype=np.uint8)
    masks = np.zeros_like(images)
    for index in range(count):
        images[index], masks[index] = render_image(index, size, seed, domain, params)
    ids = [f"syn-{domain}-{index:05d}" for index in range(count)]
    return DomainArrays(images=images, masks=masks, image_ids=ids, source=f"synthetic-{domain}")
