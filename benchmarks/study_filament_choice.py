"""Calibrate's choice on filament samples (bench_calibrate's movies spread their emitters evenly).

Run: PYTHONPATH=. python benchmarks/study_filament_choice.py [CAMERA,CAMERA,…]
(or PYTHONPATH of another checkout, e.g. a ``git worktree`` of an older commit, to compare versions: the script
uses only what both have).

Per camera of ``bench_cameras.py`` (default: the 160 nm EMCCD, the 130 nm sCMOS, the 107 nm EMCCD) and density
0.3 / 1 emitters/µm²: 300 frames of 96² of 8 filaments with a structured background and a 50-frame dark movie;
``rtsmlm calibrate``'s calibration and choice (model, p threshold, brightness floor, as ``bench_calibrate
--accuracy``), run on the movie; Jaccard over all true emitters at 250 nm, and the sample calibrate fitted.
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_calibrate as bc  # noqa: E402
from bench_cameras import CAMERAS  # noqa: E402

from rtsmlm.analysis.calibrate import calibrate  # noqa: E402
from rtsmlm.analysis.metrics import evaluate  # noqa: E402
from rtsmlm.core import config as rconfig  # noqa: E402
from rtsmlm.core.camera import CameraModel  # noqa: E402
from rtsmlm.sim import Simulator  # noqa: E402

names = sys.argv[1] if len(sys.argv) > 1 else "emccd-160nm-bg20,scmos-130nm-bg100,emccd-107nm-bg200"
print(f"load average {os.getloadavg()[0]:.1f}")
for k, name in enumerate(names.split(",")):
    for dens in (0.3, 1.0):
        cam, sigma, bg, photons = CAMERAS[name]
        cfg = rconfig.from_dict({"camera": cam, "psf": {"sigma_nm": sigma},
                                 "sim": {"seed": 9500 + 10 * k + int(dens), "size": 96, "density": dens, "bg_photons": bg,
                                         "structure": "filaments", "filament_count": 8, "bg_structured": True,
                                         "photons_mean": photons, "photons_sigma": 0.4 * photons}})
        sim = Simulator(cfg)
        movie, truth = sim.movie(300)
        cal = calibrate(movie, pixel_size_nm=cfg.camera.pixel_size_nm, prior=CameraModel(), camera_model=cfg.camera.model,
                        dark=sim.dark_frames(50))
        backend = rconfig.replace(cfg.backend, name="torch", device="cpu", threads=1)
        choice, locs = bc.run_choice(cal, backend, movie, em_gain=cfg.camera.em_gain)
        j = evaluate(locs, truth, tolerance_nm=250.0)["jaccard"]
        s = getattr(cal, "sample", None)
        extra = f" sample density {s.density_per_um2:.2f} photons {s.photons_mean:.0f}" if s is not None else ""
        print(f"{name} filaments {dens}/µm²: {choice['model']} @{choice['p_threshold']:.2f} floor {choice['min_photons']:.0f}: Jaccard {j:.3f} ({len(truth)} emitters){extra}", flush=True)
