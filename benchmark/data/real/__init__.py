"""Real data: CBIS-DDSM (train + intra-domain test) and INbreast (cross-domain test) from the user's disk.

`load_real_domains(params["data"])` returns both domains at `data.image_size`, ready for
`benchmark.data.prepared.write_prepared`, and a JSON-serialisable report of what was used and what was skipped.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from benchmark.data.real import cbis_ddsm, inbreast
from benchmark.data.real.settings import RealDataError, real_settings

if TYPE_CHECKING:
    from benchmark.data.prepared import DomainArrays

__all__ = ["RealDataError", "load_real_domains"]


def load_real_domains(data_params: dict) -> tuple[dict[str, DomainArrays], dict]:
    settings = real_settings(data_params)
    # Check both roots before the long CBIS decode, so a wrong INbreast path fails at once.
    cbis_ddsm.check_root(settings.cbis_root, settings.cbis_layout)
    inbreast.check_root(settings.inbreast_root)
    cbis, cbis_report = cbis_ddsm.load_cbis(settings)
    inbreast_arrays, inbreast_report = inbreast.load_inbreast(settings)
    preprocess = settings.preprocess
    report = {
        "source": "real",
        "preprocess": {"image_size": preprocess.image_size, "breast_crop": preprocess.breast_crop,
                       "mask_outside_crop": preprocess.mask_outside_crop, "flip_to_left": preprocess.flip_to_left,
                       "clip_percentiles": list(preprocess.clip_percentiles)},
        "cbis": cbis_report,
        "inbreast": inbreast_report,
        "warnings": cbis_report["warnings"],
        "skipped": cbis_report["skipped"] + inbreast_report["skipped"],
    }
    return {"cbis": cbis, "inbreast": inbreast_arrays}, report
