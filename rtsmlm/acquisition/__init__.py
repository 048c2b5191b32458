"""Acquisition: frame sources (the simulated camera, file replay, Micro-Manager) and the ring buffer
they fill.

* :mod:`.source` — the :class:`Source` protocol, its optional capabilities, :class:`Frame`.
* :mod:`.registry` — :func:`open_source`: the source a config's ``source.kind`` names.
* :mod:`.ring` — the preallocated multi-reader ring buffer between the producer and its readers.
"""
