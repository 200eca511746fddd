"""Reading radiographs and masks (DICOM, PNG, JPEG), writing PNGs, Kaggle SIIM RLE."""

from cxrlab.io.image import (
    DEFAULT_MAX_PIXELS,
    ImageMeta,
    XrayImage,
    detect_format,
    read_image,
    read_mask,
)
from cxrlab.io.rle import masks_union, read_rle_csv, rle_decode, rle_encode
from cxrlab.io.write import write_bytes_atomic, write_png

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageMeta",
    "XrayImage",
    "detect_format",
    "masks_union",
    "read_image",
    "read_mask",
    "read_rle_csv",
    "rle_decode",
    "rle_encode",
    "write_bytes_atomic",
    "write_png",
]
