"""Hand-worked checks of asr_tf.metrics (docs/ORIGINAL.md §8, quirks Q4 and Q28)."""
import json

import numpy as np
import pytest

from asr_tf import metrics as M


# ----------------------------------------------------------------------------- boxes

def test_boxes_from_where_centre():
    # scale 0.4, shift (0, 0), S = 50: centre 25, half side 10.
    b = M.boxes_from_where(np.array([[0.4]]), np.array([[[0.0, 0.0]]]), 50)
    assert b.shape == (1, 1, 4)
    np.testing.assert_allclose(b[0, 0], [15, 15, 35, 35])


def test_boxes_from_where_axes_and_shapes():
    # shift x = 0.2 -> cx = 1.2 * 25 = 30; shift y = -0.4 -> cy = 0.6 * 25 = 15; r = 0.2 * 25 = 5.
    scale = np.array([[0.4, 0.2]])
    shift = np.array([[[0.0, 0.0], [0.2, -0.4]]])
    b = M.boxes_from_where(scale, shift, 50)
    np.testing.assert_allclose(b[0, 1], [25, 10, 35, 20])
    # the original records scale as [N, T, 1]
    np.testing.assert_allclose(M.boxes_from_where(scale[..., None], shift, 50), b)
    xywh = M.xywh_from_where(scale, shift, 50)
    np.testing.assert_allclose(xywh[0, 0], [15, 15, 20, 20])
    np.testing.assert_allclose(xywh[0, 1], [25, 10, 10, 10])


def test_gt_boxes_xyxy_default_and_tight():
    gt = np.array([[[3, 4, 10, 12]]])
    np.testing.assert_allclose(M.gt_boxes_xyxy(gt)[0, 0], [3, 4, 13, 16])            # Q4
    np.testing.assert_allclose(M.gt_boxes_xyxy(gt, tight=True)[0, 0], [3, 4, 12, 15])


# ----------------------------------------------------------------------------- IoU

def test_iou_plus1_hand_value():
    # +1 convention: both boxes are 10 x 10 = 100; the overlap [5..9]^2 is 5 x 5 = 25.
    iou = M.iou_plus1([0, 0, 9, 9], [5, 5, 14, 14])
    assert iou == pytest.approx(25.0 / (100 + 100 - 25))   # 25 / 175


def test_iou_identical_and_disjoint():
    assert M.iou_plus1([2, 3, 11, 17], [2, 3, 11, 17]) == pytest.approx(1.0)
    assert M.iou_plus1([0, 0, 9, 9], [20, 20, 29, 29]) == 0.0
    # exactly 1 px apart under +1: [0..9] and [11..20] share nothing
    assert M.iou_plus1([0, 0, 9, 9], [11, 0, 20, 9]) == 0.0


def test_iou_boxes_closer_than_one_pixel_overlap_slightly():
    # x-ranges [0, 9] and [9.5, 19.5] do not overlap, but +1 gives width 9 - 9.5 + 1 = 0.5.
    # inter = 0.5 * 10 = 5; areas 10 * 10 = 100 and 11 * 10 = 110.
    iou = M.iou_plus1([0, 0, 9, 9], [9.5, 0, 19.5, 9])
    assert iou == pytest.approx(5.0 / (100 + 110 - 5))
    assert 0 < iou < 0.05


def test_pairwise_iou_matches_scalar():
    gt = np.array([[0, 0, 9, 9], [5, 5, 14, 14], [30, 30, 40, 45]], float)
    inf = np.array([[5, 5, 14, 14], [0.5, 1, 9, 12]], float)
    P = M.pairwise_iou_plus1(gt, inf)
    assert P.shape == (3, 2)
    for g in range(3):
        for i in range(2):
            assert P[g, i] == pytest.approx(M.iou_plus1(gt[g], inf[i]))
    assert P[0, 0] == pytest.approx(25 / 175)


# ----------------------------------------------------------------------------- mIoU

def test_hungarian_beats_greedy():
    # All boxes span rows 0..9, so IoU is the 1-D ratio of x-ranges (+1 convention).
    g0, g1 = [0, 0, 9, 9], [1, 0, 11, 9]
    i0, i1 = [0, 0, 10, 9], [-2, 0, 9, 9]
    P = M.pairwise_iou_plus1([g0, g1], [i0, i1])
    np.testing.assert_allclose(P, [[10 / 11, 10 / 12], [10 / 12, 9 / 14]])
    # a greedy matcher takes the best pair (g0, i0) first, then (g1, i1):
    greedy = 10 / 11 + 9 / 14
    best = 10 / 12 + 10 / 12
    assert best > greedy
    assert M.image_miou([g0, g1], [i0, i1]) == pytest.approx(best / 2)


def test_division_by_max_count_with_extra_inferred_box():
    gt = [[0, 0, 9, 9]]
    inf = [[0, 0, 9, 9], [30, 30, 39, 39]]
    assert M.image_miou(gt, inf) == pytest.approx(0.5)
    # and an extra GT box
    assert M.image_miou(inf, gt) == pytest.approx(0.5)


def test_empty_cases():
    e = np.zeros([0, 4])
    assert M.image_miou(e, e) == 1.0
    assert M.image_miou(e, [[0, 0, 9, 9]]) == 0.0
    assert M.image_miou([[0, 0, 9, 9]], e) == 0.0


def test_mean_iou_uses_mask_and_first_count_steps():
    S = 50
    # image 0: one GT (x, y, w, h) = (15, 15, 20, 20) -> [15, 15, 35, 35]; step 0 hits it exactly,
    #          step 1 (beyond the count) would be junk.
    # image 1: two GT boxes, inferred count 0 -> 0.
    gt = np.zeros([2, 4, 4])
    gt[0, 0] = [15, 15, 20, 20]
    gt[1, 0] = [0, 0, 10, 10]
    gt[1, 1] = [20, 20, 10, 10]
    mask = np.zeros([2, 4], bool)
    mask[0, 0] = True
    mask[1, :2] = True
    scale = np.array([[0.4, 0.1, 0.1], [0.4, 0.4, 0.4]])
    shift = np.zeros([2, 3, 2])
    shift[0, 1] = [0.9, 0.9]
    inf = M.boxes_from_where(scale, shift, S)
    per = M.per_image_miou(gt, mask, inf, [1, 0])
    np.testing.assert_allclose(per, [1.0, 0.0])
    assert M.mean_iou(gt, mask, inf, [1, 0]) == pytest.approx(0.5)
    # count 2 on image 0 adds the junk box: divided by max(1, 2)
    assert M.per_image_miou(gt, mask, inf, [2, 0])[0] == pytest.approx(0.5)
    # tight GT: [15, 15, 34, 34] (20 x 20) vs inferred [15, 15, 35, 35] (21 x 21)
    tight = M.per_image_miou(gt, mask, inf, [1, 0], tight_gt=True)[0]
    assert tight == pytest.approx(400 / 441)


# ----------------------------------------------------------------------------- ACC / SE

def test_count_accuracy():
    assert M.count_accuracy([1, 2, 3, 3], [1, 2, 2, 3]) == pytest.approx(0.75)
    assert M.count_accuracy(np.array([1.0, 2.0]), np.array([1, 2])) == 1.0


def test_squared_error_with_clipping():
    images = np.array([[[0.0, 1.0], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    recon = np.array([[[1.5, 1.0], [0.25, -1.0]], [[0.5, 0.5], [0.5, 0.5]]])
    # image 0: clip -> [[1, 1], [0.25, 0]]: 1 + 0 + 0.0625 + 0 = 1.0625; image 1: 4 * 0.25 = 1.
    assert M.squared_error(images, recon) == pytest.approx((1.0625 + 1.0) / 2)
    # channel axis on one side only
    assert M.squared_error(images[..., None], recon) == pytest.approx((1.0625 + 1.0) / 2)


def test_evaluate_outputs():
    S = 50
    images = np.zeros([2, S, S, 1])
    images[0, 0, 0] = 1.0
    recon = np.zeros([2, S, S, 1])
    gt = np.zeros([2, 4, 4])
    gt[:, 0] = [15, 15, 20, 20]
    mask = np.zeros([2, 4], bool)
    mask[:, 0] = True
    out = M.evaluate_outputs(images, recon, nelbo=np.array([10.0, 20.0]), inf_count=[1, 2],
                             scale=np.full([2, 3], 0.4), shift=np.zeros([2, 3, 2]),
                             gt_boxes_px=gt, gt_mask=mask, true_count=[1, 1])
    assert set(out) == {"acc", "se", "nelbo", "miou"}
    assert out["acc"] == pytest.approx(0.5)
    assert out["se"] == pytest.approx(0.5)
    assert out["nelbo"] == pytest.approx(15.0)
    # image 0: 1 / 1; image 1: two identical inferred boxes, one matched: 1 / 2
    assert out["miou"] == pytest.approx(0.75)
    assert all(isinstance(v, float) for v in out.values())


# ----------------------------------------------------------------------------- BestTracker

def _feed(tracker, steps_losses):
    for step, loss in steps_losses:
        tracker.observe_train_loss(step, loss)


def _run_sequence(tracker, evals_log, state_roundtrip_at=None):
    """Losses per 20-step block; evaluations at the listed steps (checked after the loss)."""
    losses = {}
    for s in range(1, 21):
        losses[s] = 10.0          # check @20: mean 10 -> new min, flag
    for s in range(21, 41):
        losses[s] = 12.0          # check @40: 12, no
    for s in range(41, 61):
        losses[s] = 9.0           # check @60: 9 -> new min (before the eval at 60)
    for s in range(61, 81):
        losses[s] = 9.5           # check @80: no
    for s in range(81, 101):
        losses[s] = 1.0           # check @100: (19 * 1 + 100) / 20 = 5.95 -> new min
    losses[100] = 100.0
    for s in range(101, 121):
        losses[s] = 20.0          # check @120: no
    evals = {40: {"nelbo": 100.0, "acc": 0.1}, 60: {"nelbo": 90.0, "acc": 0.2},
             80: {"nelbo": 80.0, "acc": 0.3}, 120: {"nelbo": 95.0, "acc": 0.4}}
    for s in range(1, 121):
        tracker.observe_train_loss(s, losses[s])
        if s in evals:
            evals_log[s] = tracker.observe_eval(s, evals[s])
        if s == state_roundtrip_at:
            tracker = M.BestTracker.from_state(json.loads(json.dumps(tracker.state())))
    return tracker


def test_best_tracker_hand_sequence():
    log = {}
    t = _run_sequence(M.BestTracker(), log)
    # @40: flag from the check at 20 -> best = eval 40
    assert log[40]["best"]
    # @60: the check at 60 (new min 9) runs before the eval -> best = eval 60
    assert log[60]["best"]
    # @80: no new minimum since -> best stays at 60
    assert not log[80]["best"]
    # @120: the mean (not the last loss 100) at step 100 was a new minimum -> best = eval 120
    assert log[120]["best"]
    assert t.min_loss == pytest.approx(5.95)
    assert t.min_loss_step == 100
    s = t.summary()
    assert s["best"]["step"] == 120 and s["best"]["acc"] == 0.4
    assert s["best"]["train_loss"] == pytest.approx(5.95)
    assert s["final"]["step"] == 120
    assert s["best_by_test"]["step"] == 80 and s["best_by_test"]["nelbo"] == 80.0
    assert [k for k in log if log[k]["best_by_test"]] == [40, 60, 80]


def test_best_tracker_intermediate_best():
    t = M.BestTracker()
    for s in range(1, 81):
        # 10 for steps 1-20, 12 for 21-40, 9 for 41-60, 12 for 61-80
        loss = 10.0 if s <= 20 else (9.0 if 41 <= s <= 60 else 12.0)
        t.observe_train_loss(s, loss)
        if s == 40:
            t.observe_eval(s, {"nelbo": 1.0})
        if s == 80:
            t.observe_eval(s, {"nelbo": 2.0})
    assert t.summary()["best"]["step"] == 80          # set by the minimum at 60
    assert t.summary()["best_by_test"]["step"] == 40


def test_best_tracker_only_checks_at_multiples_and_ignores_nan():
    t = M.BestTracker()
    assert not t.observe_train_loss(7, 1.0)
    assert not t.flag
    t.observe_eval(10, {"nelbo": 1.0})
    assert t.best is None
    t2 = M.BestTracker()
    assert not t2.observe_train_loss(20, float("nan"))
    assert t2.min_loss is None and not t2.flag


def test_best_tracker_state_roundtrip_is_json_and_equivalent():
    ref = _run_sequence(M.BestTracker(), {})
    # round trip mid-block (pending losses non-empty) and while the flag is set
    got = _run_sequence(M.BestTracker(), {}, state_roundtrip_at=90)
    got2 = _run_sequence(M.BestTracker(), {}, state_roundtrip_at=100)
    assert got.summary() == ref.summary() == got2.summary()
    st = ref.state()
    assert json.loads(json.dumps(st)) == st
    t = M.BestTracker()
    t.observe_eval(0, {"nelbo": np.float32(3.5), "acc": np.float64(0.5)})
    json.dumps(t.state())   # numpy scalars are converted
