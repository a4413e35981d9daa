"""``soundmap explore``: an interactive soundscape map in the browser, over a workspace's embeddings.

:mod:`.session` holds the state (model, stores, prepared metadata settings, cached results),
:mod:`.tiles` turns score grids into web-map tiles, :mod:`.app` is the FastAPI app and
``static/`` the page (Leaflet vendored with its licence, so it works offline).
"""
