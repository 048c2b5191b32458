"""What a live view may see of a run (:class:`RunView`): a small, thread-safe facade, so the GUI never
reaches into the pipeline, its ring or its source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtsmlm.acquisition.source import Frame
    from rtsmlm.analysis.live_render import RenderListener, RenderSnapshot
    from rtsmlm.engine.pipeline import Pipeline

__all__ = ["RunView"]


class RunView:
    """Read-only state of a running (or finished) run for a viewer, plus the two render settings a
    viewer may change. Every method is safe to call from any thread."""

    def __init__(self, pipeline: Pipeline, render: RenderListener | None, backend: dict[str, Any]) -> None:
        self._pipeline = pipeline
        self._render = render
        self.backend = dict(backend)
        """The inference backend's description (name, device, precision)."""
        self.model: dict[str, Any] = dict(pipeline.run_info.get("model", {}))
        """The model's description (checkpoint, step, size)."""
        self.reader_names: list[str] = [r.name for r in pipeline.ring.readers]
        """Readers of the frame ring (localizer, recorder): the keys of ring fill and frame losses."""
        self.camera_pixel_nm = float(pipeline.source.camera.pixel_size_nm)

    def latest_frame(self) -> Frame | None:
        """The newest camera frame (a copy), None before the first."""
        return self._pipeline.ring.peek_latest()

    def latest_stats(self) -> dict[str, Any]:
        """The latest stats record ({} before the first tick)."""
        return dict(self._pipeline.latest_stats)

    def stats_history(self) -> list[dict[str, Any]]:
        """Every stats record kept (the last hour at one per second), oldest first."""
        return self._pipeline.stats_history_copy()

    def model_range(self) -> dict[str, Any] | None:
        """The range guard's verdict (is the movie inside the model's training range?), None until the
        first frames are checked."""
        verdict = getattr(self._pipeline.localizer, "range_verdict", None)
        return verdict.to_json() if verdict is not None and verdict.frames else None

    def render_snapshot(self) -> RenderSnapshot | None:
        """The latest SR image state; asks the render listener for a fresh one."""
        return self._render.snapshot() if self._render is not None else None

    def set_render_mode(self, mode: str) -> None:
        if self._render is not None:
            self._render.set_mode(mode)

    def set_render_pixel_nm(self, nm: float) -> None:
        if self._render is not None:
            self._render.set_pixel_nm(float(nm))
