"""Query scaling on synthetic embedding grids of up to 1,000,000 cells.

Each grid is a real embedding store (Zarr v3, the embed pipeline's layout, 512-d float16
features, 1 % of cells without imagery) filled with random features; queries run through the real
engine (:func:`soundmap.query.engine.run_query`: fusion + CSD + GeoTIFF/COG writing) with a PSM
model of random weights whose fusion transformer is the released width (512) and either the toy
depth (``--fusion tiny``: 2 layers, ff 64 — default, so 10⁶ cells fit in minutes on CPU) or the
released one (``--fusion full``: 3 layers, ff 2048 — ~3× slower per cell).

Figures:

* ``cells_per_s_<N>`` — whole-query throughput (fusion + CSD + COG) per grid size;
* ``peak_rss_gib_<N>`` — peak RSS of a fresh process running that query (psutil, polled, and the
  kernel's high-water mark), target < 2 GiB; ``rss_growth`` = peak at the largest ÷ smallest
  size, target <= 1.2 (flat: memory must not grow with the region);
* ``rgb_cost_ratio`` — a 3-query RGB composite ÷ a single query on the same grid (target <= 1.2:
  the fusion is shared by the three queries);
* ``series_cost_ratio`` — a 24-hour series ÷ one hour (≈ 24: fusion is per metadata setting), and
  ``series_per_hour_cost_ratio`` = that ÷ 24 (target <= 1.1: linear, no overhead per step).

The fused-embedding cache is off in every run (it would turn repeated runs into cache reads).

    python bench/query.py                    # 100k and 1M cells, tiny fusion
    python bench/query.py --quick            # 20k and 100k cells
    python bench/query.py --fusion full --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, parser  # noqa: E402
from _workbench import build_model, device_description, quiet_progress, timed  # noqa: E402

GIB = 1024 ** 3
ZOOM = 1
FEATURE_DIM = 512
#: Region of the synthetic grids (a ~72 km square near Fulda); the stride sets the cell count.
REGION = "10.0,50.0,11.0,50.65"
REGION_SIDE_M = 72_000.0
NO_IMAGERY_FRACTION = 0.01
TEXT = "birds singing"


def build_parser() -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None,
                   help="comma-separated grid sizes in cells [default: 100000,1000000; --quick 20000,100000]")
    p.add_argument("--ratio-cells", type=int, default=None,
                   help="grid size for the RGB and 24-hour ratios [default: 20000; --quick 2000]")
    p.add_argument("--hours", type=int, default=24, help="steps of the time series")
    p.add_argument("--build-full-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--full-model-cells", type=int, default=None,
                   help="cells of the released-size-model text query (ViT-B/16, CLAP towers, 3-layer fusion; "
                        "loaded as `soundmap query` loads it) [default: the largest of --sizes; 0 skips]")
    p.add_argument("--fusion", choices=("tiny", "full"), default="tiny", help="fusion transformer depth")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one measured subprocess
    return p


# ----------------------------------------------------------------------------- synthetic stores

def synthetic_grid(n_cells: int) -> Any:
    """A zoom-1 Sentinel grid over :data:`REGION` with about ``n_cells`` cells (stride chosen)."""
    from soundmap.geo.bbox import parse_bbox
    from soundmap.geo.grid import make_grid

    stride = REGION_SIDE_M / math.sqrt(n_cells)
    return make_grid(parse_bbox(REGION), "sentinel", ZOOM, stride=max(1.0, stride))


def write_synthetic_store(path: Path, model: Any, n_cells: int, seed: int = 0, *, source_name: str = "synthetic",
                          source_key: str = "synthetic") -> Any:
    """An embedding store of the pipeline's layout holding random features, block by block
    (``source_*``: the imagery a workspace holding it records, which a query checks)."""
    import numpy as np

    from soundmap.store.embeddings import CellState, EmbeddingStore, StoreIdentity

    grid = synthetic_grid(n_cells)
    identity = StoreIdentity(model_name=model.name, weights_sha256=model.weights_sha256,
                             preprocess_version=model.preprocess_version, model_family=model.family,
                             source_name=source_name, source_key=source_key, zoom=ZOOM, grid=grid.to_dict())
    store = EmbeddingStore.create(path, identity, rows=grid.rows, cols=grid.cols, feature_dim=FEATURE_DIM)
    rng = np.random.default_rng(seed)
    for rows, cols in store.blocks():
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        features = rng.standard_normal((*shape, FEATURE_DIM), dtype=np.float32)
        state = np.where(rng.random(shape) < NO_IMAGERY_FRACTION, CellState.NO_IMAGERY, CellState.EMBEDDED)
        store.write_block(rows, cols, features, state)
    return store


# ----------------------------------------------------------------------------- one query

def query_options(out: Path, *, texts: tuple[str, ...] = (TEXT,), hours: tuple[str, ...] = ("12",),
                  rgb: bool = False) -> Any:
    from soundmap.query.plan import QueryOptions

    return QueryOptions(out=out, texts=texts, hours=hours, months=("6",), rgb=rgb,
                        normalize="minmax" if rgb else None)


def run_one(model: Any, store_path: Path, options: Any) -> Any:
    """One query through the engine, without the fused cache."""
    from soundmap.query.engine import run_query
    from soundmap.query.plan import make_plan
    from soundmap.store.embeddings import EmbeddingStore

    store = EmbeddingStore.open(store_path)
    return run_query(make_plan(options, model), model=model, store=store, cache_root=None)


def load_saved_model(model_dir: str, clap_dir: str, device: str, parts: list[str] | None = None) -> Any:
    """The saved model, whole, or only ``parts`` (as ``soundmap query`` loads it: a text query
    takes fusion + the text branch, see soundmap.models.partial)."""
    if parts:
        from soundmap.models.partial import load_model_parts

        return load_model_parts(model_dir, parts, device=device, clap_files=clap_dir)
    from soundmap.models.soundscape import load_model

    return load_model(model_dir, device=device, clap_files=clap_dir)


def child_main(spec_json: str) -> None:
    """Subprocess: one query at one size; prints a JSON line with its timings and RSS peak."""
    quiet_progress()
    spec = json.loads(spec_json)
    model = load_saved_model(spec["model"], spec["clap"], spec["device"], spec.get("parts"))
    options = query_options(Path(spec["out"]))
    seconds, result = timed(lambda: run_one(model, Path(spec["store"]), options), spec["device"])
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    print(json.dumps({"seconds": seconds, "fused_cells": result.fused_cells, "maxrss": maxrss_kib * 1024}))


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`child_main` in a fresh interpreter, polling its RSS with psutil meanwhile."""
    import psutil

    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "SOUNDMAP_QUIET": "1"})
    peak = [0]

    def poll() -> None:
        try:
            watched = psutil.Process(process.pid)
            while process.poll() is None:
                peak[0] = max(peak[0], watched.memory_info().rss)
                time.sleep(0.02)
        except psutil.NoSuchProcess:
            return

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout, stderr = process.communicate()
    poller.join()
    if process.returncode != 0:
        raise RuntimeError(f"query subprocess failed ({process.returncode}):\n{stderr[-3000:]}")
    answer = json.loads(stdout.strip().splitlines()[-1])
    answer["peak_rss"] = max(peak[0], answer["maxrss"])
    return answer


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> Figures:
    args = build_parser().parse_args(argv)
    if args.child:
        child_main(args.child)
        return Figures("child")
    if args.build_full_model:
        _save_full_model(args.build_full_model)
        return Figures("child")
    import soundmap.query.engine  # noqa: F401  (import errors fail here, not after a long run)
    import soundmap.query.plan  # noqa: F401
    from soundmap.pipeline.models import resolve_device
    from tests.fixtures.clap_files import write_clap_files

    quiet_progress()
    device = str(resolve_device(args.device))
    sizes = [int(s) for s in (args.sizes or ("20000,100000" if args.quick else "100000,1000000")).split(",")]
    ratio_cells = args.ratio_cells or (2000 if args.quick else 20000)
    figures = Figures(f"query scaling, {args.fusion} fusion (512 wide), {device_description(device)}")
    with tempfile.TemporaryDirectory(prefix="soundmap-bench-query-") as tmp:
        root = Path(tmp)
        clap = write_clap_files(root / "clap")
        model = build_model("tiny", fusion=args.fusion, device=device)
        model.save(root / "model")
        model.clap_files = clap
        full_cells = max(sizes) if args.full_model_cells is None else args.full_model_cells
        if full_cells:
            full_model_rss(figures, root, clap, device, full_cells)
        for n in sizes:
            store = write_synthetic_store(root / f"store{n}.zarr", model, n)
            cells = store.shape[0] * store.shape[1]
            answer = run_child({"model": str(root / "model"), "clap": str(clap), "device": device,
                                "store": str(store.path), "out": str(root / f"map{n}.tif")})
            figures.add(f"cells_{n}", cells)
            figures.add(f"cells_per_s_{n}", cells / answer["seconds"])
            figures.add(f"peak_rss_gib_{n}", answer["peak_rss"] / GIB, "< 2")
            figures.add(f"_peak_rss_{n}", answer["peak_rss"])
            print(f"# {cells} cells: {answer['seconds']:.1f} s, peak RSS {answer['peak_rss'] / GIB:.3f} GiB",
                  flush=True)  # kept even if a later step fails
        store = write_synthetic_store(root / "ratio.zarr", model, ratio_cells)
        run_one(model, store.path, query_options(root / "warm.tif"))  # warm-up: first-call costs
        single_s, _ = timed(lambda: run_one(model, store.path, query_options(root / "one.tif")), device)
        rgb_s, _ = timed(lambda: run_one(model, store.path, query_options(
            root / "rgb.tif", texts=(TEXT, "traffic", "rain"), rgb=True)), device)
        single_again_s, _ = timed(lambda: run_one(model, store.path, query_options(root / "one.tif")), device)
        series_s, _ = timed(lambda: run_one(model, store.path, query_options(
            root / "series.tif", hours=(f"0-{args.hours - 1}",))), device)
        single_after_s, _ = timed(lambda: run_one(model, store.path, query_options(root / "one.tif")), device)
    rss = {n: figures_value(figures, f"_peak_rss_{n}") for n in sizes}
    figures.rows = [row for row in figures.rows if not row[0].startswith("_")]
    if len(sizes) > 1:
        figures.add("rss_growth", rss[sizes[-1]] / rss[sizes[0]], "<= 1.2")
    single_rgb = (single_s + single_again_s) / 2  # a single query timed on both sides of the RGB run
    single_series = (single_again_s + single_after_s) / 2
    figures.add("ratio_cells", store.shape[0] * store.shape[1])
    figures.add("single_query_s", single_rgb)
    figures.add("rgb_cost_ratio", rgb_s / single_rgb, "<= 1.2")
    figures.add("series_cost_ratio", series_s / single_series)
    figures.add("series_per_hour_cost_ratio", series_s / args.hours / single_series, "<= 1.1")
    figures.print()
    return figures


def _save_full_model(spec_json: str) -> None:
    """Child process: the released-size model with random weights, saved, and its synthetic store."""
    import torch

    spec = json.loads(spec_json)
    root, n_cells = spec["root"], int(spec["cells"])
    from soundmap.models.config import ModelConfig
    from soundmap.models.soundscape import SoundscapeModel

    torch.manual_seed(0)
    full = SoundscapeModel(ModelConfig.full("psm", "sentinel", name="bench-released-size"),
                           name="bench-released-size", weights_sha256="bench-released-size-random")
    full.save(Path(root) / "full-model")
    write_synthetic_store(Path(root) / "store-full.zarr", full, n_cells)


def full_model_rss(figures: Figures, root: Path, clap: Path, device: str, n_cells: int) -> None:
    """Peak RSS of a text query with the released-size model (random weights), loaded as the
    query command loads it (text branch + fusion + heads), beside the same query with the whole
    model loaded."""
    from soundmap.models.partial import query_parts

    # built and saved in another process: a child forked from a parent holding the model would
    # start with the parent's RSS as its high-water mark (Linux keeps ru_maxrss across fork/exec)
    built = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--build-full-model",
                            json.dumps({"root": str(root), "cells": n_cells})], capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"building the released-size model failed ({built.returncode}):\n{built.stderr[-3000:]}")
    from soundmap.store.embeddings import EmbeddingStore

    store = EmbeddingStore.open(root / "store-full.zarr")
    cells = store.shape[0] * store.shape[1]
    spec = {"model": str(root / "full-model"), "clap": str(clap), "device": device, "store": str(store.path),
            "out": str(root / "full.tif")}
    parts = run_child({**spec, "parts": list(query_parts([TEXT], []))})
    whole = run_child(spec)
    figures.add("full_model_query_cells", cells)
    figures.add("query_peak_rss_gib_full_model_whole_load", whole["peak_rss"] / GIB)
    figures.add("query_peak_rss_gib_full_model", parts["peak_rss"] / GIB, "<= 1.5")
    print(f"# released-size model, {cells} cells: text parts {parts['seconds']:.1f} s / whole {whole['seconds']:.1f} s",
          flush=True)


def figures_value(figures: Figures, name: str) -> float:
    return next(value for row_name, value, _ in figures.rows if row_name == name)


if __name__ == "__main__":
    main()
