"""The engine that wires the stages: the threaded :mod:`.pipeline`, the :mod:`.listener` protocol and
its :mod:`.relay`, plugins (:mod:`.plugins`), the typed run summary (:mod:`.summary`) and
:mod:`.run`, which builds a run from the config."""
