"""Evaluation metrics of the original MOG-ASR code (docs/ORIGINAL.md §8), as pure numpy functions.

* ACC   - fraction of images whose inferred count equals the true count.
* SE    - mean over images of sum over pixels of (x - clip(recon, 0, 1))^2.
* nELBO - mean over images of the per-image negative ELBO (computed by the model).
* mIoU  - per image, Hungarian matching of GT and inferred boxes maximising the summed
          "+1 pixel" IoU, divided by max(n_gt, n_inf); averaged over images.

Box conventions (all in pixels of the S x S canvas, floats, no rounding):

* inferred boxes come from the `where` latents: x1 = (shift_x + 1) * S/2 - scale * S/2,
  x2 = (shift_x + 1) * S/2 + scale * S/2, likewise y with shift_y.  Shift component 0 is
  horizontal (column, x), component 1 vertical (row, y).
* ground-truth boxes are stored as (x, y, w, h) (top-left + size of the placed crop) and are
  compared as [x, y, x + w, y + h] (quirk Q4: one pixel too large under the +1 IoU);
  `tight_gt=True` uses [x, y, x + w - 1, y + h - 1].
* the IoU uses the "+1 pixel" convention on the float boxes as well, so boxes that are less
  than one pixel apart still get a small positive IoU (reproduced on purpose).

`BestTracker` reproduces the quirk-Q28 "best" selection (chosen by the moving minimum of the
training loss, recorded at the next test evaluation) and also keeps the last evaluation and
the evaluation with the lowest test nELBO.
"""
from __future__ import annotations

import collections
import math
from typing import Any, Dict, Mapping, Optional

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "where_px",
    "boxes_from_where",
    "xywh_from_where",
    "gt_boxes_xyxy",
    "iou_plus1",
    "pairwise_iou_plus1",
    "image_miou",
    "per_image_miou",
    "mean_iou",
    "count_accuracy",
    "squared_error",
    "evaluate_outputs",
    "BestTracker",
]


# ----------------------------------------------------------------------------- boxes

def _scale_array(scale) -> np.ndarray:
    """Accepts scale as [N, T] or [N, T, 1] (the original records [N, T, 1]); returns [N, T]."""
    scale = np.asarray(scale, dtype=np.float64)
    if scale.ndim == 3 and scale.shape[-1] == 1:
        scale = scale[..., 0]
    return scale


def where_px(scale, shift, canvas_px):
    """The one rule from the `where` latents to pixels, for numpy arrays and tensors alike:
    centres (shift + 1) * S/2 [..., 2] (x, y) and sides scale * S [...].

    Args:
      scale: [...] box side as a fraction of the canvas; shift: [..., 2] centre in [-1, 1].
    Returns:
      (centres_px [..., 2], sides_px [...]).
    """
    s = float(canvas_px)
    return (shift + 1.0) * (s / 2.0), scale * s


def boxes_from_where(scale, shift, canvas_px) -> np.ndarray:
    """Inferred boxes in pixels from the `where` latents.

    Args:
      scale: [N, T] (or [N, T, 1]) box side as a fraction of the canvas (sigmoid output).
      shift: [N, T, 2] box centre in [-1, 1]; [..., 0] horizontal (x), [..., 1] vertical (y).
      canvas_px: S, canvas side in pixels.
    Returns:
      [N, T, 4] float64 boxes (x1, y1, x2, y2); x1 = (shift_x+1)*S/2 - scale*S/2,
      x2 = (shift_x+1)*S/2 + scale*S/2, likewise y.
    """
    centre, side = where_px(_scale_array(scale), np.asarray(shift, dtype=np.float64), canvas_px)
    half = side[..., None] / 2.0  # [N, T, 1]
    return np.concatenate([centre - half, centre + half], axis=-1)


def xywh_from_where(scale, shift, canvas_px) -> np.ndarray:
    """Inferred boxes as (x, y, w, h): top-left corner and size in pixels.

    Args/shape as `boxes_from_where`; returns [N, T, 4] float64 with w = h = scale * S.
    """
    xyxy = boxes_from_where(scale, shift, canvas_px)
    return np.concatenate([xyxy[..., :2], xyxy[..., 2:] - xyxy[..., :2]], axis=-1)


def gt_boxes_xyxy(boxes_px, tight: bool = False) -> np.ndarray:
    """Ground-truth boxes (x, y, w, h) -> (x1, y1, x2, y2) as compared by the evaluator.

    Args:
      boxes_px: [..., 4] (e.g. [N, 4, 4]) GT boxes (x, y, w, h) in pixels.
      tight: False (default, quirk Q4): [x, y, x+w, y+h]; True: [x, y, x+w-1, y+h-1].
    Returns:
      [..., 4] float64.
    """
    b = np.asarray(boxes_px, dtype=np.float64)
    off = 1.0 if tight else 0.0
    return np.stack(
        [b[..., 0], b[..., 1], b[..., 0] + b[..., 2] - off, b[..., 1] + b[..., 3] - off],
        axis=-1)


# ----------------------------------------------------------------------------- IoU

def iou_plus1(a, b) -> np.ndarray:
    """IoU with the "+1 pixel" convention, broadcasting over leading dims.

    inter = max(0, min(x2) - max(x1) + 1) * max(0, min(y2) - max(y1) + 1),
    area = (x2 - x1 + 1) * (y2 - y1 + 1), iou = inter / (area_a + area_b - inter).

    Args:
      a, b: [..., 4] boxes (x1, y1, x2, y2), broadcastable against each other.
    Returns:
      [...] float64 IoU.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    iw = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1.0)
    ih = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1.0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1.0) * (a[..., 3] - a[..., 1] + 1.0)
    area_b = (b[..., 2] - b[..., 0] + 1.0) * (b[..., 3] - b[..., 1] + 1.0)
    return inter / (area_a + area_b - inter)


def pairwise_iou_plus1(gt, inf) -> np.ndarray:
    """Pairwise +1 IoU matrix.

    Args:
      gt: [G, 4] boxes (x1, y1, x2, y2).
      inf: [I, 4] boxes (x1, y1, x2, y2).
    Returns:
      [G, I] float64, entry (g, i) = iou_plus1(gt[g], inf[i]).
    """
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    inf = np.asarray(inf, dtype=np.float64).reshape(-1, 4)
    return iou_plus1(gt[:, None, :], inf[None, :, :])


def image_miou(gt, inferred) -> float:
    """mIoU of one image: Hungarian matching maximising the summed IoU, / max(G, I).

    Args:
      gt: [G, 4] GT boxes (x1, y1, x2, y2).
      inferred: [I, 4] inferred boxes (x1, y1, x2, y2).
    Returns:
      float. Empty cases: G = I = 0 -> 1.0; G = 0 only -> 0.0; I = 0 only -> 0.0.
    """
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    inferred = np.asarray(inferred, dtype=np.float64).reshape(-1, 4)
    n_gt, n_inf = gt.shape[0], inferred.shape[0]
    if n_gt == 0 and n_inf == 0:
        return 1.0
    if n_gt == 0 or n_inf == 0:
        return 0.0
    iou = pairwise_iou_plus1(gt, inferred)
    rows, cols = linear_sum_assignment(-iou)
    return float(iou[rows, cols].sum() / max(n_gt, n_inf))


def per_image_miou(gt_boxes_px, gt_mask, inf_boxes_xyxy, inf_count, tight_gt: bool = False):
    """Per-image mIoU.

    Args:
      gt_boxes_px: [N, M, 4] GT boxes (x, y, w, h) in pixels (M = 4 slots in our data).
      gt_mask: [N, M] bool/0-1, which GT slots hold an object.
      inf_boxes_xyxy: [N, T, 4] inferred boxes (x1, y1, x2, y2), e.g. from `boxes_from_where`.
      inf_count: [N] inferred count; the first inf_count steps are the inferred boxes
        (clipped to [0, T]).
      tight_gt: see `gt_boxes_xyxy`.
    Returns:
      [N] float64.
    """
    gt = gt_boxes_xyxy(gt_boxes_px, tight=tight_gt)
    gt_mask = np.asarray(gt_mask).astype(bool)
    inf_boxes = np.asarray(inf_boxes_xyxy, dtype=np.float64)
    counts = np.clip(np.asarray(inf_count).reshape(-1).astype(np.int64), 0, inf_boxes.shape[1])
    n = gt.shape[0]
    if not (gt_mask.shape[0] == inf_boxes.shape[0] == counts.shape[0] == n):
        raise ValueError("batch sizes differ: gt %d, mask %d, inferred %d, count %d"
                         % (n, gt_mask.shape[0], inf_boxes.shape[0], counts.shape[0]))
    out = np.empty([n], dtype=np.float64)
    for i in range(n):
        out[i] = image_miou(gt[i][gt_mask[i]], inf_boxes[i, :counts[i]])
    return out


def mean_iou(gt_boxes_px, gt_mask, inf_boxes_xyxy, inf_count, tight_gt: bool = False) -> float:
    """mIoU averaged over images ("global_iou" of the original). Arguments as `per_image_miou`."""
    per = per_image_miou(gt_boxes_px, gt_mask, inf_boxes_xyxy, inf_count, tight_gt=tight_gt)
    return float(per.mean()) if per.size else float("nan")


# ----------------------------------------------------------------------------- ACC / SE

def count_accuracy(inf_count, true_count) -> float:
    """Fraction of images with inferred count == true count. Args: [N], [N]."""
    inf_count = np.asarray(inf_count).reshape(-1).astype(np.int64)
    true_count = np.asarray(true_count).reshape(-1).astype(np.int64)
    if inf_count.shape != true_count.shape:
        raise ValueError("shape mismatch %s vs %s" % (inf_count.shape, true_count.shape))
    return float(np.mean(inf_count == true_count)) if inf_count.size else float("nan")


def squared_error(images, recon) -> float:
    """Mean over images of sum over pixels of (x - clip(recon, 0, 1))^2.

    Args:
      images: [N, S, S] or [N, S, S, 1] (or flat [N, S*S]) in [0, 1].
      recon: same number of elements per image as `images` (layouts may differ).
    Returns:
      float.
    """
    x = np.asarray(images, dtype=np.float64)
    n = x.shape[0]
    x = x.reshape(n, -1)
    r = np.clip(np.asarray(recon, dtype=np.float64).reshape(n, -1), 0.0, 1.0)
    if x.shape != r.shape:
        raise ValueError("images %s and recon %s differ" % (x.shape, r.shape))
    return float(np.mean(np.sum((x - r) ** 2, axis=1))) if n else float("nan")


def evaluate_outputs(images, recon, nelbo, inf_count, scale, shift, gt_boxes_px, gt_mask,
                     true_count, canvas_px: Optional[int] = None,
                     tight_gt: bool = False) -> Dict[str, float]:
    """All paper metrics from the arrays of one (stochastic) test pass.

    Args:
      images: [N, S, S(, C)] test images in [0, 1].
      recon: [N, S, S(, C)] canvas (clipped here for SE).
      nelbo: [N] per-image negative ELBO (or a scalar, already averaged).
      inf_count: [N] inferred count.
      scale: [N, T] (or [N, T, 1]) inferred scale; shift: [N, T, 2] inferred shift.
      gt_boxes_px: [N, M, 4] GT (x, y, w, h); gt_mask: [N, M]; true_count: [N]; all three
        None for images without boxes.
      canvas_px: S; default images.shape[1].
      tight_gt: see `gt_boxes_xyxy`.
    Returns:
      {'acc', 'se', 'nelbo', 'miou'} as Python floats; without boxes {'se', 'nelbo'} (ACC and
      mIoU are left out, not given a value).
    """
    images = np.asarray(images)
    if canvas_px is None:
        canvas_px = images.shape[1]
    result = {"se": squared_error(images, recon),
              "nelbo": float(np.mean(np.asarray(nelbo, dtype=np.float64)))}
    if true_count is None:
        return result
    inf_boxes = boxes_from_where(scale, shift, canvas_px)
    return {
        "acc": count_accuracy(inf_count, true_count),
        **result,
        "miou": mean_iou(gt_boxes_px, gt_mask, inf_boxes, inf_count, tight_gt=tight_gt),
    }


# ----------------------------------------------------------------------------- best selection

def jsonable(metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """A metrics dict with numpy values as plain Python numbers and lists (for JSON)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (np.generic, np.ndarray)):
            v = np.asarray(v)
            v = v.item() if v.size == 1 else v.tolist()
        out[str(k)] = v
    return out


class BestTracker:
    """Quirk Q28 "best" selection, plus `last` and `best_by_test`.

    Original behaviour: every `every` (20) iterations the mean of the training loss over the
    iterations since the previous check (the last 20 when called every iteration) is compared
    with the running minimum; a strict new minimum sets a flag.  At the next test evaluation
    (including one at the same step, as the loss check runs first in the loop) the "best"
    record is overwritten with that evaluation's metrics and the flag is cleared.  The test
    results never influence "best".

    Usage per iteration: `observe_train_loss(step, loss)`; then, on evaluation steps,
    `observe_eval(step, metrics)`.  `state()` / `from_state()` round-trip through JSON.
    """

    def __init__(self, window: int = 20, every: int = 20, test_key: str = "nelbo"):
        if window < 1 or every < 1:
            raise ValueError("window and every must be >= 1")
        self.window = int(window)
        self.every = int(every)
        self.test_key = test_key
        self._pending = collections.deque(maxlen=self.window)
        self.min_loss: Optional[float] = None   # None == +inf (no check yet)
        self.min_loss_step: Optional[int] = None
        self.flag = False
        self.last: Optional[Dict[str, Any]] = None
        self.best: Optional[Dict[str, Any]] = None
        self.best_by_test: Optional[Dict[str, Any]] = None

    # -- training side
    def observe_train_loss(self, step: int, loss: float) -> bool:
        """Records one training loss; at steps that are multiples of `every`, compares the
        mean of the pending losses with the running minimum. Returns True on a new minimum."""
        self._pending.append(float(loss))
        if int(step) % self.every != 0:
            return False
        mean = float(np.mean(self._pending))
        self._pending.clear()
        # NaN never counts as a minimum (as `nan < min_loss` is False in the original).
        if not math.isnan(mean) and (self.min_loss is None or mean < self.min_loss):
            self.min_loss = mean
            self.min_loss_step = int(step)
            self.flag = True
            return True
        return False

    # -- evaluation side
    def observe_eval(self, step: int, metrics: Mapping[str, Any]) -> Dict[str, bool]:
        """Records one test evaluation. Returns which records were updated."""
        rec = jsonable(metrics)
        rec["step"] = int(step)
        self.last = dict(rec)
        updated = {"best": False, "best_by_test": False}
        if self.flag:
            self.best = dict(rec, train_loss=self.min_loss, train_loss_step=self.min_loss_step)
            self.flag = False
            updated["best"] = True
        value = rec.get(self.test_key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            if self.best_by_test is None or value < self.best_by_test[self.test_key]:
                self.best_by_test = dict(rec)
                updated["best_by_test"] = True
        return updated

    def summary(self) -> Dict[str, Optional[Dict[str, Any]]]:
        """{'final': last evaluation, 'best': Q28 best, 'best_by_test': lowest test key}."""
        return {"final": self.last, "best": self.best, "best_by_test": self.best_by_test}

    # -- checkpointing
    def state(self) -> Dict[str, Any]:
        """Plain JSON-serialisable state."""
        return {
            "window": self.window,
            "every": self.every,
            "test_key": self.test_key,
            "pending": list(self._pending),
            "min_loss": self.min_loss,
            "min_loss_step": self.min_loss_step,
            "flag": self.flag,
            "last": self.last,
            "best": self.best,
            "best_by_test": self.best_by_test,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "BestTracker":
        t = cls(window=state.get("window", 20), every=state.get("every", 20),
                test_key=state.get("test_key", "nelbo"))
        t._pending.extend(float(v) for v in state.get("pending", []))
        t.min_loss = state.get("min_loss")
        t.min_loss_step = state.get("min_loss_step")
        t.flag = bool(state.get("flag", False))
        t.last = state.get("last")
        t.best = state.get("best")
        t.best_by_test = state.get("best_by_test")
        return t
