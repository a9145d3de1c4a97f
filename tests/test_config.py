"""Configs (asr_tf/run/config.py): the 15 paper runs and the overlays, strict parsing, names."""
import os
import re
import subprocess
import sys

import gin
import pytest

from asr_tf import models, objectives, training
from asr_tf.run import config, workdir as workdir_lib
from conftest import MODEL_VALUES

DATASETS = {"13": "mnist_13", "14": "mnist_14", "24": "mnist_24", "mnist_overlap": "mnist_bbox3",
            "dsprites_overlap": "dsprites_bbox3"}


def _constraints():
    return dict(objectives.objective_for(workdir_lib.run_spec()).constraints)


def test_every_config_parses_alone_and_with_every_overlay():
    names = config.available_configs()
    rows = ("13", "14", "24", "mnist_overlap", "dsprites_overlap")
    assert names == sorted(f"{m}_{r}" for m in ("air", "air_pprior", "air_asr") for r in rows)
    for name in names:
        for overlays in ((), ("faithful",), ("decay",)):
            config.parse([name, *overlays])
            model, row = re.fullmatch(r"(air(?:_pprior|_asr)?)_(\w+)", name).groups()
            kind = gin.query_parameter("build_model.kind")
            assert kind == ("air" if model == "air" else "pprior")
            values = {k: gin.query_parameter(f"build_model.{k}") for k in MODEL_VALUES[kind]}
            assert values == MODEL_VALUES[kind]
            assert workdir_lib.run_spec().name == DATASETS[row]
            faithful = "faithful" in overlays
            assert gin.query_parameter("Quirks.sampler_edge") == (
                "four_gathers" if faithful else "zero_pad")
            assert gin.query_parameter("make_optimizer.learning_rate") == (
                1e-4 if faithful else 1e-3)  # Q11: the code's, the paper's


def test_includes_are_at_most_two_deep_and_configs_at_most_24():
    files = sorted(config.CONFIG_DIR.glob("*.gin"))
    assert len(files) <= 24

    def depth(path):
        includes = [line.split("'")[1] for line in path.read_text().splitlines()
                    if line.startswith("include ")]
        return max([1 + depth(config.CONFIG_DIR / i) for i in includes], default=0)

    assert max(depth(f) for f in files) <= 2
    for overlay in config.OVERLAYS:  # overlays bind, they include nothing
        assert depth(config.CONFIG_DIR / f"{overlay}.gin") == 0


def test_paper_weights_in_configs():
    config.parse(["air_asr_14"])
    assert _constraints() == {"count_min": 10.0, "count_margin": 100.0}
    config.parse(["air_asr_dsprites_overlap", "faithful"])
    # -gb = 1 ties F1 and F2-F5 (Q18); F7 10, F6 20
    assert _constraints() == {"overlap": 1.0, "out_of_image": 1.0, "size_equality": 10.0,
                              "area": 20.0}
    assert workdir_lib.run_spec().canvas_px == 64
    config.parse(["air_asr_13"])
    assert "size_equality" not in _constraints()  # the paper's row 13: counts only
    for row in ("13", "14", "24"):
        config.parse([f"air_asr_{row}", "size"])
        assert _constraints() == {"count_min": 10.0, "count_margin": 100.0, "size_equality": 10.0}
        assert workdir_lib.run_spec().name == f"mnist_{row}"
    for name in ("air_13", "air_pprior_24", "air_mnist_overlap"):
        config.parse([name])
        assert _constraints() == {}


def test_decay_overlay_cuts_the_rate_tenfold_at_14000():
    for run in (["air_asr_14", "size"], ["air_asr_dsprites_overlap"]):
        config.parse(run)
        plain = _constraints()
        config.parse(run + ["decay"])
        assert _constraints() == plain
        optimizer = training.make_optimizer(models.model_for(workdir_lib.run_spec()))
        # 1e-3 for the updates of steps 1..14,000, 1e-4 from step 14,001 on
        assert training.update_rate(optimizer, 14000) == pytest.approx(1e-3)
        assert training.update_rate(optimizer, 14001) == pytest.approx(1e-4)
    config.parse(["air_asr_14", "size"])
    optimizer = training.make_optimizer(models.model_for(workdir_lib.run_spec()))
    assert training.update_rate(optimizer, 20000) == pytest.approx(1e-3)


def test_floor20k_overlay_reaches_the_floor_at_the_budget():
    from asr_tf.models.air import PresencePriorSchedule

    config.parse(["air_13"])
    assert PresencePriorSchedule().steps_per_decade == 3000  # the original: floor at 39,000
    config.parse(["air_13", "floor20k"])
    schedule = PresencePriorSchedule()
    assert schedule.steps_per_decade == 1538 and 13 * 1538 == 19994


def test_unknown_config_and_parameter_are_errors():
    with pytest.raises(ValueError, match="unknown config 'air_asr_99'.*air_asr_14.*faithful"):
        config.parse(["air_asr_99"])
    with pytest.raises(ValueError, match="bogus"):
        config.parse(["air_asr_13"], ["train_eval.bogus = 1"])
    with pytest.raises(ValueError, match="unknown constraint 'bogus'"):
        config.parse(["air_asr_13"], ["Objective.constraints = [('bogus', 1.0)]"])
        objectives.objective_for(workdir_lib.run_spec())


def test_run_names_and_default_workdirs():
    assert config.run_name(["configs/air_asr_14.gin"]) == "air_asr_14"
    assert config.run_name(["air_asr_14", "size", "decay"]) == "air_asr_14+size+decay"
    assert config.default_workdir(["air_asr_13", "extra.gin"]) == os.path.join(
        "runs", "air_asr_13+extra")


def test_train_tool_rejects_unknown_config(repo_root):
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "train.py"),
                          "--config", "air_asr_99"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "unknown config 'air_asr_99'" in out.stderr


def test_train_tool_help_lists_the_configs_and_the_overlays(repo_root):
    out = subprocess.run([sys.executable, str(repo_root / "tools" / "train.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    listed = " ".join(out.stdout.split())  # absl wraps the help text
    assert "The configs: " + ", ".join(config.available_configs()) + ";" in listed
    assert "the overlays: faithful, size, decay, floor20k" in listed
    assert "default runs/<configs joined by '+'>" in listed
