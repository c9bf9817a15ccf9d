"""gptmini.core.atomic: crash-safe writes (temp file in the folder, fsync, rename, folder fsync)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptmini.core import atomic


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    before = os.umask(0o022)
    os.umask(before)
    yield set_mask
    os.umask(before)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_file_gets_the_mode_of_a_plain_write(tmp_path, umask, mask, expected):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for write in (
        lambda p: atomic.write_text(p, "x"),
        lambda p: atomic.write_bytes(p, b"x"),
    ):
        out = tmp_path / "out.bin"
        write(out)
        assert stat.S_IMODE(out.stat().st_mode) == expected == stat.S_IMODE(plain.stat().st_mode)
        out.unlink()
    with atomic.atomic_path(tmp_path / "named.bin") as tmp:
        tmp.write_bytes(b"y")
    assert stat.S_IMODE((tmp_path / "named.bin").stat().st_mode) == expected


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic.write_bytes(target, b"old contents")

    def half_then_fail(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_bytes(target, b"new contents, longer", write=half_then_fail)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_temp_names_are_hidden_and_recognised(tmp_path):
    tmp = atomic.temp_path(tmp_path / "last.ckpt")
    assert tmp.parent == tmp_path and tmp.name.startswith(".last.ckpt.tmp-")
    assert not tmp.name.endswith(".ckpt")
    assert atomic.is_temp(tmp) and not atomic.is_temp("last.ckpt") and not atomic.is_temp(".last.ckpt")


def test_stale_temps_only_those_of_no_live_writer(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = atomic._host()
        dead_tmp = tmp_path / f".last.ckpt.tmp-{host}-{dead.pid}-0123abcd"
        live_tmp = tmp_path / f".last.ckpt.tmp-{host}-{live.pid}-0123abcd"
        other_host = tmp_path / f".last.ckpt.tmp-othernode-{dead.pid}-0123abcd"
        old_other_host = tmp_path / f".best.ckpt.tmp-othernode-{dead.pid}-4567abcd"
        for p in (dead_tmp, live_tmp, other_host, old_other_host):
            p.write_bytes(b"partial")
        old = time.time() - atomic.STALE_AFTER_S - 10
        os.utime(old_other_host, (old, old))
        (tmp_path / "last.ckpt").write_bytes(b"real")
        assert atomic.remove_stale_temps(tmp_path) == sorted([dead_tmp, old_other_host])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["last.ckpt", live_tmp.name, other_host.name]
        )
    finally:
        live.kill()
        live.wait()


def test_the_temp_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    # Without the file's fsync, a power loss after the rename can leave the new name pointing at
    # empty or partial data (the rename reaches the disk before the data does).
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    def named(path):
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(b"z")

    for write in (lambda p: atomic.write_bytes(p, b"x"), lambda p: atomic.write_text(p, "y"), named):
        events.clear()
        write(tmp_path / "out.bin")
        (moved,) = [where for what, where in events if what == "replace"]
        assert atomic.is_temp(moved) and Path(moved).parent == tmp_path
        order = [e for e in events if e[1] in (moved, str(tmp_path))]
        assert order == [("fsync", moved), ("replace", moved), ("fsync", str(tmp_path))], events
