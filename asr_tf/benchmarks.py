"""Benchmarks behind tools/benchmark.py: one function per mode in BENCHMARKS.

Each mode function takes keyword options (ignoring the ones it does not use, so the tool can
pass all of its flags) and returns a JSON-serialisable dict of results. Add a mode by writing a
function and registering it in BENCHMARKS (e.g. 'train', 'serving').
"""
from __future__ import annotations

import time


def data_benchmark(
    dataset: str = "mnist_13",
    batch_size: int = 64,
    warmup_batches: int = 20,
    batches: int = 200,
    seed: int = 0,
    fresh_scenes: bool = False,
    **unused,
) -> dict:
    """Scenes per second of the training tf.data pipeline, measured after warm-up batches."""
    from asr_tf.data import pipeline

    start = time.perf_counter()
    iterator = iter(
        pipeline.make_dataset(
            dataset, "train", batch_size=batch_size, seed=seed, fresh_scenes=fresh_scenes
        )
    )
    for _ in range(warmup_batches):
        next(iterator)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed_s = time.perf_counter() - start
    return dict(
        what="data",
        dataset=dataset,
        batch_size=batch_size,
        fresh_scenes=fresh_scenes,
        batches=batches,
        seconds=round(elapsed_s, 3),
        warmup_seconds=round(warmup_s, 3),
        scenes_per_s=round(batches * batch_size / elapsed_s, 1),
    )


BENCHMARKS = {
    "data": data_benchmark,
}


def run(what: str, **options) -> dict:
    """Run the benchmark mode `what` with keyword options; ValueError for an unknown mode."""
    if what not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {what!r}; allowed: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[what](**options)
