"""``soundmap embed --precision auto|fp32``: accepted, recorded in the store; anything else is a
one-line error, exit 2, before any model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundmap.cli.main import run
from soundmap.store import open_embedding_store
from tests.fixtures.embed_workspace import (EMBED_ZOOM, fetch_test_workspace, tiny_model,  # noqa: F401
                                            tiny_model_builds)
from tests.fixtures.tileserver import TileServer


def test_embed_precision_option(tile_server: TileServer, tmp_path: Path, tiny_model,
                                capsys: pytest.CaptureFixture[str]) -> None:
    workspace = fetch_test_workspace(tile_server, tmp_path)
    args = ["embed", "--workspace", str(workspace), "--batch-size", "4", "--workers", "1", "--quiet"]
    assert run([*args, "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "--precision must be auto or fp32" in err and "Traceback" not in err
    assert not (workspace / "embeddings").exists()
    assert run([*args, "--precision", "fp32"]) == 0, capsys.readouterr().err
    assert open_embedding_store(workspace, EMBED_ZOOM).attrs["precision"] == "fp32"
    assert run([*args, "--precision", "auto"]) == 0     # CPU: auto is fp32, the store resumes
