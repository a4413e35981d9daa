"""The workflows a command runs, the only layer that knows the whole data flow.

``workspace`` (a region + source + grids on disk, and fetching its tiles), ``embed`` (render and
encode a workspace's cells into its embedding store), ``query`` (query a store, map a bbox end to
end). Below it: storage (``store``), models, tiles, geometry; above it only the CLI.
Submodules are imported on use (they pull in numpy, zarr and, when a model runs, torch).
"""
