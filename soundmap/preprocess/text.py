"""Text tokenization for the CLAP text tower, and where the CLAP tokenizer/feature files live.

The reference tokenizes with ``RobertaTokenizer.from_pretrained('roberta-base')``,
``padding="max_length"``, ``truncation=True``, ``max_length=128`` (psm-reference.md, "Audio and
text encoders"). ``laion/clap-htsat-fused`` ships the same roberta-base BPE vocabulary
(``vocab.json`` + ``merges.txt``), so soundmap reads it from that repository's files. They are
looked up on disk only — never downloaded implicitly — so that encoding works offline and a
missing file is a clear one-line :class:`ModelError`, not a network hang. They are fetched on
purpose by :func:`ensure_clap_files` (the first ``soundmap models pull``) or ``soundmap models
clap-files``, into the Hugging Face cache, through :mod:`soundmap.hub`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from soundmap.errors import InputError, ModelError
from soundmap.paths import cache_dir

#: Hugging Face repository whose tokenizer and feature-extractor files soundmap uses.
CLAP_REPO_ID = "laion/clap-htsat-fused"
#: Files the text tokenizer cannot work without.
TOKENIZER_FILES: tuple[str, ...] = ("vocab.json", "merges.txt")
#: Every file worth fetching: the tokenizer's plus the audio feature extractor's settings.
CLAP_FILES: tuple[str, ...] = (
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)
#: Token sequence length of the reference (CLAP's RoBERTa).
MAX_TEXT_TOKENS = 128


def _hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment says now (see :func:`soundmap.hub.hub_settings`)."""
    from soundmap.hub import hub_settings

    return hub_settings().cache_dir


def _hub_snapshot_dirs(repo_id: str = CLAP_REPO_ID) -> list[Path]:
    """Snapshot folders of ``repo_id`` in the hub cache, the one ``refs/main`` names first.

    The cache layout (``models--org--name/{refs,snapshots}``) is read directly so that nothing
    here can touch the network.
    """
    repo_dir = _hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return []
    ordered: list[Path] = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        ordered.append(snapshots / ref.read_text().strip())
    ordered.extend(sorted(p for p in snapshots.iterdir() if p not in ordered))
    return [p for p in ordered if p.is_dir()]


def clap_file_candidates(explicit: str | os.PathLike | None = None) -> list[Path]:
    """Where the CLAP files are looked for, in order: the explicit directory alone if given;
    otherwise ``$SOUNDMAP_CLAP_DIR``, ``<cache_dir>/clap``, then the hub cache snapshots."""
    if explicit:
        return [Path(explicit).expanduser()]
    candidates: list[Path] = []
    if os.environ.get("SOUNDMAP_CLAP_DIR"):
        candidates.append(Path(os.environ["SOUNDMAP_CLAP_DIR"]).expanduser())
    candidates.append(default_clap_dir())
    candidates.extend(_hub_snapshot_dirs())
    return candidates


def default_clap_dir() -> Path:
    """``<cache_dir>/clap``: where ``download_clap_files`` puts the files."""
    return cache_dir() / "clap"


def _missing(directory: Path, names: Sequence[str]) -> list[str]:
    return [name for name in names if not (directory / name).is_file()]


def find_clap_files(
    explicit: str | os.PathLike | None = None, required: Sequence[str] = TOKENIZER_FILES
) -> Path | None:
    """The first candidate directory holding every ``required`` file, or None."""
    for directory in clap_file_candidates(explicit):
        if not _missing(directory, required):
            return directory
    return None


def locate_clap_files(
    explicit: str | os.PathLike | None = None, required: Sequence[str] = TOKENIZER_FILES
) -> Path:
    """The directory with CLAP's tokenizer files; a one-line ModelError naming the missing
    files and the command that fetches them when there is none (never downloads)."""
    found = find_clap_files(explicit, required)
    if found is not None:
        return found
    first = clap_file_candidates(explicit)[0]
    missing = ", ".join(_missing(first, required))
    target = first if explicit else default_clap_dir()
    where = f"{first}" if explicit else f"{first}, $SOUNDMAP_CLAP_DIR or the Hugging Face cache"
    command = "soundmap models clap-files" + (f" --dest {target}" if explicit else "")
    raise ModelError(
        f"CLAP tokenizer files not found (missing {missing} in {where}); fetch them with "
        f"`{command}` or `hf download {CLAP_REPO_ID} {' '.join(CLAP_FILES)} --local-dir {target}`"
    )


def download_clap_files(dest: str | os.PathLike | None = None) -> Path:
    """Fetch :data:`CLAP_FILES` (a few MB, never the weights) into the Hugging Face cache and
    return their snapshot directory; with ``dest``, also copy them there. Files already cached
    cost no request; offline, a missing file is a one-line ModelError naming it."""
    import shutil

    from soundmap.hub import hub_file

    paths = [hub_file(CLAP_REPO_ID, name) for name in CLAP_FILES]
    if dest is None:
        return paths[0].parent
    target = Path(dest).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copyfile(path, target / path.name)
    return target


def ensure_clap_files() -> Path:
    """The directory holding every CLAP file, fetching the missing ones (no request when all are
    already in ``$SOUNDMAP_CLAP_DIR``, ``<cache>/clap`` or the hub cache)."""
    found = find_clap_files(required=CLAP_FILES)
    return found if found is not None else download_clap_files()


class TextTokenizer:
    """RoBERTa BPE tokenizer of CLAP: ``padding="max_length"``, ``truncation=True``,
    ``max_length=128``, as the reference's ``clap_data_processor.tokenizer``."""

    def __init__(self, clap_files: str | os.PathLike | None = None) -> None:
        from transformers import RobertaTokenizer

        self.directory = locate_clap_files(clap_files)
        try:
            self._tokenizer = RobertaTokenizer.from_pretrained(str(self.directory), local_files_only=True)
        except Exception as exc:  # the tokenizers backend raises bare Exception on bad files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"CLAP tokenizer files in {self.directory} are unreadable ({reason}); "
                             "fetch them again with `soundmap models clap-files`") from exc

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize one text or a list → ``input_ids``, ``attention_mask`` (B × 128, int64)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        if not batch or not all(isinstance(text, str) for text in batch):
            raise InputError("text queries must be a non-empty list of strings")
        encoded = self._tokenizer(
            batch, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
        )
        return {
            "input_ids": encoded["input_ids"].to(torch.long),
            "attention_mask": encoded["attention_mask"].to(torch.long),
        }
