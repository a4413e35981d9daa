"""Scale-out: embed, fetch and query on a Dask cluster (``--scheduler ADDRESS`` or ``local:N``).

The single-machine code paths do the work; this package only cuts it into chunk-aligned blocks,
ships each block to a worker, and gathers the results (see each module's docstring).
"""

from __future__ import annotations

from .cluster import SCHEDULER_ENV, SchedulerSpec, connect, parse_resources, resolve_scheduler

__all__ = ["SCHEDULER_ENV", "SchedulerSpec", "connect", "parse_resources", "resolve_scheduler"]
