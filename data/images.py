"""Decoding a site's own image files (any format Pillow reads, and DICOM) to 8-bit L or RGB.

The conversion rules (recorded in meta.json as `preprocessing.image_conversion`, so sites whose
databases were converted differently are told apart):

- 8-bit grayscale (`L`) and RGB stay as they are; grayscale is repeated to the backbone's three
  channels after resizing (`Backbone.prepare_batch`), exactly as if it were RGB with R = G = B.
- 16-bit integer grayscale (`I;16*`, and `I` whose values fit 0..65535) is scaled by its full
  range, v * 255 / 65535 (rounded), so intensities keep their meaning across images; other
  32-bit integer or float images are min-max scaled per image. 16-bit RGB PNGs are read by Pillow
  as 8-bit RGB (the high byte of each sample: the same scaling).
- Other modes: 1-bit to L; grayscale with alpha (`LA`, `La`, `I;16` with alpha) to L, alpha
  dropped; palette, RGBA, CMYK, YCbCr and the rest to RGB (alpha dropped).
- DICOM (`.dcm`/`.dicom`, or the `DICM` magic): pixel data through the modality LUT (rescale
  slope/intercept), then the VOI LUT or window when the file has one, then min-max scaled to
  0..255; MONOCHROME1 is inverted so that higher is brighter; colour DICOM goes to RGB
  (min-max). Multi-frame files are refused, naming the file.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_CONVERSION = (
    "v1: L/RGB as is (grayscale repeated to 3 channels); 16-bit grayscale * 255/65535; other "
    "integer/float images min-max; alpha dropped; DICOM modality LUT, VOI LUT or window, min-max, "
    "MONOCHROME1 inverted; multi-frame refused"
)
DICOM_SUFFIXES = (".dcm", ".dicom")
PYDICOM_HINT = "reading DICOM needs pydicom (pip install -r requirements.txt)"


def is_dicom(data: bytes, path: str | Path | None = None) -> bool:
    """Whether the bytes (or the file name) are DICOM: the `DICM` magic at byte 128, or the
    suffix `.dcm`/`.dicom`."""
    if path is not None and Path(path).suffix.lower() in DICOM_SUFFIXES:
        return True
    return len(data) >= 132 and data[128:132] == b"DICM"


def _minmax_uint8(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("pixel values are not finite")
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _dicom_luts():
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def dicom_frames(ds: object) -> int:
    """Number of frames a DICOM dataset declares (1 when it declares none)."""
    try:
        return int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def read_dicom_tags(path: str | Path, tags: list[str]) -> object:
    """The DICOM dataset of `tags` only (no pixel data); pydicom's warnings name the file."""
    import pydicom

    _READING.name = str(path)
    return pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=tags)


def read_dicom_header(path: str | Path) -> None:
    """Check a DICOM file without its pixel data: readable, single-frame. ValueError otherwise."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise ValueError(f"{path}: {PYDICOM_HINT}") from None
    _READING.name = str(path)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a readable DICOM file ({err})") from None
    frames = dicom_frames(ds)
    if frames > 1:
        raise ValueError(
            f"{path}: multi-frame DICOM ({frames} frames); only single-frame images are "
            "supported (export one frame per file)"
        )


def dicom_to_array(data: bytes, name: str = "DICOM bytes") -> np.ndarray:
    """A DICOM file's image as uint8 H x W (grayscale) or H x W x 3 (colour), by the rules above."""
    try:
        import pydicom
    except ImportError:
        raise ValueError(f"{name}: {PYDICOM_HINT}") from None
    _READING.name = name
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        frames = dicom_frames(ds)
        if frames > 1:
            raise ValueError(
                f"multi-frame DICOM ({frames} frames); only single-frame images are supported"
            )
        arr = ds.pixel_array
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if int(ds.get("SamplesPerPixel", 1)) > 1:
            if photometric.startswith("YBR"):
                from pydicom.pixels import convert_color_space

                arr = convert_color_space(arr, photometric, "RGB")
            return arr if arr.dtype == np.uint8 else _minmax_uint8(arr)
        apply_modality_lut, apply_voi_lut = _dicom_luts()
        arr = apply_modality_lut(arr, ds)
        if "VOILUTSequence" in ds or "WindowCenter" in ds:
            arr = apply_voi_lut(arr, ds)
        out = _minmax_uint8(arr)
        return 255 - out if photometric == "MONOCHROME1" else out
    except Exception as err:  # pydicom raises many types for bad files
        raise ValueError(f"{name}: cannot decode DICOM ({one_line(err)})") from None


def one_line(err: Exception | str) -> str:
    """An error message on one line (pydicom's span several)."""
    return " ".join(str(err).split())


# What decodes which DICOM compression (pydicom's pixel data plugins), for the refusal's advice.
JPEG_2000 = ("1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20")  # J2K, HTJ2K prefixes
DECODER_HINTS = (
    (JPEG_2000, "pip install pylibjpeg pylibjpeg-openjpeg (or python-gdcm)"),
    (("1.2.840.10008.1.2.4.",), "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)"),
    (("",), "pip install python-gdcm"),
)


def dicom_transfer_syntax(path: str | Path) -> tuple[str, str] | None:
    """The transfer syntax (UID, name) of a DICOM file's header; None for a file without one."""
    from pydicom.filereader import read_file_meta_info

    uid = read_file_meta_info(str(path)).get("TransferSyntaxUID")  # group 0002 only: fast
    return None if uid is None else (str(uid), uid.name)


def check_dicom_decodes(path: str | Path, syntax: tuple[str, str]) -> None:
    """Decode one DICOM file's pixels (one per transfer syntax in the header pass), so that a
    compression no installed plugin decodes is refused before encoding: ValueError, one line
    naming the syntax and what to install or export."""
    _READING.quiet = True  # its warnings repeat the refusal, or come again while encoding
    try:
        dicom_to_array(Path(path).read_bytes(), str(path))
    except ValueError as err:
        uid, name = syntax
        hint = next(h for prefixes, h in DECODER_HINTS if uid.startswith(prefixes))
        reason = str(err).removeprefix(f"{path}: ")
        raise ValueError(
            f"{path}: DICOM transfer syntax {name!r} ({uid}) does not decode here ({reason}); "
            f"{hint}, or "
            "export the images uncompressed (e.g. gdcmconv --raw, dcmdjpeg); "
            "docs/own-data.md lists what decodes"
        ) from None
    finally:
        _READING.quiet = False


_READING = threading.local()  # the DICOM file this thread reads, for pydicom's warnings


class _NamedWarnings(logging.Handler):
    """pydicom's warnings (its logger) as one stderr line each, naming the file being read,
    each once."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(_READING, "quiet", False):
            return
        name = getattr(_READING, "name", None) or "a DICOM file"
        line = f"warning: {name}: {one_line(record.getMessage())}"
        if line not in self.seen:
            self.seen.add(line)
            print(line, file=sys.stderr)


def name_dicom_warnings() -> None:
    """Print each pydicom warning once, on one line naming its file (pydicom's own warnings do
    not): its logger's records go through `_NamedWarnings`, and its Python warnings, which
    repeat them without the file, are silenced. For a command line (create_db.py)."""
    logger = logging.getLogger("pydicom")
    if not any(isinstance(h, _NamedWarnings) for h in logger.handlers):
        logger.addHandler(_NamedWarnings())
    warnings.filterwarnings("ignore", module="pydicom")


def to_8bit(img: Image.Image) -> Image.Image:
    """A decoded PIL image of any mode as L or RGB, by the rules above."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if arr.ndim == 3:  # e.g. 16-bit with alpha
            arr = arr[..., 0]
        whole_range = mode.startswith("I;16") or (
            mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535
        )
        if whole_range:
            out = np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
        else:
            out = _minmax_uint8(arr)
        return Image.fromarray(out)
    if mode in ("LA", "La"):
        return img.getchannel(0)
    return img.convert("RGB")


def decode_image(data: bytes, name: str = "image bytes") -> Image.Image:
    """Encoded image file bytes (Pillow formats or DICOM) as an L or RGB PIL image."""
    path = getattr(data, "path", None)
    if is_dicom(data, path):
        return Image.fromarray(dicom_to_array(data, name))
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{name}: cannot decode image ({err})") from None
    return to_8bit(img)
