"""What a run leaves behind or sends out: the localization and ground-truth files (:mod:`.files`) and
the ZeroMQ stream (:mod:`.stream`). File formats themselves live in :mod:`rtsmlm.io`."""
