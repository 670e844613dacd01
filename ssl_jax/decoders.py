"""Host decoders of the streaming input: an encoded image -> one random-resized-crop view.

`config.data.decoder` chooses how much of the view the host makes:
  - "pillow": decode (at a reduced DCT scale when the crop allows) and resize
    the crop on the host: uint8 [S, S, 3] (`decode_crop`).
  - "simplejpeg": decode with libjpeg-turbo through simplejpeg and copy the
    crop window onto a fixed canvas of 2S x 2S, with the window's place in it
    (`decode_window`); the device resizes the window to S x S
    (`augment.resize_windows`). The host's resize, half of its work with
    Pillow (benchmarks/README.md), moves to the accelerator. A window too
    large for the canvas is decoded at the largest DCT scale M/8 that fits
    (so only windows of at least 2S a side are decoded reduced, as with
    Pillow's draft mode). Images simplejpeg does not take (PNG, CMYK JPEGs,
    JPEGs with an EXIF rotation) go through `decode_crop` onto the canvas.

Both draw the crop box from the image's header size with the same generator,
so the boxes, and hence the views' geometry, do not depend on the decoder;
the pixels differ within the two resamplers' rounding (the benchmark states
the mean difference and tests/test_decoders.py bounds it).
"""

from __future__ import annotations

import importlib
import io
import math
from typing import Optional

import numpy as np

from ssl_jax import sources
from ssl_jax.sources import DataError

DECODERS = ("pillow", "simplejpeg")
CANVAS = 2  # the window canvas's side, in output sides (decoder "simplejpeg")


def canvas_size(size: int, decoder: str) -> int:
  """Side of the images the host sends for output side `size`."""
  return int(CANVAS * size) if decoder == "simplejpeg" else size


def version(decoder: str) -> str:
  """'<decoder> <library version>', recorded with a run (a resume elsewhere says so)."""
  if decoder == "simplejpeg":
    import simplejpeg
    return f"simplejpeg {simplejpeg.__version__}"
  import PIL
  return f"pillow {PIL.__version__}"


def check_available(decoder: str) -> Optional[str]:
  """None, or one line saying why `decoder` cannot run here."""
  if decoder not in DECODERS:
    return f"config.data.decoder must be one of {', '.join(DECODERS)}, got {decoder!r}."
  if decoder == "simplejpeg":
    try:
      importlib.import_module("simplejpeg")
    except ImportError:
      return ("config.data.decoder='simplejpeg' needs simplejpeg: pip install "
              "'ssl_jax[stream]' (or set config.data.decoder=pillow).")
  return None


def crop_box(rng: np.random.Generator, w: int, h: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
  """(left, top, width, height) of a random area fraction in `scale` with aspect in `ratio`.

  One draw, clipped to the image, as the device's `augment.random_resized_crop`.
  """
  area = w * h * rng.uniform(scale[0], scale[1])
  aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
  cw = int(min(w, max(1, round(math.sqrt(area * aspect)))))
  ch = int(min(h, max(1, round(math.sqrt(area / aspect)))))
  return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch


def decode_crop(data: bytes, name: str, size: int, rng: np.random.Generator,
                scale: tuple[float, float], ratio: tuple[float, float],
                box: Optional[tuple[int, int, int, int]] = None) -> np.ndarray:
  """Encoded image -> uint8 [size, size, 3]: a random resized crop of the upright image
  (`box`, when given, is the crop box already drawn from `rng`)."""
  from PIL import Image
  try:
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    orientation = img.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):  # stored sideways: EXIF turns it
      w, h = h, w
    left, top, cw, ch = box or crop_box(rng, w, h, scale, ratio)
    shrink = min(cw, ch) / size
    if shrink >= 2 and img.format == "JPEG":
      # Decode at 1/2, 1/4 or 1/8 scale where the crop still has `size` pixels a side.
      img.draft("RGB", (math.ceil(img.size[0] / shrink), math.ceil(img.size[1] / shrink)))
    if orientation != 1 or img.mode != "RGB":  # (each conversion copies the image)
      img = sources.upright_rgb(img)
    sx, sy = img.size[0] / w, img.size[1] / h
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    return np.asarray(img.resize((size, size), Image.BILINEAR, box=box), np.uint8)
  except Exception as e:  # Pillow raises many types on damaged files
    raise DataError(f"cannot decode image {name}: {e}") from e


def _fits(extent: float, margin: int, canvas: int) -> bool:
  return extent + 2 * margin + 2 <= canvas


def _margin(extent: float, size: int) -> int:
  """Pixels beyond a window edge that the device's antialiased resize reads (its
  triangle kernel spans extent / size input pixels each side when it shrinks)."""
  return int(math.ceil(max(1.0, extent / size))) + 1


def decode_window(data: bytes, name: str, size: int, rng: np.random.Generator,
                  scale: tuple[float, float], ratio: tuple[float, float],
                  out: Optional[np.ndarray] = None, decoded: Optional[dict] = None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Encoded image -> (uint8 [2S, 2S, 3] canvas, float32 [4] window (top, left, height,
  width) in canvas pixels) for `augment.resize_windows`; the box is `crop_box`'s.
  `decoded`, a dict kept across the views of one image, holds its decodes by DCT
  scale, so two views decode the JPEG once.

  The canvas (`out`, zeros, when given: written in place) holds the window at
  its corner with a margin of the image around it, what the device's
  resampling kernel reads beyond the window's edges; where the image ends
  first, its last row and column repeat over that margin, so nothing outside
  the image darkens the view's edges. The kernel reads nothing further.
  """
  import simplejpeg
  canvas_side = canvas_size(size, "simplejpeg")
  canvas = np.zeros((canvas_side, canvas_side, 3), np.uint8) if out is None else out
  try:
    h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    usable = colorspace in ("YCbCr", "Gray") and _upright(data)
  except Exception:  # not a JPEG simplejpeg reads: the Pillow path decides
    usable = False
  if not usable:
    return _host_resized(canvas, data, name, size, rng, scale, ratio)
  left, top, cw, ch = crop_box(rng, w, h, scale, ratio)
  extent = max(cw, ch)
  # The largest DCT scale M/8 at which the window, its margins and a pixel of
  # rounding each side fit the canvas (M = 8: no reduction).
  m = next((m for m in range(8, 0, -1)
            if _fits(extent * m / 8, _margin(extent * m / 8, size), canvas_side)), 0)
  if m == 0:  # a window of over 15 canvas sides: rare enough for the host to resize
    return _host_resized(canvas, data, name, size, rng, scale, ratio, (left, top, cw, ch))
  decoded = {} if decoded is None else decoded
  try:
    if m not in decoded:
      decoded[m] = (simplejpeg.decode_jpeg(data, colorspace="RGB") if m == 8 else
                    simplejpeg.decode_jpeg(data, colorspace="RGB",
                                           min_height=math.ceil(h * m / 8),
                                           min_width=math.ceil(w * m / 8)))
    img = decoded[m]
  except ValueError:  # damaged: Pillow names it as it does for the pillow decoder
    return _host_resized(canvas, data, name, size, rng, scale, ratio, (left, top, cw, ch))
  s = m / 8   # libjpeg scales each 8x8 block to m x m: coordinates scale by m / 8 exactly
  y0, x0, wh, ww = top * s, left * s, ch * s, cw * s
  pad = _margin(max(wh, ww), size)
  r0, c0 = max(0, math.floor(y0) - pad), max(0, math.floor(x0) - pad)
  r1 = min(img.shape[0], math.ceil(y0 + wh) + pad)
  c1 = min(img.shape[1], math.ceil(x0 + ww) + pad)
  _place(canvas, img[r0:r1, c0:c1], pad)
  return canvas, np.asarray([y0 - r0, x0 - c0, wh, ww], np.float32)


def _place(canvas: np.ndarray, region: np.ndarray, pad: int) -> None:
  """Copies region [h, w, 3] to the canvas's corner, its last column and row repeated
  `pad` pixels on (within the canvas)."""
  h, w = region.shape[:2]
  canvas[:h, :w] = region
  canvas[:h, w:w + pad] = region[:, -1:]
  canvas[h:h + pad, :w + pad] = canvas[h - 1:h, :w + pad]


def _upright(data: bytes) -> bool:
  """Whether a JPEG needs no EXIF rotation (Pillow reads the tag where EXIF is present)."""
  if b"Exif" not in data[:65536]:
    return True
  from PIL import Image
  return Image.open(io.BytesIO(data)).getexif().get(0x0112, 1) == 1


def _host_resized(canvas: np.ndarray, data: bytes, name: str, size: int,
                  rng: np.random.Generator, scale, ratio, box=None
                  ) -> tuple[np.ndarray, np.ndarray]:
  """`decode_crop`'s view (`box`: the crop box, if drawn already) on the canvas, as a
  window of size x size at its corner."""
  _place(canvas, decode_crop(data, name, size, rng, scale, ratio, box=box),
         _margin(size, size))
  return canvas, np.asarray([0, 0, size, size], np.float32)
