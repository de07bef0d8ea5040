"""Contact sheets: a labelled grid of renders (for β/τ sweeps)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

MIN_TILE = 128
PADDING = 4
LINE_HEIGHT = 12


def contact_sheet(images: Sequence[Image.Image], labels: Sequence[Sequence[str]],
                  columns: int, title: str = "") -> Image.Image:
    """Tiles in row-major order, `columns` per row, each with its label lines underneath.

    Small renders are enlarged (nearest neighbour, integer factor) to at least 128 px so that
    labels stay legible; pixels are never blended.
    """
    if not images or len(images) != len(labels) or columns < 1:
        raise ValueError("contact_sheet needs one label list per image and columns >= 1")
    width, height = images[0].size
    factor = max(1, -(-MIN_TILE // max(1, min(width, height))))
    tile_w, tile_h = width * factor, height * factor
    label_h = LINE_HEIGHT * max(len(lines) for lines in labels) + PADDING
    title_h = LINE_HEIGHT + 2 * PADDING if title else 0
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (PADDING + columns * (tile_w + PADDING),
                              title_h + PADDING + rows * (tile_h + label_h + PADDING)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((PADDING, PADDING), title, fill="black", font=font)
    for number, (image, lines) in enumerate(zip(images, labels, strict=True)):
        row, column = divmod(number, columns)
        x = PADDING + column * (tile_w + PADDING)
        y = title_h + PADDING + row * (tile_h + label_h + PADDING)
        tile = image.convert("RGB").resize((tile_w, tile_h), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, y))
        for offset, line in enumerate(lines):
            draw.text((x, y + tile_h + 2 + offset * LINE_HEIGHT), line, fill="black", font=font)
    return sheet
