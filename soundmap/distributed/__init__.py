"""Scale-out: fetch, embed and query on a Dask cluster (``--scheduler ADDRESS`` or ``local:N``).

The single-machine code paths do the work; this package only cuts it into chunk-aligned blocks,
ships each block to a worker, and gathers the results (see each module's docstring):

- :mod:`.cluster`  ``--scheduler`` / ``$SOUNDMAP_SCHEDULER`` / ``--resources``, and the per-worker
  model cache (one model load per worker process);
- :mod:`.fetch`    tile downloads by batch under one cluster-wide request limit; the client is the
  only writer of the tile cache;
- :mod:`.embed`    one task per store chunk: render (fetching missing tiles), encode, write once;
- :mod:`.query`    one fusion task per store chunk; the client scores and writes the COG.

Where the data must live: every worker opens the workspace (its Zarr embedding store) and the
model directory at the same path as the client, so on several machines they sit on a shared POSIX
filesystem (NFS, Lustre, ...). The SQLite tile cache is read by the embed tasks: on one machine it
can stay where it is; across machines give every worker a copy at the same path (or a shared
filesystem whose locking SQLite supports), because SQLite's WAL mode needs all its users on one
host. Fetch with ``soundmap tiles fetch --scheduler`` first: there, workers only download and the
client writes the cache, so the cache never has writers on several machines.
"""

from __future__ import annotations

from .cluster import SCHEDULER_ENV, SchedulerSpec, connect, parse_resources, resolve_scheduler

__all__ = ["SCHEDULER_ENV", "SchedulerSpec", "connect", "parse_resources", "resolve_scheduler"]
