"""Localization: the engine interface, the streaming runner, camera resolution and engine
selection (the registry)."""
from stormfold.localize.camera import CameraOverrides, resolve_camera
from stormfold.localize.engine import Engine, EngineOutput
from stormfold.localize.registry import load_engine
from stormfold.localize.runner import (LocalizeResult, localize_movie, resolve_geometry,
                                       resolve_pixel_size)

__all__ = ["Engine", "EngineOutput", "load_engine", "CameraOverrides", "LocalizeResult",
           "localize_movie", "resolve_camera", "resolve_geometry", "resolve_pixel_size"]
