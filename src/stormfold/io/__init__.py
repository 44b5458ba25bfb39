"""Input and output: movies (TIFF stacks, TIFF folders, Picasso .raw) and localization
tables (ThunderSTORM CSV, Picasso HDF5). Every file is written atomically
(:func:`stormfold.io.atomic.atomic_path`).
"""
from stormfold.io.movie import Movie, open_movie, open_movies
from stormfold.io.picasso import read_picasso_hdf5, write_picasso_hdf5
from stormfold.io.tables import convert_table, read_table, write_table
from stormfold.io.thunderstorm import (ThunderstormCsvWriter, read_thunderstorm_csv,
                                      write_thunderstorm_csv)
from stormfold.io.tiff import TiffStackWriter, write_tiff

__all__ = [
    "Movie", "open_movie", "open_movies", "write_tiff", "TiffStackWriter",
    "read_table", "write_table", "convert_table",
    "read_thunderstorm_csv", "write_thunderstorm_csv", "ThunderstormCsvWriter",
    "read_picasso_hdf5", "write_picasso_hdf5",
]
