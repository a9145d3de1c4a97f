"""Reference boxes from astronomy's standard source extractor: SEP (Source Extractor as a Python
library; docs/OWN_DATA.md, "A real example").

A sky image is background-subtracted once, as a whole (``subtract_background``): SEP's
background map (a grid of BACKGROUND_BOX_PX cells, sigma-clipped, median-filtered 3 x 3 and
spline-interpolated) is estimated per channel and subtracted. The *detection image* is the mean
of the subtracted channels; its noise, ``rms``, is SEP's global rms of that image.

Detection (``extract_boxes``, per canvas, on the crop of the detection image): SEP's
thresholded, matched-filtered segmentation (3 x 3 kernel [[1, 2, 1], [2, 4, 2], [1, 2, 1]]):
pixels above ``thresh_sigma`` x rms, connected groups of at least ``minarea_px`` pixels, split
by ``deblend_nthresh`` levels at contrast ``deblend_cont``, cleaned of spurious neighbours of
bright sources (``clean``). A source's box is the bounding box of its pixels above the threshold:
x = xmin, y = ymin, w = xmax - xmin + 1, h = ymax - ymin + 1 (px, pixel i covering [i, i + 1)),
the COCO form of asr_tf/data/coco.py.
"""
from __future__ import annotations

import dataclasses

import numpy as np

BACKGROUND_BOX_PX = 64  # SEP's background mesh cell (bw = bh), px of the field


@dataclasses.dataclass(frozen=True)
class ExtractorParams:
    """SEP's detection parameters (sep.extract's names, units in ours).

    Attributes:
      thresh_sigma: detection threshold, multiples of the detection image's rms.
      minarea_px: least connected pixels above the threshold for a source.
      deblend_nthresh: deblending levels between the threshold and a source's peak.
      deblend_cont: least fraction of a source's flux a branch needs to become a source of its
        own (1.0: no deblending).
      clean: remove detections explained by a bright neighbour's wings.
    """

    thresh_sigma: float = 5.0
    minarea_px: int = 10
    deblend_nthresh: int = 32
    deblend_cont: float = 0.005
    clean: bool = True


def _sep():
    try:
        import sep  # noqa: PLC0415 (the extractor is needed by the example only)
    except ImportError as err:
        raise ImportError("the source extractor needs the 'sep' package (pip install sep; "
                          "requirements.txt pins it)") from err
    return sep


def subtract_background(image: np.ndarray) -> tuple:
    """The background-subtracted image and its detection image (see the module docstring).

    Args:
      image: [H, W, C] float in [0, 1].
    Returns:
      (subtracted [H, W, C] float32, not clipped; detection [H, W] float32, the mean of the
      subtracted channels; rms: float, the detection image's global noise).
    """
    sep = _sep()
    image = np.asarray(image, np.float32)
    subtracted = np.empty_like(image)
    for c in range(image.shape[-1]):
        plane = np.ascontiguousarray(image[..., c])
        back = sep.Background(plane, bw=BACKGROUND_BOX_PX, bh=BACKGROUND_BOX_PX)
        subtracted[..., c] = plane - back.back()
    detection = np.ascontiguousarray(subtracted.mean(-1), np.float32)
    rms = float(sep.Background(detection, bw=BACKGROUND_BOX_PX, bh=BACKGROUND_BOX_PX).globalrms)
    return subtracted, detection, rms


def extract_boxes(detection: np.ndarray, rms: float, params: ExtractorParams) -> np.ndarray:
    """SEP's sources of a detection image as boxes.

    Args:
      detection: [H, W] background-subtracted detection image (a canvas's crop of it).
      rms: its noise (``subtract_background``); the threshold is params.thresh_sigma * rms.
      params: the detection parameters.
    Returns:
      [K, 4] float64 (x, y, w, h) px of the image, in SEP's order of the sources.
    """
    objects = _sep().extract(
        np.ascontiguousarray(detection, np.float32), params.thresh_sigma, err=float(rms),
        minarea=params.minarea_px, deblend_nthresh=params.deblend_nthresh,
        deblend_cont=params.deblend_cont, clean=params.clean)
    x0, y0 = objects["xmin"].astype(np.float64), objects["ymin"].astype(np.float64)
    return np.stack([x0, y0, objects["xmax"] - x0 + 1.0, objects["ymax"] - y0 + 1.0],
                    -1).reshape(-1, 4)
