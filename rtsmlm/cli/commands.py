"""The ``rtsmlm`` command. Each subcommand imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import rtsmlm
from rtsmlm.core import config as config_mod


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="config.toml to load (default: built-in defaults)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one config key, e.g. --set camera.pixel_size_nm=160 (repeatable)")


def _load_config(args, extra: list[str] | None = None) -> config_mod.Config:
    return config_mod.load(args.config, [*(extra or []), *args.set])


# ---------------------------------------------------------------------------------------- simulate

def _cmd_simulate(args) -> int:
    from rtsmlm.cli.simulate import simulate_to_dir

    # Only the flags given override the config (its [sim] section, or the defaults).
    flags = {"frames": args.frames, "size": args.size, "density": args.density, "seed": args.seed,
             "structure": args.structure}
    extra = [f"sim.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    if args.drift:
        extra.append("sim.drift.enabled=true")
    if args.camera == "scmos":
        from rtsmlm.sim.camera import SCMOS_PRESET

        extra += [f"camera.{k}={json.dumps(v)}" for k, v in SCMOS_PRESET.items()]
    elif args.camera == "emccd":
        extra.append('camera.model="emccd"')
    cfg = _load_config(args, extra)
    out = simulate_to_dir(cfg, Path(args.out), overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------- train

def _cmd_calibrate(args) -> int:
    from rtsmlm.cli.calibrate import calibrate_main

    return calibrate_main(args, _load_config(args))


def _cmd_train(args) -> int:
    from rtsmlm.training.train import train

    extra = [f"train.steps={args.steps}"] if args.steps else []
    if args.device:
        extra.append(f'train.device="{args.device}"')
    cfg = _load_config(args, extra)
    prefix = train(cfg, args.out, resume=not args.restart, progress=not args.quiet, init=args.init)
    print(f"checkpoint: {prefix}.safetensors / {prefix}.json")
    return 0


def _cmd_choose_threshold(args) -> int:
    from rtsmlm.localization.checkpoint import load_meta, resolve
    from rtsmlm.training.train import store_model_threshold

    meta = load_meta(args.model)  # one sentence if it is not a checkpoint
    if args.config:
        cfg = config_mod.load(args.config)
    else:
        # The metadata holds the training ranges, not a sample: simulate the middle of them.
        t = meta.train
        sim = {"bg_photons": (t["bg_min"] + t["bg_max"]) / 2, "photons_mean": (t["photons_min"] + t["photons_max"]) / 2,
               "photons_sigma": (t["photons_max"] - t["photons_min"]) / 4,
               "density": max(0.1, (t["density_min"] + t["density_max"]) / 2)}
        cfg = config_mod.from_dict({"train": t, "camera": meta.camera, "psf": meta.psf, "sim": sim},
                                   f"{args.model} metadata")
    store_model_threshold(resolve(args.model), cfg, frames=args.frames, progress=not args.quiet)
    return 0


# ---------------------------------------------------------------------------------------- evaluate

def _cmd_evaluate(args) -> int:
    from rtsmlm.analysis.evaluate import evaluate_files

    # CRLB parameters default to the config's camera, PSF and simulated background.
    cfg = _load_config(args)
    cam = cfg.camera
    excess = args.excess_noise
    if excess is None:
        excess = 2.0 if cam.model == "emccd" and cam.em_gain > 1 else 1.0
    result = evaluate_files(args.locs, args.truth,
                            pixel_size_nm=args.pixel_size or cam.pixel_size_nm,
                            tolerance_nm=args.tolerance_nm, sigma_nm=args.psf_sigma_nm or cfg.psf.sigma_nm,
                            bg=args.bg if args.bg is not None else cfg.sim.bg_photons,
                            excess_noise=excess, plot_path=args.plot, use_z=args.use_z)
    print(json.dumps(result, indent=None if args.compact else 2, default=float))
    return 0


# ------------------------------------------------------------------------------------- run / live

_RUN_FLAGS = {  # argparse destination → config key; a value given on the command line overrides it
    "max_frames": "source.max_frames", "fps": "source.fps", "out": "output.dir",
    "model": "model.checkpoint", "backend": "backend.name", "mm_config": "source.mm_config",
    "mm_dir": "source.mm_dir",
}
_RUN_SWITCHES = {  # store_true flags → the config value they set
    "overwrite": "output.overwrite=true", "attach": "source.mm_attach=true",
    "no_stream": "stream.enabled=false", "no_raw": "output.record_raw=false",
}


def _run_overrides(args) -> list[str]:
    extra = []
    if args.source:
        if args.source in ("simulator", "micromanager"):
            extra.append(f'source.kind="{args.source}"')
        else:
            extra += ['source.kind="file"', f"source.path={json.dumps(str(args.source))}"]
    for dest, key in _RUN_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            extra.append(f"{key}={json.dumps(value if isinstance(value, (int, float)) else str(value))}")
    extra += [setting for dest, setting in _RUN_SWITCHES.items() if getattr(args, dest)]
    return extra


def _cmd_batch(args) -> int:
    from rtsmlm.cli.batch import batch_main

    extra = [f"model.checkpoint={json.dumps(args.model)}"] if args.model else []
    return batch_main(args, _load_config(args, extra))


def _cmd_calibrate_psf(args) -> int:
    from rtsmlm.cli.calibrate_psf import calibrate_psf_main

    return calibrate_psf_main(args, _load_config(args))


def _cmd_watch(args) -> int:
    from rtsmlm.cli.watch import watch_main

    extra = [f"model.checkpoint={json.dumps(args.model)}"] if args.model else []
    if args.idle_timeout_s is not None:
        extra.append(f"source.idle_timeout_s={args.idle_timeout_s}")
    if args.no_stream:
        extra.append("stream.enabled=false")
    return watch_main(args, _load_config(args, extra))


def _cmd_run(args) -> int:
    from rtsmlm.engine.run import run_cli

    cfg = _load_config(args, _run_overrides(args))
    return run_cli(cfg, realtime=args.realtime, progress=not args.quiet)


def _cmd_live(args) -> int:
    from rtsmlm.gui.app import live_main

    cfg = _load_config(args, _run_overrides(args))
    return live_main(cfg, realtime=args.realtime, screenshot=args.screenshot)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--source", metavar="FILE|simulator|micromanager",
                   help="a recorded movie (TIFF/OME-TIFF/.raw/.dax), the simulator (default) or micromanager")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (0 = until the source ends)")
    p.add_argument("--fps", type=float, help="replay pace for a file source (0 = as fast as possible)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                      help="pace the simulated camera at its exposure time (default)")
    pace.add_argument("--as-fast-as-possible", dest="realtime", action="store_false",
                      help="free-running simulated camera: frames the localizer cannot keep up with "
                           "are lost to it (counted, and kept in the raw recording)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: output.dir)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--model", metavar="CHECKPOINT", help="model checkpoint (default: the shipped model)")
    p.add_argument("--backend", choices=("auto", "tensorrt", "torch", "onnxruntime"))
    p.add_argument("--mm-config", metavar="FILE.cfg", help="Micro-Manager hardware configuration")
    p.add_argument("--mm-dir", metavar="DIR", help="Micro-Manager installation (device adapters)")
    p.add_argument("--attach", action="store_true", help="attach to a running Micro-Manager (port 4827)")
    p.add_argument("--no-stream", action="store_true", help="do not publish over ZeroMQ")
    p.add_argument("--no-raw", action="store_true", help="do not record raw camera frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_keys_help() -> str:
    """Every [train] key with its default and meaning (set them in the config or with --set train.KEY=V)."""
    import dataclasses

    from rtsmlm.core.config import TrainConfig

    docs = config_mod.field_docs(TrainConfig)
    lines = ["[train] keys (config file, or --set train.KEY=VALUE); the camera, PSF and [sim] settings of",
             "the config describe the microscope simulated:"]
    for f in dataclasses.fields(TrainConfig):
        lines.append(f"  {f.name} = {f.default!r}: {docs.get(f.name, '')}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtsmlm", description="Real-time single-molecule localization microscopy.")
    parser.add_argument("--version", action="version", version=f"rtsmlm {rtsmlm.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="analyse a camera stream or a recorded movie (headless)")
    _add_run_args(p)
    p.add_argument("--headless", action="store_true", help="no window (always true for run)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("live", help="like run, with the live super-resolution window")
    _add_run_args(p)
    p.add_argument("--screenshot", metavar="PNG", help="render offscreen, save the window after the run")
    p.set_defaults(func=_cmd_live)

    p = sub.add_parser("simulate", help="write a simulated movie with ground truth")
    _add_config_args(p)
    p.add_argument("--frames", type=int, help="number of frames (default: sim.frames)")
    p.add_argument("--size", type=int, help="frame width and height in pixels (default: sim.size)")
    p.add_argument("--density", type=float,
                   help="active emitters per µm² per frame (default: sim.density)")
    p.add_argument("--seed", type=int, help="random seed (default: sim.seed)")
    p.add_argument("--structure", choices=("uniform", "filaments", "rings"),
                   help="sample structure (default: sim.structure)")
    p.add_argument("--drift", action="store_true", help="simulate stage drift (writes drift.csv)")
    p.add_argument("--camera", choices=("emccd", "scmos"), default=None,
                   help="camera type (scmos applies a typical sCMOS preset)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("calibrate", help="measure camera gain/baseline, PSF and sample from a movie; write a config")
    _add_config_args(p)
    p.add_argument("movie", help="an SMLM movie (TIFF, OME-TIFF, .raw, .dax)")
    p.add_argument("--dark", metavar="MOVIE", help="frames taken with the shutter closed (baseline, read noise)")
    p.add_argument("--camera", choices=("emccd", "scmos"), default=None,
                   help="camera type (default: detected from the noise)")
    p.add_argument("--baseline-adu", type=float, default=None, help="known baseline, instead of measuring it")
    p.add_argument("--em-gain", type=float, default=None, help="EM gain to write into the config (EMCCD)")
    p.add_argument("--pixel-size-nm", type=float, default=None, help="camera pixel size (default: the movie's)")
    p.add_argument("--frames", type=int, default=500, help="consecutive frames to use (default 500; from the middle of a longer movie)")
    p.add_argument("--out", default="camera.toml", metavar="TOML", help="config to write (default camera.toml)")
    p.add_argument("--report", metavar="PNG", help="report image (default: next to --out)")
    p.add_argument("--models", default="default,broad_2d", metavar="NAMES",
                   help="models to try on the calibrated conditions, simulated; the best one and its p threshold "
                        "go into the config (default: default,broad_2d; '' to skip)")
    p.add_argument("--threshold-frames", type=int, default=100,
                   help="simulated frames for that choice (more for a sparse sample: at least 1000 emitters)")
    p.add_argument("--json", action="store_true", help="print every figure as JSON")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("train", help="train a localization model on simulated data",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_train_keys_help())
    _add_config_args(p)
    p.add_argument("--out", required=True, metavar="PREFIX", help="checkpoint path prefix")
    p.add_argument("--steps", type=int, help="override train.steps")
    p.add_argument("--restart", action="store_true", help="ignore PREFIX.state.pt and start afresh")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="train.device: where to train (default auto: CUDA when torch sees a GPU)")
    p.add_argument("--init", metavar="MODEL", default=None,
                   help="fine-tune: start from this checkpoint's weights and scales (a path, or a shipped "
                        "model's name such as broad_2d or default); its width/depth/window are used")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("choose-threshold", help="choose a model's own detection threshold on its training "
                                                "conditions, simulated, and store it in its metadata",
                       description="What `rtsmlm train` does at its end, for a model trained before, or on other "
                                   "conditions (--config). Runs use the stored threshold unless model.p_threshold "
                                   "is set.")
    p.add_argument("model", metavar="MODEL", help="checkpoint path prefix (its .json is rewritten)")
    p.add_argument("--config", metavar="FILE", help="the conditions to choose on (camera, psf, [sim] sample, "
                                                    "train.broad): e.g. the training config or `rtsmlm calibrate`'s "
                                                    "output; default: the model's metadata, the middle of its "
                                                    "training ranges")
    p.add_argument("--frames", type=int, default=100, help="simulated frames per condition")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_choose_threshold)

    p = sub.add_parser("evaluate", help="score localizations against ground truth (prints JSON)")
    _add_config_args(p)
    p.add_argument("--use-z", action="store_true", help="match in 3D and report axial RMSE")
    p.add_argument("--locs", required=True, metavar="FILE", help="CSV (rtsmlm/ThunderSTORM) or Picasso HDF5")
    p.add_argument("--truth", required=True, metavar="FILE", help="ground-truth CSV")
    p.add_argument("--pixel-size", type=float, default=None, metavar="NM",
                   help="camera pixel size (default: camera.pixel_size_nm)")
    p.add_argument("--tolerance-nm", type=float, default=250.0)
    p.add_argument("--psf-sigma-nm", type=float, default=None, help="PSF sigma for the CRLB")
    p.add_argument("--bg", type=float, default=None, help="background photons/px for the CRLB")
    p.add_argument("--excess-noise", type=float, default=None, help="2 for EMCCD, 1 for sCMOS")
    p.add_argument("--plot", metavar="PNG", help="write RMSE vs sqrt(CRLB) per photon bin")
    p.add_argument("--compact", action="store_true", help="one-line JSON")
    p.set_defaults(func=_cmd_evaluate)

    from rtsmlm.cli.batch import add_batch_parser

    add_batch_parser(sub, _add_config_args).set_defaults(func=_cmd_batch)
    from rtsmlm.cli.calibrate_psf import add_calibrate_psf_parser
    from rtsmlm.cli.watch import add_watch_parser

    add_calibrate_psf_parser(sub, _add_config_args).set_defaults(func=_cmd_calibrate_psf)

    add_watch_parser(sub, _add_config_args).set_defaults(func=_cmd_watch)

    # Listed for `rtsmlm --help`; main() hands their arguments to the module before argparse runs.
    for name, helptext in [("bench", "inference throughput and latency per backend"),
                           ("export", "export a model to ONNX / a TensorRT engine"),
                           ("listen", "subscribe to a run's localization stream")]:
        sub.add_parser(name, help=helptext, add_help=False)
    return parser


_PASSTHROUGH = {"bench": ("rtsmlm.cli.bench", "bench_main"),
                "export": ("rtsmlm.cli.export", "export_main"),
                "listen": ("rtsmlm.cli.listen", "listen_main")}
"""Subcommands that parse their own arguments (argparse cannot forward leading options)."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _PASSTHROUGH:
        import importlib

        module, func = _PASSTHROUGH[argv[0]]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except config_mod.ConfigError as e:
        print(f"rtsmlm: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rtsmlm: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError) as e:
        print(f"rtsmlm: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # errors of our own types carry a one-sentence message
        from rtsmlm.core.errors import is_user_error

        if is_user_error(e):
            print(f"rtsmlm: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
