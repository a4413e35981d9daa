"""bench/faults.py runs end to end (quick: without the 60 s slow body) and prints its figures."""

from __future__ import annotations

import sys

import pytest

from tests.bench.test_bench_smoke import figure_lines, load_bench


def test_faults_bench_prints_its_figures(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["faults.py", "--quick"])
    monkeypatch.setattr(sys, "path", list(sys.path))       # the script puts bench/ on the path
    before = set(sys.modules)
    try:
        load_bench("faults").main()
    finally:
        for name in set(sys.modules) - before:             # bench/_common must not stay importable
            if name in ("_common", "bench_faults"):
                del sys.modules[name]
    figures = figure_lines(capsys.readouterr().out)
    assert {"peak_rss_mb_world_utm", "refused_after_s_usa_zoom1", "peak_rss_mb_bomb",
            "endless_fast_mb_sent_per_request"} <= set(figures)
