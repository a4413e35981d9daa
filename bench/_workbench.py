"""Builders the benchmarks share: the loopback tile server, workspaces of a chosen size, models of
a chosen size with random weights, and small timing helpers for devices.

Benchmarks measure the real code paths; only the host (127.0.0.1) and the weights (random, same
shapes as the released models) differ from a user's run, exactly as in the tests.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the loopback tile server lives in tests/fixtures
    sys.path.insert(0, str(ROOT))

#: Latitude/longitude around which benchmark regions are laid out (central Germany).
ORIGIN_LON, ORIGIN_LAT = 10.0, 50.0
METRES_PER_DEGREE = 111_320.0


@contextmanager
def tile_server(latency_s: float = 0.0) -> Iterator[Any]:
    """A running loopback tile server (tests/fixtures/tileserver.py) with injected latency."""
    from tests.fixtures.tileserver import TileServer

    with TileServer() as server:
        server.latency_s = latency_s
        yield server


def _serve_tiles(tiles_yaml: str, latency_s: float, conn: Any) -> None:
    """Child process: run the loopback tile server, answering commands on ``conn`` until "stop"."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.fixtures.tileserver import TileServer

    with TileServer() as server:
        server.latency_s = latency_s
        server.write_tiles_yaml(tiles_yaml)
        conn.send(server.base_url)
        while True:
            command, payload = conn.recv()
            if command == "stop":
                return
            if command == "prewarm":
                server.prewarm(payload)
                conn.send("ok")


class ServerProcess:
    """The loopback tile server in a child process (as a real server is another machine: its
    work does not share the benchmark's GIL); ``tiles_yaml`` points at it."""

    def __init__(self, root: Path, latency_s: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.tiles_yaml = root / "tiles.yaml"
        self._conn, child_conn = context.Pipe(duplex=True)
        self._process = context.Process(target=_serve_tiles, args=(str(self.tiles_yaml), latency_s, child_conn),
                                        daemon=True)
        self._process.start()
        if not self._conn.poll(60):
            self.close()
            raise RuntimeError("the loopback tile server did not start within 60 s")
        self.base_url = self._conn.recv()

    def prewarm(self, tiles: list[tuple[int, int, int]]) -> None:
        """Have the server encode ``tiles`` now, so that the benchmark times the fetcher, not
        the test server's PNG encoder (a real server sends stored bytes)."""
        self._conn.send(("prewarm", [tuple(t) for t in tiles]))
        self._conn.recv()

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("stop", None))
            except (BrokenPipeError, OSError):
                pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bbox_for_cells(n_cells: int, footprint_m: float, lon: float = ORIGIN_LON, lat: float = ORIGIN_LAT) -> str:
    """A "W,S,E,N" bbox whose grid of ``footprint_m`` cells holds about ``n_cells`` cells
    (a near-square block; the grid may round up by a row or a column)."""
    cols = max(1, math.ceil(math.sqrt(n_cells)))
    rows = max(1, math.ceil(n_cells / cols))
    shrink = 0.98  # stay just inside the cell count: make_grid rounds the extent up
    dlat = rows * footprint_m * shrink / METRES_PER_DEGREE
    dlon = cols * footprint_m * shrink / (METRES_PER_DEGREE * math.cos(math.radians(lat)))
    return f"{lon:.6f},{lat:.6f},{lon + dlon:.6f},{lat + dlat:.6f}"


def loopback_source(server: Any, root: Path, name: str = "test-xyz") -> Any:
    """The loopback server as a TileSource (through a tiles.yaml, like a user's own source)."""
    from soundmap.tiles.sources import resolve_source

    root.mkdir(parents=True, exist_ok=True)
    return resolve_source(name, config_path=server.write_tiles_yaml(root / "tiles.yaml"))


def make_workspace(root: Path, source: Any, bbox: str, zooms: list[int]) -> Any:
    """A saved workspace for ``bbox`` on ``source`` (what `soundmap tiles fetch` records)."""
    from soundmap.pipeline.workspace import Workspace

    ws = Workspace.create(root / "ws", source=source, zooms=zooms, bbox=bbox)
    ws.save()
    return ws


def build_model(size: str = "full", fusion: str | None = None, device: str = "cpu", seed: int = 0) -> Any:
    """A SoundscapeModel with random weights: ``size`` "full" = ViT-B/16 image encoder (the
    released shape), "tiny" = the tests' toy ViT. ``fusion`` "full" (3 × 512, ff 2048, the
    released shape) or "tiny" (2 × 512, ff 64: full width, toy depth); default follows ``size``.
    The CLAP towers are always the tiny ones (no benchmark here measures them)."""
    import torch

    from soundmap.models.config import FusionConfig, ModelConfig, ViTConfig
    from soundmap.models.soundscape import SoundscapeModel

    torch.manual_seed(seed)
    overrides: dict[str, Any] = {}
    if size == "full":
        overrides["vit"] = ViTConfig()
    if (fusion or size) == "full":
        overrides["fusion"] = FusionConfig()
    name = f"bench-{size}-vit-{fusion or size}-fusion"
    model = SoundscapeModel(ModelConfig.tiny(name=name, **overrides), name=name, weights_sha256=f"{name}-random")
    return model.to(torch.device(device)).eval()


def synchronize(device: Any) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (no-op on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any = "cpu") -> tuple[float, Any]:
    """(seconds, result) of one call, device work included."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def timed_cpu(fn: Callable[[], Any], device: Any = "cpu") -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process over all its threads, result) of one call.

    CPU time is printed beside wall time because these machines are shared: another user's load
    stretches wall time but not (much) the CPU time our own work needs.
    """
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, result


def cpu_description() -> str:
    """CPU model and logical core count of this machine (from /proc/cpuinfo)."""
    import os

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def device_description(device: str) -> str:
    """What ran the benchmark: the GPU's name on CUDA, the CPU otherwise."""
    import torch

    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))} (host: {cpu_description()})"
    return f"{cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def quiet_progress() -> None:
    """Benchmarks print figures only: silence the library's progress bars and messages."""
    from soundmap.progress import set_quiet

    set_quiet(True)
