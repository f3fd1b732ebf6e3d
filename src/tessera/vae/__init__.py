"""Stage 1: the discrete VAE that turns images into grids of tokens and back."""

from tessera.data.images import psnr
from tessera.vae.convert import config_from_openai, convert_openai_state_dicts, load_openai
from tessera.vae.losses import codebook_stats, kl_to_uniform, logit_laplace_nll
from tessera.vae.model import Decoder, DiscreteVAE, Encoder
from tessera.vae.pixels import map_pixels, unmap_pixels

__all__ = [
    "Decoder",
    "DiscreteVAE",
    "Encoder",
    "codebook_stats",
    "config_from_openai",
    "convert_openai_state_dicts",
    "kl_to_uniform",
    "load_openai",
    "logit_laplace_nll",
    "map_pixels",
    "psnr",
    "unmap_pixels",
]
