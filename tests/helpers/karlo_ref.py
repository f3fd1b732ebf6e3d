"""A small random Karlo, built and saved by diffusers and transformers themselves (test-only
references), in diffusers' ``UnCLIPPipeline`` folder layout, plus an image tower beside it.

Every parameter is jittered away from the libraries' initialisation (zero positions, zero
null embedding, zero CLIP statistics would let a wrong mapping pass)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from helpers import clip_ref
from helpers.references import missing_reference


def diffusers_unclip() -> Any:
    try:
        import diffusers
        from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    except ImportError:
        missing_reference("diffusers")
    return diffusers, UnCLIPTextProjModel


def _jitter(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.eval()


@dataclasses.dataclass
class SmallKarlo:
    pipe: Any  # diffusers' UnCLIPPipeline
    vision: Any  # transformers' CLIPVisionModelWithProjection (the image tower)
    folder: Path  # the saved diffusers folder
    clip_folder: Path  # the saved image tower


def small_karlo(root: Path, *, seed: int = 0) -> SmallKarlo:
    """Prior 2 layers x 32 wide over 77 CLIP tokens; decoder 16 px (32, 64 channels,
    attention at 8 px, 48-wide context); super-resolution 16 -> 32 px, first and last; CLIP
    text tower 32 wide (OpenAI's vocabulary, Karlo's legacy eos_token_id), image tower 64."""
    tf = clip_ref.transformers_clip()
    diffusers, text_proj_cls = diffusers_unclip()
    torch.manual_seed(seed)
    # Karlo's tokenizer pads with "!" (id 0), as diffusers' conversion set it
    tok_dir = clip_ref.write_hf_tokenizer(root / "tokenizer_src", pad="!")
    tc = clip_ref.small_text_config(legacy_eos=True, width=32)
    text = _jitter(tf.CLIPTextModelWithProjection(tf.CLIPTextConfig(**tc)))
    vision = _jitter(
        tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**clip_ref.small_vision_config()))
    )
    prior = _jitter(
        diffusers.PriorTransformer(
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            embedding_dim=32,
            num_embeddings=77,
            additional_embeddings=4,
        )
    )
    with torch.no_grad():
        prior.clip_std.copy_(1 + prior.clip_std.abs())
    decoder = _jitter(
        diffusers.UNet2DConditionModel(
            sample_size=16,
            in_channels=3,
            out_channels=6,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            attention_head_dim=16,
            cross_attention_dim=48,
            class_embed_type="identity",
            resnet_time_scale_shift="scale_shift",
            norm_num_groups=8,
        )
    )
    with torch.no_grad():  # a trained decoder's variance channels stay in [-1, 1]
        decoder.conv_out.weight[3:] *= 0.05
        decoder.conv_out.bias[3:] *= 0.05
    text_proj = _jitter(
        text_proj_cls(
            clip_extra_context_tokens=4,
            clip_embeddings_dim=32,
            time_embed_dim=128,
            cross_attention_dim=48,
        )
    )

    def super_res(size: int | None) -> Any:
        # as diffusers' Karlo conversion builds them: the UNet2DModel's default time
        # embedding (added, no scale-shift); super_res_last without a sample_size
        return _jitter(
            diffusers.UNet2DModel(
                sample_size=size,
                in_channels=6,
                out_channels=3,
                block_out_channels=(16, 32),
                layers_per_block=1,
                down_block_types=("ResnetDownsampleBlock2D",) * 2,
                up_block_types=("ResnetUpsampleBlock2D",) * 2,
                add_attention=False,
                norm_num_groups=8,
            )
        )

    sched = diffusers.UnCLIPScheduler
    pipe = diffusers.UnCLIPPipeline(
        prior=prior,
        decoder=decoder,
        text_encoder=text,
        tokenizer=tf.CLIPTokenizer.from_pretrained(str(tok_dir)),
        text_proj=text_proj,
        super_res_first=super_res(32),
        super_res_last=super_res(None),
        # Karlo's scheduler configs (the prior's x0 clamped at +-5 here to exercise the clamp)
        prior_scheduler=sched(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        decoder_scheduler=sched(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=sched(variance_type="fixed_small_log", prediction_type="epsilon"),
    )
    pipe.set_progress_bar_config(disable=True)
    folder, clip_folder = root / "karlo", root / "image_encoder"
    pipe.save_pretrained(str(folder))
    vision.save_pretrained(str(clip_folder))
    return SmallKarlo(pipe, vision, folder, clip_folder)


def ddim_unclip_scheduler(base: Any) -> Any:
    """``base`` (an ``UnCLIPScheduler``) with DDIM's deterministic step (η = 0, Song et al.
    eq. 12) in place of its ancestral one, same timesteps and x0 clamp: what tessera samples
    Karlo's prior and upsamplers with, so the two pipelines compare like with like."""
    diffusers, _ = diffusers_unclip()
    from diffusers.schedulers.scheduling_unclip import UnCLIPSchedulerOutput

    class DDIMStepUnCLIPScheduler(diffusers.UnCLIPScheduler):
        def step(
            self,
            model_output,
            timestep,
            sample,
            prev_timestep=None,
            generator=None,
            return_dict=True,
        ):
            t = int(timestep)
            prev = t - 1 if prev_timestep is None else int(prev_timestep)
            a_t = self.alphas_cumprod[t]
            a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.one
            if self.config.prediction_type == "epsilon":
                x0 = (sample - (1 - a_t) ** 0.5 * model_output) / a_t**0.5
            else:
                x0 = model_output
            if self.config.clip_sample:
                r = self.config.clip_sample_range
                x0 = x0.clamp(-r, r)
            eps = (sample - a_t**0.5 * x0) / (1 - a_t) ** 0.5
            return UnCLIPSchedulerOutput(
                prev_sample=a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps,
                pred_original_sample=x0,
            )

    return DDIMStepUnCLIPScheduler.from_config(base.config)


def float64_tables(sched: Any) -> Any:
    """``sched`` with tessera's float64 cosine tables in place of its float32 ones (the
    formulas compared, not the tables' rounding; as tessera.diffusion's parity tests do)."""
    from tessera.diffusion import named_schedule

    table = named_schedule("cosine", sched.config.num_train_timesteps)
    sched.betas = table.betas.clone()
    sched.alphas = 1.0 - table.betas
    sched.alphas_cumprod = table.alphas_cumprod.clone()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched
