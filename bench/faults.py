"""Hostile regions and hostile servers: how long until the first line, and how much memory, before
``soundmap tiles fetch`` refuses or reports them.

Each scenario runs the real CLI in its own process (so its peak RSS is its own, from ``wait4``),
and the clock runs from the start of that process to its first line of output (startup and
imports included). Worst regions: a whole-world bbox in a UTM CRS, ``--stride 1`` on a small
bbox, the contiguous USA at zoom 1 without ``--yes``. Worst servers (a loopback server that
misbehaves on purpose, :mod:`tests.fixtures.hostileserver`, with the default caps: 8 MiB body, 60 s
deadline, 60 s Retry-After): an endless fast body, an endless slow body, a 10000² PNG bomb, a
Retry-After of an hour, a redirect to another host.

    python bench/faults.py            # all (the slow body takes the full 60 s deadline)
    python bench/faults.py --quick    # without the slow body
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from _common import Figures, parser  # noqa: E402

REGIONS = {
    "world_utm": ["--bbox", "-180,-85,180,85", "--crs", "EPSG:32633"],
    "stride_1m": ["--bbox", "10,50,10.1,50.05", "--stride", "1"],
    "usa_zoom1": ["--bbox", "-125,24,-66,50", "--zoom", "1"],
}
SERVERS = ["endless-fast", "endless-slow", "bomb", "retry-after", "redirect-away"]


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, float, float, int, str]:
    """(seconds to the first output line, seconds in all, peak RSS in MB, exit code, last line) of
    one CLI run."""
    start = time.perf_counter()
    code = "import sys; from soundmap.cli.main import run; sys.exit(run(sys.argv[1:]))"
    child = subprocess.Popen([sys.executable, "-c", code, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    assert child.stdout is not None
    first = child.stdout.readline()
    first_s = time.perf_counter() - start
    rest = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    total_s = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in (first + rest).splitlines() if line.strip()]
    return first_s, total_s, usage.ru_maxrss / 1024.0, child.returncode, (lines[-1] if lines else "")


def main() -> None:
    args = parser("Time to first line and peak memory of refused regions and hostile servers").parse_args()
    from tests.fixtures.hostileserver import HostileServer, bomb_png
    from tests.fixtures.tileserver import TileServer

    figures = Figures("faults: refusals from a cheap count, hostile servers cut off")
    with tempfile.TemporaryDirectory() as tmp, TileServer() as good, HostileServer() as bad:
        bad.max_stream_s = 600.0   # the client's deadline, not the server, must end the slow body
        bomb_png()                 # made once before the clock runs (a real server sends stored bytes)
        env = {**os.environ, "SOUNDMAP_CACHE": f"{tmp}/cache", "XDG_CONFIG_HOME": f"{tmp}/xdg",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        extra = {f"bad-{name}": {"kind": "xyz", "url": bad.template(name), "min_zoom": 0, "max_zoom": 14,
                                 "family": "sentinel", "attribution": "x", "licence": "y"} for name in SERVERS}
        tiles_yaml = good.write_tiles_yaml(Path(tmp) / "tiles.yaml", extra=extra)
        common = ["--tiles-config", str(tiles_yaml)]
        for name, region in REGIONS.items():
            first_s, total_s, rss, code, last = run_cli(["tiles", "fetch", *region, "--source", "test-xyz", *common,
                                                "--workspace", f"{tmp}/{name}"], env)
            print(f"# {name}: exit {code}: {last}")
            figures.add(f"first_line_s_{name}", round(first_s, 2), "< 5")
            figures.add(f"refused_after_s_{name}", round(total_s, 2), "< 5")
            figures.add(f"peak_rss_mb_{name}", round(rss), "< 500")
        for name in SERVERS:
            if args.quick and name == "endless-slow":
                continue
            first_s, total_s, rss, code, last = run_cli(["tiles", "fetch", "--bbox", "10.0,50.0,10.02,50.01", "--zoom", "1",
                                                "--source", f"bad-{name}", *common, "--workers", "16",
                                                "--workspace", f"{tmp}/srv-{name}"], env)
            print(f"# {name}: exit {code}: {last}")
            key = name.replace("-", "_")
            figures.add(f"first_line_s_{key}", round(first_s, 2), "< 5")
            figures.add(f"done_after_s_{key}", round(total_s, 2), "< 70")
            figures.add(f"peak_rss_mb_{key}", round(rss), "< 500")
        per_request = bad.bytes_sent["endless-fast"] / max(1, bad.hits["endless-fast"]) / 2**20
        figures.add("endless_fast_mb_sent_per_request", round(per_request, 1), "< 16")
    figures.print()


if __name__ == "__main__":
    main()
