"""Localization: the engine interface, the streaming runner and engine selection."""
from stormfold.localize.engine import Engine, EngineOutput
from stormfold.localize.registry import load_engine
from stormfold.localize.runner import (CameraOverrides, LocalizeResult, localize_movie,
                                       resolve_camera, resolve_pixel_size)

__all__ = ["Engine", "EngineOutput", "load_engine", "CameraOverrides", "LocalizeResult",
           "localize_movie", "resolve_camera", "resolve_pixel_size"]
