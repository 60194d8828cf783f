"""Reading mammogram DICOMs as display-ready arrays, and writing small ones for tests and benchmarks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


@dataclass(frozen=True)
class DicomHeader:
    rows: int
    cols: int
    bits_allocated: int
    series_description: str


def read_header(path: str | Path) -> DicomHeader:
    """Size and series description without decoding pixels (cheap enough to call on every candidate file)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return DicomHeader(
        rows=int(ds.Rows), cols=int(ds.Columns), bits_allocated=int(ds.get("BitsAllocated", 16)),
        series_description=str(ds.get("SeriesDescription", "")).strip(),
    )


def read_pixels(path: str | Path) -> np.ndarray:
    """The stored pixels as a 2-D array where brighter means denser tissue (MONOCHROME1 is inverted)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise ValueError(f"expected one grey-level frame, got pixel array of shape {pixels.shape}")
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        # MONOCHROME1 stores 0 as white; invert within the stored bit depth so the range is kept.
        top = (1 << int(ds.get("BitsStored", pixels.dtype.itemsize * 8))) - 1
        pixels = (top - pixels.astype(np.int64)).clip(0, top).astype(pixels.dtype)
    return pixels


def write_dicom(path: str | Path, pixels: np.ndarray, *, series_description: str = "",
                photometric: str = "MONOCHROME2", laterality: str = "") -> Path:
    """Write an uncompressed single-frame grey DICOM (uint8 or uint16) the way TCIA/INbreast files look."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim != 2:
        raise ValueError(f"write_dicom takes a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MG"
    ds.SeriesDescription = series_description
    if laterality:
        ds.ImageLaterality = laterality
    bits = pixels.dtype.itemsize * 8
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixels.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
