"""``soundmap embed`` through the real CLI: loopback tile server → ``soundmap tiles fetch`` →
``soundmap embed`` with an installed tiny model → the Zarr store; one-line errors, exit codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundmap.cli.main import run
from soundmap.models.soundscape import SoundscapeModel
from soundmap.store import open_embedding_store
from soundmap.tiles.sources import resolve_source
from soundmap.pipeline.workspace import Workspace, plan_zoom
from tests.fixtures.embed_workspace import (EMBED_BBOX, EMBED_ZOOM, OTHER_TINY_MODEL, TINY_MODEL,  # noqa: F401
                                            fetch_test_workspace, other_tiny_model, tiny_model,
                                            tiny_model_builds)
from tests.fixtures.tileserver import TileServer


def _embed(workspace: Path, *extra: str) -> int:
    return run(["embed", "--workspace", str(workspace), "--batch-size", "2", "--workers", "2", *extra])


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("soundmap: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_embed_fills_the_store_with_the_installed_psm_model(tile_server: TileServer, tmp_path: Path, tiny_model,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOUNDMAP_QUIET", raising=False)  # the summary line is checked below
    workspace = fetch_test_workspace(tile_server, tmp_path)
    capsys.readouterr()
    assert _embed(workspace, "--quiet") == 0
    assert capsys.readouterr().err == ""          # --quiet: no bar, no summary
    store = open_embedding_store(workspace, EMBED_ZOOM, model=tiny_model)
    assert store.valid_mask().all() and store.attrs["model"]["name"] == TINY_MODEL
    assert str(store.features.dtype) == "float16"
    assert _embed(workspace) == 0                  # a second run has nothing left to do
    assert "embedded 0 cells" in capsys.readouterr().err


def test_missing_imagery_exits_2_naming_the_fetch_and_keeps_the_rest(
        tile_server: TileServer, tmp_path: Path, tiny_model, capsys: pytest.CaptureFixture[str]) -> None:
    tiles_yaml = tile_server.write_tiles_yaml(tmp_path / "plan.yaml")
    source = resolve_source("test-xyz", config_path=tiles_yaml)
    plan = plan_zoom(Workspace.create(tmp_path / "plan", source=source, zooms=[EMBED_ZOOM], bbox=EMBED_BBOX), EMBED_ZOOM)
    workspace = fetch_test_workspace(tile_server, tmp_path, not_found={plan.tiles[0]})
    capsys.readouterr()
    assert _embed(workspace) == 2
    line = _error_line(capsys)
    store = open_embedding_store(workspace, EMBED_ZOOM)
    valid = store.valid_mask()
    missing = int((~valid).sum())
    assert 0 < missing < valid.size
    assert f"{missing} cells have no imagery" in line and "soundmap tiles fetch" in line


def test_errors_before_embedding_are_one_line_exit_2(tile_server: TileServer, tmp_path: Path,
                                                     tiny_model_builds, capsys: pytest.CaptureFixture[str]) -> None:
    assert _embed(tmp_path / "nowhere") == 2                                   # embed before fetch
    assert "soundmap tiles fetch" in _error_line(capsys)

    tiles_yaml = tile_server.write_tiles_yaml(tmp_path / "tiles.yaml")
    source = resolve_source("test-xyz", config_path=tiles_yaml)
    Workspace.create(tmp_path / "unfetched", source=source, zooms=[EMBED_ZOOM], bbox=EMBED_BBOX).save()
    assert _embed(tmp_path / "unfetched") == 2                                 # workspace, no tiles
    assert "no tiles of test-xyz are cached" in _error_line(capsys)

    workspace = fetch_test_workspace(tile_server, tmp_path)
    capsys.readouterr()
    assert _embed(workspace) == 2                                              # no model installed
    assert "soundmap models pull psm-geosound-sentinel-meta" in _error_line(capsys)
    assert _embed(workspace, "--model", "no-such-model") == 2                  # unknown model
    assert "'no-such-model' is not installed" in _error_line(capsys)
    assert _embed(workspace, "--zoom", "3") == 2                               # zoom not fetched
    assert "soundmap tiles fetch --zoom 3" in _error_line(capsys)
    assert _embed(workspace, "--zoom", "2") == 2                               # not a PSM zoom
    assert "use 1, 3 or 5" in _error_line(capsys)
    assert not (workspace / "embeddings").exists()


def test_bad_options_are_one_line_exit_2(tile_server: TileServer, tmp_path: Path, tiny_model,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    workspace = fetch_test_workspace(tile_server, tmp_path)
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _embed(workspace, "--device", "cuda") == 2
    assert "no CUDA device" in _error_line(capsys)
    assert run(["embed", "--workspace", str(workspace), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in _error_line(capsys)
    assert _embed(workspace, "--dtype", "float64") == 2
    assert "--dtype must be float16 or float32" in _error_line(capsys)
    assert _embed(workspace, "--workers", "0") == 2
    assert "--workers must be at least 1" in _error_line(capsys)
    assert not (workspace / "embeddings").exists()


def test_a_killed_embed_resumes_and_a_changed_model_needs_overwrite(
        tile_server: TileServer, tmp_path: Path, tiny_model, other_tiny_model, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    workspace = fetch_test_workspace(tile_server, tmp_path)
    total = Workspace.load(workspace).grid(EMBED_ZOOM).rows * Workspace.load(workspace).grid(EMBED_ZOOM).cols
    calls: list[int] = []
    original = SoundscapeModel.encode_image
    die_on: list[int] = [3]  # calls 1 and 2 are batches; 3 is Ctrl-C

    def counting(self, images, zoom, *args, **kwargs):
        calls.append(len(images))
        if len(calls) in die_on:
            raise KeyboardInterrupt
        return original(self, images, zoom, *args, **kwargs)

    monkeypatch.setattr(SoundscapeModel, "encode_image", counting)
    assert _embed(workspace, "--model", TINY_MODEL) == 130
    assert open_embedding_store(workspace, EMBED_ZOOM).valid_mask().sum() == 4

    die_on.clear()
    calls.clear()
    assert _embed(workspace, "--model", TINY_MODEL) == 0
    assert sum(calls) == total - 4                    # only the remaining cells were encoded

    capsys.readouterr()
    assert _embed(workspace, "--model", OTHER_TINY_MODEL) == 2
    line = _error_line(capsys)
    assert "--overwrite" in line and TINY_MODEL in line
    calls.clear()
    assert _embed(workspace, "--model", OTHER_TINY_MODEL, "--overwrite") == 0
    assert sum(calls) == total                        # every cell again
    assert open_embedding_store(workspace, EMBED_ZOOM, model=other_tiny_model).valid_mask().all()


_CRASHING_EMBED = """
import os, signal, sys
from soundmap.models.soundscape import SoundscapeModel
from soundmap.cli.main import run
original, calls = SoundscapeModel.encode_image, []
def crash_on_third_call(self, images, zoom, *args, **kwargs):
    calls.append(len(images))
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # a hard crash: no finally blocks, no flushing
    return original(self, images, zoom, *args, **kwargs)
SoundscapeModel.encode_image = crash_on_third_call
sys.exit(run(sys.argv[1:]))
"""


def test_a_hard_crash_loses_at_most_the_batch_in_flight(tile_server: TileServer, tmp_path: Path, tiny_model,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import subprocess
    import sys

    workspace = fetch_test_workspace(tile_server, tmp_path)
    total = Workspace.load(workspace).grid(EMBED_ZOOM).rows * Workspace.load(workspace).grid(EMBED_ZOOM).cols
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "SOUNDMAP_QUIET": "1"}
    done = subprocess.run([sys.executable, "-c", _CRASHING_EMBED, "embed", "--workspace", str(workspace),
                           "--batch-size", "2", "--workers", "1", "--model", TINY_MODEL, "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    store = open_embedding_store(workspace, EMBED_ZOOM)
    assert store.valid_mask().sum() == 4          # the two batches written before the crash
    assert not np.isnan(np.asarray(store.features[:])[store.valid_mask()]).any()

    calls: list[int] = []
    original = SoundscapeModel.encode_image
    monkeypatch.setattr(SoundscapeModel, "encode_image",
                        lambda self, images, zoom, *a, **k: calls.append(len(images)) or original(self, images, zoom, *a, **k))
    assert _embed(workspace, "--model", TINY_MODEL) == 0
    assert sum(calls) == total - 4
    assert open_embedding_store(workspace, EMBED_ZOOM, model=tiny_model).valid_mask().all()
