"""Training images: read a folder, flatten, resize + centre-crop, optional loss masks (§5 data).

Pixels come back as float tensors in [-1, 1] (the VAE's input range), masks in [0, 1].
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from perfusion_hub.errors import TrainingError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SUPPORTED = "png, jpg or webp"


@dataclass
class ImageFolder:
    """Decoded images of one folder (full size, RGB on white), with their masks if any."""

    paths: list[Path]
    images: list[Image.Image]
    masks: list[Image.Image] | None
    skipped: list[Path] = field(default_factory=list)
    digest: str = ""

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class ImageTensors:
    """Images at training resolution: pixels (N, 3, R, R) in [-1, 1], masks (N, 1, R, R)."""

    pixels: torch.Tensor
    masks: torch.Tensor | None


def read_image_folder(folder: str | Path, masks: str | Path | None = None) -> ImageFolder:
    """Read every png/jpg/webp in `folder` (not recursive; other files are skipped).

    EXIF orientation is applied and transparency is flattened onto white. With `masks`, each
    image needs a grayscale mask of the same file stem in that folder.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TrainingError(f"{folder}: no such folder. Pass a folder holding 4-8 images of the "
                            f"concept ({SUPPORTED}).")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise TrainingError(f"{folder} is empty: put 4-8 images of the concept ({SUPPORTED}) "
                            "there.")
    paths = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not paths:
        shown = ", ".join(p.name for p in skipped[:5])
        raise TrainingError(f"{folder} holds no images ({SUPPORTED}), only: {shown}. Add 4-8 "
                            "images of the concept.")
    images = [_flatten(_open(path)) for path in paths]
    mask_paths = _mask_paths(Path(masks).expanduser(), paths) if masks is not None else []
    mask_images = _read_masks(mask_paths, images) if masks is not None else None
    digest = hashlib.sha256()
    for path in paths + mask_paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return ImageFolder(paths, images, mask_images, skipped, digest.hexdigest())


def to_tensors(folder: ImageFolder, resolution: int) -> ImageTensors:
    """Resize (short side) and centre-crop every image and mask to `resolution` squared."""
    size = (resolution, resolution)
    pixels = torch.stack([
        torch.from_numpy(np.asarray(ImageOps.fit(image, size, Image.Resampling.BICUBIC)).copy())
        for image in folder.images
    ]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    masks = None
    if folder.masks is not None:
        masks = torch.stack([
            torch.from_numpy(np.asarray(ImageOps.fit(mask, size, Image.Resampling.BILINEAR)).copy())
            for mask in folder.masks
        ]).unsqueeze(1).float().div(255.0)
    return ImageTensors(pixels, masks)


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as handle:
            handle.load()
            return ImageOps.exif_transpose(handle)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise TrainingError(f"{path}: cannot be read as an image ({error}). Remove or replace "
                            "the file.") from error


def _flatten(image: Image.Image) -> Image.Image:
    """RGB; any alpha channel (or palette transparency) composited onto white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _mask_paths(masks: Path, paths: list[Path]) -> list[Path]:
    if not masks.is_dir():
        raise TrainingError(f"{masks}: no such mask folder. Pass a folder with one grayscale "
                            "mask per image, named like the image (e.g. cat1.png for cat1.jpg).")
    found = {p.stem: p for p in sorted(masks.iterdir())
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [p.name for p in paths if p.stem not in found]
    if missing:
        raise TrainingError(f"{masks} has no mask for {', '.join(missing[:5])}: add a grayscale "
                            "image with the same file stem for each training image.")
    return [found[p.stem] for p in paths]


def _read_masks(mask_paths: list[Path], images: list[Image.Image]) -> list[Image.Image]:
    result = []
    for mask_path, image in zip(mask_paths, images, strict=True):
        mask = _open(mask_path)
        mask = mask.getchannel("A") if _alpha_only(mask) else mask.convert("L")
        if mask.size != image.size:
            raise TrainingError(f"{mask_path}: size {mask.size} differs from its image's "
                                f"{image.size}; a mask must have the size of its image.")
        if mask.getextrema()[1] == 0:
            raise TrainingError(f"{mask_path} is entirely black: a mask marks the concept in "
                                "white (grey for partial weight).")
        result.append(mask)
    return result


def _alpha_only(image: Image.Image) -> bool:
    """True for a cut-out: an alpha channel over constant colour, so the alpha is the mask."""
    if image.mode not in ("RGBA", "LA"):
        return False
    low, high = image.convert("L").getextrema()
    return low == high
