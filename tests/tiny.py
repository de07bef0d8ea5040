"""A tiny random Stable Diffusion pipeline built from configs (no download), for tests.

Words of `WORDS` are single tokens; the UNet has 7 `attn2` layers of widths 16 and 32;
the text encoder is 32 wide with random (non-zero) final layer-norm parameters, so that its
encodings span the whole space as a real CLIP's do. Built in well under a second.
"""

from __future__ import annotations

import functools

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from perfusion_hub.micro.tokenizer import build_tokenizer

TEXT_WIDTH = 32
WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "picture", "painting", "drawing", "of", "on", "in", "with",
    "and", "at", "by", "cat", "dog", "chair", "table", "car", "house", "tree", "flower",
    "bird", "teapot", "red", "blue", "green", "small", "large", "wooden", "metal", "sitting",
    "standing", "beach", "forest", "city", "room", "garden", "close-up",
)


@functools.lru_cache(maxsize=1)
def _tokenizer() -> CLIPTokenizer:
    return build_tokenizer(WORDS)


def tiny_tokenizer() -> CLIPTokenizer:
    """A fresh copy of the shared tiny tokenizer (each pipeline may add tokens to its own)."""
    import copy

    return copy.deepcopy(_tokenizer())


def tiny_unet(seed: int = 0, widths: tuple[int, int] = (16, 32),
              cross_attention_dim: int = TEXT_WIDTH) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=widths, layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_text_encoder(vocab_size: int, seed: int = 0, width: int = TEXT_WIDTH) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    model = CLIPTextModel(config).eval()
    with torch.no_grad():
        norm = model.final_layer_norm
        norm.weight.copy_(1 + 0.3 * torch.randn_like(norm.weight))
        norm.bias.copy_(0.5 * torch.randn_like(norm.bias))
    return model


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4,
        sample_size=16,
    ).eval()


def tiny_pipeline(seed: int = 0, width: int = TEXT_WIDTH,
                  unet_widths: tuple[int, int] = (16, 32)) -> StableDiffusionPipeline:
    """Seeded tiny SD pipeline: 16×16 images, 8×8 latents, 32-token context."""
    tokenizer = tiny_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(seed), text_encoder=tiny_text_encoder(len(tokenizer), seed, width),
        tokenizer=tokenizer, unet=tiny_unet(seed, unet_widths, width),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                clip_sample=False, set_alpha_to_one=False,
                                steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def token_id(pipe: StableDiffusionPipeline, word: str) -> int:
    """The id of a single-token word."""
    ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
    assert len(ids) == 1, f"{word!r} is not one token: {ids}"
    return ids[0]


BASE_CAPTIONS = [f"a {c} {o} on the {p}" for c in ("red", "blue", "green")
                 for o in ("cat", "dog", "chair", "car") for p in ("beach", "city")]
"""Captions for the tiny base's text statistics when it is registered with a Hub."""


def tiny_captions(count: int = 300, seed: int = 0) -> list[str]:
    """Random captions over `WORDS` (every word one token of the tiny tokenizer)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(count)]


def tiny_inverse_covariance(pipe: StableDiffusionPipeline, count: int = 300) -> torch.Tensor:
    """C⁻¹ of the pipeline's text encoder over `tiny_captions` (float32)."""
    from perfusion_hub.bases.statistics import compute_text_statistics

    stats = compute_text_statistics(pipe.tokenizer, pipe.text_encoder, tiny_captions(count),
                                    progress=False)
    return stats.inverse_covariance


@torch.no_grad()
def word_encoding(pipe: StableDiffusionPipeline, prompt: str, word: str) -> torch.Tensor:
    """Encoding (d) of `word` (one token) inside `prompt`, as the pipeline encodes it."""
    ids = pipe.tokenizer(prompt, padding="max_length", truncation=True, return_tensors="pt",
                         max_length=pipe.tokenizer.model_max_length).input_ids
    position = ids[0].tolist().index(token_id(pipe, word))
    return pipe.text_encoder(ids.to(pipe.device))[0][0, position].float()


def tiny_concept(pipe: StableDiffusionPipeline, name: str, seed: int = 0,
                 superclass: str = "cat", noise: float = 0.5):
    """A `Concept` for `pipe`'s base shaped like a trained one: ī_super = the superclass
    encoding in "a photo of a <superclass>", i* near it, v* near the superclass embedding,
    o*_V = W_V ī_super plus noise."""
    from perfusion_hub.bases.fingerprint import fingerprint_pipeline
    from perfusion_hub.perfusion.state import ConceptState

    generator = torch.Generator().manual_seed(seed)
    superclass_input = word_encoding(pipe, f"a photo of a {superclass}", superclass)
    embedding = pipe.text_encoder.get_input_embeddings().weight[token_id(pipe, superclass)]
    state = ConceptState.initial(name, superclass, token_id(pipe, superclass), superclass_input,
                                 embedding.detach().float(), pipe.unet)
    with torch.no_grad():
        state.word_embedding.add_(noise * torch.randn(state.text_width, generator=generator))
        state.target_input.add_(noise * torch.randn(state.text_width, generator=generator))
        for value in state.value_targets.values():
            value.add_(noise * value.norm() / value.numel() ** 0.5
                       * torch.randn(value.shape, generator=generator))
    return state.to_concept(fingerprint_pipeline(pipe, "tiny"), "c" * 64, {"seed": seed})
