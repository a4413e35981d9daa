"""`--out` that is a directory, SIGTERM during a query (scratch cleaned, said in one line) and
what a SIGKILLed query left behind (swept by the next run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soundmap.cli.main import run
from tests.fixtures.query_workspace import QueryEnv

SLOW_QUERY = """
import sys, time
import soundmap.query.engine as engine
real = engine.fuse_block
def slow(*args, **kwargs):
    time.sleep(60)
    return real(*args, **kwargs)
engine.fuse_block = slow
from soundmap.cli.main import run
sys.exit(run(sys.argv[1:]))
"""


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_out_that_is_a_directory_is_named(query_env: QueryEnv, tmp_path: Path, capsys) -> None:
    out = tmp_path / "maps.tif"
    out.mkdir()
    assert run(["query", "--workspace", str(query_env.workspace), "--out", str(out), "--text", "birds"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--out {out} is a directory" in err and len(err.splitlines()) == 1


def test_sigterm_during_a_query_cleans_its_scratch_and_says_so(query_env: QueryEnv, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["query", "--workspace", str(query_env.workspace), "--out", str(out_dir / "m.tif"), "--text", "birds",
            "--no-fused-cache", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", SLOW_QUERY, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):                      # bounded: at most 60 s for the scratch folder to appear
            if any(p.name.startswith(".soundmap-query-") for p in out_dir.iterdir()) or child.poll() is not None:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "scratch files" in err
    assert _leftovers(out_dir) == [] and not (out_dir / "m.tif").exists()


def test_sigkill_leftovers_are_swept_by_the_next_query(query_env: QueryEnv, tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out_dir = tmp_path / "out"
    (out_dir / f".soundmap-query-{gone.pid}-abcd").mkdir(parents=True)
    (out_dir / f".soundmap-query-{gone.pid}-abcd" / "raw.tif").write_bytes(b"x" * 100)
    (out_dir / f".m.tif.{gone.pid}.k2j4h5g6.tmp.tif").write_bytes(b"x")
    alive = out_dir / f".soundmap-query-{os.getppid()}-live"   # a live process's scratch is left alone
    alive.mkdir()
    assert run(["query", "--workspace", str(query_env.workspace), "--out", str(out_dir / "m.tif"),
                "--text", "birds", "--quiet"]) == 0
    assert _leftovers(out_dir) == [alive.name]
