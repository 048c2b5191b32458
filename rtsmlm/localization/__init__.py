"""Localization: the network (:mod:`.net`), its checkpoints (:mod:`.checkpoint`), the backends that run
it (:mod:`.backends`: torch, ONNX Runtime, TensorRT), tiling, post-processing of the output maps into
localizations, and the streaming :class:`~.localizer.StreamingLocalizer` the engine drives.

Modules import torch or the backend libraries themselves; this package stays import-light.
"""
