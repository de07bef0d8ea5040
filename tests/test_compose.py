"""`phub compose` / `Hub.compose` on a tiny random Stable Diffusion pipeline saved to a folder.

Two concepts are registered whose i* is the encoding of their own token in
"a <my-cat> on a <my-chair>", so that each gate opens on its own token (s = 1 there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny import WORDS, tiny_pipeline
from typer.testing import CliRunner

from cli.main import app
from perfusion_hub.api import Hub
from perfusion_hub.compose import (
    ImageRequest,
    Renderer,
    parse_parameters_text,
    read_png_parameters,
)
from perfusion_hub.concepts.synthetic import synthetic_base, synthetic_concept

PROMPT = "a <my-cat> on a <my-chair>"
STEPS = ["--steps", "3"]


@dataclass
class World:
    """A phub home with a tiny base (saved as a diffusers folder) and two fitted concepts."""

    root: Path
    hub: Hub
    base: str
    other_base: str

    def cli(self, *args: str) -> tuple[int, str, str]:
        """(exit code, stdout, stdout and stderr together)."""
        result = CliRunner().invoke(app, ["--home", str(self.hub.settings.home), *args])
        return result.exit_code, result.stdout, result.output

    def compose(self, prompt: str | None = PROMPT, **options):
        options.setdefault("steps", 3)
        return self.hub.compose(prompt, base=self.base, **options)


def build_world(root: Path) -> World:
    from perfusion_hub.perfusion import apply

    folder = root / "tiny-sd"
    tiny_pipeline().save_pretrained(folder)
    hub = Hub(root / "home")
    captions = [f"a {w} {v} on the {u}" for w in WORDS for v in WORDS[:8] for u in WORDS[-6:]]
    record = hub.add_base(str(folder), name="tiny-sd", captions=captions)
    loaded = hub.open_base(record.name)
    cat = synthetic_concept("my-cat", base=loaded.fingerprint, seed=1, superclass="cat")
    chair = synthetic_concept("my-chair", base=loaded.fingerprint, seed=2, superclass="chair")
    with apply(loaded.pipe, [cat, chair], loaded.inverse_covariance) as edit:
        ids = edit.tokenizer(PROMPT).input_ids
        encoding = edit.encode(PROMPT)[0].detach().numpy()
        for concept, token_id in zip((cat, chair), edit.token_ids, strict=True):
            concept.target_input = encoding[ids.index(token_id)].copy()
    hub.registry.add(cat)
    hub.registry.add(chair)
    other = hub.registry.add(synthetic_concept("their-dog", base=synthetic_base(), seed=3))
    return World(root, hub, loaded.name, other.base_name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("compose"))


def pixels(image: Image.Image | Path) -> np.ndarray:
    with Image.open(image) if isinstance(image, Path) else image as opened:
        return np.asarray(opened.convert("RGB"))


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_two_concepts_compose_and_change_the_output(world: World, tmp_path: Path) -> None:
    images = {
        prompt: pixels(world.compose(prompt, seed=5, out=tmp_path / f"{n}.png")[0])
        for n, prompt in enumerate((PROMPT, "a cat on a chair", "a <my-cat> on a chair",
                                    "a cat on a <my-chair>"))
    }
    both = images[PROMPT]
    for prompt, other in images.items():
        if prompt != PROMPT:
            assert np.abs(both.astype(int) - other).mean() > 1.0, prompt


def test_each_gate_fires_on_its_own_token(world: World) -> None:
    loaded = world.hub.open_base(world.base)
    with Renderer(world.hub.registry, loaded, record_gates=True) as renderer:
        renderer.render(ImageRequest(PROMPT, seed=0, steps=2))
        edit = renderer.edit
        gates = {name: values[-1] for name, values in edit.gates().items()}  # conditional row
        ids = edit.tokenizer(PROMPT).input_ids
        positions = {s.name: ids.index(t) for s, t in zip(edit.states, edit.token_ids, strict=True)}
    for name, position in positions.items():
        own = gates[name]
        assert own[position] > 0.8, (name, own)
        assert int(own.argmax()) == position
        for other, other_position in positions.items():
            if other != name:
                assert own[other_position] < 0.2 and gates[other][position] < 0.2


@contextlib.contextmanager
def registered_twin(world: World) -> Iterator[None]:
    """<my-twin>: another v* with the i* of <my-cat>, registered while the block runs."""
    cat = world.hub.registry.load(world.hub.registry.get("my-cat", base=world.base))
    world.hub.registry.add(dataclasses.replace(cat, name="my-twin",
                                               word_embedding=-cat.word_embedding))
    try:
        yield
    finally:
        world.hub.registry.remove("my-twin", base=world.base)


def test_concepts_whose_gates_open_on_each_other_are_named(world: World,
                                                             tmp_path: Path) -> None:
    with registered_twin(world):
        code, stdout, output = world.cli("compose", "a <my-cat> next to a <my-twin>", "--base",
                                         world.base, *STEPS, "--seed", "0", "--out",
                                         str(tmp_path / "twins.png"))
        swept = world.compose("a <my-cat> next to a <my-twin>", seed=0, out=tmp_path / "sweep",
                              sweep=["beta=0.9:0.6:2"]).notes
    assert code == 0, output
    assert stdout.strip() == str(tmp_path / "twins.png")  # notes stay off stdout
    # <my-cat> sits where it sat when its i* was taken, and <my-twin> shares that i*
    assert "note: <my-cat> opens the gate of <my-twin> to 88%" in output
    assert world.compose(seed=0, out=tmp_path / "apart.png").notes == ()
    # each render's own β: both ends of the sweep are named
    assert {n.split("β ")[1][:4] for n in swept} == {"0.90", "0.60"}


def test_same_seed_gives_identical_pixels(world: World, tmp_path: Path) -> None:
    first = world.compose(seed=11, num_images=2, out=tmp_path / "a")
    again = world.compose(seed=11, num_images=2, out=tmp_path / "b")
    other = world.compose(seed=12, out=tmp_path / "c")
    assert [p.name for p in first.paths] == ["a-my-cat-on-a-my-chair-11.png",
                                             "a-my-cat-on-a-my-chair-12.png"]
    for image, copy in zip(first, again, strict=True):
        assert np.array_equal(pixels(image), pixels(copy))
    assert np.array_equal(pixels(first[1]), pixels(other[0]))  # image k uses seed + k
    assert not np.array_equal(pixels(first[0]), pixels(first[1]))


@pytest.mark.parametrize("prompt", [PROMPT, "a <my-cat:lock=global> on a chair"])
def test_a_batch_of_seeds_matches_single_renders(world: World, prompt: str) -> None:
    loaded = world.hub.open_base(world.base)
    request = ImageRequest(prompt, seed=3, steps=3)
    with Renderer(world.hub.registry, loaded) as renderer:
        batch = renderer.render_seeds(request, [3, 4, 5])
        singles = [renderer.render(dataclasses.replace(request, seed=s)) for s in (3, 4, 5)]
    for (image, params), (single, single_params) in zip(batch, singles, strict=True):
        assert params == single_params
        assert np.abs(pixels(image).astype(int) - pixels(single)).max() <= 2
    assert not np.array_equal(pixels(batch[0][0]), pixels(batch[1][0]))


def test_from_png_renders_the_same_pixels_and_metadata(world: World, tmp_path: Path) -> None:
    prompt = "a <my-cat:beta=0.6,lock=global> on a <my-chair:tau=0.2>"
    code, output, _ = world.cli("compose", prompt, "--base", world.base, "--seed", "7", *STEPS,
                             "--negative", "blurry", "--scheduler", "euler-a", "--guidance", "5",
                             "--beta", "0.65", "--out", str(tmp_path / "orig.png"))
    assert code == 0, output
    original = Path(output.strip().splitlines()[-1])
    code, output, _ = world.cli("compose", "--from-png", str(original),
                                "--out", str(tmp_path / "again.png"))
    assert code == 0, output
    again = Path(output.strip().splitlines()[-1])
    assert np.array_equal(pixels(original), pixels(again))
    assert read_png_parameters(again) == read_png_parameters(original)

    params = read_png_parameters(original)
    assert (params.prompt, params.negative_prompt, params.seed, params.steps) == (
        prompt, "blurry", 7, 3)
    assert params.guidance == 5.0 and params.scheduler["class"] == "EulerAncestralDiscreteScheduler"
    gates = {c.name: (c.beta, c.tau, c.lock) for c in params.concepts}
    assert gates == {"my-cat": (0.6, 0.15, "global"), "my-chair": (0.65, 0.2, "local")}
    stored = world.hub.registry.get("my-cat", base=world.base).content_hash
    assert params.concepts[0].hash == stored

    with Image.open(original) as image:
        text = parse_parameters_text(image.info["parameters"])
        phub = json.loads(image.info["phub"])
    assert text["Prompt"] == prompt and text["Negative prompt"] == "blurry"
    assert (text["Steps"], text["Sampler"], text["CFG scale"], text["Seed"], text["Size"]) == (
        "3", "Euler a", "5", "7", "16x16")
    assert text["Model hash"] == params.base_fingerprint["weights_hash"][:10]
    assert text["Concept hashes"] == ", ".join(f"{c.name}: {c.hash[:12]}" for c in params.concepts)
    assert phub["versions"]["torch"] and phub["base_fingerprint"]["layers"]

    code, output, _ = world.cli("compose", "--from-png", str(original), "--seed", "8",
                                "--out", str(tmp_path / "seed8.png"))
    assert code == 0, output
    assert read_png_parameters(tmp_path / "seed8.png").seed == 8


def test_every_render_is_logged(world: World, tmp_path: Path) -> None:
    before = len(world.hub.history(limit=None))
    images = world.compose(seed=3, num_images=2, out=tmp_path)
    logged = world.hub.history(limit=2)
    assert len(world.hub.history(limit=None)) == before + 2
    assert {Path(r.output_path) for r in logged} == {p.resolve() for p in images.paths}
    assert {r.seed for r in logged} == {3, 4}
    assert [c["name"] for c in logged[0].concepts] == ["my-cat", "my-chair"]
    assert logged[0].parameters["base_name"] == world.base


def test_sweep_renders_a_grid_with_one_seed_and_a_sheet(world: World, tmp_path: Path) -> None:
    code, output, _ = world.cli("compose", PROMPT, "--base", world.base, "--seed", "4", *STEPS,
                             "--sweep", "beta=0.3:0.9:2", "--sweep", "tau=0.1:0.3:2",
                             "--out", str(tmp_path))
    assert code == 0, output
    paths = [Path(line) for line in output.strip().splitlines()]
    sheet = paths.pop()
    assert sheet.name.endswith("-sweep.png") and len(paths) == 4
    params = [read_png_parameters(path) for path in paths]
    assert {p.seed for p in params} == {4}
    assert [(p.concepts[0].beta, p.concepts[0].tau) for p in params] == [
        (0.3, 0.1), (0.3, 0.3), (0.9, 0.1), (0.9, 0.3)]
    assert len({pixels(path).tobytes() for path in paths}) == 4
    with Image.open(sheet) as image:
        assert image.width > 4 * 16 and "parameters" not in image.info


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["", ], "prompt is empty"),
        (["a <my-cat on a chair"], "Unbalanced"),
        (["a <my-cat:gamma=2>"], "unknown override 'gamma'"),
        (["a <my-cat:beta=1.5>"], "out of range"),
        (["a <my-cat:tau=0>"], "out of range"),
        (["a <my-cat>", "--beta", "-1"], "out of range"),
        (["a <my-cta>"], "Did you mean 'my-cat'"),
        (["a <their-dog>"], "belongs to base"),
        (["a <my-cat>", "--size", "20x20"], "multiple of 8"),
        (["a <my-cat>", "--scheduler", "lms"], "Unknown scheduler"),
        (["a <my-cat>", "--dtype", "float8"], "Unknown dtype"),
        (["a cat", "--sweep", "beta=0.5:0.8:2"], "names none"),
        (["a <my-cat>", "--sweep", "beta=0.5:1.8:2"], "out of range"),
        (["a <my-cat>", "--out", "{blocker}/sub/x.png"], "Cannot write"),
        (["--from-png", "{plain_png}"], "no 'phub' metadata"),
        (["a cat", "--from-png", "{plain_png}"], "not both"),
    ],
)
def test_bad_input_exits_1_with_message_and_writes_nothing(
        world: World, tmp_path: Path, args: list[str], message: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    plain_png = tmp_path / "plain.png"
    Image.new("RGB", (16, 16)).save(plain_png)
    out = tmp_path / "out"
    args = [a.format(blocker=blocker, plain_png=plain_png) for a in args]
    if "--out" not in args:
        args += ["--out", str(out)]
    renders_before = len(world.hub.history(limit=None))
    code, _, output = world.cli("compose", *args, "--base", world.base, *STEPS)
    assert code == 1, output
    assert message in " ".join(output.split()), output
    assert "Traceback" not in output
    assert files_in(out) == []
    assert len(world.hub.history(limit=None)) == renders_before
    if "belongs to base" in message:
        assert world.other_base in output and world.base in output
    if "Did you mean" in message:
        assert "phub list" in output


def test_parameters_text_survives_commas_quotes_and_lines() -> None:
    from perfusion_hub.compose import ConceptUse, RenderParameters
    from perfusion_hub.compose.metadata import parameters_text

    params = RenderParameters(
        prompt='a <my-cat>, "quoted",\nsecond line', negative_prompt="blurry, dark", seed=3,
        steps=20, guidance=7.5, width=64, height=48,
        scheduler={"class": "DPMSolverMultistepScheduler", "config": {}}, base_name="micro",
        base_fingerprint={"weights_hash": "ab" * 32},
        concepts=(ConceptUse("my-cat", "cd" * 32, 0.7, 0.15, "local"),),
    )
    fields = parse_parameters_text(parameters_text(params))
    assert fields["Prompt"] == params.prompt and fields["Negative prompt"] == "blurry, dark"
    assert (fields["Sampler"], fields["CFG scale"], fields["Size"]) == ("DPM++ 2M", "7.5", "64x48")
    assert fields["Perfusion"] == "my-cat: beta=0.7 tau=0.15 lock=local"
    assert RenderParameters.from_json(json.loads(json.dumps(params.to_json()))) == params
