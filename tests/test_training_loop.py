"""The training loop of method.md §5 on a tiny random pipeline (a few steps each)."""

from __future__ import annotations

import hashlib
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_pipeline, token_id

from perfusion_hub.bases import LoadedBase, compute_text_statistics, cross_attention_layers
from perfusion_hub.concepts import BaseFingerprint, load_concept, save_concept
from perfusion_hub.errors import TrainingError
from perfusion_hub.perfusion import apply
from perfusion_hub.training import loop
from perfusion_hub.training.images import read_image_folder
from perfusion_hub.training.loop import TrainingInterrupted, train_loop
from perfusion_hub.training.options import TrainOptions
from perfusion_hub.training.progress import SilentReporter

TEMPLATES = ["a photo of a {}", "{} on the beach", "a small red {} in a room with a tree"]



def tiny_base(templates=TEMPLATES) -> LoadedBase:
    pipe = tiny_pipeline()
    captions = [f"a {c} {o} on the {p}" for c in ("red", "blue", "green", "small")
                for o in ("cat", "dog", "chair", "car", "tree") for p in ("beach", "city")]
    stats = compute_text_statistics(pipe.tokenizer, pipe.text_encoder, captions, progress=False)
    fingerprint = BaseFingerprint("tiny", 32, cross_attention_layers(pipe.unet), "0" * 64, "tiny")
    return LoadedBase("tiny", pipe, fingerprint, stats.inverse_covariance, stats.hash, 16,
                      list(templates), {"num_inference_steps": 2})


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


def run(base, images, tmp_path, masks=None, resume=False, on_step=None, **options):
    settings = TrainOptions(**{"steps": 3, "batch_size": 2, "grad_accum": 2, **options})
    return train_loop(base, read_image_folder(images, masks), name="my-cat", superclass="cat",
                      options=settings, folder=tmp_path / "run", resume=resume,
                      reporter=SilentReporter(), on_step=on_step)


def checksums(*modules):
    return {f"{index}.{name}": hashlib.sha256(tensor.detach().cpu().numpy().tobytes()).hexdigest()
            for index, module in enumerate(modules)
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]}


def test_only_word_embedding_and_value_targets_change(images, tmp_path):
    base = tiny_base()
    pipe = base.pipe
    before = checksums(pipe.unet, pipe.text_encoder, pipe.vae)
    embedding = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    vocabulary = len(pipe.tokenizer)
    cat = token_id(pipe, "cat")
    seen_rows = []

    def during(step, loss):  # inside the edit: the longer embedding keeps every base row
        rows = pipe.text_encoder.get_input_embeddings().weight[: len(embedding)]
        seen_rows.append(torch.equal(rows, embedding))

    result = run(base, images, tmp_path, on_step=during)
    state = result.state
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    assert seen_rows == [True, True, True]
    assert checksums(pipe.unet, pipe.text_encoder, pipe.vae) == before
    assert len(pipe.tokenizer) == vocabulary and pipe.text_encoder.get_input_embeddings().weight \
        .shape[0] == vocabulary
    assert not any(p.requires_grad for m in (pipe.unet, pipe.text_encoder, pipe.vae)
                   for p in m.parameters())

    # v* started at the superclass embedding and moved; o*_V moved away from W_V ī_super
    assert not torch.allclose(state.word_embedding.detach(), embedding[cat])
    for layer in cross_attention_layers(pipe.unet):
        attn = pipe.unet.get_submodule(layer.name)
        start = attn.to_v.weight.detach() @ state.superclass_input
        assert not torch.allclose(state.value_target(layer.name).detach(), start)
        # keys locked: o*_K = W_K ī_super, recomputed from the untouched ī_super
        key = state.key_target(layer.name, attn.to_k.weight)
        assert torch.equal(key, attn.to_k.weight.detach().float() @ state.superclass_input)
    # ī_super (hence every o*_K) is fixed before step 1: a 1-step run of the same seed has it
    one_step = run(tiny_base(), images, tmp_path / "one", steps=1).state
    assert torch.equal(one_step.superclass_input, state.superclass_input)
    assert {name for name, _ in state.named_parameters()} == {
        "word_embedding", *(f"value_targets.{key}" for key in state.value_targets)}
    # i* is the EMA: moved from ī_super, but only a little after 3 steps of 0.01
    drift = (state.target_input - state.superclass_input).norm() / state.superclass_input.norm()
    assert 0 < drift < 0.1
    assert not (tmp_path / "run" / "preview-000003.png").exists()


def test_superclass_input_is_the_first_batch_mean(images, tmp_path):
    base = tiny_base(["a {}", "{} on the beach"])
    state = run(base, images, tmp_path, steps=1, lr_values=0.0, lr_embedding=0.0).state
    pipe = base.pipe
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randint(2, (4,), generator=generator).tolist()
    prompts = [["a cat", "cat on the beach"][i] for i in chosen]
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        encoding = pipe.text_encoder(ids.input_ids)[0]
    positions = [2 if p == "a cat" else 1 for p in prompts]
    expected = torch.stack([encoding[i, positions[i]] for i in range(4)]).mean(0)
    assert torch.allclose(state.superclass_input, expected, atol=1e-6)
    # with zero learning rates, the weight-decay-free AdamW leaves o*_V = W_V ī_super
    layer = cross_attention_layers(pipe.unet)[0]
    to_v = pipe.unet.get_submodule(layer.name).to_v.weight.detach()
    assert torch.allclose(state.value_target(layer.name).detach(), to_v @ expected, atol=1e-6)


def superclass_norm(base: LoadedBase) -> float:
    """‖word embedding of "cat"‖ in the base's text encoder."""
    embeddings = base.pipe.text_encoder.get_input_embeddings().weight
    return float(embeddings[token_id(base.pipe, "cat")].norm())


def test_max_embedding_norm_keeps_v_star_word_sized(images, tmp_path):
    base = tiny_base()
    limit = 1.5 * superclass_norm(base)
    free = run(base, images, tmp_path / "free", lr_embedding=0.5).state.word_embedding
    capped = run(base, images, tmp_path / "capped", lr_embedding=0.5,
                 max_embedding_norm=1.5).state.word_embedding
    assert float(free.norm()) > limit
    assert float(capped.norm()) == pytest.approx(limit, rel=1e-5)
    with pytest.raises(TrainingError, match="--max-embedding-norm"):
        TrainOptions(max_embedding_norm=-1.0)


def test_a_base_can_name_the_default_bound(images, tmp_path):
    base = tiny_base()
    limit = 1.5 * superclass_norm(base)
    assert run(base, images, tmp_path / "none").options.max_embedding_norm == 0.0
    base.options["max_embedding_norm"] = 1.5
    by_base = run(base, images, tmp_path / "base", lr_embedding=0.5)
    assert by_base.options.max_embedding_norm == 1.5
    assert float(by_base.state.word_embedding.norm()) == pytest.approx(limit, rel=1e-5)
    free = run(base, images, tmp_path / "free", lr_embedding=0.5, max_embedding_norm=0.0)
    assert free.options.max_embedding_norm == 0.0
    assert float(free.state.word_embedding.norm()) > limit


def test_interrupted_then_resumed_equals_uninterrupted(images, tmp_path, monkeypatch):
    straight = run(tiny_base(), images, tmp_path / "a", steps=5).state
    calls = {"n": 0}
    original = loop._Latents.noisy

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3 * 2 + 2:  # second micro-batch of step 4
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loop._Latents, "noisy", interrupting)
    with pytest.raises(TrainingInterrupted) as stopped:
        run(tiny_base(), images, tmp_path / "b", steps=5, checkpoint_every=2)
    assert stopped.value.step == 3 and stopped.value.checkpoint.is_file()
    monkeypatch.setattr(loop._Latents, "noisy", original)
    resumed = run(tiny_base(), images, tmp_path / "b", steps=5, resume=True)
    assert resumed.resumed_from == 3 and len(resumed.losses) == 5
    for name, tensor in straight.state_dict().items():
        assert torch.equal(resumed.state.state_dict()[name], tensor), name  # bit-exact on CPU


def test_resume_refuses_other_options(images, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_step", _raise(KeyboardInterrupt))
    with pytest.raises(TrainingInterrupted):
        run(tiny_base(), images, tmp_path)
    monkeypatch.undo()
    with pytest.raises(TrainingError, match="lr_values: 0.03 → 0.01"):
        run(tiny_base(), images, tmp_path, resume=True, lr_values=0.01)


def test_out_of_memory_suggests_smaller_batches(images, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "_step", _raise(torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(TrainingError, match="--batch-size 1 --grad-accum 4.*--resume"):
        run(tiny_base(), images, tmp_path)


def test_global_lock_masks_and_preview(images, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for index in range(3):
        mask = Image.new("L", (24, 20), 0)
        mask.paste(255 if index else 128, (4, 4, 16, 16))
        mask.save(masks / f"{index}.png")
    result = run(tiny_base(), images, tmp_path, masks=masks, lock="global", steps=2,
                 preview_every=2)
    assert result.state.lock == "global" and all(np.isfinite(result.losses))
    with Image.open(tmp_path / "run" / "preview-000002.png") as preview:
        assert preview.size == (16, 16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_trains_a_float32_concept(images, tmp_path, dtype):
    """As on a GPU: frozen base in bf16 (or fp16 with a gradient scaler), concept in fp32."""
    reference = run(tiny_base(), images, tmp_path / "fp32", steps=2)
    base = tiny_base()
    base.pipe.to(dtype=dtype)
    result = run(base, images, tmp_path / "half", steps=2)
    assert result.precision == str(dtype).removeprefix("torch.")
    assert all(np.isfinite(result.losses))
    assert np.allclose(result.losses, reference.losses, rtol=0.05)
    for name, tensor in result.state.state_dict().items():
        assert tensor.dtype == torch.float32, name
        expected = reference.state.state_dict()[name]
        assert (tensor - expected).norm() / expected.norm() < 0.05, name


def test_mask_weights_are_normalised_per_image(images, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for index in range(3):
        mask = Image.new("L", (24, 20), 0)
        mask.paste(255, (0, 0, 12, 20))  # left half of each image
        mask.save(masks / f"{index}.png")
    base = tiny_base()
    latents = loop._Latents.encode(base.pipe.vae, read_image_folder(images, masks), 16,
                                   torch.device("cpu"))
    assert latents.weights.shape == (6, 1, 8, 8) and latents.mean.shape == (6, 4, 8, 8)
    assert torch.allclose(latents.weights.mean(dim=(1, 2, 3)), torch.ones(6))
    assert latents.weights[:3, 0, :, -1].max() == 0 and latents.weights[3:, 0, :, 0].max() == 0


def test_trained_concept_saves_loads_and_composes(images, tmp_path):
    base = tiny_base()
    state = run(base, images, tmp_path, steps=2).state
    concept = state.to_concept(base.fingerprint, base.covariance_hash, {"steps": 2})
    save_concept(concept, tmp_path / "c.safetensors")
    loaded, _ = load_concept(tmp_path / "c.safetensors")
    assert loaded.token == "<my-cat>" and loaded.superclass == "cat"
    with apply(base.pipe, [loaded], base.inverse_covariance):
        image = base.pipe("a photo of a <my-cat>", num_inference_steps=2, height=16, width=16,
                          output_type="np").images
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


def test_ctrl_c_during_an_optimiser_step_waits_for_its_end():
    before = signal.getsignal(signal.SIGINT)
    applied = []
    with pytest.raises(KeyboardInterrupt), loop._deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        applied.append("step")  # still runs: the interrupt is held until the block ends
    assert applied == ["step"]
    assert signal.getsignal(signal.SIGINT) is before
