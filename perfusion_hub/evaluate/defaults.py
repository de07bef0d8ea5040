"""Default sizes of evaluation and demo runs (a light module: the CLI reads it at start-up)."""

from __future__ import annotations

DEFAULT_SEEDS = 4
"""Seeds per prompt and β in `phub eval`."""
RENDER_BATCH = 8
"""Seeds `phub eval` renders in one pipeline call (images match single renders up to float
rounding, at most a level or two of 255)."""

DEFAULT_STEPS = 150
"""Training steps per concept in `phub demo`."""
DEFAULT_IMAGES = 6
"""Training images per instance in `phub demo`."""
DEFAULT_RENDERS = 4
"""Images of the composed prompt in `phub demo`."""
DEFAULT_EVAL_SEEDS = 2
"""Seeds per prompt of the demo's evaluation."""
DEFAULT_SAMPLE_STEPS: int | None = None
"""Denoising steps of the demo's renders (None: the base's default)."""
