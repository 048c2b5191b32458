"""The localization network, its loss, training data, training loop and checkpoints.

Modules: ``net`` (``DecodeNet`` and the output-channel constants), ``loss`` (``DecodeLoss``,
``decode_loss``). They import torch, so import them explicitly (``from rtsmlm.model.net import
DecodeNet``); this package itself stays import-light.
"""
