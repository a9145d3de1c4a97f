"""Multi-object data: synthetic scenes (sources MNIST and dSprites, patches, placement, files),
data sets from files (folders of images, TFDS: images, coco, folder, tfds_source, files), the
tf.data pipeline.

The numpy parts import without TensorFlow; the pipeline names are loaded on first use.
"""
from asr_tf.data.scenes import (  # noqa: F401
    DATASETS,
    MAX_OBJECTS,
    DatasetSpec,
    get_spec,
    synthesize_batch,
    synthesize_scene,
)
from asr_tf.data.images import DataError  # noqa: F401
from asr_tf.data.placement import SceneSynthesisError  # noqa: F401
from asr_tf.data.sources import MnistNotFoundError, dsprites_sprites, load_mnist  # noqa: F401

_PIPELINE_NAMES = (
    "make_dataset",
    "num_train_scenes",
    "steps_per_epoch",
    "iterations_for_epochs",
)


def __getattr__(name):  # PEP 562: import TensorFlow only when the pipeline is used
    if name in _PIPELINE_NAMES:
        from asr_tf.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
