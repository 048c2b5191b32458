"""The run summary's vocabulary: run status, and the counts every run reports.

``summary.json`` is written once at the start (status ``running``) and once at the end. Its engine part
(:class:`FrameCounts`, timings, errors) is built by the pipeline; every listener adds its own section
(``on_run_end`` returns it: ``render``, ``outputs``, ``stream``, ``plugins``) and is reported in
``listeners.NAME`` (:class:`~rtsmlm.engine.relay.ListenerReport`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["SUMMARY_VERSION", "FrameCounts", "RunStatus"]

SUMMARY_VERSION = 2
"""2: listener sections and ``listeners`` reports (1 had ``consumer_errors``)."""


class RunStatus(str, enum.Enum):
    """``summary.json`` ``status``: the run is going on, ended with every stage well, or with errors."""

    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True)
class FrameCounts:
    """Where every frame of the run went (exact index ranges beside the counts in summary.json)."""

    acquired: int
    localized_live: int
    lost_localizer: int
    skipped_live: int
    caught_up: int
    missing_final: int
    recorded: int | None = None
    lost_recorder: int | None = None

    def to_json(self) -> dict[str, int]:
        """The flat keys summary.json has always had (``frames_acquired``, …)."""
        out = {"frames_acquired": self.acquired, "frames_localized": self.localized_live,
               "frames_lost_localizer": self.lost_localizer, "frames_skipped_live": self.skipped_live,
               "frames_caught_up": self.caught_up, "frames_missing_final": self.missing_final}
        if self.recorded is not None:
            out["frames_recorded"] = self.recorded
            out["frames_lost_recorder"] = self.lost_recorder or 0
        return out
