"""Many acquisitions: batch re-analysis on a Dask cluster (:mod:`rtsmlm.batch.runner`).

``plan`` (movies × time chunks, resumable) → ``worker`` (what a Dask worker runs on its chunk) →
``finalize`` (a movie's outputs and summary, through the listeners a run writes with) → ``runner`` (the
client: submission, retries, progress, the index of all movies).
"""
