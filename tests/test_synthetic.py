"""The synthetic generator: deterministic, consistent labels, realistic mass statistics."""
import numpy as np
from scipy import ndimage

from benchmark.data.prepared import box_map, component_boxes
from benchmark.data.synthetic import generate_domain, render_image
from tests.conftest import tiny_params

GEN = tiny_params()["data"]["synthetic"]


def test_deterministic_by_seed_and_index():
    first = render_image(3, 48, seed=11, domain="cbis", params=GEN)
    again = render_image(3, 48, seed=11, domain="cbis", params=GEN)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other_seed = render_image(3, 48, seed=12, domain="cbis", params=GEN)
    other_index = render_image(4, 48, seed=11, domain="cbis", params=GEN)
    assert not np.array_equal(first[0], other_seed[0])
    assert not np.array_equal(first[0], other_index[0])
    # image i does not depend on how many images are generated
    assert np.array_equal(generate_domain("cbis", 5, 48, 11, GEN).images[3], first[0])


def test_domains_differ_in_background():
    cbis = generate_domain("cbis", 6, 64, 0, GEN)
    inbreast = generate_domain("inbreast", 6, 64, 0, GEN)
    # INbreast-like: clean zero background at the far side; CBIS-like: noisy film background
    assert (inbreast.images[:, :, -3:] == 0).mean() > 0.5
    assert (cbis.images[:, :, -3:] == 0).mean() < 0.5


def test_masks_boxes_consistent_and_realistic():
    domain = generate_domain("cbis", 40, 96, 5, GEN)
    ratios, contrasts = [], []
    for image, mask in zip(domain.images, domain.masks):
        assert mask.any(), "every synthetic image holds a mass"
        boxes = component_boxes(mask)
        filled = box_map(mask.shape, boxes)
        assert np.all(filled[mask > 0] == 1), "the box label covers the whole mask"
        for x0, y0, x1, y1 in boxes:  # tight: every box edge touches the mask
            sub = mask[y0:y1, x0:x1]
            assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, -1].any()
        ratios.append(mask.sum() / filled.sum())
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask.astype(bool)
        contrasts.append(image[mask > 0].mean() / image[ring].mean() - 1)
        assert 0.001 <= mask.mean() <= 0.07  # nominal area up to 3%, plus lobulation and spicules
    # datasets.md: mask/box area median 0.64 (10th-90th: 0.52-0.72); contrast ~15% (7-30%)
    assert 0.55 <= np.median(ratios) <= 0.72
    assert np.percentile(ratios, 90) < 0.85
    assert 0.07 <= np.median(contrasts) <= 0.30
