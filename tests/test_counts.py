"""How a model counts (asr_tf/counts.py): the count histogram and presence per glimpse step."""
import numpy as np
import pytest

from asr_tf import counts
from asr_tf.lab import diagnostics


def test_count_histogram_hand_worked():
    count = [1, 2, 2, 3, 3, 3, 1]
    true = [1, 1, 1, 3, 3, 3, 3]
    hist = counts.count_histogram(count, true, max_count=4)
    frac1, n1 = hist[1]
    frac3, n3 = hist[3]
    assert (n1, n3) == (3, 4)
    np.testing.assert_allclose(frac1, [0, 1 / 3, 2 / 3, 0, 0])
    np.testing.assert_allclose(frac3, [0, 1 / 4, 0, 3 / 4, 0])


def test_count_histogram_rejects_bad_input():
    with pytest.raises(ValueError, match="exceeds max_count"):
        counts.count_histogram([7], [1], max_count=6)
    with pytest.raises(ValueError, match="differ in shape"):
        counts.count_histogram([1, 2], [1], max_count=6)
    with pytest.raises(ValueError, match="non-negative integers"):
        counts.count_histogram([1.5], [1], max_count=6)


def test_presence_by_step_averages_over_scenes_that_reached_the_step():
    p = np.array([[0.9, 0.8, 0.1, 0.0],   # true 1, count 2: reached steps 0, 1, 2
                  [0.7, 0.2, 0.6, 0.0],   # true 1, count 1: reached steps 0, 1
                  [1.0, 1.0, 1.0, 0.4]])  # true 3, count 3: reached 0..3
    pres = counts.presence_by_step(p, [1, 1, 3], count=[2, 1, 3], step_mask=[1, 1, 1, 1])
    np.testing.assert_allclose(pres[1]["reached"][:3], [0.8, 0.5, 0.1])
    assert np.isnan(pres[1]["reached"][3])  # no one-object scene reached step 3
    np.testing.assert_array_equal(pres[1]["reached_n"], [2, 2, 1, 0])
    np.testing.assert_allclose(pres[1]["all"], [0.8, 0.5, 0.35, 0.0])
    np.testing.assert_allclose(pres[3]["reached"], [1.0, 1.0, 1.0, 0.4])
    masked = counts.presence_by_step(p, [1, 1, 3], step_mask=[1, 1, 1, 0])
    assert np.isnan(masked[3]["all"][3]) and masked[3]["reached"] is None
    with pytest.raises(ValueError, match="step_mask"):
        counts.presence_by_step(p, [1, 1, 3], step_mask=[1, 1])


def test_count_report_scalars_and_markdown():
    p = np.array([[0.9, 0.8, 0.1], [0.95, 0.3, 0.2]])
    report = counts.count_report([2, 1], p, [1, 1])
    sc = report["scalars"]
    assert sc["count_frac_1obj_1"] == 0.5 and sc["count_frac_1obj_2"] == 0.5
    assert sc["pres_1obj_step0"] == pytest.approx(0.925)
    assert sc["pres_1obj_step2"] == pytest.approx(0.1)  # only the count-2 scene reached step 2
    text = diagnostics.format_report(report)
    assert "| 1 | 2 | 0.000 | 0.500 | 0.500 | 0.000 |" in text
    assert "0.100 (1)" in text
