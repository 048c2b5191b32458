"""Analysis of the localization stream: drift estimation (:mod:`.drift`), rendering (:mod:`.render`),
Fourier ring correlation (:mod:`.frc`), accuracy metrics against ground truth (:mod:`.metrics`,
:mod:`.evaluate`) and the live render listener (:mod:`.live_render`)."""
