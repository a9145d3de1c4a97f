"""The lab's comparison with the original code (asr_tf/lab/original_*.py).

Without the original (it is not part of this project) these tests check the port-side pieces:
the weight mapping both ways, the difference measures, the JSON-lines bookkeeping of the
original's runs. With a prepared copy of the original named by ``ORIGINAL_DIR`` (docs/ORIGINAL.md
§12), the slow test runs the whole comparison.
"""
import json
import math
import os

import numpy as np
import pytest

from asr_tf.lab import (original_compare, original_curves, original_report, original_run,
                        original_weights)
from asr_tf.quirks import Quirks
from conftest import make_model


def test_weights_map_to_the_original_and_back():
    """Port -> the original's variables -> another port model: every variable equal; the LSTM
    blocks stack back into the original's one kernel; the forget bias of TF1's cell moves out
    of the port's bias and back."""
    faithful = Quirks(sampler_edge="four_gathers", lstm_fused_kernel=True)
    a = make_model("pprior", 50, (1, 3), quirks=faithful)
    b = make_model("pprior", 50, (1, 3), quirks=faithful)
    weights = original_weights.original_weights(original_weights.pprior_map(a))
    kernel = weights["air/air_model/infer_rnn_running/kernel"]
    assert kernel.shape == (2500 + 53 + 256, 1024)  # [image; z_what, where; h], 4 gates
    np.testing.assert_array_equal(kernel[2553:], a.inference.lstm.recurrent_kernel.numpy())
    bias = weights["air/air_model/infer_rnn_running/bias"]
    np.testing.assert_array_equal(bias, 0.0)  # the port's f block starts at 1, TF1's at 0
    assert weights["air/air_model/gen_rnn_running/kernel"].shape == (53 + 256, 1024)
    original_weights.load_weights(original_weights.pprior_map(b), weights)
    mapped = {id(v) for v, _, _ in original_weights.pprior_map(b)}
    for va, vb in zip(a.trainable_variables, b.trainable_variables):
        if id(vb) in mapped:
            np.testing.assert_array_equal(va.numpy(), vb.numpy())
    unmapped = [v.path for v in b.trainable_variables if id(v) not in mapped]
    assert len(unmapped) == 8  # the prior's scale heads: unused with the fixed prior (Q12)


def test_air_map_covers_every_variable():
    model = make_model("air", 50, (1, 3))
    mapping = original_weights.air_map(model)
    assert {id(v) for v, _, _ in mapping} == {id(v) for v in model.trainable_variables}
    names = [n for _, n, _ in mapping]
    assert names.count("air/rnn/rnn/kernel") == 2  # image block, recurrent block


def test_difference_and_verdict_by_hand():
    d = original_report.difference([1.0, -4.0, 2.0], [1.0, -4.0004, 2.0])
    assert d["max_abs"] == pytest.approx(4e-4) and d["rel"] == pytest.approx(1e-4)
    assert original_report.verdict(d) == "rounding"
    d = original_report.difference([1.0, 2.0], [1.5, 2.0])
    assert d["rel"] == pytest.approx(0.25)
    assert original_report.verdict(d) == "different"
    assert original_report.verdict(dict(d, control_rel=0.05)) == "amplified"  # within 10x
    assert original_report.verdict(dict(d, control_rel=0.01)) == "different"
    nan = original_report.difference([1.0, np.nan], [1.0, 2.0])
    assert nan["nonfinite_mismatch"] == 1 and original_report.verdict(nan) == "different"
    with pytest.raises(ValueError, match="shapes differ"):
        original_report.difference([1.0], [1.0, 2.0])


def test_window_means_count_nan_steps():
    rows = [{"elbo": 10.0, "nan_grad_entries": 0.0, "inf_grad_entries": 0.0},
            {"elbo": 20.0, "nan_grad_entries": 5.0, "inf_grad_entries": 0.0},
            {"elbo": 30.0, "nan_grad_entries": 7.0, "inf_grad_entries": 1.0}]
    means = original_run._window_means(rows)
    assert means["elbo"] == pytest.approx(20.0)
    assert means["nan_grad_steps"] == 2 and means["nan_grad_entries"] == 12.0
    assert means["inf_grad_steps"] == 1
    assert original_run._window_means([]) == {}


def test_check_prepared_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_air_pr.py"):
        original_run.check_prepared(tmp_path)
    for name in ("train_air_pr.py", "training_air_original.py", "tf1_contrib_layers.py"):
        (tmp_path / name).write_text("")
    with pytest.raises(FileNotFoundError, match="common20k13.tfrecords"):
        original_run.check_prepared(tmp_path)


def _run(nelbos):
    return {200 * (i + 1): {"nelbo": v, "acc": 0.5, "se": 100.0} for i, v in enumerate(nelbos)}


def test_locked_from_and_spread_by_hand():
    nan = float("nan")
    assert original_curves.locked_from(_run([5.0, nan, nan])) == 400
    assert original_curves.locked_from(_run([nan, 5.0, nan])) == 600  # a NaN that recovers
    assert original_curves.locked_from(_run([5.0, 4.0, 3.0])) is None
    original = {0: _run([10.0, 8.0, 6.0]), 1: _run([20.0, 12.0, 7.0]),
                2: _run([nan, nan, nan])}  # seed 2 locked from its first evaluation
    port = {0: _run([15.0, 13.0, 6.5]), 1: _run([nan, nan, nan])}
    result = original_curves.spread(original, port, window=(400, 600))
    assert result["locked"] == {"original": {0: None, 1: None, 2: 200},
                                "port": {0: None, 1: 200}}
    # steps 400 and 600, port seed 0 against the range of original seeds 0 and 1:
    # 13 is outside [8, 12], 6.5 inside [6, 7]; acc and se equal the range's ends: inside.
    assert result["inside"] == {"nelbo": (1, 2), "acc": (2, 2), "se": (2, 2)}
    # two live original seeds: a further draw falls inside their range with probability 1/3
    assert result["expected"]["nelbo"] == pytest.approx(2 / 3, abs=0.05)


ORIGINAL_DIR = os.environ.get("ORIGINAL_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not ORIGINAL_DIR, reason="no prepared copy of the original (ORIGINAL_DIR)")
@pytest.mark.parametrize("configs", [["air_asr_13", "faithful"], ["air_13", "faithful"]])
def test_port_computes_what_the_original_computes(configs):
    """Forward values, loss terms and clipping agree to rounding; gradients to rounding or to
    the rounding the original itself amplifies (its one-ulp control)."""
    report = original_compare.compare(ORIGINAL_DIR, configs, batch=8, seed=3)
    summary = original_report.summarize(report)
    for section in ("train", "test", "clipped"):
        assert summary[section]["different"] == [], (section, summary[section])
    assert summary["grad"]["different"] == [], summary["grad"]
    assert report["train"]["count"]["max_abs"] == 0 and report["test"]["count"]["max_abs"] == 0
    assert math.isfinite(report["loss"]["loss_TotLoss"]["rel"])


@pytest.mark.slow
@pytest.mark.skipif(not ORIGINAL_DIR, reason="no prepared copy of the original (ORIGINAL_DIR)")
@pytest.mark.parametrize("model", ["asr13", "air13"])
def test_the_originals_training_is_logged(model, tmp_path):
    """200 steps of the original's script: one test-pass line, its 1,000 test scenes counted
    by true count, finite terms, the NaN bookkeeping, and the curves read it back."""
    out = tmp_path / "orig.jsonl"
    assert original_run.launch(ORIGINAL_DIR, out, 1e-4, 1235, 200, model=model) == 0
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["step"] for l in lines] == [200]
    line = lines[0]
    assert sum(line["count_hist"]) == 1000
    assert sum(sum(h) for h in line["count_hist_by_true"].values()) == 1000
    assert set(line["count_hist_by_true"]) == {"1", "3"}
    assert math.isfinite(line["test"]["elbo"]) and 0 <= line["test"]["accu"] <= 1
    assert line["train200"]["nan_grad_steps"] == 0
    assert 0 < line["train20"]["count_mean"] <= 6  # at most six glimpses
    curves = original_curves.read_original(out)
    assert curves[200]["nelbo"] == pytest.approx(line["test"]["elbo"])
