"""stormfold: super-resolution single-molecule localization microscopy.

Subpackages meet through small data types: a movie (:mod:`stormfold.io.movie`)
and the localization table (:mod:`stormfold.table`).
"""
from stormfold._version import __version__

__all__ = ["__version__"]
