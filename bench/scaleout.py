"""Scale-out of the embed loop on a Dask LocalCluster: speed-up over one worker, scheduling overhead.

Figures (one run, side by side):

- ``speedup_<N>_workers`` = cells/s with N worker processes ÷ cells/s with 1 worker process, for
  N = 2 and 4. Every worker runs PyTorch on ONE thread, so the figure measures how the work
  scales out (as on a cluster of one-core workers), not how threads share a process. On a
  2-core machine expect ~2× at best for 2 workers, and no more for 4 (oversubscribed).
- ``scheduling_overhead`` = (wall time − Σ task time) ÷ Σ task time of the 1-worker run: what the
  client, the scheduler and result transfers add to the work itself (target < 10 %). A task's time
  is measured inside it (render + encode + Zarr write of one block).
- ``parallel_efficiency_<N>_workers`` = Σ task time ÷ (N × wall): how busy N workers were (the
  tail of the last blocks and the overhead both lower it).

Cold start (importing torch, loading the model in each worker) is excluded: every worker loads the
model before the timed run (a worker keeps it for all its tasks). Tiles are fetched beforehand, so
the timed part is render + encode + write, as in ``bench/embed.py``.

    python bench/scaleout.py --quick                  # 64 cells, ViT-B/16, 1/2/4 workers
    python bench/scaleout.py --cells 256 --chunk 8

Named ``scaleout.py`` rather than ``distributed.py``: a ``distributed.py`` in a directory on
``sys.path`` (bench/ is, for scripts run from it and for the smoke tests that import them) shadows
Dask's own ``distributed`` package, and every Dask worker process started afterwards fails.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(_BENCH))

from _common import Figures, parser  # noqa: E402
from _workbench import (bbox_for_cells, build_model, loopback_source, make_workspace,  # noqa: E402
                        quiet_progress, tile_server)

ZOOM = 1
OVERHEAD_TARGET = 0.10


def build_parser() -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=None, help="cells to embed [default: 256, --quick 64]")
    p.add_argument("--chunk", type=int, default=None,
                   help="store chunk side in cells (one task per chunk) [default: 4, i.e. 16 cells per task]")
    p.add_argument("--workers", default="1,2,4", help="worker-process counts to compare; must start with 1")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model-size", choices=("full", "tiny"), default="full",
                   help="full = ViT-B/16 (the released image encoder); tiny = the tests' toy ViT")
    return p


def start_cluster(workers: int, device: str) -> tuple[Any, Any]:
    """N worker processes of one thread each, PyTorch on one thread each (see the docstring)."""
    from distributed import Client, LocalCluster

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SOUNDMAP_QUIET": "1"}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", silence_logs=50, env=env)
    return cluster, Client(cluster)


def _warm_worker() -> None:
    """Cold start out of the timing: the imports a block task needs, PyTorch on one thread."""
    import torch

    import soundmap.distributed.embed  # noqa: F401
    import soundmap.tiles.render  # noqa: F401

    torch.set_num_threads(1)


def timed_run(client: Any, ws: Any, model_dir: Path, args: Any, cache_dir: Path) -> tuple[float, float, int]:
    """(wall s, Σ task s, cells) of one distributed embed of the whole workspace (a new store)."""
    from soundmap.distributed.cluster import ModelRef, worker_model
    from soundmap.distributed.embed import embed_region_distributed
    from soundmap.models.soundscape import read_config

    ref = ModelRef(str(model_dir), read_config(model_dir)[1], args.device)
    client.run(_warm_worker)
    client.run(worker_model, ref)  # cold start out of the timing: every worker loads the model now
    task_seconds: list[float] = []
    started = time.perf_counter()
    report = embed_region_distributed(ws, ZOOM, str(model_dir), client=client, batch_size=args.batch_size,
                                      device=args.device, overwrite=True, cache_dir=cache_dir,
                                      chunk_cells=args.chunk, progress=False,
                                      on_block=lambda result: task_seconds.append(result.seconds))
    wall = time.perf_counter() - started
    if report.missing:
        raise RuntimeError(f"{report.missing} cells had no imagery: the loopback fetch failed")
    return wall, sum(task_seconds), report.embedded


def main(argv: list[str] | None = None) -> Figures:
    args = build_parser().parse_args(argv)
    from soundmap.pipeline.workspace import fetch_workspace

    quiet_progress()
    counts = [int(n) for n in args.workers.split(",")]
    if not counts or counts[0] != 1:
        raise SystemExit("--workers must start with 1 (the speed-ups are over one worker)")
    n_cells = args.cells or (64 if args.quick else 256)
    args.chunk = args.chunk or 4
    figures = Figures(f"distributed embed on a LocalCluster ({args.model_size} ViT, {args.device}, "
                      f"{args.chunk}×{args.chunk}-cell tasks)")
    with tempfile.TemporaryDirectory(prefix="soundmap-bench-distributed-") as tmp, tile_server() as server:
        root = Path(tmp)
        cache_dir = root / "cache"
        model_dir = build_model(args.model_size).save(root / "model")
        ws = make_workspace(root, loopback_source(server, root), bbox_for_cells(n_cells, 2560.0 * ZOOM), [ZOOM])
        if fetch_workspace(ws, ws.tile_cache(cache_dir)).failed_tiles:
            raise RuntimeError("tiles failed to fetch from the loopback server")
        rates: dict[int, float] = {}
        for workers in counts:
            cluster, client = start_cluster(workers, args.device)
            try:
                wall, busy, cells = timed_run(client, ws, model_dir, args, cache_dir)
            finally:
                client.close()
                cluster.close()
            rates[workers] = cells / wall
            figures.add(f"cells_per_s_{workers}_workers", rates[workers])
            figures.add(f"parallel_efficiency_{workers}_workers", busy / (workers * wall))
            if workers == 1:
                figures.add("scheduling_overhead", (wall - busy) / busy, f"< {OVERHEAD_TARGET:g}")
    figures.add("cells", cells)
    for workers in counts[1:]:
        figures.add(f"speedup_{workers}_workers", rates[workers] / rates[1])
    figures.print()
    return figures


if __name__ == "__main__":
    main()
