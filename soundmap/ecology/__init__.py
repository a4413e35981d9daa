"""Ecology views: land-cover Biophony/Geophony/Anthrophony composites and sound–image alignment.

* :mod:`.bga` — class → BGA weight tables (YAML) and the pure per-cell math;
* :mod:`.landcover` — land-cover sources (ESA WorldCover over HTTP range requests, cached; local
  rasters) and the area-weighted reprojection onto cell footprints;
* :mod:`.composite` — ``soundmap bga``: composite GeoTIFFs and the comparison with learned maps;
* :mod:`.stats` — Pearson/Spearman and the Mantel permutation test;
* :mod:`.align` — ``soundmap align``: audio vs imagery / land-cover similarity of recordings.
"""
