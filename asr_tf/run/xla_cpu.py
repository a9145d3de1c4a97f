"""XLA:CPU code generation of the training step (``xla_cpu_codegen``, gin).

Two settings of how XLA compiles the step's element-wise fusions and schedules its thunks on
the CPU; neither changes the model or the objective, only the order of float operations
inside fusions (as another machine would):

* ``vector_width``: the SIMD width LLVM prefers for fusions, in bits. XLA's default on this
  TensorFlow is 256 even where the CPU has AVX-512. 'auto' asks for 512 where /proc/cpuinfo
  lists avx512f and leaves XLA's default elsewhere; None always leaves it.
* ``concurrency_scheduler``: XLA's concurrency-optimised HLO scheduler, which orders
  independent thunks so that the thread pool can run them at once.

XLA reads XLA_FLAGS once, at the process's first compilation: :func:`xla_cpu_codegen` must
run before it (``train_eval`` and the benchmark's step worker call it first). Flags the user
put in XLA_FLAGS win; a child process gets the user's XLA_FLAGS back (:func:`child_environ`),
so that its own gin bindings decide its flags. Measured in docs/PERFORMANCE.md ("XLA code generation").
"""
import logging
import os

import gin

VECTOR_WIDTHS = (None, "auto", 128, 256, 512)
_applied = []  # the flags this process appended (a later call cannot change them)


def cpuinfo_field(name, cpuinfo="/proc/cpuinfo"):
    """The value of the first ``name`` line of /proc/cpuinfo ('model name', 'flags'); '' where
    there is none or the file cannot be read."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_has(flag, cpuinfo="/proc/cpuinfo"):
    """Whether /proc/cpuinfo lists ``flag`` (False where it cannot be read)."""
    return flag in cpuinfo_field("flags", cpuinfo).split()


def codegen_flags(vector_width="auto", concurrency_scheduler=True, avx512=None):
    """The XLA_FLAGS entries of the settings (a list of '--name=value'); ValueError for a width
    that is not one of VECTOR_WIDTHS. ``avx512``: whether the CPU has AVX-512 (None: read
    /proc/cpuinfo)."""
    if vector_width not in VECTOR_WIDTHS:
        raise ValueError(f"xla_cpu_codegen.vector_width {vector_width!r} is not one of "
                         f"{VECTOR_WIDTHS}")
    if vector_width == "auto":
        vector_width = 512 if (cpu_has("avx512f") if avx512 is None else avx512) else None
    flags = []
    if vector_width is not None:
        flags.append(f"--xla_cpu_prefer_vector_width={int(vector_width)}")
    if concurrency_scheduler:
        flags.append("--xla_cpu_enable_concurrency_optimized_scheduler=true")
    return flags


@gin.configurable
def xla_cpu_codegen(vector_width="auto", concurrency_scheduler=True):
    """Appends :func:`codegen_flags` to XLA_FLAGS, skipping any flag the user already set
    there. Returns the flags appended. Call it before the process compiles with XLA; a second
    call that would change them only warns (XLA has read its flags by then)."""
    wanted = codegen_flags(vector_width, concurrency_scheduler)
    current = os.environ.get("XLA_FLAGS", "")
    user_set = {word.split("=")[0] for word in current.split()} - {f.split("=")[0] for f in _applied}
    new = [f for f in wanted if f.split("=")[0] not in user_set]
    if _applied:
        if new != _applied:
            logging.warning("XLA code generation flags %s asked for, but this process already "
                            "uses %s (XLA reads its flags once)", new, _applied)
        return list(_applied)
    if new:
        os.environ["XLA_FLAGS"] = " ".join([current] + new).strip()
    _applied.extend(new)
    return new


def child_environ(environ=None):
    """A copy of ``environ`` (default os.environ) for a child Python process: XLA_FLAGS without
    the flags this process appended, so that the child's own ``xla_cpu_codegen`` binding
    decides them (the user's flags still pass and still win)."""
    env = dict(os.environ if environ is None else environ)
    words = [w for w in env.get("XLA_FLAGS", "").split() if w not in _applied]
    if words:
        env["XLA_FLAGS"] = " ".join(words)
    else:
        env.pop("XLA_FLAGS", None)
    return env
