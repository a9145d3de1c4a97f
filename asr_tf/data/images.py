"""Image files of a data set from files (docs/OWN_DATA.md): decoding, the canvas rule, PNGs.

Decoding (PIL): a PNG or JPEG becomes float32 [H, W, C] in [0, 1], 8-bit values / 255 and
16-bit ones (PNG mode 'I;16') / 65535. C = 1 for grayscale modes ('1', 'L', 'LA', 'I;16'), 3
for colour ones ('RGB', 'RGBA', 'P', 'CMYK', 'YCbCr'; a palette is expanded to RGB); an alpha
channel is dropped.

The canvas rule, one for every image (letterbox): an image W x H px is resized so that its
longer side is the canvas side S, up or down, keeping its aspect ratio (the shorter side becomes
round(short * S / long), halves rounded up, at least 1), per channel in float32 with PIL's
bilinear filter (antialiased when shrinking), and placed centred on an S x S canvas of zeros at
(left, top) = (floor((S - w') / 2), floor((S - h') / 2)). An image that is already S x S is
taken as it is, bit for bit. A box (x, y, w, h) in px of the image becomes
(left + x w'/W, top + y h'/H, w w'/W, h h'/H) in px of the canvas.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_8 = ("1", "L", "LA")
_GRAY_16 = ("I;16", "I;16L", "I;16B", "I")  # 'I': a 16-bit PNG as older Pillows open it
_COLOUR = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr")


class DataError(ValueError):
    """Bad input data; the message names the file (or field) and the problem."""


def mixed_channels(first, first_channels, other, other_channels) -> DataError:
    """The error of a data set whose images ``first`` and ``other`` differ in channels."""
    return DataError(f"mixed channel counts: {first} has {first_channels} channel(s), {other} "
                     f"has {other_channels}; one channel count per data set (convert the "
                     "images to grayscale or to RGB)")


def channels_of_mode(mode: str) -> int | None:
    """Channels of an image of PIL ``mode`` after decoding (1 or 3); None if unsupported."""
    if mode in _GRAY_8 or mode in _GRAY_16:
        return 1
    return 3 if mode in _COLOUR else None


def read_header(path) -> tuple:
    """(width, height, channels) of an image file, from its header (no decoding).

    Raises DataError naming the file if PIL cannot read it or its mode is not supported.
    """
    try:
        with Image.open(path) as im:
            width, height, mode, fmt = im.width, im.height, im.mode, im.format
    except (OSError, SyntaxError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"{path}: not a readable image ({err})") from err
    if fmt not in ("PNG", "JPEG"):
        raise DataError(f"{path}: a {fmt} image; expected PNG or JPEG")
    channels = channels_of_mode(mode)
    if channels is None:
        raise DataError(f"{path}: unsupported image mode {mode!r}; expected grayscale or RGB")
    return width, height, channels


def decode(path) -> np.ndarray:
    """The pixels of an image file, float32 [H, W, C] in [0, 1] (see the module docstring).

    Raises DataError naming the file if it is unreadable or corrupt (truncated included).
    """
    try:
        with Image.open(path) as im:
            im.load()
            return pixels(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode the image ({err})") from err


def pixels(im: Image.Image) -> np.ndarray:
    """A PIL image as float32 [H, W, C] in [0, 1]."""
    if im.mode in _GRAY_16:
        return (np.asarray(im, np.float32) / np.float32(65535))[..., None]
    if im.mode in _GRAY_8:
        return (np.asarray(im.convert("L")).astype(np.float32) / np.float32(255))[..., None]
    if im.mode in _COLOUR:
        return np.asarray(im.convert("RGB")).astype(np.float32) / np.float32(255)
    raise ValueError(f"unsupported image mode {im.mode!r}")


def from_uint(array: np.ndarray) -> np.ndarray:
    """uint8 / uint16 pixels [H, W, C] (a TFDS image) as float32 in [0, 1]."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    raise ValueError(f"expected uint8 or uint16 pixels, got {array.dtype}")


# ------------------------------------------------------------------ the canvas rule
def letterbox(width: int, height: int, canvas_px: int) -> tuple:
    """(w', h', left, top) of a W x H image on the S x S canvas (the module's rule)."""
    longer = max(width, height)
    new_w = max(1, int(width * canvas_px / longer + 0.5))
    new_h = max(1, int(height * canvas_px / longer + 0.5))
    return new_w, new_h, (canvas_px - new_w) // 2, (canvas_px - new_h) // 2


def to_canvas(image: np.ndarray, canvas_px: int) -> np.ndarray:
    """An image [H, W, C] float32 on the canvas: [S, S, C] float32 (the module's rule)."""
    height, width, channels = image.shape
    if width == height == canvas_px:
        return np.asarray(image, np.float32)
    new_w, new_h, left, top = letterbox(width, height, canvas_px)
    canvas = np.zeros([canvas_px, canvas_px, channels], np.float32)
    for c in range(channels):
        plane = Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), "F")
        resized = plane.resize((new_w, new_h), Image.Resampling.BILINEAR)
        canvas[top:top + new_h, left:left + new_w, c] = np.asarray(resized)
    return np.clip(canvas, 0.0, 1.0, out=canvas)


def boxes_to_canvas(boxes_xywh, width: int, height: int, canvas_px: int) -> np.ndarray:
    """Boxes [K, 4] (x, y, w, h) in px of a W x H image -> [K, 4] float32 in px of the canvas."""
    boxes = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    new_w, new_h, left, top = letterbox(width, height, canvas_px)
    sx, sy = new_w / width, new_h / height
    out = boxes * np.array([sx, sy, sx, sy]) + np.array([left, top, 0.0, 0.0])
    return out.astype(np.float32)


def boxes_from_canvas(boxes_px, width: int, height: int, canvas_px: int) -> np.ndarray:
    """The inverse of boxes_to_canvas: boxes [K, 4] (x, y, w, h) px of the canvas (a served
    model's ``boxes_px``) -> [K, 4] float32 px of the W x H image."""
    boxes = np.asarray(boxes_px, np.float64).reshape(-1, 4)
    new_w, new_h, left, top = letterbox(width, height, canvas_px)
    sx, sy = new_w / width, new_h / height
    out = (boxes - np.array([left, top, 0.0, 0.0])) / np.array([sx, sy, sx, sy])
    return out.astype(np.float32)


# ------------------------------------------------------------------ writing (make_dataset)
def png_bits(images: np.ndarray) -> int:
    """8 if every value of ``images`` (float32 in [0, 1]) is exactly k / 255, so that an 8-bit
    PNG holds it bit for bit; else 16."""
    images = np.asarray(images, np.float32)
    levels = np.round(images * 255).astype(np.uint8)
    return 8 if np.array_equal(levels.astype(np.float32) / np.float32(255), images) else 16


def write_png(path, image: np.ndarray, bits: int = 8) -> None:
    """Writes ``image`` [S, S] or [S, S, C] float in [0, 1] as a PNG of ``bits`` (8, or 16 for
    grayscale), values rounded to the nearest level."""
    image = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if bits == 16:
        if image.ndim != 2:
            raise ValueError("16-bit PNGs are written for grayscale images only")
        Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(path, format="PNG")
    elif bits == 8:
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path, format="PNG")
    else:
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
