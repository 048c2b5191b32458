"""Readers and writers of movies and localization files.

Movies (:mod:`rtsmlm.io.movies`): :func:`open_movie` reads TIFF / OME-TIFF / ImageJ, Picasso ``.raw``
and ``.dax`` movies; :func:`write_tiff_movie` writes a calibrated ImageJ TIFF; :class:`RawMovieWriter`
and :class:`TiffMovieWriter` record a live run's raw frames, crash-safe up to the last flush.
"""

from rtsmlm.io.movies import (
    MovieReader,
    MovieWriter,
    RawMovieWriter,
    TiffMovieWriter,
    open_movie,
    open_movie_writer,
    write_tiff_movie,
)

__all__ = [
    "MovieReader",
    "MovieWriter",
    "RawMovieWriter",
    "TiffMovieWriter",
    "open_movie",
    "open_movie_writer",
    "write_tiff_movie",
]
