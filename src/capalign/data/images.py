"""Robust image loading: any file a user points us at becomes an RGB PIL image or a one-line `BadImage`.

Real image folders hold CMYK JPEGs, 16-bit PNGs, palette GIFs with transparency, phone photos that
rely on EXIF orientation, 20k-pixel panoramas and the odd truncated download. Models want plain RGB
of a sane size, and a captioning run over 100k files must not die on file 73,512, so every failure
mode is turned into `BadImage(reason)` that sources count and skip.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .. import CapalignError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_WHITE = (255, 255, 255)


class BadImage(CapalignError):
    """An image that cannot be used; the message is one line (the reason)."""


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg[:200]


def _open(src) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)):
        if not len(src):
            raise BadImage("empty file")
        return Image.open(io.BytesIO(bytes(src)))
    path = Path(src)
    if not path.is_file():
        raise BadImage(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise BadImage(f"empty file: {path}")
    return Image.open(path)


def _to_uint8(a: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Map high-bit-depth pixels to 0..255 by their value range, not by clipping (clipping turns a
    16-bit PNG almost white)."""
    is_float = a.dtype.kind == "f"
    a = a.astype(np.float64)
    if is_float and not sixteen_bit and a.size and np.nanmin(a) >= 0 and np.nanmax(a) <= 1.0:
        a = a * 255.0  # float images in [0, 1]
    elif sixteen_bit or (a.size and a.min() >= 0 and 255 < a.max() <= 65535):
        a = a / 257.0  # 16-bit range: 65535 -> 255
    elif a.size and (a.min() < 0 or a.max() > 255):
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))  # arbitrary range (e.g. float depth maps)
        a = (a - lo) * (255.0 / (hi - lo or 1.0))
    return np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white (what a viewer shows)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode.startswith("I;16")), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")  # P/L/RGB with a tRNS entry also expand to real alpha here
        bg = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def load_image(src: str | Path | bytes | Image.Image, max_side: int = 2048) -> Image.Image:
    """Load `src` as an RGB image with EXIF orientation applied and longest side <= max_side.

    Raises BadImage for missing, empty, corrupt, truncated, non-image or decompression-bomb input.
    """
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its pixel limit; treat that as a bomb too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(src)
            if max_side and img.format == "JPEG" and max(img.size) > max_side:
                # decode at 1/2, 1/4 or 1/8 scale straight from the DCT: huge photos load fast
                s = max_side / max(img.size)
                img.draft(None, (max(1, int(img.size[0] * s)), max(1, int(img.size[1] * s))))
            if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped the global; we want truncation reported
                ImageFile.LOAD_TRUNCATED_IMAGES = False
            img.load()  # full decode now, so truncation is detected here and not in the model's collator
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"decompression bomb refused: {_one_line(e)}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError, MemoryError) as e:
        # PIL plugins raise a zoo of types for broken files; "image file is truncated" is an OSError
        raise BadImage(f"unreadable image: {_one_line(e)}") from None
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block should not cost us the pixels
        pass
    try:
        img = to_rgb(img)
    except (OSError, ValueError, TypeError) as e:
        raise BadImage(f"cannot convert mode {img.mode} to RGB: {_one_line(e)}") from None
    if max_side and max(img.size) > max_side:
        s = max_side / max(img.size)
        size = (max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s)))
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
