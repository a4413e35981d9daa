"""``soundmap doctor`` finds every kind of damage planted on purpose, says what --repair would
do, and ``--repair`` repairs it (or says what to do for what it cannot repair)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from soundmap.cli.main import run
from soundmap.store import open_embedding_store
from soundmap.pipeline.workspace import Workspace
from tests.fixtures.query_workspace import QueryEnv
from tests.fixtures.tilegen import tile_png


def _doctor(capsys, *args: object) -> tuple[int, list[str]]:
    code = run(["doctor", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out.splitlines() + captured.err.splitlines()


def test_a_healthy_workspace_passes(query_env: QueryEnv, capsys) -> None:
    code, lines = _doctor(capsys, "--workspace", query_env.workspace)
    assert code == 0 and any(line.endswith("0 problem(s), 0 repaired") for line in lines)


def test_doctor_reports_then_repairs_store_fused_and_tile_damage(query_env: QueryEnv, tmp_path: Path, capsys) -> None:
    ws = Workspace.load(query_env.workspace)
    assert run(["query", "--workspace", str(ws.path), "--out", str(tmp_path / "a.tif"), "--text", "birds", "-q"]) == 0
    store = open_embedding_store(ws, 1)
    chunk = Path(store.chunk_file("features", slice(0, 32), slice(0, 32)))
    chunk.write_bytes(chunk.read_bytes()[:-5])                                     # truncated store chunk
    fused_chunk = next(p for p in (ws.path / "fused").rglob("mu.zarr/c/*/*/*") if p.is_file())
    fused_chunk.write_bytes(b"\0" * 16)                                            # damaged fused block
    cache = ws.tile_cache()
    cache.put_many(ws.source().cache_key, [((14, x, 5000), tile_png(14, x, 5000)) for x in range(3)])
    cache.close()
    with sqlite3.connect(cache.path) as conn:                                      # a tile that no longer decodes
        conn.execute("UPDATE tiles SET data=? WHERE x=1", (b"GIF89a junk",))
    code, lines = _doctor(capsys, "--workspace", ws.path)
    assert code == 2
    found = [line for line in lines if "would repair" in line]
    assert any(line.startswith(f"embeddings: {chunk}") for line in found)
    assert any(line.startswith("fused cache:") for line in found)
    assert any(line.startswith("tile cache:") and "not a decodable image" in line for line in found)
    assert lines[-1].startswith("soundmap: error: 3 problem(s) left; run `soundmap doctor --repair`")
    code, lines = _doctor(capsys, "--workspace", ws.path, "--repair")
    assert code == 0 and any(line.endswith("3 problem(s), 3 repaired") for line in lines)
    code, lines = _doctor(capsys, "--workspace", ws.path)
    assert code == 0


def test_a_malformed_tile_cache_is_moved_aside(query_env: QueryEnv, capsys) -> None:
    ws = Workspace.load(query_env.workspace)
    path = ws.tile_cache().path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"SQLite format 3\0" + b"\xff" * 8000)
    code, lines = _doctor(capsys, "--workspace", ws.path)
    assert code == 2 and any(line.startswith(f"tile cache: {path}: the database is damaged") for line in lines)
    code, lines = _doctor(capsys, "--workspace", ws.path, "--repair")
    assert code == 0 and not path.exists() and list(path.parent.glob(f"{path.name}.damaged-*"))


def test_a_damaged_model_is_reported_with_what_to_do(query_env: QueryEnv, capsys) -> None:
    from soundmap.paths import model_dir

    installed = next(p for p in model_dir().iterdir() if (p / "config.json").is_file())
    target = model_dir() / f"{installed.name}-copy"
    shutil.copytree(installed.resolve(), target)
    weights = target / "model.safetensors"
    state = load_file(str(weights))
    key = next(iter(state))
    state[key] = torch.full_like(state[key], float("nan")) if state[key].is_floating_point() else state[key]
    save_file(state, str(weights))
    code, lines = _doctor(capsys, "--workspace", query_env.workspace, "--repair")
    assert code == 2
    assert any(line.startswith(f"model: {target.name}: ") and "to fix: re-install" in line for line in lines)
