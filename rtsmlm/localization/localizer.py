"""Streaming localization: raw camera frames in, localization tables out, one batch at a time.

The frame encoder runs once per frame; its features are cached and reused by the ``window`` windows the
frame belongs to, so a window of T frames costs one encoder pass, not T. A run is a sequence of
consecutive frame indices; its first and last frames are analysed with edge padding, and a gap in the
indices (frames lost or skipped upstream) ends one sequence and starts another, so no window ever mixes
frames that are not neighbours in time. The missing neighbour of an edge frame is its other neighbour
mirrored in ('reflect'): copies of the edge frame itself (DECODE's 'same') show its noise in all three
frames, which the network reads as a molecule that stays on — measured (``benchmarks/bench_edges.py``), edge
frames at 0.3 emitters/µm² on background 100 scored Jaccard 0.75 with copies, 0.84 mirrored, 0.87 inside the
movie. A sequence of one frame has no other neighbour: copies (0.47 there).

Frames of any size work: they are padded to the network's size multiple and, when large, cut into
overlapping tiles (:mod:`rtsmlm.localization.tiling`); batch and tile sizes come from free memory unless given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from rtsmlm.core.camera import CameraModel
from rtsmlm.core.config import ModelConfig
from rtsmlm.core.locs import LOC_DTYPE, concat
from rtsmlm.localization import conditioning, range_guard
from rtsmlm.localization.backends.protocol import Backend
from rtsmlm.localization.brightness_floor import CONFIRM_RADIUS_PX, BrightnessFloor, context_frames
from rtsmlm.localization.checkpoint import THRESHOLD_SOURCES, ModelMeta, detection_threshold, thresholds_for_run
from rtsmlm.localization.postprocess import Postprocessor
from rtsmlm.localization.range_guard import RangeVerdict
from rtsmlm.localization.tiling import (
    CPU_PIXELS_PER_CALL,
    TilePlan,
    available_memory_bytes,
    bytes_per_pixel,
    choose_sizes,
)

if TYPE_CHECKING:
    from rtsmlm.core.config import Config

log = logging.getLogger("rtsmlm.localization")


class StreamingLocalizer:
    """Localizes molecules in a stream of raw frames with a frame-feature cache.

    Args:
        backend: an opened :class:`rtsmlm.localization.backends.Backend`.
        meta: the checkpoint metadata (window, depth, output scales, input scale).
        camera: converts ADU to photons (per-pixel sCMOS maps included) and gives the pixel size in nm.
        frame_shape: (height, width) of the raw frames, any size.
        p_threshold, candidate_threshold, split_threshold, residual_threshold: passed to
            :class:`rtsmlm.localization.postprocess.Postprocessor`; a negative ``p_threshold`` is the
            model's own (:func:`rtsmlm.localization.checkpoint.detection_threshold`), and the candidate
            threshold is at most the p threshold.
        min_photons: the brightness floor (:mod:`rtsmlm.localization.brightness_floor`; 0 = none): with one,
            each sequence's newest frame is returned only once the next is finished or the sequence ends.
        batch_size: frames per backend call; 0 = chosen from free memory (at most ``max_batch``; on the
            CPU at most 65536 pixels per call, which keeps activations in the caches).
        tile: tile core size in pixels; None = chosen from free memory (whole frames when they fit).
        margin: tile overlap in pixels; None = the network's receptive-field radius (exact stitching).
        max_batch: upper bound of the automatic batch size.
        memory_bytes: the run's memory budget for the localizer (None: only the free memory counts).
        psf_sigma_px: the PSF σ in camera pixels (``psf.sigma_nm`` / pixel size): required by a model
            conditioned on it (:mod:`rtsmlm.localization.conditioning`) and by ``refine="mle"``.
        refine: "off", "mle" or "fuse": isolated localizations are refined by a maximum-likelihood fit of
            the PSF (:mod:`rtsmlm.localization.refine`; Gaussian 2D and astigmatic 3D models).
        merge_splits: with refinement of a 2D model, the refiner's split check merges two localizations of
            one emitter (:meth:`rtsmlm.localization.refine.MLERefiner._merge_splits`); it reads the adjacent
            frames' localizations, so each sequence's newest frame is then held like a floor's.
        maps_sink: optional callable receiving each batch of stitched output maps ``(B, 10, H, W)`` (a
            torch tensor on the backend's device) and the list of their frame indices, before
            post-processing (to save or display the maps, or to test the network path); the maps may be a
            backend's reused output buffer, valid during the call: copy what you keep.

    Called from one thread: :meth:`push` for each batch of frames as they arrive, :meth:`finish` at the
    end of the run (or before a deliberate restart).
    """

    edge_padding = "reflect"
    """How a sequence's first and last windows are completed: 'reflect' mirrors the neighbouring frames in
    (frame 1 stands in for frame −1; a sequence of one frame gets copies), 'same' copies the edge frame."""

    def __init__(self, backend: Backend, meta: ModelMeta, camera: CameraModel, frame_shape: tuple[int, int],
                 p_threshold: float, candidate_threshold: float, *, batch_size: int = 0, tile: int | None = None,
                 margin: int | None = None, max_batch: int = 16, split_threshold: float = 0.6,
                 memory_bytes: int | None = None, psf_sigma_px: float | None = None, refine: str = "off",
                 min_photons: float = 0.0, residual_threshold: float = ModelConfig.residual_threshold,
                 merge_splits: bool = ModelConfig.merge_splits,
                 maps_sink: Callable[[torch.Tensor, list[int]], None] | None = None) -> None:
        height, width = (int(v) for v in frame_shape)
        if backend.window != meta.window:
            raise ValueError(f"backend runs a window of {backend.window} frames but the checkpoint metadata "
                             f"says {meta.window}.")
        self.backend = backend
        self.meta = meta
        self.camera = camera
        self.frame_shape = (height, width)
        self.window = backend.window
        self.maps_sink = maps_sink
        self._half = backend.window // 2
        self.p_threshold, self.p_threshold_source = detection_threshold(meta, p_threshold)
        self.postprocessor = Postprocessor(
            pixel_size_nm=camera.pixel_size_nm, photon_scale=meta.scales.photon_scale,
            z_scale=meta.scales.z_scale, bg_scale=meta.scales.bg_scale,
            p_threshold=self.p_threshold, candidate_threshold=min(candidate_threshold, self.p_threshold),
            split_threshold=split_threshold,
            has_z=(meta.psf or {}).get("model", "gaussian") != "gaussian",
            residual_threshold=residual_threshold,
        )
        element_bytes = 4 if backend.precision == "fp32" else 2
        free = available_memory_bytes(backend.device)
        if memory_bytes:
            # Within the run's budget: the feature cache of ``window`` whole frames comes first, tiles
            # and batches share what is left.
            cache = (backend.window + 1) * height * width * backend.feature_channels * element_bytes
            free = min(free, max(int(memory_bytes) - cache, int(memory_bytes) // 8))
        sizing = choose_sizes(height, width, backend.size_multiple, backend.window, backend.feature_channels,
                              element_bytes, free, max_batch=max_batch,
                              margin=margin, depth=meta.depth, tile=tile, batch=batch_size,
                              max_pixels=CPU_PIXELS_PER_CALL if backend.device == "cpu" else None)
        self.plan: TilePlan = sizing.plan
        self.batch_size = sizing.batch
        self._offset, self._scale = self._input_transform(camera)
        self._psf_sigma_px = psf_sigma_px
        self._conditioning = self._conditioning_maps(camera, psf_sigma_px)
        self._refiner = self._make_refiner(refine, camera, psf_sigma_px, merge_splits)
        self.floor = BrightnessFloor(min_photons, CONFIRM_RADIUS_PX * camera.pixel_size_nm,
                                     hold=self._refiner is not None and self._refiner.merge_splits)
        # Frames in photons by index, kept from encoding until the floor releases their localizations (refinement
        # fits them).
        self._photon_frames: dict[int, torch.Tensor] = {}
        k = self.plan.n_tiles
        # Tiles per backend call: a 4096² frame cut into 49 tiles must not run them all at once (tens of
        # GB of activations); whole small frames keep their batch.
        tile_bytes = self.plan.tile_height * self.plan.tile_width * bytes_per_pixel(
            backend.window, backend.feature_channels, element_bytes)
        self._tiles_per_call = int(max(1, min(self.batch_size * k, free * 0.25 // max(tile_bytes, 1))))
        max_elements = getattr(backend, "max_tensor_elements", None)
        if max_elements:
            # TensorRT cannot hold a tensor of 2**31 elements: the decoder's input (window × features per
            # tile) bounds the tiles, and so the frames, of one call.
            per_tile = backend.window * backend.feature_channels * self.plan.tile_height * self.plan.tile_width
            max_tiles = int(max_elements) // per_tile
            if max_tiles < 1:
                raise ValueError(f"a {self.plan.tile_height}x{self.plan.tile_width} tile needs {per_tile} elements per "
                                 f"decoder call, more than {backend.name} allows ({max_elements}); give a smaller tile")
            self._tiles_per_call = min(self._tiles_per_call, max_tiles)
            self.batch_size = max(1, min(self.batch_size, max_tiles // k))
        calls = min(self.batch_size * k, self._tiles_per_call)
        backend.warmup(self.plan.tile_height, self.plan.tile_width, calls, calls)
        log.info("localizer: %dx%d frames, %d tile(s) of %dx%d (margin %d), batch %d frames; p threshold %.2f (%s)%s",
                 height, width, k, self.plan.tile_height, self.plan.tile_width, self.plan.margin, self.batch_size,
                 self.p_threshold, THRESHOLD_SOURCES[self.p_threshold_source],
                 f"; detections under {min_photons:g} photons dropped unless an adjacent frame confirms them"
                 if min_photons > 0 else "")
        # Feature cache of the current sequence: (rows, tiles, C, tile_h, tile_w), one row per frame in time
        # order with edge-padding rows at the start; _rows[i] is the frame index of row i.
        self._feats: torch.Tensor | None = None
        self._rows: list[int] = []
        self._start_padded = False  # the sequence's leading padding rows are still copies of its first frame
        self._last_pushed: int | None = None
        self.last_done = -1
        self.frames_done = 0
        self.sequences = 0
        # Frames with NaN/inf pixels (float movies only): their index and how many pixels were replaced.
        self.nonfinite: dict[int, int] = {}
        # Is the movie inside the model's training range? Judged on the first frames (a central crop).
        self.range_verdict: RangeVerdict | None = None
        self.check_range = True  # False: a part of a movie whose range is judged elsewhere (batch chunks)
        self._guard_frames: list[np.ndarray] = []
        self._guard_thread: threading.Thread | None = None
        y0, x0 = max(0, height // 2 - 128), max(0, width // 2 - 128)
        self._guard_crop = (slice(y0, y0 + 256), slice(x0, x0 + 256))  # the central 256² at most

    @property
    def context_frames(self) -> int:
        """Frames beyond each end of a stretch that a localization of the stretch alone reads
        (:func:`rtsmlm.localization.brightness_floor.context_frames`)."""
        return context_frames(self.window, self.floor.min_photons, self.floor.hold)

    @classmethod
    def for_run(cls, backend: Backend, meta: ModelMeta, camera: CameraModel, frame_shape: tuple[int, int],
                cfg: "Config") -> "StreamingLocalizer":
        """The localizer a run of ``cfg`` uses (live runs and batch workers alike): ``[model]``'s thresholds,
        brightness floor and refinement, ``[pipeline]``'s batch bound and memory (three quarters of it: the
        rest is the ring's and the outputs'), the PSF σ in pixels."""
        model = thresholds_for_run(cfg.model)
        return cls(backend, meta, camera, frame_shape, model.p_threshold, model.candidate_threshold,
                   max_batch=cfg.pipeline.max_batch, split_threshold=model.split_threshold,
                   memory_bytes=int(cfg.pipeline.memory_mb * 2**20 * 3 / 4),
                   psf_sigma_px=cfg.psf.sigma_nm / camera.pixel_size_nm, refine=model.refine,
                   min_photons=model.min_photons, residual_threshold=model.residual_threshold,
                   merge_splits=model.merge_splits)

    def _input_transform(self, camera: CameraModel) -> tuple[torch.Tensor, torch.Tensor]:
        """Offset (ADU) and scale so that photons = (ADU - offset) * scale, on the backend's device, as
        CameraModel.to_photons defines photons; the model's Scales.network_input maps photons further."""
        offset = camera.offset_map if camera.offset_map is not None else camera.baseline_adu
        gain = camera.gain_map if camera.gain_map is not None else camera.e_per_adu
        scale = np.asarray(gain, dtype=np.float64) / (camera.em_gain * camera.qe)
        tensors = []
        for name, value in (("offset_map", offset), ("gain_map", scale)):
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim and arr.shape != self.frame_shape:
                raise ValueError(f"camera {name} has shape {arr.shape} but the frames are {self.frame_shape}.")
            tensors.append(torch.as_tensor(arr, device=self.backend.device))
        return tensors[0], tensors[1]

    def _conditioning_maps(self, camera: CameraModel, psf_sigma_px: float | None) -> torch.Tensor | None:
        """The model's conditioning channels for this run's PSF and camera, ``(C, H, W)`` on the device."""
        names = self.meta.scales.conditioning
        if not names:
            return None
        if "psf_sigma" in names and psf_sigma_px is None:
            raise ValueError("this model is conditioned on the PSF width: give psf.sigma_nm "
                             "(measured by `rtsmlm calibrate`) to the localizer")
        maps = conditioning.channels(names, sigma_px=float(psf_sigma_px or 0.0), camera=camera,
                                     shape=self.frame_shape)
        log.info("model conditioned on %s: PSF sigma %.2f px, %s noise", ", ".join(names), psf_sigma_px or 0.0,
                 camera.model)
        return torch.as_tensor(maps, device=self.backend.device)

    def _make_refiner(self, refine: str, camera: CameraModel, psf_sigma_px: float | None, merge_splits: bool):
        """The MLE refiner of ``model.refine``: a 2D model fits the run's PSF σ (``psf.sigma_nm``, the one the
        user calibrated), a 3D model the astigmatic focus curves it was trained for (its metadata)."""
        if refine == "off":
            return None
        from rtsmlm.core.config import from_dict
        from rtsmlm.localization.refine import MODES, MLERefiner
        from rtsmlm.sim.psf import GaussianPSF, psf_from_config

        if refine not in MODES:
            raise ValueError(f"model.refine = {refine!r}; allowed: 'off', {', '.join(repr(m) for m in MODES)}")
        psf_meta = self.meta.psf or {}
        kind = psf_meta.get("model", "gaussian")
        if kind == "astigmatic":
            psf_cfg = from_dict({"psf": psf_meta}, "the model's PSF").psf
            return MLERefiner(psf_from_config(psf_cfg, camera.pixel_size_nm), camera, self.frame_shape,
                              device=self.backend.device, mode=refine, z_range_nm=psf_cfg.z_range_nm or 600.0)
        if kind != "gaussian":
            raise ValueError(f"model.refine = {refine!r} fits a Gaussian or astigmatic PSF; this model's PSF is "
                             f"{kind!r}: use refine = 'off'")
        if psf_sigma_px is None:
            raise ValueError(f"model.refine = {refine!r} needs the PSF width: give psf.sigma_nm")
        return MLERefiner(GaussianPSF(psf_sigma_px), camera, self.frame_shape, device=self.backend.device,
                          mode=refine, merge_splits=merge_splits)

    # -- streaming -----------------------------------------------------------------------------------

    def push(self, frames: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, int]:
        """frames (n,H,W) raw camera counts (uint16), indices their frame numbers (increasing).
        Returns (LOC_DTYPE table, last_done) for every frame whose window is now complete (with a brightness
        floor, but a sequence's newest: the floor's verdict on it waits for the next frame); a gap in
        indices (lost frames) is a sequence break: frames before the gap are finished with edge padding
        and a new sequence starts. last_done = highest frame index whose localizations have all been
        returned (-1 if none)."""
        frames = np.asarray(frames)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if frames.ndim != 3 or tuple(frames.shape[1:]) != self.frame_shape:
            raise ValueError(f"push() expects frames of shape (n, {self.frame_shape[0]}, {self.frame_shape[1]}), "
                             f"got {frames.shape}.")
        if len(indices) != len(frames):
            raise ValueError(f"push() got {len(frames)} frames but {len(indices)} indices.")
        if len(indices) == 0:
            return np.empty(0, LOC_DTYPE), self.last_done
        if self.range_verdict is None and self.check_range:
            self._watch_range(frames)
        if np.any(np.diff(indices) <= 0) or (self._last_pushed is not None and indices[0] <= self._last_pushed):
            raise ValueError(f"push() frame indices must increase strictly (last pushed {self._last_pushed}, "
                             f"got {indices[:8].tolist()}...).")
        out: list[np.ndarray] = []
        # Split at gaps: each run of consecutive indices continues (or starts) one sequence.
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        for seg_frames, seg_idx in zip(np.split(frames, breaks), np.split(indices, breaks)):
            if self._last_pushed is not None and seg_idx[0] != self._last_pushed + 1:
                out.append(self._finish_sequence())
            for start in range(0, len(seg_idx), self.batch_size):
                out.append(self._push_consecutive(seg_frames[start : start + self.batch_size],
                                                  seg_idx[start : start + self.batch_size]))
        return concat(out), self.floor.released_through

    def finish(self) -> tuple[np.ndarray, int]:
        """End of run: finish the pending frames with edge padding."""
        if self.range_verdict is None and self._guard_frames:
            self._judge_range()
        if self._guard_thread is not None:
            self._guard_thread.join()
        return self._finish_sequence(), self.floor.released_through

    def _watch_range(self, frames: np.ndarray) -> None:
        for f in frames[: range_guard.FRAMES - len(self._guard_frames)]:
            self._guard_frames.append(np.asarray(f[self._guard_crop]))
        if len(self._guard_frames) >= range_guard.FRAMES:
            self._judge_range()

    def _judge_range(self) -> None:
        crop = self.camera
        if crop.offset_map is not None:  # per-pixel sCMOS maps: the crop's part of them
            from dataclasses import replace

            crop = replace(crop, offset_map=crop.offset_map[self._guard_crop],
                           gain_map=None if crop.gain_map is None else crop.gain_map[self._guard_crop])
        photons = crop.to_photons(np.stack(self._guard_frames))
        self._guard_frames = []
        self.range_verdict = range_guard.PENDING

        def judge() -> None:
            try:
                self.range_verdict = range_guard.check(photons, self.meta, self._psf_sigma_px)
            except Exception as e:  # a check must never cost the run
                self.range_verdict = None
                log.warning("range check skipped: %s", e)

        # Spot fits take about half a second: off the localizer's thread, so the first frames' latency
        # does not pay for them.
        self._guard_thread = threading.Thread(target=judge, name="rtsmlm-range-guard", daemon=True)
        self._guard_thread.start()

    def restart(self, *, check_range: bool | None = None) -> None:
        """Forget the frame order after :meth:`finish`, so that earlier frames can be pushed again (the
        catch-up analysis of frames skipped live; the next chunk of a batch). Frames still pending are
        dropped: call finish first. ``check_range`` True judges the next frames' range anew (a new movie),
        False skips the check, None keeps the verdict and the setting."""
        self._feats, self._rows, self._last_pushed = None, [], None
        self._photon_frames.clear()
        if check_range is not None:
            self.check_range = check_range
            self.range_verdict, self._guard_frames = None, []

    def _push_consecutive(self, frames: np.ndarray, indices: np.ndarray) -> np.ndarray:
        rows = [int(i) for i in indices]
        feats = self._encode(frames, rows)  # (n, tiles, C, th, tw)
        half = self._half
        if self._feats is None:
            # New sequence: padding rows before its first frame, copies of it until its next frames arrive
            # (its first window is decoded only then) and are mirrored in, just below.
            self.sequences += 1
            self._feats = torch.cat([feats[:1].expand(half, *feats.shape[1:]), feats])
            self._rows = [rows[0]] * half + rows
            self._start_padded = True
        else:
            self._feats = torch.cat([self._feats, feats])
            self._rows += rows
        if self._start_padded and self.edge_padding == "reflect" and self._feats.shape[0] >= 2 * half + 1:
            # Rows half+1 .. 2·half (frames 1 .. half) mirrored in front of frame 0 (row half).
            self._feats[:half] = self._feats[half + 1 : 2 * half + 1].flip(0)
            self._start_padded = False
        self._last_pushed = rows[-1]
        return self._release(self._decode_ready())

    def _release(self, locs: np.ndarray) -> np.ndarray:
        """What the brightness floor releases of newly decoded frames' localizations, refined. The floor comes
        first: it reads the network's photons, as calibrate's choice of it does, and what it drops is not fitted."""
        return self._refine(self.floor.push(locs, self.last_done))

    def _refine(self, released: np.ndarray) -> np.ndarray:
        """``released`` refined on the photon images of the frames the floor has released (kept until then)."""
        if self._refiner is None:
            return released
        done = sorted(c for c in self._photon_frames if c <= self.floor.released_through)
        if not done:
            return released
        return self._refiner(released, torch.stack([self._photon_frames.pop(c) for c in done]), done,
                             neighbours=self.floor.neighbours)

    def _finish_sequence(self) -> np.ndarray:
        if self._feats is None:
            return self._refine(self.floor.finish())
        half = self._half
        if self.edge_padding == "reflect" and not self._start_padded:
            # The frames before the last, mirrored after it (the cache keeps the 2·half rows the last windows
            # need). A sequence shorter than half + 1 frames was never reflected at its start: copies.
            pad = self._feats[-half - 1 : -1].flip(0)
        else:
            pad = self._feats[-1:].expand(half, *self._feats.shape[1:])
        self._start_padded = False
        self._feats = torch.cat([self._feats, pad])
        self._rows += [self._rows[-1]] * half
        locs = concat([self._release(self._decode_ready()), self._refine(self.floor.finish())])
        self._feats, self._rows = None, []
        return locs

    def _contain_nonfinite(self, frames: np.ndarray, indices: list[int]) -> np.ndarray:
        """NaN/inf pixels (a float movie from another tool) would spread through every window they touch:
        replace each by its frame's median of finite pixels, and record the frame and the count."""
        if frames.dtype.kind != "f":
            return frames  # integer camera counts cannot be NaN: no cost for cameras
        bad = ~np.isfinite(frames)
        if not bad.any():
            return frames
        frames = frames.copy()
        for k in np.flatnonzero(bad.any(axis=(1, 2))):
            finite = frames[k][~bad[k]]
            frames[k][bad[k]] = np.median(finite) if finite.size else 0.0
            n = int(bad[k].sum())
            if not self.nonfinite:
                log.warning("frame %d has %d NaN/infinite pixels: replaced by the frame's median; further such "
                            "frames are counted in the summary (nonfinite_frames)", indices[k], n)
            self.nonfinite[int(indices[k])] = n
        return frames

    def _encode(self, frames: np.ndarray, indices: list[int]) -> torch.Tensor:
        frames = self._contain_nonfinite(frames, indices)
        raw = self.backend.upload(frames)
        photons = (raw.to(torch.float32) - self._offset) * self._scale
        if self._refiner is not None:
            for k, index in enumerate(indices):
                self._photon_frames[index] = photons[k]
        x = self.meta.scales.network_input(photons)
        if self._conditioning is not None:  # (n, H, W) -> (n, 1 + C, H, W)
            x = torch.cat([x.unsqueeze(1), self._conditioning.expand(len(x), *self._conditioning.shape)], dim=1)
        feats = self._in_chunks(self.backend.encode, self.plan.split(x))
        return feats.reshape(len(frames), self.plan.n_tiles, *feats.shape[1:])

    def _in_chunks(self, fn: Callable[[torch.Tensor], torch.Tensor], tiles: torch.Tensor) -> torch.Tensor:
        """``fn`` over the tile axis, at most ``_tiles_per_call`` tiles a call (bounded activation memory).
        Each call's result is copied out before the next call, which may overwrite it (Backend protocol)."""
        step = self._tiles_per_call
        if len(tiles) <= step:
            return fn(tiles)
        out: torch.Tensor | None = None
        for i in range(0, len(tiles), step):
            part = fn(tiles[i:i + step])
            if out is None:
                out = torch.empty((len(tiles), *part.shape[1:]), dtype=part.dtype, device=part.device,
                                  memory_format=_memory_format(part))
            out[i:i + len(part)] = part
        assert out is not None
        return out

    def _decoder_input(self, n_windows: int, n_tiles: int, like: torch.Tensor) -> torch.Tensor:
        """An empty ``(n_windows * n_tiles, window * C, th, tw)`` tensor for the windows of one decode call: the
        backend's own (a CUDA graph's static input, channels_last for torch) when it offers one."""
        shape = (n_windows * n_tiles, self.window * like.shape[-3], *like.shape[-2:])
        offer = getattr(self.backend, "decode_input", None)
        if offer is not None:
            return offer(shape, like.dtype)
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    def _decode_ready(self) -> np.ndarray:
        """Decode every window whose frames are all cached, then keep only the rows later windows need."""
        assert self._feats is not None
        t, half = self.window, self._half
        n_ready = self._feats.shape[0] - 2 * half
        out = []
        for start in range(0, max(n_ready, 0), self.batch_size):
            n = min(self.batch_size, n_ready - start)
            # Window of centre row c = rows c-half..c+half: concatenating the shifted slices along the
            # channel axis gives frame-major channels (frame 0's features first), as DecodeNet.decode expects.
            block = self._feats[start : start + n + 2 * half]
            k = self.plan.n_tiles
            c = block.shape[2]
            # Windows are built a group of tiles at a time: for a huge frame the whole window tensor would
            # be window × the feature cache again.
            per_group = max(1, self._tiles_per_call // n)
            maps = None
            for a in range(0, k, per_group):
                b = min(k, a + per_group)
                # Each frame's features copied once, straight into the decoder's input (a CUDA graph's
                # static input), not concatenated first and then converted or copied again.
                windows = self._decoder_input(n, b - a, block)
                frames_of = windows.view(n, b - a, *windows.shape[1:])
                for j in range(t):
                    frames_of[:, :, j * c : (j + 1) * c] = block[j : j + n, a:b]
                group = self.backend.decode(windows)
                if b - a == k:
                    maps = group  # one group: used before the next decode call can overwrite it
                    break
                if maps is None:
                    maps = group.new_empty((n * k, *group.shape[1:]))
                # The next decode call may overwrite this one's result (Backend protocol): copy it out.
                maps.view(n, k, *group.shape[1:])[:, a:b] = group.view(n, b - a, *group.shape[1:])
            assert maps is not None
            maps = self.plan.stitch(maps)
            centres = self._rows[start + half : start + half + n]
            if self.maps_sink is not None:
                self.maps_sink(maps, centres)
            out.append(self.postprocessor(maps, centres))
            self.last_done = centres[-1]
            self.frames_done += n
        if n_ready > 0:
            self._feats = self._feats[n_ready:]
            self._rows = self._rows[n_ready:]
        return concat(out)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """The layout a copy of ``t`` should keep: channels_last for an NHWC 4-D tensor (what the backends return)."""
    return torch.channels_last if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format


def localize_movie(localizer: StreamingLocalizer, movie: np.ndarray, first_index: int = 0) -> np.ndarray:
    """Offline convenience: push a whole ``(n, H, W)`` movie in batches, finish, return all localizations."""
    out = []
    for start in range(0, len(movie), localizer.batch_size):
        chunk = movie[start : start + localizer.batch_size]
        locs, _ = localizer.push(chunk, np.arange(first_index + start, first_index + start + len(chunk)))
        out.append(locs)
    out.append(localizer.finish()[0])
    return concat(out)
