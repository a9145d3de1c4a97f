"""Gin configuration: finding configs by name, parsing them strictly."""
import logging
import os
import pathlib

import gin

# Importing these registers every configurable that a config may bind.
from asr_tf import constraints, objectives, quirks, runs, train_lib, training  # noqa: F401
from asr_tf import models  # noqa: F401

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def available_configs():
    """Names of the run configs (files in configs/ that are not included-only pieces)."""
    pieces = {"base", "air", "pprior", "asr_count", "asr_overlap", "learn", "faithful"}
    return sorted(p.stem for p in CONFIG_DIR.glob("*.gin") if p.stem not in pieces)


def resolve_config(name_or_path):
    """A config name (``air_asr_14``), file name or path -> an existing file path."""
    candidates = [pathlib.Path(name_or_path)]
    if not str(name_or_path).endswith(".gin"):
        candidates.append(CONFIG_DIR / f"{name_or_path}.gin")
    candidates.append(CONFIG_DIR / pathlib.Path(name_or_path).name)
    for c in candidates:
        if c.is_file():
            return str(c)
    raise ValueError(f"unknown config {name_or_path!r}: no such file, and not one of "
                     f"{', '.join(available_configs())} (in {CONFIG_DIR})")


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
