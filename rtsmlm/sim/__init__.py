"""Physics simulator of SMLM acquisitions (structures, photophysics, PSF, camera noise, drift)."""

from rtsmlm.sim.simulator import TRUTH_DTYPE, Simulator

__all__ = ["Simulator", "TRUTH_DTYPE"]
