"""Configurations of the micro base's components (full size and tiny, for tests)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from perfusion_hub.micro.tokenizer import CONTEXT_LENGTH
from perfusion_hub.micro.world import RES

TEXT_HIDDEN = 128
LATENT_CHANNELS = 4
VAE_FACTOR = 4


def make_clip(tok: CLIPTokenizer, tiny: bool = False) -> CLIPModel:
    """Micro CLIP: text tower hidden 128, 4 layers, 32-token context; ViT on 8×8 patches."""
    width, layers = (32, 1) if tiny else (TEXT_HIDDEN, 4)
    text = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT_LENGTH,
        projection_dim=width,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        image_size=RES,
        patch_size=8,
        projection_dim=width,
    )
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=width
    )
    return CLIPModel(config)


def text_encoder_from_clip(clip: CLIPModel) -> CLIPTextModel:
    """The CLIP's text tower as a standalone CLIPTextModel (the base's text encoder)."""
    te = CLIPTextModel(clip.config.text_config)
    getattr(te, "text_model", te).load_state_dict(clip.text_model.state_dict())
    return te.eval().requires_grad_(False)


def pooled(out: torch.Tensor | BaseModelOutputWithPooling) -> torch.Tensor:
    """Projected CLIP features from `get_*_features` (a tensor before transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def make_vae(tiny: bool = False) -> AutoencoderKL:
    """A factor-4 KL autoencoder: 64×64×3 → 16×16×4."""
    channels = (8, 16, 16) if tiny else (32, 64, 64)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=RES,
    )


def make_unet(tiny: bool = False, cross_attention_dim: int = TEXT_HIDDEN) -> UNet2DConditionModel:
    """An SD-shaped UNet on 16×16×4 latents with cross-attention (attn2) in 7 transformer blocks."""
    channels = (16, 32, 32) if tiny else (64, 128, 128)
    return UNet2DConditionModel(
        sample_size=RES // VAE_FACTOR,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=channels,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8 if tiny else 32,
    )


def make_noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion 1.x's training noise schedule."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
