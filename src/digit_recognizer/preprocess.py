"""Turning an arbitrary picture of a digit into an MNIST-like 28x28 image.

MNIST's digits were size-normalised to fit a 20x20 box (keeping their aspect ratio, anti-aliased) and then
centred in a 28x28 field by their centre of mass. A digit drawn large and off-centre on a 280x280 canvas, or
photographed dark on light, must go through the same steps before the network sees it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import SIDE
from .errors import ImageError, NoDigitError

BOX = 20
MAX_SIDE = 4096
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")  # the formats the API accepts; no others are tried


def decode(data: bytes, max_side: int = MAX_SIDE) -> Image.Image:
    """Open PNG/JPEG/GIF/BMP/WebP bytes, refusing images larger than ``max_side`` on a side before decoding them.

    Whatever a malformed or hostile file makes PIL raise (a header claiming billions of pixels, a compressed
    text chunk that inflates past PIL's limit, a truncated stream, ...) comes out as an ``ImageError``.
    """
    if not data:
        raise ImageError("empty body: expected an image")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError("the body is not an image PIL can read (PNG, JPEG, GIF, BMP, WebP)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"image is too large: at most {max_side} pixels on a side") from None
    except Exception as err:  # PIL's plugins raise many kinds on malformed headers and chunks
        raise ImageError(f"cannot read the image ({str(err) or type(err).__name__})") from None
    width, height = image.size  # read from the header; pixels are not decoded yet
    if width > max_side or height > max_side:
        raise ImageError(f"image is {width}x{height}; at most {max_side} pixels on a side")
    try:
        image.load()  # the first frame only, however many an animation holds
    except Exception as err:
        raise ImageError(f"cannot decode the image ({str(err) or type(err).__name__})") from None
    return image


def to_grey(image: Image.Image) -> np.ndarray:
    """Grey levels 0-255 as float; transparent pixels count as white paper, 16-bit levels are scaled down."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        return np.clip(np.asarray(image, dtype=np.float32) / 257, 0, 255)
    if "A" in image.getbands() or "transparency" in image.info:
        image = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, image)
    return np.asarray(image.convert("L"), dtype=np.float32)


def mnist_like(image: Image.Image) -> np.ndarray:
    """A uint8 ``(784,)`` vector like Kaggle's rows: white digit (high values) on black, 20x20 box, centred."""
    grey = to_grey(image)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:  # dark ink on light paper: MNIST's ink is the high value
        grey, border = 255.0 - grey, 255.0 - border
    grey = np.clip(grey - np.median(border), 0, 255)  # paper that is not quite black becomes 0
    if grey.max() < 32:
        raise NoDigitError("no digit found: the image is blank")
    # Crop to the ink, ignoring faint noise.
    rows = np.flatnonzero(grey.max(axis=1) > 0.2 * grey.max())
    cols = np.flatnonzero(grey.max(axis=0) > 0.2 * grey.max())
    ink = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # Fit into the 20x20 box keeping the aspect ratio; LANCZOS anti-aliases when shrinking.
    h, w = ink.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(ink.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS),
                       dtype=np.float32)
    if small.max() < 1:  # ink so sparse (two dots far apart, say) that shrinking it to the box leaves none
        raise NoDigitError("no digit found: the ink is a few specks scattered over the image")
    small = 255.0 * small / small.max()
    # Centre of mass to the field's centre.
    field = np.zeros((SIDE, SIDE), dtype=np.float32)
    total = small.sum()
    yy, xx = np.indices(small.shape)
    com_y, com_x = (yy * small).sum() / total, (xx * small).sum() / total
    top = int(np.clip(round(SIDE / 2 - com_y - 0.5), 0, SIDE - small.shape[0]))
    left = int(np.clip(round(SIDE / 2 - com_x - 0.5), 0, SIDE - small.shape[1]))
    field[top:top + small.shape[0], left:left + small.shape[1]] = small
    return np.clip(field, 0, 255).astype(np.uint8).reshape(-1)

