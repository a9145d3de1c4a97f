"""Multi-object scenes (docs/ORIGINAL.md §2.2–2.5), Multi-MNIST and Multi-dSprites: the five
data sets, which scene is which, and their synthesis in numpy.

One scene = a [S, S] float32 canvas in [0, 1] holding `count` objects, with one ground-truth
box per object: (x, y, w, h) in pixels, the top-left and size of the placed square-ish crop
(docs/ORIGINAL.md §2.5, Q4: not a tight ink box). The objects are patches of source images
(asr_tf/data/patches.py: crop, optional rescale) placed under the data set's overlap rule
(asr_tf/data/placement.py); `export_scenes` writes them to files (asr_tf/data/scene_files.py).

Dataset identity is statistically, not bit-, equivalent to the original (docs/ORIGINAL.md §2.4,
Q6): every scene is drawn from its own RNG (Philox keyed by (data_seed, stream, id)), so any
scene can be made on its own, in any order, in any process. A fixed dataset has
`images_per_count * len(counts)` scenes ("full-set ids"; id u has count
counts[u // images_per_count], so counts are exactly balanced); one permutation of the ids,
seeded by the data seed too, gives the split: its first `num_test` entries are the test split,
the rest the training split. `split='fresh'` draws unlimited new scenes instead (own RNG stream,
count uniform over the allowed counts), for training on never-repeating data.

The data seed (`DatasetSpec.data_seed`, default 0) is part of the data set, like the paper's one
set of files: it fixes the scenes and the train/test split. A training run's own seed decides its
initial weights, noise and the order in which it reads the training scenes, never which scenes
are test scenes (asr_tf/data/pipeline.py). Each object's source image is drawn
uniformly at random (the original walks one global permutation of the sources instead).
"""
from __future__ import annotations

import dataclasses
import functools
import threading

import numpy as np

from asr_tf.data import patches, placement, scene_files
from asr_tf.data.placement import SceneSynthesisError  # noqa: F401  (raised by synthesize_*)

MAX_OBJECTS = 4  # boxes are padded to this many
SPLITS = ("train", "test", "fresh")
BBOX_OVERLAP_MODES = ("x_only", "true_box")  # Q1: the original's test, and the one it meant

_STREAM_FIXED = 0  # RNG stream of the fixed dataset (train and test), keyed by full-set id
_STREAM_FRESH = 1  # RNG stream of fresh scenes, keyed by a running index
_STREAM_SPLIT = 2  # RNG stream of the train/test permutation


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything that defines a synthetic dataset.

    Attributes:
      name: registry name (informational once built).
      source: 'mnist' (60k MNIST train digits) or 'dsprites' (120 sprites).
      canvas_px: canvas side S (50 for MNIST, 64 for dSprites in the paper).
      counts: allowed object counts, sorted, unique, each 1..MAX_OBJECTS.
      rescale: None, or (lo, hi): per-object scale factor r ~ U(lo, hi).
      overlap: 'pixel' (ink may not overlap) or 'bbox' (boxes tested, see bbox_overlap_mode).
      bbox_overlap_mode: 'x_only' (the original's bug Q1: x-ranges may not intersect, so
        objects sit in disjoint columns) or 'true_box' (boxes may not intersect).
      images_per_count: scenes per allowed count in the fixed dataset (20,000 in the paper).
      num_test: test scenes, the first of the joint permutation (1,000 in the code, Q7).
      size_range_px: (c_min, c_max), the object size range used by the ASR size penalty and
        generation: (17, 23) MNIST counts, (11, 15) MNIST bbox, (12, 15) dSprites bbox,
        (20, 25) dSprites counts. Not used by the synthesis itself.
      data_seed: int in [0, 2**63); fixes every scene and the train/test split (0: the data
        set every run of the project trains and tests on).
    """

    name: str
    source: str
    canvas_px: int
    counts: tuple
    rescale: tuple | None = None
    overlap: str = "pixel"
    bbox_overlap_mode: str = "x_only"
    images_per_count: int = 20000
    num_test: int = 1000
    size_range_px: tuple = (17, 23)
    data_seed: int = 0

    def __post_init__(self):
        def fail(what, value, allowed):
            raise ValueError(f"DatasetSpec {self.name!r}: invalid {what} {value!r}; {allowed}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if self.source not in patches.SOURCE_SIDE_PX:
            fail("source", self.source, f"allowed: {sorted(patches.SOURCE_SIDE_PX)}")
        if not is_int(self.canvas_px) or self.canvas_px <= 0:
            fail("canvas_px", self.canvas_px, "expected a positive int")
        try:
            counts = tuple(self.counts)
        except TypeError:
            fail("counts", self.counts, "expected a sequence of ints")
        if not counts:
            fail("counts", self.counts, "expected at least one count")
        if not all(is_int(c) and 1 <= c <= MAX_OBJECTS for c in counts):
            fail("counts", self.counts, f"each count must be an int in 1..{MAX_OBJECTS}")
        if list(counts) != sorted(set(counts)):
            fail("counts", self.counts, "counts must be sorted and unique")
        object.__setattr__(self, "counts", tuple(int(c) for c in counts))
        if self.rescale is not None:
            try:
                lo, hi = (float(v) for v in self.rescale)
            except (TypeError, ValueError):
                fail("rescale", self.rescale, "expected None or (lo, hi)")
            if not 0.0 < lo <= hi:
                fail("rescale", self.rescale, "expected 0 < lo <= hi")
            object.__setattr__(self, "rescale", (lo, hi))
        if self.overlap not in ("pixel", "bbox"):
            fail("overlap", self.overlap, "allowed: 'pixel', 'bbox'")
        if self.bbox_overlap_mode not in BBOX_OVERLAP_MODES:
            fail("bbox_overlap_mode", self.bbox_overlap_mode,
                 "allowed: " + ", ".join(repr(m) for m in BBOX_OVERLAP_MODES))
        if not is_int(self.images_per_count) or self.images_per_count <= 0:
            fail("images_per_count", self.images_per_count, "expected a positive int")
        if not is_int(self.num_test) or not 0 <= self.num_test < self.num_scenes:
            fail("num_test", self.num_test, f"expected an int in [0, {self.num_scenes})")
        object.__setattr__(self, "size_range_px", tuple(self.size_range_px))
        if not is_int(self.data_seed) or not 0 <= self.data_seed < 2**63:
            fail("data_seed", self.data_seed, "expected an int in [0, 2**63)")
        object.__setattr__(self, "data_seed", int(self.data_seed))

    # What a data set from files has too (asr_tf/data/files.py, FileDataSpec).
    data = None  # not from files
    channels = 1  # grayscale
    has_boxes = True  # every scene has its ground-truth boxes
    max_boxes = MAX_OBJECTS  # box slots per scene

    @property
    def num_scenes(self) -> int:
        """Scenes in the fixed dataset (train + test)."""
        return self.images_per_count * len(self.counts)

    @property
    def num_train(self) -> int:
        return self.num_scenes - self.num_test

    def num_in_split(self, split: str) -> int | None:
        """Scenes in a split; None for the unbounded 'fresh' split."""
        return {"train": self.num_train, "test": self.num_test, "fresh": None}[
            _check_split(split)
        ]


DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist_13", "mnist", 50, (1, 3), size_range_px=(17, 23)),
        DatasetSpec("mnist_14", "mnist", 50, (1, 4), size_range_px=(17, 23)),
        DatasetSpec("mnist_24", "mnist", 50, (2, 4), size_range_px=(17, 23)),
        DatasetSpec(
            "mnist_bbox3", "mnist", 50, (3,), rescale=(0.6, 0.6), overlap="bbox",
            size_range_px=(11, 15),
        ),
        DatasetSpec(
            "dsprites_bbox3", "dsprites", 64, (3,), rescale=(0.6, 0.6), overlap="bbox",
            size_range_px=(12, 15),
        ),
    )
}


def get_spec(name_or_spec: str | DatasetSpec, **overrides) -> DatasetSpec:
    """The registered spec `name` (or a given spec) with fields replaced by `overrides`.

    Raises ValueError for an unknown name, an unknown field or an invalid value.
    """
    if isinstance(name_or_spec, DatasetSpec):
        spec = name_or_spec
    elif name_or_spec in DATASETS:
        spec = DATASETS[name_or_spec]
    else:
        raise ValueError(
            f"unknown dataset {name_or_spec!r}; allowed: {', '.join(sorted(DATASETS))}"
        )
    if not overrides:
        return spec
    fields = {f.name for f in dataclasses.fields(DatasetSpec)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown DatasetSpec field(s) {unknown}; allowed: {sorted(fields)}")
    return dataclasses.replace(spec, **overrides)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return split


# ---------------------------------------------------------------------------------------------
# Scenes, splits, batches
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def split_permutation(num_scenes: int, data_seed: int) -> np.ndarray:
    """Joint permutation [num_scenes] of full-set ids; position < num_test -> test split."""
    perm = np.random.default_rng((data_seed, _STREAM_SPLIT)).permutation(num_scenes)
    perm.flags.writeable = False
    return perm


def scene_ids(spec: DatasetSpec, split: str) -> np.ndarray:
    """Full-set ids [N_split] of a fixed split: split index i is full-set scene ids[i]."""
    perm = split_permutation(spec.num_scenes, spec.data_seed)
    if _check_split(split) == "fresh":
        raise ValueError("the 'fresh' split has no fixed scene ids")
    return perm[spec.num_test :] if split == "train" else perm[: spec.num_test]


def scene_counts(spec: DatasetSpec, split: str) -> np.ndarray:
    """Object count [N_split] int32 of every scene of a fixed split, without synthesising."""
    counts = np.asarray(spec.counts, np.int32)
    return counts[scene_ids(spec, split) // spec.images_per_count]


def _scene_rng_and_counts(spec, indices, split):
    """Per index: (rng key tuple, count). indices [B] int. Validates the range."""
    seed = spec.data_seed
    indices = np.asarray(indices, np.int64).reshape(-1)
    limit = spec.num_in_split(split)
    limit = (1 << 56) if limit is None else limit  # fresh ids must fit in the RNG key
    if indices.size and (indices.min() < 0 or indices.max() >= limit):
        raise ValueError(
            f"scene index out of range for split {split!r} of {spec.name!r}: "
            f"[{indices.min()}, {indices.max()}] not in [0, {limit})"
        )
    if split == "fresh":
        return [((seed, _STREAM_FRESH, int(i)), None) for i in indices]
    ids = scene_ids(spec, split)[indices]
    counts = np.asarray(spec.counts)[ids // spec.images_per_count]
    return [((seed, _STREAM_FIXED, int(u)), int(c)) for u, c in zip(ids, counts)]


_THREAD_LOCAL = threading.local()


def _scene_rng(key: tuple) -> np.random.Generator:
    """The RNG of one scene, from key (data_seed, stream, id): Philox with a 128-bit key.

    Philox is counter-based, so distinct keys give independent streams. One generator per
    thread is re-keyed for each scene (tf.data may synthesise in several threads at once),
    which is ~15x cheaper than building np.random.default_rng(key) per scene.
    """
    seed, stream, scene_id = key
    if not hasattr(_THREAD_LOCAL, "rng"):
        _THREAD_LOCAL.rng = np.random.Generator(np.random.Philox(0))
    _THREAD_LOCAL.rng.bit_generator.state = {
        "bit_generator": "Philox",
        "state": {
            "counter": np.zeros(4, np.uint64),
            "key": np.array([seed, (stream << 56) | scene_id], np.uint64),
        },
        "buffer": np.zeros(4, np.uint64),
        "buffer_pos": 4,  # nothing buffered from the previous scene
        "has_uint32": 0,
        "uinteger": 0,
    }
    return _THREAD_LOCAL.rng


def _synthesize_into(spec, key, count, canvas):
    """Fill canvas [S, S] with the scene of RNG key; returns (count, placed objects)."""
    rng = _scene_rng(key)
    if count is None:  # fresh scene: uniform over the allowed counts
        count = spec.counts[int(rng.random() * len(spec.counts))]
    return count, placement.place_objects(spec, rng, count, canvas)


def _synthesize_objects(spec, index: int, split: str = "train"):
    """A scene and its objects (for tests). Returns (image [S, S], [(x_px, y_px, patch)])."""
    spec = get_spec(spec)
    ((key, count),) = _scene_rng_and_counts(spec, [index], split)
    canvas = np.zeros([spec.canvas_px, spec.canvas_px], np.float32)
    _, placed = _synthesize_into(spec, key, count, canvas)
    return canvas, placed


def synthesize_batch(spec, indices, split: str = "train") -> dict:
    """Scenes for many indices of one split.

    Args:
      spec: a DatasetSpec or registered name; the same (spec.data_seed, split, index) always
        gives the same scene.
      indices: [B] ints; split index (train: 0..num_train-1, test: 0..num_test-1, fresh: >= 0).
      split: 'train', 'test' or 'fresh'.

    Returns dict of numpy arrays:
      image [B, S, S] float32 in [0, 1]; count [B] int32;
      boxes_px [B, 4, 4] float32, rows (x, y, w, h) in placement order, zero padded;
      box_mask [B, 4] bool, True for real boxes.
    """
    spec = get_spec(spec)
    keys_counts = _scene_rng_and_counts(spec, indices, _check_split(split))
    batch, size = len(keys_counts), spec.canvas_px
    image = np.zeros([batch, size, size], np.float32)
    count = np.zeros([batch], np.int32)
    boxes_px = np.zeros([batch, MAX_OBJECTS, 4], np.float32)
    box_mask = np.zeros([batch, MAX_OBJECTS], bool)
    for b, (key, scene_count) in enumerate(keys_counts):
        count[b], placed = _synthesize_into(spec, key, scene_count, image[b])
        for j, (x, y, patch) in enumerate(placed):
            boxes_px[b, j] = (x, y, patch.shape[1], patch.shape[0])
        box_mask[b, : len(placed)] = True
    return dict(image=image, count=count, boxes_px=boxes_px, box_mask=box_mask)


def synthesize_scene(spec, index: int, split: str = "train") -> dict:
    """One scene: dict(image [S, S] float32, count int, boxes_px [4, 4] float32 (x, y, w, h),
    box_mask [4] bool). See synthesize_batch."""
    batch = synthesize_batch(spec, [index], split)
    return dict(
        image=batch["image"][0],
        count=int(batch["count"][0]),
        boxes_px=batch["boxes_px"][0],
        box_mask=batch["box_mask"][0],
    )


# ---------------------------------------------------------------------------------------------
# Files (tools/make_dataset.py)
# ---------------------------------------------------------------------------------------------
def export_scenes(
    name: str,
    split: str,
    num: int,
    out: str,
    preview: str | None = None,
    **spec_overrides,
) -> dict:
    """Synthesise scenes 0..num-1 of a split and write them to an .npz (and a preview PNG).

    ``spec_overrides`` replace DatasetSpec fields, e.g. ``data_seed=1`` for another data set.

    The .npz holds images [N, S, S] float32, counts [N] int32, boxes_px [N, 4, 4] float32,
    box_mask [N, 4] bool. Inputs are validated before anything is written. Returns the arrays.
    """
    spec = get_spec(name, **spec_overrides)
    limit = spec.num_in_split(split)
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num <= 0:
        raise ValueError(f"num must be a positive int, got {num!r}")
    if limit is not None and num > limit:
        raise ValueError(f"num={num} exceeds the {limit} scenes of split {split!r} of {name!r}")
    scene_files.check_output_paths(out, preview)
    batch = synthesize_batch(spec, np.arange(num), split)
    arrays = dict(
        images=batch["image"],
        counts=batch["count"],
        boxes_px=batch["boxes_px"],
        box_mask=batch["box_mask"],
    )
    scene_files.write_scenes(arrays, out, preview)
    return arrays


def export_folder(name: str, out: str, num: int | None = None, num_test: int | None = None,
                  spec_overrides: dict | None = None) -> dict:
    """Writes a data set as a folder of PNGs with annotations.json (docs/OWN_DATA.md): the first
    ``num`` training scenes (default all) to ``out/train``, the first ``num_test`` test scenes
    (default all) to ``out/test``, each in split-index order, so that training on the folder
    reads the scenes a run on the fly reads (all of them, the same data seed). ``spec_overrides``
    replace DatasetSpec fields (``{'data_seed': 1}``). Validated before anything is written;
    ``out`` must not exist. Returns {'train': N, 'test': N_test, 'bits':
    the PNGs' bit depth} (scene_files.write_folder).
    """
    spec = get_spec(name, **(spec_overrides or {}))
    sizes = {}
    for split, wanted in (("train", num), ("test", num_test)):
        limit = spec.num_in_split(split)
        wanted = limit if wanted is None else wanted
        if isinstance(wanted, bool) or not isinstance(wanted, (int, np.integer)) \
                or not 1 <= wanted <= limit:
            raise ValueError(f"{split} scenes: {wanted!r}; the {split} split of {name!r} has "
                             f"{limit}: give 1 to {limit}")
        sizes[split] = int(wanted)
    scene_files.check_new_folder(out)
    splits = {split: synthesize_batch(spec, np.arange(n), split) for split, n in sizes.items()}
    bits = scene_files.write_folder(out, splits)
    return dict(sizes, bits=bits)
