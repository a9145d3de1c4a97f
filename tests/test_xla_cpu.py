"""XLA:CPU code generation flags (asr_tf/run/xla_cpu.py)."""
import logging

import pytest

from asr_tf.run import xla_cpu

WIDTH = "--xla_cpu_prefer_vector_width"
SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=true"


def test_codegen_flags_follow_the_settings_and_the_cpu():
    assert xla_cpu.codegen_flags("auto", True, avx512=True) == [f"{WIDTH}=512", SCHEDULER]
    assert xla_cpu.codegen_flags("auto", True, avx512=False) == [SCHEDULER]  # XLA's default
    assert xla_cpu.codegen_flags(256, False, avx512=True) == [f"{WIDTH}=256"]
    assert xla_cpu.codegen_flags(None, False) == []
    with pytest.raises(ValueError, match="vector_width 300"):
        xla_cpu.codegen_flags(300)


def test_cpu_has_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name : EPYC avx512f\nflags : fpu sse2 avx2 avx512f avx512_bf16\n")
    assert xla_cpu.cpu_has("avx512f", str(info)) and xla_cpu.cpu_has("avx2", str(info))
    assert not xla_cpu.cpu_has("avx512", str(info))  # whole words of the flags line only
    assert not xla_cpu.cpu_has("avx512f", str(tmp_path / "missing"))
    assert xla_cpu.cpuinfo_field("model name", str(info)) == "EPYC avx512f"
    assert xla_cpu.cpuinfo_field("bugs", str(info)) == ""
    assert xla_cpu.cpuinfo_field("flags", str(tmp_path / "missing")) == ""


@pytest.fixture
def fresh(monkeypatch):
    """A process that has applied no flags yet."""
    monkeypatch.setattr(xla_cpu, "_applied", [])
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    return monkeypatch


def test_flags_are_appended_once_and_the_users_win(fresh, caplog):
    fresh.setenv("XLA_FLAGS", f"--xla_dump_to=/tmp/x {WIDTH}=128")
    applied = xla_cpu.xla_cpu_codegen(512, True)
    assert applied == [SCHEDULER]  # the user's width stays
    assert xla_cpu.os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {WIDTH}=128 {SCHEDULER}"
    with caplog.at_level(logging.WARNING):
        assert xla_cpu.xla_cpu_codegen(512, True) == [SCHEDULER]  # the same: nothing added
        assert not caplog.records
        assert xla_cpu.xla_cpu_codegen(None, False) == [SCHEDULER]  # too late to change
    assert "XLA reads its flags once" in caplog.text
    assert xla_cpu.os.environ["XLA_FLAGS"].count(SCHEDULER) == 1


def test_nothing_asked_leaves_xla_flags_alone(fresh):
    assert xla_cpu.xla_cpu_codegen(None, False) == []
    assert "XLA_FLAGS" not in xla_cpu.os.environ


def test_a_child_process_gets_the_users_flags_back(fresh):
    fresh.setenv("XLA_FLAGS", f"--xla_dump_to=/tmp/x {WIDTH}=128")
    assert xla_cpu.xla_cpu_codegen(512, True) == [SCHEDULER]
    env = xla_cpu.child_environ()
    assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {WIDTH}=128"  # the user's, not ours
    assert SCHEDULER in xla_cpu.os.environ["XLA_FLAGS"]  # this process keeps its own
    assert env["PATH"] == xla_cpu.os.environ["PATH"]
    fresh.delenv("XLA_FLAGS")
    fresh.setattr(xla_cpu, "_applied", [])
    xla_cpu.xla_cpu_codegen(None, True)
    assert "XLA_FLAGS" not in xla_cpu.child_environ()  # only ours: nothing left to pass
