"""Training the localization network on simulated data: samples (:mod:`.data`), the DECODE loss
(:mod:`.loss`) and the resumable training loop (:mod:`.train`). They import torch."""
