"""The micro checker: a small CNN that reads what a 64×64 micro-world image contains."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from perfusion_hub.micro.recipe import BATCH, READS, hardware, require_stages
from perfusion_hub.micro.training import (
    Budget,
    Prefetch,
    as_pixels,
    autocast,
    data_workers,
    optimiser_step,
    run_loop,
    warmup_cosine,
)
from perfusion_hub.micro.world import (
    CATEGORIES,
    COLOUR_NAMES,
    COLOURS,
    EYE_COLOURS,
    LAYOUTS,
    PATTERNS,
    POSITIONS,
    SIZES,
    Instance,
    ObjectSpec,
    SceneSpec,
    parse_caption,
    random_scene,
    render,
)

IGNORE = -100
# Per-object heads and their classes; "none" is class 0 of pattern and accent.
OBJECT_HEADS: dict[str, tuple[str, ...]] = {
    "category": CATEGORIES,
    "colour": COLOUR_NAMES,
    "pattern": ("none", *PATTERNS),
    "accent": ("none", *COLOUR_NAMES),
    "eyes": EYE_COLOURS,
    "position": POSITIONS,
    "size": SIZES,
}
SCENE_HEADS: dict[str, tuple[str, ...]] = {"layout": LAYOUTS, "background": COLOUR_NAMES}


@dataclass(frozen=True)
class ObjectReading:
    """What the checker sees of one object. `eyes` is None for anything but a cat."""

    category: str
    colour: str
    pattern: str | None
    accent: str | None
    eyes: str | None
    position: str
    size: str | None


@dataclass(frozen=True)
class SceneReading:
    """What the checker sees in one image; objects left to right (stacked: top first)."""

    layout: str
    background: str
    objects: tuple[ObjectReading, ...]


def canonical_objects(spec: SceneSpec) -> tuple[ObjectSpec, ...]:
    """The scene's objects in the checker's order: left to right, or top to bottom."""
    objs = spec.objects
    if len(objs) == 2 and spec.relation != "on" and objs[0].position == "right":
        return objs[1], objs[0]
    return objs


def targets(specs: Sequence[SceneSpec]) -> dict[str, np.ndarray]:
    """Class indices per head; per-object heads have shape (B, 2), IGNORE where undefined."""
    out = {k: np.full(len(specs), IGNORE, np.int64) for k in SCENE_HEADS}
    out |= {k: np.full((len(specs), 2), IGNORE, np.int64) for k in OBJECT_HEADS}
    for i, s in enumerate(specs):
        out["layout"][i] = LAYOUTS.index(s.layout)
        out["background"][i] = COLOUR_NAMES.index(s.background or "white")
        for k, o in enumerate(canonical_objects(s)):
            out["category"][i, k] = CATEGORIES.index(o.category)
            out["colour"][i, k] = COLOUR_NAMES.index(o.colour)
            out["pattern"][i, k] = OBJECT_HEADS["pattern"].index(o.pattern or "none")
            out["accent"][i, k] = OBJECT_HEADS["accent"].index(o.accent or "none")
            if o.category == "cat":
                out["eyes"][i, k] = EYE_COLOURS.index(o.eyes or "black")
            out["position"][i, k] = POSITIONS.index(o.position or "centre")
            if s.layout == "single":
                out["size"][i, k] = SIZES.index(o.size or "small")
    return out


class PaletteMaps(nn.Module):
    """Per pixel, a soft assignment to the world's named colours: softmax(−‖x − c‖² / T).

    With them, naming the colour of a part a few pixels wide (a collar, a door) only needs
    the part found; from RGB alone a small CNN learns it last (accent and eye colour stayed
    near their base rates while every other field was read right).
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 127.5 - 1.0
        self.register_buffer("palette", palette[None, :, :, None, None], persistent=False)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, colours, H, W)."""
        dist = (x[:, None] - self.palette).pow(2).sum(2)
        return torch.softmax(-dist / self.temperature, dim=1)


class Checker(nn.Module):
    """RGB + palette maps → conv net → 256 features → one linear head per scene field and
    per object slot."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.palette = PaletteMaps()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(3 + len(COLOURS), w),
            *block(w, w),
            nn.MaxPool2d(2),
            *block(w, 2 * w),
            *block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *block(2 * w, 4 * w),
            *block(4 * w, 4 * w),
            nn.MaxPool2d(2),
            *block(4 * w, 4 * w),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * w * 16, 256),
            nn.ReLU(inplace=True),
        )
        self.config = {"width": width}
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in SCENE_HEADS.items()})
        self.heads.update({k: nn.Linear(256, 2 * len(v)) for k, v in OBJECT_HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, 64, 64) in [-1, 1] → logits; per-object heads shaped (B, 2, classes)."""
        h = self.features(torch.cat([x, self.palette(x)], dim=1))
        out = {k: self.heads[k](h) for k in SCENE_HEADS}
        out |= {k: self.heads[k](h).view(len(x), 2, -1) for k in OBJECT_HEADS}
        return out

    def loss(self, logits: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(
            F.cross_entropy(
                logits[k].reshape(-1, logits[k].shape[-1]).float(),
                tgt[k].reshape(-1),
                ignore_index=IGNORE,
            )
            for k in logits
        )

    @torch.no_grad()
    def read(self, images: np.ndarray | torch.Tensor | Sequence[Image.Image]) -> list[SceneReading]:
        """Structured readings of a batch of 64×64 images (uint8 HWC, PIL, or [-1, 1] tensors)."""
        x = as_pixels(images, next(self.parameters()).device)
        self.eval()
        out = {k: v.argmax(-1).cpu().numpy() for k, v in self(x).items()}
        return [_decode(out, i) for i in range(len(x))]

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.half().contiguous() for k, v in self.state_dict().items()},
            path / "checker.safetensors",
        )
        (path / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def load(cls, path: Path) -> Checker:
        model = cls(**json.loads((path / "config.json").read_text()))
        state = {
            k: v.float() if v.is_floating_point() else v
            for k, v in load_file(path / "checker.safetensors").items()
        }
        model.load_state_dict(state)
        return model.eval()


def _decode(out: dict[str, np.ndarray], i: int) -> SceneReading:
    layout = LAYOUTS[out["layout"][i]]
    objs = []
    for k in range(1 if layout == "single" else 2):
        name = {h: OBJECT_HEADS[h][out[h][i, k]] for h in OBJECT_HEADS}
        objs.append(
            ObjectReading(
                category=name["category"],
                colour=name["colour"],
                pattern=None if name["pattern"] == "none" else name["pattern"],
                accent=None if name["accent"] == "none" else name["accent"],
                eyes=name["eyes"] if name["category"] == "cat" else None,
                position=name["position"],
                size=name["size"] if layout == "single" else None,
            )
        )
    return SceneReading(layout, COLOUR_NAMES[out["background"][i]], tuple(objs))


# ----------------------------------------------------------------------------- matching


def object_matches(obj: ObjectReading, want: ObjectSpec, details: bool = False) -> bool:
    """Category, colour and pattern agree, and size/position where `want` sets them.

    With `details`, the instance-only features (accent part, cat eyes) must agree too.
    """
    ok = (obj.category, obj.colour, obj.pattern) == (want.category, want.colour, want.pattern)
    ok &= want.size is None or obj.size is None or obj.size == want.size
    ok &= want.position is None or obj.position == want.position
    if details:
        ok &= obj.accent == want.accent
        ok &= want.category != "cat" or obj.eyes == (want.eyes or "black")
    return ok


def matches_instance(
    reading: SceneReading | ObjectReading, instance: Instance, details: bool = True
) -> bool:
    """Whether the image shows the instance (any of its objects, for a scene reading)."""
    objs = reading.objects if isinstance(reading, SceneReading) else (reading,)
    return any(object_matches(o, instance.object(), details) for o in objs)


def matches_caption(reading: SceneReading, spec: SceneSpec | str, details: bool = False) -> bool:
    """Whether the image shows what the caption (or its parsed spec) asks for."""
    spec = parse_caption(spec) if isinstance(spec, str) else spec
    if spec.background is not None and reading.background != spec.background:
        return False
    if len(reading.objects) != len(spec.objects):
        return False
    got, want = reading.objects, spec.objects
    if len(want) == 1:
        return object_matches(got[0], want[0], details)
    if spec.relation == "on":
        orders = [(0, 1)] if reading.layout == "stacked" else []
    elif spec.relation == "left of":
        orders = [(0, 1)] if reading.layout == "side" else []
    else:
        orders = [(0, 1), (1, 0)] if reading.layout == "side" else []
    strip = lambda o: ObjectSpec(o.category, o.colour, o.pattern, accent=o.accent, eyes=o.eyes)  # noqa: E731
    return any(
        object_matches(got[a], strip(want[0]), details)
        and object_matches(got[b], strip(want[1]), details)
        for a, b in orders
    )


# ----------------------------------------------------------------------------- training


# Share of each training batch that passes through the base's VAE first: renders always
# do, and its decoder blurs the small parts (eyes, collars, stripes) the checker must read.
ROUND_TRIP = 0.5


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild blur and noise so that the checker also reads decoded, imperfect renders."""
    b = len(x)
    blur = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    mix = torch.rand(b, 1, 1, 1, generator=gen, device=x.device) * 0.6
    x = x * (1 - mix) + blur * mix
    sigma = torch.rand(b, 1, 1, 1, generator=gen, device=x.device) * 0.08
    return x + sigma * torch.randn(x.shape, generator=gen, device=x.device)


def _labelled_scenes(i: int, seed: int, batch: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Batch `i` of the checker's training scenes (uint8) and their `targets`."""
    rng = np.random.default_rng([seed, 4, i])
    specs = [random_scene(rng) for _ in range(batch)]
    imgs, _ = render(specs, seed=int(rng.integers(1 << 31)))
    return imgs, targets(specs)


def train_checker(
    work: Path,
    budget: Budget,
    device: torch.device,
    seed: int = 0,
    tiny: bool = False,
    show: bool = True,
) -> dict:
    """Train on fresh generator scenes each step, `ROUND_TRIP` of them passed through the
    base's VAE (`work/decoder`) first; saves `work/checker` and its accuracy on clean and
    on VAE-decoded scenes."""
    require_stages(work, *READS["checker"])
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(work / "decoder").to(device).eval().requires_grad_(False)
    model = Checker(width=8 if tiny else 32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = BATCH[hardware(device, tiny)]["checker"]
    decoded = int(batch * ROUND_TRIP)

    with Prefetch(partial(_labelled_scenes, seed=seed, batch=batch),
                  data_workers(device)) as batches:

        def step(i: int) -> float:
            imgs, labels = batches[i]
            gen = torch.Generator(device).manual_seed(seed * 1_000_003 + i)
            x = as_pixels(imgs, device)
            x[:decoded] = round_trip(vae, x[:decoded])
            x = _augment(x, gen)
            tgt = {k: torch.from_numpy(v).to(device) for k, v in labels.items()}
            model.train()
            with autocast(device):
                loss = model.loss(model(x), tgt)
            return optimiser_step(opt, model, loss, clip=None)

        steps = run_loop(
            "checker",
            {"model": model},
            opt,
            step,
            budget,
            warmup_cosine(2e-3, 30),
            work / "checker.ckpt",
            show=show,
        )
    n = 64 if tiny else 1000
    info = {
        "steps": steps,
        "batch": batch,
        "accuracy": evaluate_checker(model, n=n, seed=seed + 99),
        "accuracy_through_vae": evaluate_checker(model, n=n, seed=seed + 99, vae=vae),
    }
    model.save(work / "checker")
    (work / "checker.done").write_text(json.dumps(info, indent=2))
    return info


@torch.no_grad()
def round_trip(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] encoded and decoded by `vae`: how a render of them would look."""
    with autocast(x.device):
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample
    return decoded.float().clamp(-1, 1)


@torch.no_grad()
def evaluate_checker(
    model: Checker, n: int = 1000, seed: int = 12345, vae: AutoencoderKL | None = None
) -> dict[str, float]:
    """Per-field accuracy on `n` fresh scenes (passed through `vae` first, if given), plus
    `scene` (every field right)."""
    rng = np.random.default_rng(seed)
    specs = [random_scene(rng) for _ in range(n)]
    imgs, _ = render(specs, seed=seed)
    tgt = targets(specs)
    model.eval()
    dev = next(model.parameters()).device
    logits = {k: [] for k in tgt}
    for s in range(0, n, 250):
        x = as_pixels(imgs[s : s + 250], dev)
        for k, v in model(x if vae is None else round_trip(vae, x)).items():
            logits[k].append(v.argmax(-1).cpu().numpy())
    acc, every = {}, np.ones(n, bool)
    for k, t in tgt.items():
        pred = np.concatenate(logits[k])
        valid = t != IGNORE
        right = (pred == t) | ~valid
        acc[k] = float(right[valid].mean())
        every &= right.reshape(n, -1).all(-1)
    acc["scene"] = float(every.mean())
    return acc
