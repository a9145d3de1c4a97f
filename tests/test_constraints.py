"""The structural constraints on hand-built boxes (docs/ORIGINAL.md §6; Q16-Q22), the registry,
and a constraint of a user's own."""
import dataclasses
import importlib
import math
import os
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from asr_tf import constraints as C
from asr_tf.quirks import Quirks

LN2 = math.log(2.0)
S = 50.0


def _t(a):
    return tf.constant(np.asarray(a, np.float32))


def _close(actual, desired, **kwargs):
    """Boxes go px -> (shift, scale) -> px: float32 round-off of ~1e-6 px."""
    np.testing.assert_allclose(actual, desired, **{"rtol": 1e-5, "atol": 1e-4, **kwargs})


def _outputs(centers_px, sides_px, step_mask, presence=None, prob=None, logit=None):
    """A model's output dict for boxes given in pixels on a 50 px canvas."""
    sides = np.asarray(sides_px, np.float32)  # [B, T]
    shape = sides.shape
    prob = np.full(shape, 0.5, np.float32) if prob is None else np.asarray(prob, np.float32)
    logit = (np.log(prob) - np.log1p(-prob)) if logit is None else logit
    return {"shift": _t(np.asarray(centers_px, np.float32) * 2.0 / S - 1.0),
            "scale": _t(sides / S), "step_mask": _t(step_mask),
            "present": _t(np.ones(shape) if presence is None else presence),
            "z_pres_prob": _t(prob), "z_pres_logit": _t(logit)}


def _boxes(centers_px, sides_px, step_mask, presence=None, quirks=None):
    """Boxes of hand-placed boxes; ``presence`` given: masked by it (the Q16/Q17 switch)."""
    quirks = quirks or Quirks(mask_penalties_by_presence=presence is not None)
    return C.boxes_from_outputs(_outputs(centers_px, sides_px, step_mask, presence), S, (1, 3),
                                (17.0, 23.0), quirks)


def _presence(prob, step_mask, counts, logit=None):
    """Boxes that only matter through their presence probabilities [B, T]."""
    prob = np.asarray(prob, np.float32)
    b, t = prob.shape
    out = _outputs(np.full((b, t, 2), 25.0), np.full((b, t), 10.0), step_mask, prob=np.clip(prob, 1e-7, 1 - 1e-7), logit=logit)
    out["z_pres_prob"] = _t(prob)
    return C.boxes_from_outputs(out, S, counts, (17.0, 23.0), Quirks())


# Three boxes on a 50-px canvas (centre x, centre y, side):
#   A (10, 10, 8), B (15, 12, 6), C (14, 16, 10)
# A-B: reach (8+6)/2 = 7, dist max(5, 2) = 5 -> 2
# A-C: reach 9,           dist max(4, 6) = 6 -> 3
# B-C: reach 8,           dist max(1, 4) = 4 -> 4
CENTERS3 = [[[10.0, 10.0], [15.0, 12.0], [14.0, 16.0]]]
SIDES3 = [[8.0, 6.0, 10.0]]


def test_boxes_from_outputs_in_pixels():
    out = {"scale": _t([[0.4, 0.2]]), "shift": _t([[[0.0, 0.0], [0.2, -0.4]]]),
           "step_mask": _t([1, 1]), "present": _t([[1, 0]]), "z_pres_prob": _t([[0.9, 0.1]]),
           "z_pres_logit": _t([[2.2, -2.2]])}
    b = C.boxes_from_outputs(out, 50, (1, 3), (17, 23), Quirks())
    _close(b.centers_px.numpy(), [[[25, 25], [30, 15]]], atol=1e-5)
    _close(b.sides_px.numpy(), [[20, 10]], atol=1e-5)
    np.testing.assert_array_equal(b.weight.numpy(), [[1, 1]])  # Q16/Q17: executed steps
    masked = C.boxes_from_outputs(out, 50, (1, 3), (17, 23),
                                  Quirks(mask_penalties_by_presence=True))
    np.testing.assert_array_equal(masked.weight.numpy(), [[1, 0]])


def test_overlap_two_boxes_counts_ordered_pairs_twice():
    v = C.overlap(_boxes([CENTERS3[0][:2]], [SIDES3[0][:2]], [1, 1]))
    _close(v.numpy(), [2 * 2.0])


def test_overlap_three_boxes():
    v = C.overlap(_boxes(CENTERS3, SIDES3, [1, 1, 1]))
    _close(v.numpy(), [2 * (2.0 + 3.0 + 4.0)])


def test_overlap_disjoint_boxes_zero_and_touching_zero():
    # two side-10 boxes whose centres are 10 apart in x only touch: relu(10 - 10) = 0
    v = C.overlap(_boxes([[[10, 10], [20, 10], [40, 40]]], [[10, 10, 10]], [1, 1, 1]))
    _close(v.numpy(), [0.0])


def test_overlap_step_mask_and_presence():
    # step 2 (C) not executed: only A-B
    _close(C.overlap(_boxes(CENTERS3, SIDES3, [1, 1, 0])).numpy(), [4.0])
    # presence [1, 0, 1] (Quirks.mask_penalties_by_presence): only A-C
    _close(
        C.overlap(_boxes(CENTERS3, SIDES3, [1, 1, 1], [[1, 0, 1]])).numpy(), [6.0])


def test_out_of_image_f2_to_f5():
    # S = 50.
    # (3, 48, 10): half 5 -> left relu(5-3)=2, top 0, right relu(3+5-50)=0,
    #              bottom relu(48+5-50)=3 -> 5
    # (25, 25, 10): inside -> 0
    # (-1, 52, 4): half 2 -> left relu(2+1)=3, top 0, right 0, bottom relu(52+2-50)=4 -> 7
    c = [[[3, 48], [25, 25], [-1, 52]]]
    d = [[10, 10, 4]]
    _close(C.out_of_image(_boxes(c, d, [1, 1, 1])).numpy(), [12.0])
    _close(C.out_of_image(_boxes(c, d, [1, 1, 0])).numpy(), [5.0])
    _close(C.out_of_image(_boxes(c, d, [1, 1, 1], [[0, 1, 1]])).numpy(), [7.0])
    # top edge: (25, 2, 10) -> relu(5 - 2) = 3
    _close(C.out_of_image(_boxes([[[25, 2]]], [[10]], [1])).numpy(), [3.0])


def test_size_f7_eps_3():
    # sides 10, 12, 20: |10-12| = 2 -> 0; |10-20| = 10 -> 7; |12-20| = 8 -> 5; ordered: 2 (7 + 5)
    c3, c2 = [[[10, 10], [20, 20], [30, 30]]], [[[10, 10], [20, 20]]]
    d = [[10, 12, 20]]
    _close(C.size_equality(_boxes(c3, d, [1, 1, 1])).numpy(), [24.0])
    _close(C.size_equality(_boxes(c3, d, [1, 1, 0])).numpy(), [0.0])
    _close(C.size_equality(_boxes(c3, d, [1, 1, 1], [[1, 0, 1]])).numpy(),
                               [14.0])
    # exactly eps apart: 0; eps is bindable: 1 px makes the same pair cost 2 twice
    _close(C.size_equality(_boxes(c2, [[10, 13]], [1, 1])).numpy(), [0.0])
    _close(C.size_equality(_boxes(c2, [[10, 13]], [1, 1]), eps_px=1.0).numpy(),
                               [4.0])


def test_area_f6_both_modes():
    # [c_min, c_max] = [17, 23]; sides 10, 20, 30.
    # paper: relu(17-d) + relu(d-23) = 7, 0, 7 -> sum 14
    # mean_offset: relu(23-d) + relu(d-17) = 13, 6, 13 = paper + (23-17) per box -> mean 32/3
    c = [[[10, 10], [20, 20], [30, 30]]]
    d = [[10, 20, 30]]
    paper_q = Quirks(area_penalty="paper")
    paper = C.area(_boxes(c, d, [1, 1, 1], quirks=paper_q)).numpy()
    offset = C.area(_boxes(c, d, [1, 1, 1])).numpy()
    _close(paper, [14.0])
    _close(offset, [32.0 / 3.0], rtol=1e-6)
    _close(offset, (paper + 3 * (23 - 17)) / 3, rtol=1e-6)
    # step mask [1, 1, 0]: paper 7; mean_offset (13 + 6) / 2
    _close(C.area(_boxes(c, d, [1, 1, 0], quirks=paper_q)).numpy(), [7.0])
    _close(C.area(_boxes(c, d, [1, 1, 0])).numpy(), [9.5])
    # presence [0, 1, 1] (mean over present boxes): (6 + 13) / 2
    _close(C.area(_boxes(c, d, [1, 1, 1], [[0, 1, 1]])).numpy(), [9.5])
    # a side inside the range costs exactly c_max - c_min in mean_offset mode
    _close(C.area(_boxes([[[25, 25]]], [[18.5]], [1])).numpy(), [6.0])


def test_count_targets():
    np.testing.assert_array_equal(C.count_targets((3, 1), 4).numpy(),
                                  [[1, 0, 0, 0], [1, 1, 1, 0]])


def test_count_min_r1_hand_values():
    # counts (1, 3), T = 4; targets u1 = 1000, u3 = 1110.
    p = ([[0.9, 0.2, 0.3, 0.1],     # closer to count 1
            [0.9, 0.8, 0.7, 0.1]])    # closer to count 3
    got = C.count_min(_presence(p, [1, 1, 1, 1], (1, 3))).numpy()
    ce1_a = -(math.log(0.9) + math.log(0.8) + math.log(0.7) + math.log(0.9))
    ce3_a = -(math.log(0.9) + math.log(0.2) + math.log(0.3) + math.log(0.9))
    assert ce1_a < ce3_a
    ce3_b = -(math.log(0.9) + math.log(0.8) + math.log(0.7) + math.log(0.9))
    _close(got, [ce1_a, ce3_b], rtol=1e-5)


def test_count_min_step_mask_excludes_non_executed_steps():
    # steps 2, 3 were not executed; their records are 0 (p = 0 would cost -ln(1e-8) for u = 1)
    p = ([[0.9, 0.8, 0.0, 0.0],
            [0.9, 0.2, 0.0, 0.0]])
    got = C.count_min(_presence(p, [1, 1, 0, 0], (1, 3))).numpy()
    want = [min(-(math.log(0.9) + math.log(0.2)), -(math.log(0.9) + math.log(0.8))),
            min(-(math.log(0.9) + math.log(0.8)), -(math.log(0.9) + math.log(0.2)))]
    _close(got, want, rtol=1e-5)
    got = C.count_min(_presence(p, [1, 1, 0, 0], (3,))).numpy()
    _close(got, [-(math.log(0.9) + math.log(0.8)),
                                     -(math.log(0.9) + math.log(0.2))], rtol=1e-5)
    unmasked = C.count_min(_presence(p, [1, 1, 1, 1], (3,))).numpy()
    _close(unmasked - got, -math.log(1e-8), rtol=1e-4)  # step 2, u = 1, p = 0


def test_count_margin_r2_entropy_constant():
    # counts (1, 3): u_bar = (1, .5, .5, 0). p_bar matches: R2 = sum_t H(u_bar_t) = 2 ln 2
    p = ([[1.0, 0.3, 0.8, 0.0],
            [1.0, 0.7, 0.2, 0.0]])
    got = float(C.count_margin(_presence(p, [1, 1, 1, 1], (1, 3))))
    assert got == pytest.approx(2 * LN2, abs=1e-5)


def test_count_margin_r2_hand_value_and_mask():
    # p_bar = (0.8, 0.5, 0.25, 0.1) against u_bar = (1, .5, .5, 0)
    p = ([[0.7, 0.6, 0.3, 0.2],
            [0.9, 0.4, 0.2, 0.0]])
    want = (-math.log(0.8) + LN2 + (-0.5 * math.log(0.25) - 0.5 * math.log(0.75))
            - math.log(0.9))
    got = float(C.count_margin(_presence(p, [1, 1, 1, 1], (1, 3))))
    assert got == pytest.approx(want, rel=1e-5)
    got = float(C.count_margin(_presence(p, [1, 1, 0, 0], (1, 3))))
    assert got == pytest.approx(-math.log(0.8) + LN2, rel=1e-5)


def test_presence_entropy():
    a = _t([[0.0, 2.0, -1.0]])
    p = 1 / (1 + math.exp(-2.0))
    h2 = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    got = C.presence_entropy(_presence(tf.sigmoid(a), [1, 1, 0], (1, 3), logit=a)).numpy()
    _close(got, [LN2 + h2], rtol=1e-5)




# ----------------------------------------------------------------- the registry

def test_registry_names_and_errors():
    assert {"overlap", "out_of_image", "area", "size_equality", "count_min", "count_margin",
            "presence_entropy"} <= set(C.registered())
    assert C.get("count_margin").batch and not C.get("count_min").batch
    with pytest.raises(ValueError, match="already registered"):
        C.register("overlap")(lambda boxes: boxes.sides_px[:, 0])
    with pytest.raises(ValueError, match="identifier"):
        C.register("one row")
    with pytest.raises(ValueError, match="unknown constraint 'nope'.*import"):
        C.get("nope")


def test_batch_mean_is_what_a_batch_constraint_averages_with():
    # R2 with the batch mean taken over a "global batch" twice this one (the other half all 0.5)
    p = [[0.7, 0.6, 0.3, 0.2], [0.9, 0.4, 0.2, 0.0]]
    boxes = _presence(p, [1, 1, 1, 1], (1, 3))
    half = dataclasses.replace(boxes, batch_mean=lambda v: (tf.reduce_sum(v, 0) + 2 * 0.5) / 4)
    p_bar = (np.array(p).sum(0) + 1.0) / 4
    u_bar = [1.0, 0.5, 0.5, 0.0]
    want = sum(-(u * math.log(q) + (1 - u) * math.log(1 - q)) for u, q in zip(u_bar, p_bar))
    assert float(C.count_margin(half)) == pytest.approx(want, rel=1e-5)


# ----------------------------------------------------------------- a user's own constraint

ONE_ROW_DIR = pathlib.Path(__file__).resolve().parents[1] / "docs" / "constraints"


@pytest.fixture
def one_row_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ONE_ROW_DIR))
    if "one_row" in C.registered():
        return sys.modules["one_row"]
    return importlib.import_module("one_row")


def test_one_row_example_hand_values(one_row_module):
    # centres y = 10, 14, 30 (mean 18): |y - 18| - 2 -> 6, 2, 10; step 2 not executed:
    # mean 12, deviations 2, 2 -> 0 beyond the tolerance
    c = [[[5, 10], [25, 14], [45, 30]]]
    d = [[8, 8, 8]]
    fn = C.get("one_row").fn
    _close(fn(_boxes(c, d, [1, 1, 1])).numpy(), [18.0])
    _close(fn(_boxes(c, d, [1, 1, 0])).numpy(), [0.0])
    _close(fn(_boxes(c, d, [1, 1, 1]), tolerance_px=0.0).numpy(), [24.0])


@pytest.mark.slow
def test_a_users_constraint_trains_through_one_gin_line(one_row_module, tmp_path):
    """docs/constraints/air_asr_13_one_row.gin: registered, trained on, logged, recorded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from asr_tf.run import config, loop, trained
    from conftest import SMALL_RUN

    config.parse([str(ONE_ROW_DIR / "air_asr_13_one_row.gin")], SMALL_RUN)
    workdir = str(tmp_path / "one_row")
    loop.train_eval(workdir, max_steps=3)
    acc = EventAccumulator(os.path.join(workdir, "train"), size_guidance={"tensors": 0})
    acc.Reload()
    values = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("one_row")]
    assert len(values) == 3 and all(np.isfinite(values)) and max(values) > 0
    assert "import one_row" in open(os.path.join(workdir, "config.gin")).read()
    assert trained.evaluate_workdir(workdir)["step"] == 3  # the record rebuilds the run
