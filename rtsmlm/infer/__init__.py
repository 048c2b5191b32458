"""Inference: backends that run the network (torch, ONNX Runtime, TensorRT), export, and
post-processing of the output maps into localizations (``postprocess.Postprocessor``).

Modules import torch or the backend libraries themselves; this package stays import-light.
"""
