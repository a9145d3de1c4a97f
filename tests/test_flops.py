"""The analytic FLOP count of a train step agrees with the dots of the compiled (XLA HLO) graph."""
import pytest
import tensorflow as tf

from asr_tf import objectives
from asr_tf.lab import flops
from asr_tf.models.air import PresencePriorSchedule
from conftest import MODEL_VALUES, make_model


def test_hlo_dot_flops_on_a_hand_module():
    hlo = ("%a = f32[8,256]{1,0} dot(f32[8,64]{1,0} %x, f32[64,256]{1,0} %y), "
           "lhs_contracting_dims={1}, rhs_contracting_dims={0}\n"
           "%b = f32[4,28,50]{2,1,0} dot(f32[4,28,50]{2,1,0} %p, f32[4,50,50]{2,1,0} %q), "
           "lhs_batch_dims={0}, lhs_contracting_dims={2}, rhs_batch_dims={0}, rhs_contracting_dims={1}\n"
           "%c = f32[8] add(f32[8] %u, f32[8] %v)\n")
    assert flops.hlo_dot_flops(hlo) == 2 * 8 * 256 * 64 + 2 * 4 * 28 * 50 * 50


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pprior", "air"])
def test_analytic_count_matches_compiled_graph(kind):
    model = make_model(kind, 50, (1, 3), lstm_units=64)
    objective = objectives.Objective(constraints=[("count_min", 10.0), ("count_margin", 100.0)])
    images = tf.random.uniform([8, 50, 50, 1])
    noise = model.sample_noise(8, tf.random.Generator.from_seed(0))

    def grads(images, noise):
        with tf.GradientTape() as tape:
            out = model(images, noise, training=True)
            loss, _, _ = objectives.total_loss(images, out, objective, 50, model.quirks)
        return tape.gradient(loss, model.trainable_variables)

    hlo = tf.function(grads, jit_compile=True).experimental_get_compiler_ir(images, noise)(stage="hlo")
    counted = flops.hlo_dot_flops(hlo)  # training unrolls all T steps (fwd and bwd)
    analytic = flops.train_step_flops(model, 8, steps=model.max_glimpses)
    assert counted == pytest.approx(analytic, rel=0.03)


@pytest.mark.slow
def test_train_benchmark_reports_consistent_figures():
    from asr_tf.lab import benchmarks

    result = benchmarks.run("train", config="air_asr_14", batch_size=4, batches=3,
                            warmup_batches=1, kinds="asr", jit_modes="0")
    row = result["asr"]
    assert result["matmul_gflops"] > 0 and result["eval_seconds_1000"] > 0
    assert 1.0 <= row["glimpse_steps_executed"] <= 6.0
    assert 1.0 <= row["glimpse_steps_executed_in_memory"] <= 6.0
    assert row["ms_per_step_first_epoch"] > 0 and result["first_epoch_pipeline_seconds"] > 0
    # images/s, GFLOP/s and the fraction of matmul all follow from ms/step and GFLOP/step
    ms = row["ms_per_step"]
    assert row["images_per_s"] == pytest.approx(4 / ms * 1e3, rel=0.01)
    assert row["gflops"] == pytest.approx(row["gflop_per_step"] / ms * 1e3, rel=0.05, abs=0.05)
    assert row["fraction_of_matmul"] == pytest.approx(row["gflops"] / result["matmul_gflops"],
                                                      rel=0.05, abs=0.005)
    assert row["pipeline_overhead"] == pytest.approx(ms / row["ms_per_step_in_memory_input"] - 1,
                                                     abs=0.01)
    assert row["pipeline_overhead_first_epoch"] == pytest.approx(
        row["ms_per_step_first_epoch"] / row["ms_per_step_in_memory_input"] - 1, abs=0.01)
    with pytest.raises(ValueError, match="unknown benchmark"):
        benchmarks.run("speed")


def test_sampler_benchmark_times_both_samplers():
    from asr_tf.lab import benchmarks

    result = benchmarks.run("sampler", batch_size=4, batches=2, warmup_batches=1)
    for name in ("separable", "separable_jit", "gather", "gather_jit"):
        assert result[f"{name}_ms"] > 0


@pytest.mark.slow
def test_side_by_side_steps_report_consistent_figures(monkeypatch):
    """Two step processes (here: this tree without and with a no-op binding), alternating."""
    from asr_tf.lab import step_compare
    from asr_tf.run import xla_cpu

    with pytest.raises(ValueError, match="nothing to compare"):
        step_compare.compare_steps(None)
    with pytest.raises(ValueError, match="no tools/benchmark.py there"):
        step_compare.compare_steps("/tmp")
    binding = "xla_cpu_codegen.concurrency_scheduler = False"
    # as after an in-process train_eval (earlier tests): this process's flags must not reach
    # the workers, whose own bindings decide theirs
    monkeypatch.setattr(xla_cpu, "_applied", [])
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    xla_cpu.xla_cpu_codegen()
    result = step_compare.compare_steps(None, config="air_asr_14", kinds="asr", jit_modes="0",
                                        batch_size=4, batches=4, warmup_batches=1, block=2,
                                        with_bindings=[binding])
    assert result["this"]["bindings"] == [binding]
    assert result["baseline"]["path"] == result["this"]["path"]
    # each worker set its XLA flags (asr_tf/run/xla_cpu.py) before compiling: the binding took
    scheduler = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    assert scheduler in result["baseline"]["xla_flags"]
    assert scheduler not in result["this"]["xla_flags"]
    row = result["asr"]
    assert row["cpu_speedup"] == pytest.approx(
        row["baseline"]["cpu_ms_per_step"] / row["this"]["cpu_ms_per_step"], rel=0.01)
    for side in ("baseline", "this"):
        r = row[side]
        assert r["ms_per_step"] > 0 and 1.0 <= r["glimpse_steps_executed"] <= 6.0
        assert r["cpu_ms_per_step"] > 0
        assert r["gflops"] == pytest.approx(r["gflop_per_step"] / r["ms_per_step"] * 1e3,
                                            rel=0.05, abs=0.05)
        assert r["fraction_of_matmul_2048"] == pytest.approx(
            r["gflops"] / row["matmul_2048_gflops"], rel=0.05, abs=0.005)
    assert row["speedup"] == pytest.approx(
        row["baseline"]["ms_per_step"] / row["this"]["ms_per_step"], rel=0.01)
    low, high = row["speedup_by_block_range"]
    assert low <= row["speedup_by_block_median"] <= high


def test_model_kind_bindings_give_a_config_the_kinds_own_values():
    # the train benchmark times AIR on an ASR config's data: AIR's values, not pPrior's
    from asr_tf.run import config
    from asr_tf.lab import benchmarks
    from asr_tf.models import build_model

    air = benchmarks.model_kind_bindings("air")
    assert air[0] == "build_model.kind = 'air'"
    config.parse(["air_asr_14"], air + ["build_model.lstm_units = 8"])
    model = build_model(canvas_px=50, counts=(1,))
    want = MODEL_VALUES["air"]
    assert {k: getattr(model, k) for k in want} == want
    assert model.zpres_prior == PresencePriorSchedule()  # air.gin's schedule is the original's


@pytest.mark.slow
def test_side_by_side_steps_with_one_thread_through_the_tool(repo_root):
    """`--threads 1`: both step processes (and the yardstick) run with one TensorFlow thread,
    as the Tables runs train; the result says so."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(repo_root / "tools" / "benchmark.py"), "--what", "train",
         "--config", "air_asr_14", "--kinds", "asr", "--jit_modes", "0", "--batch_size", "4",
         "--batches", "2", "--warmup_batches", "1", "--threads", "1",
         "--with_binding", "xla_cpu_codegen.concurrency_scheduler = True"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["threads"] == 1
    assert result["baseline"]["worker_threads"] == 1 and result["this"]["worker_threads"] == 1
    assert result["asr"]["this"]["ms_per_step"] > 0
