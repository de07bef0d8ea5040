"""The fidelity-vs-alignment plot: one line of points per series (e.g. a β sweep), as a PNG.

Drawn with Pillow, already a dependency, so evaluation needs no plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from perfusion_hub.files import atomic_path

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
WIDTH, HEIGHT = 640, 480
LEFT, RIGHT, TOP, BOTTOM = 72, 24, 48, 60


@dataclass(frozen=True)
class Point:
    """One point: x = alignment, y = fidelity, with a short label such as "β=0.70"."""

    x: float
    y: float
    label: str = ""


@dataclass(frozen=True)
class Series:
    """Points joined by a line, in order, under one legend entry."""

    name: str
    points: tuple[Point, ...]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 × 10^k) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("tick range must be finite")
    span = max(high - low, 1e-9)
    raw = span / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-6:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, 0.002)
    return low - pad, high + pad


def draw_plot(series: Sequence[Series], title: str, x_label: str, y_label: str) -> Image.Image:
    """Render the series on shared, automatically scaled axes."""
    points = [p for s in series for p in s.points if math.isfinite(p.x) and math.isfinite(p.y)]
    if not points:
        raise ValueError("nothing to plot: no finite points")
    xt = nice_ticks(*_range([p.x for p in points]))
    yt = nice_ticks(*_range([p.y for p in points]))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT)
        py = HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM)
        return px, py

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    small, normal = _font(11), _font(14)
    for x in xt:
        px, _ = to_px(x, y0)
        draw.line([(px, TOP), (px, HEIGHT - BOTTOM)], fill=(232, 232, 232))
        draw.text((px, HEIGHT - BOTTOM + 6), f"{x:g}", fill="black", font=small, anchor="mt")
    for y in yt:
        _, py = to_px(x0, y)
        draw.line([(LEFT, py), (WIDTH - RIGHT, py)], fill=(232, 232, 232))
        draw.text((LEFT - 6, py), f"{y:g}", fill="black", font=small, anchor="rm")
    draw.rectangle([(LEFT, TOP), (WIDTH - RIGHT, HEIGHT - BOTTOM)], outline="black")
    draw.text((WIDTH / 2, 16), title, fill="black", font=normal, anchor="mt")
    draw.text(((LEFT + WIDTH - RIGHT) / 2, HEIGHT - 18), x_label, fill="black", font=normal,
              anchor="mb")
    label = Image.new("RGB", (HEIGHT - TOP - BOTTOM, 20), "white")
    ImageDraw.Draw(label).text((label.width / 2, 10), y_label, fill="black", font=normal,
                               anchor="mm")
    image.paste(label.rotate(90, expand=True), (8, TOP))

    for index, one in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        xy = [to_px(p.x, p.y) for p in one.points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for (px, py), point in zip(xy, one.points, strict=True):
            draw.ellipse([(px - 4, py - 4), (px + 4, py + 4)], fill=colour, outline="black")
            if point.label:
                draw.text((px + 7, py - 7), point.label, fill=colour, font=small, anchor="lb")
        legend_y = TOP + 8 + 16 * index
        draw.rectangle([(WIDTH - RIGHT - 150, legend_y), (WIDTH - RIGHT - 140, legend_y + 10)],
                       fill=colour)
        draw.text((WIDTH - RIGHT - 134, legend_y + 5), one.name, fill="black", font=small,
                  anchor="lm")
    return image


def save_plot(path: str | Path, series: Sequence[Series], title: str,
              x_label: str = "text alignment", y_label: str = "fidelity") -> Path:
    """Draw the plot and write it as a PNG at `path` (atomically)."""
    path = Path(path)
    image = draw_plot(series, title, x_label, y_label)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
