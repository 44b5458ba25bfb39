"""Per-chunk localization on a Dask distributed cluster.

Each worker builds the engine once (a worker plugin) and localizes whole chunks that it
reads itself from the movie files (workers must see the same file system). The client
keeps a bounded number of chunks in flight and yields results in chunk order, so the
output is identical to a local run.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Iterator

from distributed.diagnostics.plugin import WorkerPlugin

from stormfold.config import to_dict
from stormfold.errors import UserError
from stormfold.physics.camera import Camera
from stormfold.physics.geometry import FrameGeometry

PLUGIN_NAME = "stormfold-engine"


class EnginePlugin(WorkerPlugin):
    """Dask worker plugin: loads the engine once per worker (``setup``)."""

    name = PLUGIN_NAME

    def __init__(self, model: str | None, engine: str | None, threshold: float | None,
                 options: dict, device: str | None):
        self.kwargs = {"model": model, "engine": engine, "threshold": threshold,
                       "options": options, "device": device}
        self.engine = None

    def setup(self, worker: Any) -> None:
        from stormfold.localize.registry import load_engine

        self.engine = load_engine(**self.kwargs)

    def teardown(self, worker: Any) -> None:
        self.engine = None


def _localize_chunk(movie_paths: list[str], movie_options: dict, camera: dict,
                    geometry: FrameGeometry, start: int, stop: int, batch_frames: int):
    from distributed import get_worker

    from stormfold.io.movie import open_movies
    from stormfold.localize.runner import localize_range

    engine = get_worker().plugins[PLUGIN_NAME].engine
    with open_movies(movie_paths, **movie_options) as movie:
        return localize_range(movie, engine, Camera(**camera), geometry, start, stop, batch_frames)


def run_chunks_distributed(address: str, bounds: list[tuple[int, int]], movie, spec, device,
                           camera: Camera, geometry: FrameGeometry,
                           in_flight_per_worker: int = 2) -> Iterator:
    """Yield the :class:`~stormfold.localize.runner.BatchResult` of each chunk, in order.

    Parameters
    ----------
    address : str
        Scheduler address (``tcp://host:8786``).
    bounds : list of (start, stop)
        Frame ranges of the chunks.
    movie : Movie
        The open movie (its paths and pixel size are sent to the workers).
    spec : EngineSpec
        Model (a folder or ``builtin:NAME``) or model-free engine, threshold, options,
        batch size.
    device : torch.device or str or None
        Device of the workers' engines.
    camera : Camera
        ADU → photon conversion.
    geometry : FrameGeometry
        The movie's geometry on the engine's fine grid.
    """
    from distributed import Client

    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        # Dask raises ValueError/TypeError for addresses it cannot use (a protocol it
        # lacks, security settings missing): the address is the user's, so one line.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"scheduler: cannot connect to the Dask scheduler at {address} "
                        f"({reason})") from None
    try:
        plugin = EnginePlugin(spec.model, spec.engine, spec.threshold, dict(spec.options),
                              None if device is None else str(device))
        client.register_plugin(plugin, name=PLUGIN_NAME)
        paths, movie_options = movie.open_spec()
        paths = [str(p) for p in paths]
        cam = to_dict(camera)
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        window = deque()
        todo = iter(bounds)

        def submit_next() -> bool:
            nxt = next(todo, None)
            if nxt is None:
                return False
            window.append(client.submit(_localize_chunk, paths, movie_options, cam, geometry,
                                        nxt[0], nxt[1], spec.batch_frames, pure=False))
            return True

        for _ in range(n_workers * in_flight_per_worker):
            if not submit_next():
                break
        while window:
            future = window.popleft()
            result = future.result()
            submit_next()
            yield result
    finally:
        client.close()
