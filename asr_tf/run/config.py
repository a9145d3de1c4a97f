"""Gin configuration: finding configs by name, parsing them strictly, reading a run's record.

A run is one config file and any overlays after it (``faithful``, ``size``, ``decay``,
``floor20k``; WORKSPACE.md, "Configs"), named by their names joined with '+':
``--config air_asr_13 --config size`` is the run ``air_asr_13+size`` (workdir
``runs/air_asr_13+size``).
"""
import logging
import os
import pathlib

import gin

# Importing these registers every configurable that a config or a record may bind.
from asr_tf import constraints, objectives, quirks, training  # noqa: F401
from asr_tf import models  # noqa: F401
from asr_tf.run import loop, workdir as workdir_lib, xla_cpu  # noqa: F401

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
BASES = ("base", "air", "pprior")  # included by the run configs, not runs themselves
OVERLAYS = ("faithful", "size", "decay", "floor20k")  # added after a run config


def available_configs():
    """Names of the paper runs' configs (configs/ without the bases and the overlays)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.gin")
                  if p.stem not in BASES + OVERLAYS)


def resolve_config(name_or_path):
    """A config name (``air_asr_14``, ``faithful``), file name or path -> an existing file path."""
    candidates = [pathlib.Path(name_or_path)]
    if not str(name_or_path).endswith(".gin"):
        candidates.append(CONFIG_DIR / f"{name_or_path}.gin")
    candidates.append(CONFIG_DIR / pathlib.Path(name_or_path).name)
    for c in candidates:
        if c.is_file():
            return str(c)
    raise ValueError(f"unknown config {name_or_path!r}: no such file, and not one of "
                     f"{', '.join(available_configs())} or the overlays {', '.join(OVERLAYS)} "
                     f"(in {CONFIG_DIR})")


def run_name(configs):
    """The name of the run that ``configs`` (names or paths, run config first, then overlays)
    make: their names joined by '+' (``air_asr_13+size``)."""
    return "+".join(os.path.splitext(os.path.basename(str(c)))[0] for c in configs)


def default_workdir(configs):
    """``runs/<run name>``, relative to the current folder: the same command resumes the same
    run."""
    return os.path.join("runs", run_name(configs))


def parse(configs=(), bindings=(), clear=True):
    """Parses config files (names or paths) and extra bindings; unknown parameters are errors."""
    if clear:
        gin.clear_config()
    gin.add_config_file_search_path(str(CONFIG_DIR))
    files = [resolve_config(c) for c in configs]
    for f in files:
        gin.add_config_file_search_path(os.path.dirname(os.path.abspath(f)))
    # gin logs every search-path probe of an include at ERROR level; real problems raise.
    logging.disable(logging.ERROR)
    try:
        gin.parse_config_files_and_bindings(files, list(bindings), skip_unknown=False)
    finally:
        logging.disable(logging.NOTSET)
    return files


def parse_record(workdir):
    """Parses ``workdir/config.gin`` into a clean gin state (FileNotFoundError if missing)."""
    path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a training workdir")
    gin.clear_config()
    with open(path) as f:
        gin.parse_config(f.read())

