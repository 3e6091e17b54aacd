"""bfloat16 decoding: ``SelftokDecoderPipeline.from_pretrained(path, dtype=torch.bfloat16)`` and
``pipe.to(dtype=torch.bfloat16)`` run the decoder, the renderer and the VAE in bf16, keep the image tokenizer (encoder
and quantizer) in float32, and return float32 images and latents.

How close bf16 must be to fp32 is measured on the data: the fp32 pipeline with its decoder, renderer and VAE weights
rounded to bf16 shows what a bf16-sized perturbation of this model does to this output; running the whole computation
in bf16 also rounds every activation, so it may land a few times (``BF16_C``) farther, never more.
"""

import copy
import warnings

import pytest
import torch

from selftok_hf import SelftokDecoderPipeline

pytestmark = pytest.mark.usefixtures("single_thread")

#: How many times the error of rounding the weights alone to bf16 a full bf16 run may reach (measured: 1.8x - 2.8x on
#: the tiny random model, decoder with and without guidance, renderer).
BF16_C = 8.0
STEPS = 4


@pytest.fixture(scope="module")
def pipes(steering_pipeline):
    fp32 = steering_pipeline
    bf16 = copy.deepcopy(fp32).to(dtype=torch.bfloat16)
    rounded = copy.deepcopy(fp32)  # fp32 compute, bf16-rounded weights: the data's own bf16 perturbation scale
    with torch.no_grad():
        for module in (rounded.transformer, rounded.renderer, rounded.vae):
            for param in module.parameters():
                param.copy_(param.to(torch.bfloat16).float())
    return fp32, bf16, rounded


@pytest.fixture(scope="module")
def ids(steering_pipeline):
    cfg = steering_pipeline.image_tokenizer.config
    return torch.randint(0, cfg.codebook_size, (3, cfg.num_image_tokens), generator=torch.Generator().manual_seed(0))


def _relative_l2(x, reference):
    return ((x - reference).norm() / reference.norm()).item()


def test_cast_keeps_the_tokenizer_in_float32(pipes):
    _, bf16, _ = pipes
    assert bf16.transformer.dtype == bf16.renderer.dtype == bf16.vae.dtype == torch.bfloat16
    assert bf16.dtype == torch.bfloat16
    assert {t.dtype for t in bf16.image_tokenizer.state_dict().values() if t.is_floating_point()} == {torch.float32}
    assert bf16.image_tokenizer.quantizer.embed.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_inference_steps=STEPS), dict(num_inference_steps=STEPS, guidance_scale=2.0), dict(use_renderer=True)],
    ids=["decoder", "decoder-cfg", "renderer"],
)
@pytest.mark.parametrize("output_type", ["latent", "pt"])
def test_bf16_decode_is_float_and_close_to_fp32(pipes, ids, kwargs, output_type):
    fp32, bf16, rounded = pipes
    noise = torch.randn(fp32._latent_shape(ids.shape[0]), generator=torch.Generator().manual_seed(1))
    if not kwargs.get("use_renderer"):
        kwargs = dict(kwargs, latents=noise)
    out32, out16, out_rounded = (p(ids, output_type=output_type, **kwargs).images for p in (fp32, bf16, rounded))
    assert out16.dtype == torch.float32 and out16.shape == out32.shape and torch.isfinite(out16).all()
    if output_type == "pt":
        assert out16.min() >= 0 and out16.max() <= 1
    error, scale = _relative_l2(out16, out32), _relative_l2(out_rounded, out32)
    assert scale > 0 and error > 0  # bf16 really ran, and its weights differ from fp32
    assert error <= BF16_C * scale, f"bf16 relative L2 {error:.2e} > {BF16_C} x {scale:.2e} (weights rounded to bf16)"


def test_from_pretrained_bfloat16(tiny_pipeline_dir, tiny_pipeline):
    pipe = SelftokDecoderPipeline.from_pretrained(str(tiny_pipeline_dir), dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == pipe.renderer.dtype == pipe.vae.dtype == torch.bfloat16
    assert pipe.image_tokenizer.dtype == torch.float32 and pipe.image_tokenizer.quantizer.embed.dtype == torch.float32
    # The tokenizer is the fp32 one: the same latents give the same ids.
    latents = torch.randn(tiny_pipeline._latent_shape(2), generator=torch.Generator().manual_seed(2))
    ids = pipe.image_tokenizer.encode(latents=latents).token_ids
    assert torch.equal(ids, tiny_pipeline.image_tokenizer.encode(latents=latents).token_ids)
    # Pixels go through the bf16 VAE; the tokenizer gets float32 latents.
    images = pipe(ids, num_inference_steps=2, output_type="pt").images
    assert images.dtype == torch.float32 and pipe.encode(images * 2 - 1).shape == ids.shape
    assert pipe(ids, use_renderer=True, output_type="latent").images.dtype == torch.float32
    # diffusers' older keyword does the same (and diffusers warns that it is deprecated).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = SelftokDecoderPipeline.from_pretrained(str(tiny_pipeline_dir), torch_dtype=torch.bfloat16)
    assert old.transformer.dtype == torch.bfloat16 and old.image_tokenizer.dtype == torch.float32
