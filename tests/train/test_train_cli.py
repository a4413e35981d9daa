"""The CLI: `soundmap data split`, `soundmap train` (tiny, one step) and `soundmap evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from soundmap.cli.main import run


def test_data_split_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    rows = [{"audio": f"a{i}.wav", "latitude": 10 + (i % 40) + rng.uniform(0, 0.9),
             "longitude": 20 + rng.uniform(0, 0.9), "source": "iNat"} for i in range(40 * 30)]
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    assert run(["data", "split", str(manifest), "--seed", "3", "-q"]) == 0
    out = pd.read_csv(tmp_path / "m.split.csv")
    assert list(out.columns[:4]) == ["audio", "latitude", "longitude", "source"]   # user's columns kept
    per_cell = out.groupby("cell_id")["split"].nunique()
    assert (per_cell == 1).all()
    # 40 cells of 30: one tercile-free density class -> int(0.1 * n) cells held out per tercile
    assert set(out["split"]) == {"train", "val", "test"}
    assert "train" in capsys.readouterr().out


def test_data_split_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["data", "split", str(tmp_path / "missing.csv")]) == 2
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"x": [1]}).to_csv(bad, index=False)
    assert run(["data", "split", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "lat" in err and "Traceback" not in err


def test_train_cli_rejects_unknown_pair_weighting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["train", str(tmp_path / "m.csv"), "--name", "x", "--pair-weighting", "sum", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--pair-weighting" in err and "Traceback" not in err


def test_train_then_evaluate_cli(synthetic_data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["train", str(synthetic_data.manifest), "--name", "tiny-cli", "--size", "tiny",
                "--variant", "psm", "--max-steps", "2", "--batch-size", "2", "--freeze-clap",
                "--checkpoint-every", "1", "--log-every", "1", "--output", str(tmp_path / "run"), "--clap-files",
                str(synthetic_data.clap_files), "--device", "cpu", "--warmup", "1", "--pair-weighting", "mean", "-q"])
    assert code == 0, capsys.readouterr().err
    model_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["pair_weighting"] == "mean"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step-00000002.pt").is_file()
    log = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(log["step"]) == [1, 2]

    out_json = tmp_path / "eval.json"
    code = run(["evaluate", "--model", "tiny-cli", "--data", str(synthetic_data.manifest), "--metadata", "none",
                "--add-text", "--k", "5", "--json", str(out_json), "--clap-files", str(synthetic_data.clap_files),
                "--device", "cpu", "-q"])
    assert code == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "image->audio" in table and "audio->image" in table
    result = json.loads(out_json.read_text())
    assert result["gallery_size"] == synthetic_data.n_test          # the manifest's test rows
    assert result["metadata"] == [] and result["add_text"] is True
    assert result["image_to_audio"]["k_percent"] == pytest.approx(1.2)
    assert 1 <= result["audio_to_image"]["median_rank"] <= synthetic_data.n_test


def test_evaluate_cli_errors(synthetic_data, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["evaluate", "--model", "no-such-model", "--data", str(synthetic_data.manifest)]) == 2
    assert "not installed" in capsys.readouterr().err
