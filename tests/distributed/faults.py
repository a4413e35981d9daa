"""Test-only Dask worker plugins, imported by the worker processes (so not a test module).

:class:`DieMidBlock` makes a worker process die *inside* a block write, after the block's
features reached the store and before its states did: the worst moment for a crash. It also
journals every completed block write, so a test can count how often each block was written.
"""

from __future__ import annotations

import os
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin


class DieMidBlock(WorkerPlugin):
    """Patch ``EmbeddingStore.write_block`` in the worker: the first write of block ``target``
    (across all workers: a marker file says it happened) writes the features and then kills the
    process with ``os._exit``; every completed write appends ``r0 c0 pid`` to ``journal``."""

    name = "soundmap-die-mid-block"

    def __init__(self, target: tuple[int, int], marker: str, journal: str) -> None:
        self.target = target
        self.marker = marker
        self.journal = journal

    def setup(self, worker: object) -> None:
        from soundmap.store.embeddings import EmbeddingStore

        original = getattr(EmbeddingStore.write_block, "__wrapped_original__", EmbeddingStore.write_block)
        target, marker, journal = self.target, Path(self.marker), Path(self.journal)

        def write_block(store, rows, cols, features, state):  # type: ignore[no-untyped-def]
            if (rows.start, cols.start) == target and not marker.exists():
                marker.write_text(str(os.getpid()))
                if features is not None:
                    store.features[rows, cols, :] = features.astype(store.features.dtype, copy=False)
                os._exit(17)  # the state chunk is never written
            original(store, rows, cols, features, state)
            with open(journal, "a", encoding="utf-8") as handle:
                handle.write(f"{rows.start} {cols.start} {os.getpid()}\n")

        write_block.__wrapped_original__ = original  # type: ignore[attr-defined]
        EmbeddingStore.write_block = write_block  # type: ignore[method-assign]

    def teardown(self, worker: object) -> None:
        from soundmap.store.embeddings import EmbeddingStore

        original = getattr(EmbeddingStore.write_block, "__wrapped_original__", None)
        if original is not None:
            EmbeddingStore.write_block = original  # type: ignore[method-assign]


async def set_worker_resources(dask_worker: object, **resources: float) -> None:
    """``client.run`` target: change the Dask resources a worker declares (0 takes one away)."""
    await dask_worker.set_resources(**resources)  # type: ignore[attr-defined]
