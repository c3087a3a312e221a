"""`BenchState`: the physical state the simulated devices share, in one explicit object.

Why: the twins model ONE bench. The camera must see what the panel shows and where the stage
is, but a device reaching into another device's private attributes (the SLM's display buffer,
the stage's position) hides that coupling and breaks as soon as either changes. The state
they share -- what the panel shows (and a late pattern still on its way there), the stage
position -- lives here; each device reads and writes only through these methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.protocols import PatternId


@dataclass
class BenchState:
    """Panel contents (H, W, C) uint8 grey levels with their pattern id, and the stage z."""

    displayed: np.ndarray
    displayed_id: PatternId | None
    stage_z_m: float
    pending: tuple[np.ndarray, PatternId | None] | None = None

    @classmethod
    def blank(cls, image_hw: tuple[int, int], channels: int, stage_z_m: float) -> BenchState:
        return cls(np.zeros((*image_hw, channels), np.uint8), None, float(stage_z_m))

    def show(self, grey: np.ndarray, pattern_id: PatternId | None, *, late: bool) -> None:
        """A new pattern; `late` (display latency): the panel keeps the previous one for one
        more exposure. A pattern that was late before has appeared by now."""
        if self.pending is not None:
            self.displayed, self.displayed_id = self.pending
            self.pending = None
        if late:
            self.pending = (grey, pattern_id)
        else:
            self.displayed, self.displayed_id = grey, pattern_id

    def expose(self) -> tuple[np.ndarray, PatternId | None]:
        """What one exposure sees now; a late pattern appears after this exposure."""
        shown = (self.displayed, self.displayed_id)
        if self.pending is not None:
            self.displayed, self.displayed_id = self.pending
            self.pending = None
        return shown
