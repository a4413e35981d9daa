"""The embed loop's quick start: the first render group is cut into single model batches, so the
encoder waits for one batch of rendering instead of a whole group (bench/RESULTS.md, embed)."""

from __future__ import annotations

import numpy as np

from soundmap.pipeline.embed import CellGroup, quick_start


def group(n: int, start: int = 0, last: bool = True, block_col: int = 0) -> CellGroup:
    cells = np.arange(start, start + n)
    return CellGroup(block=(slice(0, 32), slice(block_col, block_col + 32)), rows=cells // 32, cols=cells % 32,
                     last_in_block=last)


def test_first_group_is_cut_into_batches_and_the_rest_is_unchanged() -> None:
    first, second = group(20, last=False), group(64, start=20)
    out = list(quick_start(iter([first, second]), batch_size=8))
    assert [len(g.rows) for g in out] == [8, 8, 4, 64]
    assert out[-1] is second
    assert np.array_equal(np.concatenate([g.rows for g in out[:3]]), first.rows)
    assert np.array_equal(np.concatenate([g.cols for g in out[:3]]), first.cols)
    assert all(g.block == first.block for g in out[:3])
    assert [g.last_in_block for g in out[:3]] == [False, False, False]


def test_last_piece_of_a_block_closing_first_group_closes_the_block() -> None:
    out = list(quick_start([group(17, last=True)], batch_size=8))
    assert [len(g.rows) for g in out] == [8, 8, 1]
    assert [g.last_in_block for g in out] == [False, False, True]


def test_nothing_to_embed_yields_nothing() -> None:
    assert list(quick_start(iter([]), batch_size=8)) == []
