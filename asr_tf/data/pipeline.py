"""`tf.data` input pipeline over the synthetic scenes of `asr_tf.data.scenes` or the images of a
data set from files (`asr_tf.data.files`).

Design (resumable, deterministic):
  1. An *index stream*: global positions p = step * B + j (j = 0..B-1), from
     p0 = start_step * B, each mapped to a scene index by arithmetic only, then batched:
       * train, shuffle='permutation' (default): epoch e = p // N, i = p % N,
         scene = index_shuffle(i, seed=[seed, e], max_index=N-1) - a fresh random
         permutation of the N training scenes per epoch, random access, so a restart at step k
         reproduces exactly the batch it would have got at step k, at no cost;
       * train, shuffle='buffer': the original's Q41 pipeline, shuffle(10000) over the scene
         indices with repeat; resuming skips start_step batches of this index-only stream
         (~12 s for 180k steps). Its order also depends on TF's global seed
         (tf.random.set_seed), like any seeded tf.data shuffle;
       * train, shuffle=None: fixed order p % N;
       * test: fixed order, no shuffle (one pass by default);
       * fresh_scenes=True: scene (seed mod 2**16) * 2**40 + p of the unbounded 'fresh' split
         (never repeats; runs of different seeds read disjoint stretches of it).
     Which scenes exist, and which are test scenes, is the data set's (spec.data_seed); the
     ``seed`` of this module is the reading order only (a training run's seed).
     Sharded (num_shards n > 1, multi-worker training): shard i of batch B takes positions
     p = step * B * n + i * B + j, i.e. rows [i*B, (i+1)*B) of the batch of B*n that one
     process gets at that step, so the n shards of a step together are exactly that batch.
  2. Whole batches of indices are synthesised by `scenes.synthesize_batch` (or read by
     `files.SplitData.batch`: from memory, or decoded from their files) inside
     `tf.numpy_function`, several batches in parallel, in order, then prefetched.

Throughput (tools/benchmark.py --what data, 2-core CPU): ~5,000 mnist_13 scenes/s
(single-thread numpy synthesis, ~0.2 ms per scene, 13-17 ms per batch of 64). On a 2-core
machine that CPU time comes out of the training step (3-5% of a 200 ms step), so the fixed
splits are kept in memory once synthesised (`cache_scenes`, default on: 390 MB for the 39,000
training scenes of a 50 px count set, filled during the first epoch; every later batch is
a copy). Fresh scenes are never cached.
"""
from __future__ import annotations

import tensorflow as tf

import dataclasses
import functools
import threading

import numpy as np

from asr_tf.data import files, scenes

SHUFFLE_BUFFER = 10000  # Q41: the original's shuffle buffer
_UNBOUNDED = 2**62  # end of an endless position stream


def resolve_spec(name_or_spec, **spec_overrides):
    """A data set from files as it is; a built-in one by name or spec, with overrides."""
    if isinstance(name_or_spec, files.FileDataSpec):
        if spec_overrides:
            raise ValueError(f"{name_or_spec.data}: a data set from files takes no overrides "
                             f"({sorted(spec_overrides)})")
        return name_or_spec
    return scenes.get_spec(name_or_spec, **spec_overrides)


def prepare(spec) -> bool | None:
    """Before training: a data set from files decodes every image once (a corrupt file raises
    files.DataError naming it), in memory if it fits (files.CACHE_LIMIT_BYTES). Returns whether
    it is in memory; None for a synthetic data set (nothing to do)."""
    return spec.load() if isinstance(spec, files.FileDataSpec) else None


def num_train_scenes(spec) -> int:
    """N, the training scenes of a dataset (39,000 for the count sets, 19,000 for bbox)."""
    return resolve_spec(spec).num_train


def steps_per_epoch(spec, batch: int = 64) -> int:
    """Full batches per pass over the training scenes."""
    return num_train_scenes(spec) // batch


def iterations_for_epochs(spec, epochs: int = 300, batch: int = 64) -> int:
    """The original's iteration budget floor(epochs * N / batch) (Q41).

    182,812 for the count sets and 89,062 for the bbox sets at 300 epochs, batch 64.
    """
    return (epochs * num_train_scenes(spec)) // batch


class SceneCache:
    """Scenes of one fixed split (spec, split), synthesised on first use, then kept.

    ``batch(indices)`` returns the same dict as `scenes.synthesize_batch` (the arrays are
    copies). Memory: N_split * (S*S*4 + 85) bytes, allocated lazily by the OS as it fills.
    """

    def __init__(self, spec, split: str):
        self.spec, self.split = scenes.get_spec(spec), split
        n, size = self.spec.num_in_split(split), self.spec.canvas_px
        self.arrays = dict(
            image=np.zeros([n, size, size], np.float32),
            count=np.zeros([n], np.int32),
            boxes_px=np.zeros([n, scenes.MAX_OBJECTS, 4], np.float32),
            box_mask=np.zeros([n, scenes.MAX_OBJECTS], bool),
        )
        self.filled = np.zeros([n], bool)
        self.synthesised = 0  # scenes synthesised so far (each at most once)
        self._lock = threading.Lock()

    def batch(self, indices) -> dict:
        indices = np.asarray(indices, np.int64).reshape(-1)
        missing = np.unique(indices[~self.filled[indices]])  # [M]
        if missing.size:
            fresh = scenes.synthesize_batch(self.spec, missing, self.split)
            with self._lock:
                for key, value in fresh.items():
                    self.arrays[key][missing] = value
                self.filled[missing] = True
                self.synthesised += missing.size
        return {key: value[indices] for key, value in self.arrays.items()}


FRESH_STRETCH = 2**40  # fresh scenes per order seed before two seeds' streams could meet


def _scene_index_fn(split: str, shuffle, num_scenes: int, seed: int):
    """position (scalar int64) -> scene index (scalar int64) for the given mode."""

    def to_index(position):
        if split == "fresh":
            return position + (seed % 2**16) * FRESH_STRETCH
        within = position % num_scenes
        if split == "test" or shuffle is None:
            return within
        epoch = position // num_scenes
        return tf.random.experimental.index_shuffle(  # a per-epoch permutation of 0..N-1
            within, tf.stack([tf.constant(seed, tf.int64), epoch]), num_scenes - 1
        )

    return to_index


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return int(seed)


@dataclasses.dataclass(frozen=True)
class Stream:
    """How a data set is read: the arguments of :func:`make_dataset` after the data set
    (documented there), validated; ``repeat`` and ``drop_remainder`` resolved from the split."""

    split: str = "train"
    batch_size: int = 64
    seed: int = 0
    fresh_scenes: bool = False
    start_step: int = 0
    shuffle: str | None = "permutation"
    repeat: bool | None = None
    drop_remainder: bool | None = None
    num_shards: int = 1
    shard_index: int = 0

    def __post_init__(self):
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.shuffle not in ("permutation", "buffer", None):
            raise ValueError(f"shuffle must be 'permutation', 'buffer' or None, got {self.shuffle!r}")
        for name, minimum in (("batch_size", 1), ("start_step", 0), ("num_shards", 1),
                              ("shard_index", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.shard_index >= self.num_shards:
            raise ValueError(f"shard_index must be < num_shards={self.num_shards}, got {self.shard_index}")
        if self.fresh_scenes and self.split != "train":
            raise ValueError("fresh_scenes=True is only for the train split")
        is_train = self.split == "train"
        object.__setattr__(self, "seed", _check_seed(self.seed))
        object.__setattr__(self, "repeat", is_train if self.repeat is None else bool(self.repeat))
        object.__setattr__(self, "drop_remainder",
                           is_train if self.drop_remainder is None else bool(self.drop_remainder))

    @property
    def scene_split(self):
        """The split of `scenes.synthesize_batch` the indices refer to ('fresh' or the split)."""
        return "fresh" if self.fresh_scenes else self.split


def scene_index_dataset(spec, **stream) -> tf.data.Dataset:
    """The batched scene-index stream of `make_dataset` (``stream``: its `Stream` arguments):
    [B] int64 per step, split indices of `scenes.synthesize_batch` ('fresh' ones if
    fresh_scenes)."""
    return _index_dataset(resolve_spec(spec), Stream(**stream))


def _index_dataset(spec, st):
    """`scene_index_dataset` of a resolved spec and a validated `Stream`."""
    num_scenes = spec.num_train if st.split == "train" else spec.num_test
    full_batch = st.batch_size * st.num_shards  # the batch of one unsharded process
    if st.scene_split == "train" and st.shuffle == "buffer":
        indices = tf.data.Dataset.range(num_scenes).shuffle(
            SHUFFLE_BUFFER, seed=st.seed, reshuffle_each_iteration=True
        )
        if st.repeat:
            indices = indices.repeat()
        indices = indices.batch(full_batch, drop_remainder=st.drop_remainder).skip(st.start_step)
    else:
        first = st.start_step * full_batch
        last = _UNBOUNDED if st.repeat else num_scenes
        indices = (
            tf.data.Dataset.range(first, max(first, last))
            .map(_scene_index_fn(st.scene_split, st.shuffle, num_scenes, st.seed))
            .batch(full_batch, drop_remainder=st.drop_remainder)
        )
    if st.num_shards > 1:  # this shard's rows of each full batch
        lo = st.shard_index * st.batch_size
        indices = indices.map(lambda batch: batch[lo:lo + st.batch_size])
    return indices


def make_dataset(
    name_or_spec,
    split: str = "train",
    batch_size: int = 64,
    seed: int = 0,
    fresh_scenes: bool = False,
    start_step: int = 0,
    shuffle: str | None = "permutation",
    repeat: bool | None = None,
    drop_remainder: bool | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    num_shards: int = 1,
    shard_index: int = 0,
    cache_scenes: bool = True,
    **spec_overrides,
) -> tf.data.Dataset:
    """Batches of scenes: synthetic ones, or a data set from files.

    Args:
      name_or_spec: a registered dataset name (scenes.DATASETS), a scenes.DatasetSpec or a
        files.FileDataSpec (its images from memory if FileDataSpec.load kept them, else decoded
        from the files batch by batch).
      split: 'train' or 'test'.
      batch_size: B.
      seed: non-negative int, the reading order (the training run's seed): the shuffle of the
        training scenes, or which stretch of fresh scenes. The scenes themselves and the
        train/test split are the data set's (``spec.data_seed``, e.g. ``data_seed=1`` below).
      fresh_scenes: train only, synthetic data sets only; draw never-repeating new scenes
        instead of the fixed set.
      start_step: the first batch is the one step `start_step` would get (resuming).
      shuffle: train only; 'permutation' (per-epoch random permutation, default), 'buffer'
        (the original's shuffle(10000), Q41) or None (fixed order). Ignored with fresh scenes.
      repeat: endless stream if True; one pass over the split (minus start_step batches) if
        False. Default: True for train, False for test. Fresh scenes: an unbounded stream if
        True, else N_train scenes.
      drop_remainder: drop a last partial batch. Default: True for train (static batch
        dimension), False for test (every test scene is seen; batch dimension then None).
      num_parallel_calls: batches synthesised concurrently.
      num_shards, shard_index: multi-worker data: this call yields shard i of n, batches of
        `batch_size` that are rows [i*B, (i+1)*B) of the batches of B*n that an unsharded call
        (batch_size B*n, same other arguments) yields at the same step. The n shards of a step
        are disjoint and together are that unsharded batch. A last partial batch
        (drop_remainder=False) is split the same way, so shards may be short or empty.
      cache_scenes: keep the scenes of a fixed split in memory once synthesised (see the
        module docstring); ignored with fresh scenes and for data sets from files.
      **spec_overrides: DatasetSpec fields to replace, e.g. images_per_count=500, data_seed=1.

    Returns a tf.data.Dataset of dicts:
      image [B, S, S, C] float32 in [0, 1] (C = spec.channels, 1 for the synthetic sets);
      count [B] int32 (-1: a data set without boxes);
      boxes_px [B, M, 4] float32, rows (x, y, w, h) in pixels, zero padded (M = spec.max_boxes,
      4 for the synthetic sets); box_mask [B, M] bool.
    """
    spec = resolve_spec(name_or_spec, **spec_overrides)
    st = Stream(split=split, batch_size=batch_size, seed=seed, fresh_scenes=fresh_scenes,
                start_step=start_step, shuffle=shuffle, repeat=repeat,
                drop_remainder=drop_remainder, num_shards=num_shards, shard_index=shard_index)
    scene_split, drop_remainder = st.scene_split, st.drop_remainder
    indices = _index_dataset(spec, st)
    size, channels, max_boxes = spec.canvas_px, spec.channels, spec.max_boxes
    batch_dim = batch_size if drop_remainder else None

    if isinstance(spec, files.FileDataSpec):
        if fresh_scenes:
            raise ValueError(f"{spec.data}: fresh scenes are for synthetic data sets")
        make_batch = spec.split(split).batch
    elif cache_scenes and scene_split != "fresh":
        make_batch = SceneCache(spec, scene_split).batch
    else:
        make_batch = functools.partial(scenes.synthesize_batch, spec, split=scene_split)

    def synthesize(batch_indices):  # numpy [B] int64 -> tuple of numpy arrays
        batch = make_batch(batch_indices)
        image = batch["image"]
        return (
            image if image.ndim == 4 else image[..., None],  # [B, S, S, C]
            batch["count"],
            batch["boxes_px"],
            batch["box_mask"],
        )

    def to_tensors(batch_indices):
        image, count, boxes_px, box_mask = tf.numpy_function(
            synthesize,
            [batch_indices],
            [tf.float32, tf.int32, tf.float32, tf.bool],
            stateful=False,
            name="synthesize_scenes",
        )
        image.set_shape([batch_dim, size, size, channels])
        count.set_shape([batch_dim])
        boxes_px.set_shape([batch_dim, max_boxes, 4])
        box_mask.set_shape([batch_dim, max_boxes])
        return dict(image=image, count=count, boxes_px=boxes_px, box_mask=box_mask)

    dataset = indices.map(to_tensors, num_parallel_calls=num_parallel_calls, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
