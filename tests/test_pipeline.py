"""tf.data pipeline: shapes, determinism, epochs, resumability, iteration budget."""
import numpy as np
import pytest
import tensorflow as tf

from asr_tf.lab import benchmarks
from asr_tf.data import pipeline, scenes

SMALL = dict(images_per_count=50, num_test=20)  # mnist_13: 100 scenes, 80 train, 20 test
BATCH = 16  # 5 steps per epoch of the small train split


def take(dataset, num_batches):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(num_batches)]


def indices(num_batches, **kwargs):
    stream = pipeline.scene_index_dataset(
        scenes.get_spec("mnist_13", **SMALL), batch_size=BATCH, **kwargs
    )
    return [b.numpy() for b in stream.take(num_batches)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_elements_have_static_shapes_and_valid_values():
    dataset = pipeline.make_dataset("dsprites_bbox3", batch_size=8, **SMALL)
    spec = dataset.element_spec
    assert spec["image"].shape == (8, 64, 64, 1) and spec["image"].dtype == tf.float32
    assert spec["count"].shape == (8,) and spec["count"].dtype == tf.int32
    assert spec["boxes_px"].shape == (8, 4, 4) and spec["boxes_px"].dtype == tf.float32
    assert spec["box_mask"].shape == (8, 4) and spec["box_mask"].dtype == tf.bool
    (batch,) = take(dataset, 1)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert (batch["count"] == 3).all() and batch["box_mask"][:, :3].all()


def test_batches_are_the_synthesised_scenes_of_the_index_stream():
    (batch,) = take(pipeline.make_dataset("mnist_13", batch_size=BATCH, seed=3, **SMALL), 1)
    (index,) = indices(1, seed=3)
    expected = scenes.synthesize_batch(scenes.get_spec("mnist_13", **SMALL), index, "train")
    np.testing.assert_array_equal(batch["image"][..., 0], expected["image"])
    np.testing.assert_array_equal(batch["boxes_px"], expected["boxes_px"])


def test_same_seed_same_batches_other_seed_other_batches():
    make = lambda seed: pipeline.make_dataset("mnist_13", batch_size=BATCH, seed=seed, **SMALL)
    first, again, other = take(make(1), 3), take(make(1), 3), take(make(2), 3)
    assert_same(first, again)
    assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_the_run_seed_orders_the_data_set_and_never_splits_it():
    """Seeds 0 and 1 read the same training scenes in another order, and test on the same
    scenes; another data seed is another data set."""
    spec = scenes.get_spec("mnist_13", **SMALL)
    test = {seed: take(pipeline.make_dataset(spec, "test", batch_size=BATCH, seed=seed), 2)
            for seed in (0, 1)}
    assert_same(test[0], test[1])
    epoch = {seed: np.concatenate(indices(5, seed=seed)) for seed in (0, 1)}  # 80 scenes
    assert sorted(epoch[0]) == sorted(epoch[1]) == list(range(80))
    assert not np.array_equal(epoch[0], epoch[1])
    train_images = {seed: np.concatenate([b["image"] for b in take(pipeline.make_dataset(
        spec, batch_size=BATCH, seed=seed), 5)]) for seed in (0, 1)}
    by_bytes = lambda images: sorted(x.tobytes() for x in images)
    assert by_bytes(train_images[0]) == by_bytes(train_images[1])
    test_images = np.concatenate([b["image"] for b in test[0]])
    assert not set(by_bytes(test_images)) & set(by_bytes(train_images[1]))
    other = take(pipeline.make_dataset(spec, "test", batch_size=BATCH, data_seed=1), 1)
    assert not np.array_equal(other[0]["image"], test[0][0]["image"])
    # fresh scenes: each seed reads its own stretch of the unbounded stream
    fresh = {seed: indices(1, seed=seed, fresh_scenes=True)[0] for seed in (0, 1)}
    np.testing.assert_array_equal(fresh[0], np.arange(BATCH))
    np.testing.assert_array_equal(fresh[1], np.arange(BATCH) + pipeline.FRESH_STRETCH)


def test_permutation_mode_visits_every_scene_once_per_epoch():
    batches = indices(10, seed=0)  # two epochs of 80 scenes
    epoch0, epoch1 = np.concatenate(batches[:5]), np.concatenate(batches[5:])
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(80))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(80))
    assert not np.array_equal(epoch0, epoch1)  # reshuffled each epoch
    assert not np.array_equal(epoch0, np.arange(80))


@pytest.mark.parametrize(
    "mode", [dict(shuffle="permutation"), dict(shuffle="buffer"), dict(fresh_scenes=True)]
)
def test_start_step_resumes_exactly(mode):
    reference = indices(13, seed=4, **mode)  # crosses two epoch boundaries
    for step in (1, 5, 7, 12):
        (resumed,) = indices(1, seed=4, start_step=step, **mode)
        np.testing.assert_array_equal(resumed, reference[step], err_msg=f"step {step}")
    # And the synthesised batches themselves, end to end.
    make = lambda start: pipeline.make_dataset(
        "mnist_13", batch_size=BATCH, seed=4, start_step=start, **mode, **SMALL
    )
    assert_same(take(make(0), 8)[6:], take(make(6), 2))


@pytest.mark.parametrize(
    "mode", [dict(shuffle="permutation"), dict(shuffle="buffer"), dict(fresh_scenes=True)]
)
def test_shards_are_the_rows_of_the_unsharded_batch(mode):
    # Multi-worker data: shard i of n at step k is rows [i*B/n, (i+1)*B/n) of the unsharded
    # batch of B at step k (here from step 2, across epoch boundaries), so the shards of a step
    # are disjoint and together are exactly the single-process batch.
    spec = scenes.get_spec("mnist_13", **SMALL)
    reference = indices(8, seed=4, start_step=2, **mode)
    shards = [
        [b.numpy() for b in pipeline.scene_index_dataset(
            spec, batch_size=BATCH // 4, seed=4, start_step=2, num_shards=4, shard_index=i, **mode
        ).take(8)]
        for i in range(4)
    ]
    for step in range(8):
        np.testing.assert_array_equal(np.concatenate([s[step] for s in shards]), reference[step])
    # End to end, the synthesised scenes of two shards (and their static batch dimension).
    make = lambda **kwargs: pipeline.make_dataset("mnist_13", seed=4, start_step=3, **mode,
                                                  **SMALL, **kwargs)
    full = take(make(batch_size=BATCH), 2)
    halves = [make(batch_size=BATCH // 2, num_shards=2, shard_index=i) for i in range(2)]
    assert halves[0].element_spec["image"].shape[0] == BATCH // 2
    halves = [take(h, 2) for h in halves]
    for step in range(2):
        for key in full[step]:
            np.testing.assert_array_equal(
                np.concatenate([h[step][key] for h in halves]), full[step][key], err_msg=key)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.make_dataset("mnist_13", num_shards=2, shard_index=2)


def test_buffer_mode_covers_each_epoch():
    batches = indices(10, shuffle="buffer", seed=0)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches[:5])), np.arange(80))


def test_one_pass_train_and_fixed_order_test_split():
    one_pass = indices(100, repeat=False, start_step=2)
    assert len(one_pass) == 3  # steps 2, 3, 4 of the 5-step epoch
    test = take(pipeline.make_dataset("mnist_13", "test", batch_size=BATCH, **SMALL), 100)
    assert [len(b["count"]) for b in test] == [16, 4]  # every test scene, no drop
    expected = scenes.synthesize_batch(scenes.get_spec("mnist_13", **SMALL), np.arange(20), "test")
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in test])[..., 0],
                                  expected["image"])
    test_dataset = pipeline.make_dataset("mnist_13", "test", batch_size=BATCH, **SMALL)
    assert test_dataset.element_spec["image"].shape.as_list() == [None, 50, 50, 1]


def test_iteration_budget_matches_the_original():
    assert pipeline.num_train_scenes("mnist_13") == 39000
    assert pipeline.num_train_scenes("mnist_bbox3") == 19000
    assert pipeline.iterations_for_epochs("mnist_14") == 182812
    assert pipeline.iterations_for_epochs("dsprites_bbox3") == 89062
    assert pipeline.steps_per_epoch("mnist_24") == 609


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split="valid"), "split"),
        (dict(shuffle="random"), "shuffle"),
        (dict(split="test", fresh_scenes=True), "fresh_scenes"),
        (dict(batch_size=0), "batch_size"),
        (dict(start_step=-1), "start_step"),
        (dict(seed=-1), "seed"),
        (dict(counts=()), "counts"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipeline.make_dataset("mnist_13", **kwargs)


def test_data_benchmark_reports_scenes_per_second():
    result = benchmarks.run("data", dataset="mnist_13", batch_size=8, batches=3, warmup_batches=1)
    assert result["what"] == "data" and result["scenes_per_s"] > 0
    with pytest.raises(ValueError, match="unknown benchmark"):
        benchmarks.run("nothing")


def test_scene_cache_synthesises_each_scene_once_and_returns_copies():
    spec = scenes.get_spec("mnist_13", **SMALL)
    cache = pipeline.SceneCache(scenes.get_spec(spec, data_seed=3), "train")
    first = cache.batch([5, 7, 5, 79])
    expected = scenes.synthesize_batch(scenes.get_spec(spec, data_seed=3), [5, 7, 5, 79], "train")
    assert_same([first], [expected])
    assert cache.synthesised == 3  # index 5 twice in one batch: synthesised once
    first["image"][:] = -1.0  # the caller's copy, not the cache
    again = cache.batch([79, 5])
    assert cache.synthesised == 3
    assert_same([again], [scenes.synthesize_batch(scenes.get_spec(spec, data_seed=3), [79, 5],
                                                  "train")])


def test_cached_and_uncached_streams_are_identical_over_epochs():
    kwargs = dict(batch_size=BATCH, seed=1, **SMALL)
    cached = take(pipeline.make_dataset("mnist_13", cache_scenes=True, **kwargs), 12)
    uncached = take(pipeline.make_dataset("mnist_13", cache_scenes=False, **kwargs), 12)
    assert_same(cached, uncached)  # 12 steps = 2.4 epochs: the later ones come from the cache
    test_a = take(pipeline.make_dataset("mnist_13", "test", cache_scenes=True, **kwargs), 2)
    test_b = take(pipeline.make_dataset("mnist_13", "test", cache_scenes=False, **kwargs), 2)
    assert_same(test_a, test_b)
