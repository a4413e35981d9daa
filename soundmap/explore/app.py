"""The explorer's web app (FastAPI): the page, its JSON API and its tiles.

Every path the app answers is built from validated ids, never from a client-supplied file path:
static files come from the package, uploads and exports from ``<workspace>/explore``, imagery from
the tile cache (only the tiles of the workspace's own plan). Bad input is a :class:`SoundmapError`
turned into a 4xx with the one-line message (``{"error": ...}``); the server keeps serving.

FastAPI is imported at module level (its endpoint signatures are resolved from this module's
names); the CLI imports this module only when ``soundmap explore`` runs. Endpoints are plain ``def`` functions: FastAPI runs them in its thread pool, so a slow one (a
query's text-encoder forward) never holds up the others; fusion runs in the explorer's own worker.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ..errors import SoundmapError
from .session import Explorer, NotReady, ViewRequest
from .tiles import COLORMAPS, TileIndex, coded, colour_tile, composite_tile, empty_tile, image_media_type

STATIC_DIR = Path(__file__).with_name("static")
CODES_CACHE_ENTRIES = 64
"""Colour-coded layers kept (one byte a cell each): a 24-hour sweep of a composite fits."""


def _request(payload: dict[str, Any]) -> ViewRequest:
    """A page request from query parameters or JSON (one-line errors for malformed values)."""
    from ..errors import InputError

    def integer(name: str) -> int | None:
        value = payload.get(name)
        if value in (None, "", "off"):
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be an integer, got {value!r}") from None

    def listed(name: str) -> tuple[str, ...]:
        value = payload.get(name) or ()
        if isinstance(value, str):
            value = [part for part in value.split("|")] if value else []
        return tuple(str(item) for item in value)

    latlon = payload.get("latlon")
    if isinstance(latlon, str):
        latlon = None if latlon in ("", "auto") else latlon.lower() in ("1", "true", "on", "yes")
    texts = tuple(text.strip() for text in listed("text") if text.strip())  # blank boxes are no query
    return ViewRequest(texts=texts, audios=listed("audio"), combine=str(payload.get("combine", "")).lower()
                       in ("1", "true", "on", "yes"), month=integer("month"), hour=integer("hour"),
                       audio_source=payload.get("audio_source") or None,
                       caption_source=payload.get("caption_source") or None, latlon=latlon,
                       score=payload.get("score") or None, zoom=integer("zoom"))


def create_app(explorer: Explorer) -> Any:
    """The FastAPI app serving ``explorer``."""
    app = FastAPI(title="soundmap explore", docs_url=None, redoc_url=None)
    indexes: dict[int, TileIndex] = {}
    codes_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
    codes_lock = threading.Lock()

    def codes_for(result: Any, layer: str, values: Any, scale: tuple[float, float]) -> Any:
        """The colour codes of one layer of a result on one scale, made once (a few per result)."""
        key = (result.key, layer, float(scale[0]), float(scale[1]))
        with codes_lock:
            if key in codes_cache:
                codes_cache.move_to_end(key)
                return codes_cache[key]
        codes = coded(values(), *scale)
        with codes_lock:
            codes_cache[key] = codes
            while len(codes_cache) > CODES_CACHE_ENTRIES:
                codes_cache.popitem(last=False)
        return codes

    def index_for(zoom: int) -> TileIndex:
        if zoom not in indexes:
            indexes[zoom] = TileIndex(explorer.grid(zoom))
        return indexes[zoom]

    @app.exception_handler(SoundmapError)
    def _user_error(_: Request, exc: SoundmapError) -> JSONResponse:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return JSONResponse({"error": message}, status_code=404 if "not a file the explorer" in message else 400)

    @app.exception_handler(NotReady)
    def _not_ready(_: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"pending": exc.job.as_dict()}, status_code=202)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {**explorer.info(), "colormaps": list(COLORMAPS)}

    @app.post("/api/query")
    def query(payload: dict[str, Any]) -> dict[str, Any]:
        return explorer.query(_request(payload)).as_dict()

    @app.get("/api/job/{key}")
    def job(key: str) -> dict[str, Any]:
        return explorer.job(key).as_dict()

    @app.post("/api/sweep")
    def sweep(payload: dict[str, Any]) -> dict[str, Any]:
        """Every hour of a day on one common scale: per-hour results (202 while any is fused)."""
        base = _request(payload)
        results, pending = [], []
        for hour in range(24):
            try:
                results.append(explorer.query(ViewRequest(**{**base.__dict__, "hour": hour})))
            except NotReady as waiting:
                pending.append(waiting.job.as_dict())
        if pending:
            done = sum(item["done"] for item in pending) + 0
            total = sum(item["total"] for item in pending)
            return JSONResponse({"pending": {"label": f"{len(pending)} hours", "done": done, "total": total,
                                             "finished": False, "error": None}}, status_code=202)
        queries = results[0].scores.shape[0]
        ranges = [(min(r.ranges[q][0] for r in results), max(r.ranges[q][1] for r in results))
                  for q in range(queries)]
        return {"keys": [r.key for r in results], "ranges": [list(r) for r in ranges]}

    @app.post("/api/upload")
    def upload(file: UploadFile = File(...)) -> dict[str, Any]:
        data = file.file.read(explorer.max_upload_bytes + 1)
        return explorer.save_upload(data, file.filename or "upload")

    @app.get("/api/tiles/{key}/{z}/{x}/{y}.png")
    def tile(key: str, z: int, x: int, y: int, layer: str = "score", colormap: str = "magma",
             low: float | None = None, high: float | None = None) -> Response:
        from ..errors import InputError

        if colormap not in COLORMAPS:
            raise InputError(f"unknown colour map {colormap!r}; choose one of {', '.join(COLORMAPS)}")
        if not (0 <= z <= 24 and 0 <= x < 2 ** z and 0 <= y < 2 ** z):
            raise InputError(f"tile {z}/{x}/{y} does not exist")
        result = explorer.result(key)
        index = index_for(result.zoom).get(z, x, y)
        headers = {"Cache-Control": "max-age=3600"}
        if not (index >= 0).any():
            return Response(empty_tile(), media_type="image/png", headers=headers)
        if layer == "uncertainty":
            lo, hi = result.uncertainty_range or (0.0, 1.0)
            scale = (lo if low is None else low, hi if high is None else high)
            codes = codes_for(result, "uncertainty", lambda: explorer.uncertainty(result), scale)
            body = colour_tile(codes, index, colormap)
        elif layer == "score" and result.scores.shape[0] == 3:
            body = composite_tile([codes_for(result, f"q{q}", lambda q=q: result.scores[q], result.ranges[q])
                                   for q in range(3)], index)
        elif layer == "score":
            lo, hi = result.ranges[0]
            scale = (lo if low is None else low, hi if high is None else high)
            body = colour_tile(codes_for(result, "q0", lambda: result.scores[0], scale), index, colormap)
        else:
            raise InputError(f"unknown layer {layer!r}; use score or uncertainty")
        return Response(body, media_type="image/png", headers=headers)

    @app.get("/api/basemap/{z}/{x}/{y}")
    def basemap(z: int, x: int, y: int) -> Response:
        from ..errors import InputError

        _, tiles = explorer.basemap_tiles()
        if (z, x, y) not in tiles:
            raise InputError(f"imagery tile {z}/{x}/{y} is not part of this workspace")
        data = explorer.tile_cache.get(explorer.workspace.source().cache_key, z, x, y)
        if data is None:
            raise InputError(f"imagery tile {z}/{x}/{y} is not in the tile cache; run `soundmap tiles fetch`")
        return Response(data, media_type=image_media_type(data), headers={"Cache-Control": "max-age=86400"})

    @app.get("/api/cell")
    def cell(key: str, lat: float, lon: float) -> dict[str, Any]:
        return explorer.cell(explorer.result(key), lon, lat)

    @app.get("/api/cell/{zoom}/{row}/{col}.png")
    def cell_image(zoom: int, row: int, col: int) -> Response:
        return Response(explorer.cell_image(zoom, row, col), media_type="image/png")

    @app.get("/api/export")
    def export(request: Request, kind: str = "tif") -> FileResponse:
        path = explorer.export(_request(dict(request.query_params)), kind)
        relative = path.relative_to(explorer.explore_dir).as_posix()
        return FileResponse(explorer.served_file(relative), filename=f"soundmap{path.suffix}")

    @app.get("/api/files/{relative:path}")
    def files(relative: str) -> FileResponse:
        """Files the explorer made (exports, uploads), and only those."""
        return FileResponse(explorer.served_file(relative))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve(explorer: Explorer, *, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = False,
          on_ready: Any = None) -> None:
    """Run the app with uvicorn until interrupted (prints the URL first)."""
    import uvicorn

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    config = uvicorn.Config(create_app(explorer), host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        on_ready(url)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.run()
    finally:
        explorer.close()


__all__ = ["create_app", "serve"]
