"""Trained runs against reference boxes (asr_tf/lab/reference_compare.py): the numbers by hand."""
import numpy as np
import pytest

from asr_tf.lab import reference_compare as rc


def test_count_agreement_by_hand():
    r = rc.count_agreement([1, 2, 0, 3], [1, 3, 1, 3], max_count=3)
    # differences 0, -1, -1, 0
    assert r["acc"] == 0.5 and r["mae"] == 0.5 and r["bias"] == -0.5
    assert r["confusion"] == [[0, 0, 0, 0],
                              [1, 1, 0, 0],  # reference 1: inferred 0 once, 1 once
                              [0, 0, 0, 0],
                              [0, 0, 1, 1]]  # reference 3: inferred 2 once, 3 once
    with pytest.raises(ValueError, match="inferred counts must lie in 0..3"):
        rc.count_agreement([4], [1], max_count=3)
    with pytest.raises(ValueError, match="same, non-empty shape"):
        rc.count_agreement([1, 2], [1], max_count=3)


def _two_scenes():
    """Scene A: one reference box (0, 0, 9, 9), compared as [0, 0, 9, 9] (Q4), inferred
    [1, 0, 10, 9]: "+1 px" intersection 9 x 10 = 90, areas 100 each, IoU 90 / 110 = 9/11.
    Scene B: reference boxes (0, 0, 4, 4) and (10, 10, 4, 4), one inferred box [0, 0, 4, 4]
    equal to the first: IoU 1, divided by max(2, 1): 0.5."""
    boxes_px = np.array([[[0, 0, 9, 9], [0, 0, 0, 0]], [[0, 0, 4, 4], [10, 10, 4, 4]]], float)
    mask = np.array([[True, False], [True, True]])
    inferred = np.array([[[1, 0, 10, 9], [0, 0, 0, 0]], [[0, 0, 4, 4], [0, 0, 0, 0]]], float)
    return boxes_px, mask, inferred


def test_box_agreement_by_hand():
    boxes_px, mask, inferred = _two_scenes()
    r = rc.box_agreement(boxes_px, mask, inferred, [1, 1], [1, 2])
    assert r["miou"] == pytest.approx((9 / 11 + 0.5) / 2)
    assert r["miou_count_right"] == pytest.approx(9 / 11)  # scene A only
    assert np.isnan(rc.box_agreement(boxes_px, mask, inferred, [0, 1], [1, 2])["miou_count_right"])


def test_compare_pass_from_where_latents():
    """A 50 px canvas: scale 0.2 is a 10 px side, shift 0 the centre 25: the box [20, 20, 30,
    30], the reference (20, 20, 10, 10) exactly; a second glimpse, absent, does not count."""
    test = {"count": np.array([1]), "boxes_px": np.array([[[20.0, 20, 10, 10]]]),
            "box_mask": np.array([[True]])}
    out = {"count": np.array([1]), "scale": np.array([[0.2, 0.6]]),
           "shift": np.zeros([1, 2, 2]), "present": np.array([[1.0, 0.0]])}
    r = rc.compare_pass(test, out, canvas_px=50, max_count=2)
    assert r["acc"] == 1.0 and r["mae"] == 0.0 and r["miou"] == 1.0
    assert r["side_px_percentiles"] == [10.0] * 5  # the present box only
    assert r["confusion"] == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_reference_summary_and_figure_indices():
    test = {"count": np.array([1, 2, 1]),
            "boxes_px": np.array([[[0, 0, 4, 6], [0] * 4], [[0, 0, 8, 2], [0, 0, 3, 3]],
                                  [[0, 0, 5, 5], [0] * 4]], float),
            "box_mask": np.array([[1, 0], [1, 1], [1, 0]], bool)}
    s = rc.reference_summary(test)
    assert s["num_test"] == 3 and s["count_hist"] == [0, 2, 1]
    # sides max(w, h): 6, 8, 3, 5 -> median 5.5
    assert s["side_px_percentiles"][2] == 5.5
    assert rc.figure_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert rc.figure_indices(3, 32).tolist() == [0, 1, 2]


def test_the_example_configs_state_the_constraints():
    """docs/own_data/hubble_{asr,air}.gin load by path: ASR adds R1 (the range 1-3, no R2:
    the counts are not equally frequent), F1 and F6 with the size range; AIR adds nothing."""
    import gin

    from asr_tf import objectives
    from asr_tf.quirks import Quirks
    from asr_tf.run import config, workdir as workdir_lib
    from conftest import REPO_ROOT

    config.parse([str(REPO_ROOT / "docs" / "own_data" / "hubble_asr.gin")])
    spec = workdir_lib.run_spec()
    assert (spec.canvas_px, spec.counts, spec.size_range_px) == (50, (1, 2, 3), (8.0, 40.0))
    objective = objectives.objective_for(spec)
    assert dict(objective.constraints) == {"count_min": 10.0, "overlap": 1.0, "area": 20.0}
    # R1 without R2 enters the loss (base.gin's Q20 remedy), not dropped as the original drops it
    assert dict(objective.in_loss(Quirks())) == dict(objective.constraints)
    assert gin.query_parameter("build_model.kind") == "pprior"
    budget = gin.query_parameter("train_eval.num_steps")
    config.parse([str(REPO_ROOT / "docs" / "own_data" / "hubble_air.gin")])
    assert dict(objectives.objective_for(workdir_lib.run_spec()).constraints) == {}
    assert gin.query_parameter("build_model.kind") == "air"
    assert gin.query_parameter("train_eval.num_steps") == budget  # one budget for both
    # the presence prior's 13 decades end within the last 13 steps of that budget
    assert budget - 13 < gin.query_parameter("PresencePriorSchedule.steps_per_decade") * 13 <= budget
    assert config.run_name([str(REPO_ROOT / "docs" / "own_data" / "hubble_air.gin")]) == \
        "hubble_air"
