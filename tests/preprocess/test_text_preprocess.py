"""CLAP text tokenization and locating the CLAP files (soundmap.preprocess.text)."""

from __future__ import annotations

import shutil

import pytest
import torch

from soundmap.errors import ModelError
from soundmap.preprocess.text import TextTokenizer, find_clap_files, locate_clap_files
from tests.fixtures.clap_files import build_vocab_and_merges, write_clap_files

BOS, PAD, EOS = 0, 1, 2


@pytest.fixture()
def no_clap_files(monkeypatch, tmp_path):
    """No $SOUNDMAP_CLAP_DIR, an empty soundmap cache (conftest) and an empty HF cache."""
    monkeypatch.delenv("SOUNDMAP_CLAP_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return tmp_path


def test_tokens_are_bos_words_eos_then_padding_to_128(clap_files):
    vocab, _ = build_vocab_and_merges()
    out = TextTokenizer(clap_files)(["bird song", "rain"])
    assert set(out) == {"input_ids", "attention_mask"}
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 128) and ids.dtype == mask.dtype == torch.long
    # byte-level BPE: the first word has no leading space, later words carry "Ġ"
    assert ids[0, :4].tolist() == [BOS, vocab["bird"], vocab["Ġsong"], EOS]
    assert ids[0, 4:].eq(PAD).all() and mask[0].tolist() == [1] * 4 + [0] * 124
    assert ids[1, :3].tolist() == [BOS, vocab["rain"], EOS] and mask[1].sum() == 3


def test_unknown_words_fall_back_to_byte_symbols(clap_files):
    vocab, _ = build_vocab_and_merges()
    ids = TextTokenizer(clap_files)("zq")["input_ids"][0]
    assert ids[:4].tolist() == [BOS, vocab["z"], vocab["q"], EOS]


def test_long_text_is_truncated_to_128_with_eos_last(clap_files):
    out = TextTokenizer(clap_files)(" ".join(["birds"] * 300))
    ids = out["input_ids"][0]
    assert ids.shape == (128,) and ids[0] == BOS and ids[-1] == EOS
    assert out["attention_mask"][0].eq(1).all()


def test_locate_prefers_explicit_then_env_then_cache_then_hub(no_clap_files, monkeypatch, tmp_path):
    from soundmap.paths import cache_dir

    hub_snapshot = tmp_path / "hf-home" / "hub" / "models--laion--clap-htsat-fused" / "snapshots" / "abc123"
    write_clap_files(hub_snapshot)
    (hub_snapshot.parents[1] / "refs").mkdir()
    (hub_snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert locate_clap_files() == hub_snapshot

    in_cache = write_clap_files(cache_dir() / "clap")
    assert locate_clap_files() == in_cache

    from_env = write_clap_files(tmp_path / "env-dir")
    monkeypatch.setenv("SOUNDMAP_CLAP_DIR", str(from_env))
    assert locate_clap_files() == from_env

    explicit = write_clap_files(tmp_path / "explicit")
    assert locate_clap_files(explicit) == explicit


def test_missing_files_give_one_line_model_error_naming_them_and_the_fix(no_clap_files):
    with pytest.raises(ModelError) as info:
        locate_clap_files()
    message = str(info.value)
    assert "\n" not in message
    assert "vocab.json" in message and "merges.txt" in message
    assert "soundmap models clap-files" in message and "laion/clap-htsat-fused" in message
    assert find_clap_files() is None


def test_an_explicit_directory_missing_one_file_is_named(no_clap_files, clap_files, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(clap_files, partial)
    (partial / "merges.txt").unlink()
    with pytest.raises(ModelError) as info:
        TextTokenizer(partial)
    message = str(info.value)
    assert f"(missing merges.txt in {partial})" in message


def test_corrupt_tokenizer_files_are_a_model_error(clap_files, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(clap_files, broken)
    (broken / "vocab.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable") as info:
        TextTokenizer(broken)
    assert "\n" not in str(info.value)
