"""What a render PNG carries: A1111-style `parameters` text and a `phub` JSON chunk.

`parameters` is the line-oriented text other tools (A1111, ComfyUI, image viewers) show:

    a <my-cat> on a <my-chair>
    Negative prompt: blurry
    Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x64, Model hash: 1a2b3c4d5e, ...

`phub` is one JSON object holding everything needed to render the same pixels again: the base
name and fingerprint, every concept with its content hash and gate (β, τ, lock), the scheduler
class and full config, the dtype and the package versions.
"""

from __future__ import annotations

import io
import json
import platform
import re
from dataclasses import asdict, dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from perfusion_hub import __version__
from perfusion_hub.errors import PromptError
from perfusion_hub.files import atomic_write_bytes

PARAMETERS_KEY = "parameters"
PHUB_KEY = "phub"
METADATA_VERSION = 1
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "numpy", "pillow")
_PARAM = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@dataclass(frozen=True)
class ConceptUse:
    """One concept as it was applied: identity (content hash) and its effective gate."""

    name: str
    hash: str
    beta: float
    tau: float
    lock: str


@dataclass(frozen=True)
class RenderParameters:
    """Everything that determines one rendered image (pixels are identical again for the same
    parameters on the same machine, device and package versions)."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    scheduler: dict[str, Any]
    base_name: str
    base_fingerprint: dict[str, Any]
    concepts: tuple[ConceptUse, ...] = ()
    dtype: str = "float32"
    device: str = "cpu"
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def sampler(self) -> str:
        from perfusion_hub.compose.schedulers import SCHEDULERS

        for class_name, label, _ in SCHEDULERS.values():
            if class_name == self.scheduler.get("class"):
                return label
        return str(self.scheduler.get("class", "?"))

    @property
    def model_hash(self) -> str:
        """A1111's short model hash: the first 10 hex digits of the base weights hash."""
        return str(self.base_fingerprint.get("weights_hash", ""))[:10]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["format_version"] = METADATA_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RenderParameters:
        version = data.get("format_version")
        if version != METADATA_VERSION:
            raise PromptError(
                f"Render metadata version {version!r} is not the one this perfusion-hub reads "
                f"({METADATA_VERSION}); upgrade perfusion-hub."
            )
        try:
            return cls(
                prompt=str(data["prompt"]),
                negative_prompt=str(data["negative_prompt"]),
                seed=int(data["seed"]),
                steps=int(data["steps"]),
                guidance=float(data["guidance"]),
                width=int(data["width"]),
                height=int(data["height"]),
                scheduler=dict(data["scheduler"]),
                base_name=str(data["base_name"]),
                base_fingerprint=dict(data["base_fingerprint"]),
                concepts=tuple(
                    ConceptUse(str(c["name"]), str(c["hash"]), float(c["beta"]), float(c["tau"]),
                               str(c["lock"]))
                    for c in data["concepts"]
                ),
                dtype=str(data["dtype"]),
                device=str(data.get("device", "cpu")),
                versions={str(k): str(v) for k, v in dict(data["versions"]).items()},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise PromptError(f"Render metadata is incomplete or invalid ({error!r}).") from None


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine the pixels, and of Python."""
    versions = {"perfusion-hub": __version__, "python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def parameters_text(params: RenderParameters) -> str:
    """The A1111-style `parameters` text of a render."""
    fields = {
        "Steps": str(params.steps),
        "Sampler": params.sampler,
        "CFG scale": _number(params.guidance),
        "Seed": str(params.seed),
        "Size": params.size,
        "Model hash": params.model_hash,
        "Model": params.base_name,
    }
    if params.concepts:
        fields["Concept hashes"] = _quote(
            ", ".join(f"{c.name}: {c.hash[:12]}" for c in params.concepts))
        fields["Perfusion"] = _quote(", ".join(
            f"{c.name}: beta={_number(c.beta)} tau={_number(c.tau)} lock={c.lock}"
            for c in params.concepts
        ))
    fields["Version"] = f"phub {params.versions.get('perfusion-hub', __version__)}"
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    lines.append(", ".join(f"{key}: {value}" for key, value in fields.items()))
    return "\n".join(lines)


def parse_parameters_text(text: str) -> dict[str, str]:
    """Read A1111-style `parameters` text back: `Prompt`, `Negative prompt` and each field."""
    lines = text.strip().split("\n")
    fields: dict[str, str] = {}
    last = lines[-1] if lines else ""
    if len(_PARAM.findall(last)) >= 3:
        for key, value in _PARAM.findall(last):
            if value.startswith('"') and value.endswith('"'):
                value = json.loads(value)
            fields[key.strip()] = value
        lines = lines[:-1]
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:"):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **fields}


def png_bytes(image: Image.Image, params: RenderParameters) -> bytes:
    """PNG file bytes of `image` with both metadata chunks."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_text(params))
    info.add_text(PHUB_KEY, json.dumps(params.to_json(), sort_keys=True, separators=(",", ":")))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | Path, params: RenderParameters) -> Path:
    """Write `image` with its metadata to `path` atomically (never a half-written file)."""
    atomic_write_bytes(path, png_bytes(image, params))
    return Path(path)


def read_png_parameters(path: str | Path) -> RenderParameters:
    """The `RenderParameters` stored in a phub render PNG."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or image.info)
    except (OSError, ValueError) as error:
        raise PromptError(f"{path}: not a readable PNG ({error}).") from None
    if PHUB_KEY not in text:
        raise PromptError(
            f"{path}: carries no '{PHUB_KEY}' metadata; only PNGs written by `phub compose` or "
            "`phub render` can be rendered again."
        )
    try:
        data = json.loads(text[PHUB_KEY])
    except json.JSONDecodeError as error:
        raise PromptError(f"{path}: '{PHUB_KEY}' metadata is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise PromptError(f"{path}: '{PHUB_KEY}' metadata is not a JSON object.")
    return RenderParameters.from_json(data)


def _number(value: float) -> str:
    return f"{value:g}"


def _quote(value: str) -> str:
    return json.dumps(value)
