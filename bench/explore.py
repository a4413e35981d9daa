"""``soundmap explore`` speed: a new text query's first overlay tile, heatmap tiles under load, and
server memory from 10⁴ to 10⁶ cells.

Each grid is a real workspace holding a real embedding store of random features (the layout of
``bench/query.py``: zoom 1, 512-d, 1 % of cells without imagery). The explorer runs as its own
process (the real app under uvicorn on 127.0.0.1), the benchmark talks HTTP to it, as a browser
does. The model has random weights: toy ViT (never run here: the store is given), fusion 512 wide
× 2 layers (``bench/query.py``'s tiny fusion), and the **released-size CLAP text tower**
(RoBERTa-base, 12 × 768) so that the text-encoder forward — the cost a new query cannot avoid —
has its real size.

Figures:

* ``query_first_tile_s`` — with the setting's fused embeddings cached: POST a new text query, then
  GET the first overlay tile; median of several new texts (target <= 1 s on 100,000 cells);
* ``text_forward_s`` — the bare text-encoder forward of one new text, timed inside the server
  process (same model, threads and memory) interleaved with the queries; ``query_cost_ratio`` =
  the two medians' ratio (target <= 1.5); the same in CPU seconds (``*_cpu_s``) beside them;
* ``tile_p95_ms`` — 256 px heatmap tiles of a fresh result, 8 concurrent clients (target <= 50);
* ``peak_rss_gib_<N>`` — peak RSS of the server process over startup, fusing one setting, queries
  and tiles; ``rss_growth`` = largest ÷ smallest grid (target <= 1.2).

    python bench/explore.py            # 10k, 100k (latency, tiles) and 1M cells
    python bench/explore.py --quick    # 10k and 100k cells
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, parser  # noqa: E402
from _workbench import device_description, quiet_progress  # noqa: E402
from query import REGION, synthetic_grid, write_synthetic_store  # noqa: E402

GIB = 1024 ** 3
LATENCY_CELLS = 100_000
SETTING = {"hour": 12, "month": 6}
CLIENTS = 8


def build_parser() -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default=None, help="grid sizes for the memory figure [default 10000,100000,1000000; "
                                                 "--quick 10000,100000]")
    p.add_argument("--queries", type=int, default=7, help="new texts timed (median)")
    p.add_argument("--latency-cells", type=int, default=LATENCY_CELLS, help="grid size of the latency and tile figures")
    p.add_argument("--text-tower", choices=("full", "tiny"), default="full",
                   help="CLAP text tower: released size (RoBERTa-base) or the tests' toy one (smoke runs)")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # internal: the server process
    return p


# ----------------------------------------------------------------------------- setup
def build_text_model(root: Path, text_tower: str = "full") -> Path:
    """A random-weight PSM with the released-size CLAP text tower (or the toy one), saved; returns
    its directory."""
    import torch

    from soundmap.models.clap import full_text_config
    from soundmap.models.config import ModelConfig
    from soundmap.models.soundscape import SoundscapeModel

    torch.manual_seed(0)
    name = "bench-explore-full-text"
    config = ModelConfig.tiny(name=name, text=full_text_config()) if text_tower == "full" else ModelConfig.tiny(name=name)
    model = SoundscapeModel(config, name=name,
                            weights_sha256=f"{name}-random")
    model.save(root / "model")
    return root / "model"


def load(model_dir: Path, clap: Path) -> Any:
    from soundmap.models.soundscape import load_model

    return load_model(model_dir, device="cpu", clap_files=clap)


def build_workspace(root: Path, model: Any, n_cells: int) -> Path:
    """A saved workspace over bench/query.py's region whose zoom-1 grid has ~``n_cells`` cells,
    with a synthetic embedding store made by ``model``."""
    from soundmap.store.embeddings import embedding_store_path
    from soundmap.tiles.sources import TileSource
    from soundmap.pipeline.workspace import Workspace  # may move to soundmap.pipeline

    grid = synthetic_grid(n_cells)
    source = TileSource(name="synthetic", kind="xyz", url="http://127.0.0.1:9/{z}/{x}/{y}.png",
                        attribution="synthetic features, no imagery", licence="none")
    ws = Workspace.create(root / f"ws{n_cells}", source=source, zooms=[1], bbox=REGION, stride=grid.stride)
    assert ws.grid(1) == grid, "the workspace grid must be the synthetic store's"
    ws.save()
    write_synthetic_store(embedding_store_path(ws.path, 1), model, n_cells, source_name=source.name,
                          source_key=source.cache_key)
    return Path(ws.path)


# ----------------------------------------------------------------------------- the server process
def serve_main(spec_json: str) -> None:
    """Child: the explorer app for one workspace on a free loopback port (printed first)."""
    import socket

    import uvicorn

    from soundmap.explore.app import create_app
    from soundmap.explore.session import Explorer

    quiet_progress()
    spec = json.loads(spec_json)
    explorer = Explorer(spec["workspace"], model=load(Path(spec["model"]), Path(spec["clap"])))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    print(port, flush=True)
    threading.Thread(target=_forward_on_request, args=(explorer.model,), daemon=True).start()
    uvicorn.run(create_app(explorer), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _forward_on_request(model: Any) -> None:
    """Child: for each text line on stdin, time the bare text-encoder forward of the server's own
    model (same process, threads and memory as its queries) and print wall and CPU seconds."""
    import torch

    for line in sys.stdin:
        with torch.inference_mode():
            start, cpu = time.perf_counter(), time.process_time()
            model.encode_text([line.strip()])
            wall, used = time.perf_counter() - start, time.process_time() - cpu
        print(json.dumps({"wall": wall, "cpu": used}), flush=True)


class Server:
    """The server process, with its RSS polled (psutil) from start to stop."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import psutil

        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", json.dumps(spec)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True,
                                        env={**os.environ, "SOUNDMAP_QUIET": "1"})
        self.peak = 0
        self._watched = psutil.Process(self.process.pid)
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()
        line = self.process.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"server failed: {self.process.stderr.read()[-3000:]}")
        self.url = f"http://127.0.0.1:{int(line)}/"
        self._wait_up()

    def _poll(self) -> None:
        import psutil

        try:
            while self.process.poll() is None:
                self.peak = max(self.peak, self._watched.memory_info().rss)
                time.sleep(0.02)
        except psutil.NoSuchProcess:
            return

    def _wait_up(self) -> None:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(self.url + "api/info", timeout=30).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the explorer did not answer")

    def forward(self, text: str) -> dict[str, float]:
        """The bare text-encoder forward of ``text`` in the server process (wall and CPU seconds)."""
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self) -> int:
        self.process.terminate()
        self.process.wait(timeout=30)
        self._poller.join(timeout=5)
        return self.peak


def query(client: Any, texts: list[str]) -> dict[str, Any]:
    """POST a query, polling while its setting is fused; the result."""
    while True:
        response = client.post("api/query", json={"text": texts, **SETTING})
        if response.status_code == 200:
            return response.json()
        if response.status_code != 202:
            raise RuntimeError(response.text)
        time.sleep(0.4)  # as the page polls


def region_tiles(z: int) -> list[tuple[int, int, int]]:
    """The web tiles over the benchmark region at zoom ``z``."""
    import mercantile

    west, south, east, north = (float(v) for v in REGION.split(","))
    return [(t.z, t.x, t.y) for t in mercantile.tiles(west, south, east, north, z)]


def first_tile(client: Any, key: str) -> None:
    z, x, y = region_tiles(9)[0]
    response = client.get(f"api/tiles/{key}/{z}/{x}/{y}.png")
    assert response.status_code == 200 and response.content[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- measurements
def server_cpu(server: "Server") -> float:
    times = server._watched.cpu_times()
    return times.user + times.system


def measure_latency(client: Any, runs: int, server: "Server") -> dict[str, list[float]]:
    """Wall and CPU seconds of (a new text query + its first tile) and of the bare text-encoder
    forward of another new text, both in the server process, for ``runs`` texts, interleaved
    (the machine is shared: CPU time is what other users' load stretches least)."""
    out: dict[str, list[float]] = {"query": [], "query_cpu": [], "forward": [], "forward_cpu": []}
    for i in range(runs):
        text = f"birds singing near water number {i}"
        start, cpu = time.perf_counter(), server_cpu(server)
        result = query(client, [text])
        first_tile(client, result["key"])
        out["query"].append(time.perf_counter() - start)
        out["query_cpu"].append(server_cpu(server) - cpu)
        bare = server.forward(f"traffic and people talking number {i}")
        out["forward"].append(bare["wall"])
        out["forward_cpu"].append(bare["cpu"])
    return out


def measure_tiles(url: str, client: Any, server: "Server") -> tuple[list[float], float]:
    """Per-request latency of 8 concurrent clients fetching the region's tiles of a fresh result,
    after one warm-up pass (the first view of the map computes each tile's cell lookup once), and
    the server's CPU milliseconds per tile over the concurrent phase."""
    import httpx

    tiles = region_tiles(10) + region_tiles(11)
    warm = query(client, ["wind in the trees"])
    for z, x, y in tiles:
        client.get(f"api/tiles/{warm['key']}/{z}/{x}/{y}.png")
    fresh = query(client, ["rain on a roof"])
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as own:
            for i in range(len(tiles)):
                z, x, y = tiles[(i + offset * 7) % len(tiles)]
                start = time.perf_counter()
                response = own.get(f"api/tiles/{fresh['key']}/{z}/{x}/{y}.png", params={"colormap": "viridis"})
                elapsed = time.perf_counter() - start
                assert response.status_code == 200
                with lock:
                    latencies.append(elapsed)

    cpu = server_cpu(server)
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(worker, range(CLIENTS)))
    return latencies, 1000 * (server_cpu(server) - cpu) / len(latencies)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> Figures:
    args = build_parser().parse_args(argv)
    if args.serve:
        serve_main(args.serve)
        return Figures("server")
    import httpx

    from tests.fixtures.clap_files import write_clap_files

    quiet_progress()
    sizes = [int(s) for s in (args.sizes or ("10000,100000" if args.quick else "10000,100000,1000000")).split(",")]
    if args.latency_cells not in sizes:
        sizes.append(args.latency_cells)
    sizes.sort()
    figures = Figures(f"explore, {'released-size' if args.text_tower == 'full' else 'toy'} CLAP text tower, tiny fusion (512 wide), {device_description('cpu')}")
    peaks: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="soundmap-bench-explore-") as tmp:
        root = Path(tmp)
        clap = write_clap_files(root / "clap")
        model = load(build_text_model(root, args.text_tower), clap)
        for n in sizes:
            workspace = build_workspace(root, model, n)
            server = Server({"workspace": str(workspace), "model": str(root / "model"), "clap": str(clap)})
            try:
                with httpx.Client(base_url=server.url, timeout=600) as client:
                    start = time.perf_counter()
                    prepared = query(client, ["birds singing"])  # fuses the setting into the workspace cache
                    fuse_s = time.perf_counter() - start
                    first_tile(client, prepared["key"])
                    cells = synthetic_grid(n).rows * synthetic_grid(n).cols
                    figures.add(f"cells_{n}", cells)
                    figures.add(f"fuse_setting_s_{n}", fuse_s)
                    if n == args.latency_cells:
                        timings = {k: statistics.median(v) for k, v in
                                   measure_latency(client, args.queries, server).items()}
                        figures.add("query_first_tile_s", timings["query"], "<= 1")
                        figures.add("text_forward_s", timings["forward"])
                        figures.add("query_cost_ratio", timings["query"] / timings["forward"], "<= 1.5")
                        figures.add("query_cpu_s", timings["query_cpu"])
                        figures.add("text_forward_cpu_s", timings["forward_cpu"])
                        figures.add("query_cost_ratio_cpu_time", timings["query_cpu"] / timings["forward_cpu"],
                                    "<= 1.5")
                        latencies, tile_cpu_ms = measure_tiles(server.url, client, server)
                        figures.add("tile_requests", len(latencies))
                        figures.add("tile_server_cpu_ms", tile_cpu_ms)
                        figures.add("tile_p50_ms", 1000 * statistics.median(latencies))
                        figures.add("tile_p95_ms", 1000 * p95(latencies), "<= 50")
            finally:
                peaks[n] = server.stop()
            figures.add(f"peak_rss_gib_{n}", peaks[n] / GIB)
            print(f"# {n} cells done: peak RSS {peaks[n] / GIB:.3f} GiB", flush=True)
    figures.add("rss_growth", peaks[sizes[-1]] / peaks[sizes[0]], "<= 1.2")
    figures.print()
    return figures


if __name__ == "__main__":
    main()
