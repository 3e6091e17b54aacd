"""SelftokDecoderPipeline: official sampler parity on the fixtures, CFG, I/O handling, save/load."""

import os
import subprocess
import sys
import textwrap
import warnings

import PIL.Image
import pytest
import torch

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.conversion.convert_selftok_checkpoint import (
    build_pipeline_from_official,
    load_official_config,
    load_official_state_dict,
)
from selftok_hf.conversion.convert_selftok_checkpoint import main as convert_main
from selftok_hf.vae import RandomWeightsWarning


@pytest.fixture(scope="module")
def pipe(reference_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe = build_pipeline_from_official(
            load_official_config(str(reference_dir / "config.yaml")),
            load_official_state_dict(str(reference_dir / "official_tokenizer_state_dict.safetensors")),
            load_official_config(str(reference_dir / "renderer_config.yaml")),
            load_official_state_dict(str(reference_dir / "official_renderer_state_dict.safetensors")),
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ar(ids):
    """Fixture ids are in the official (code) order; the pipeline takes AR order."""
    return ids.flip(1)


@pytest.mark.parametrize("steps", [50, 8])
def test_sampler_matches_official(pipe, cases, steps):
    seen = []
    hook = pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(
            (kwargs["hidden_states"].clone(), kwargs["visibility"], out.sample.clone(), kwargs["timestep"][0].item())
        ),
        with_kwargs=True,
    )
    try:
        final = pipe(ar(cases["sample.ids"]), num_inference_steps=steps, latents=cases["sample.noise"], output_type="latent").images
    finally:
        hook.remove()
    assert len(seen) == steps
    # k(τ_i) recomputed at every step: the decoder saw exactly tokens 0..k_i.
    visibilities = [visibility for _, visibility, _, _ in seen]
    assert [v.stop for v in visibilities] == (cases[f"sample{steps}.k"] + 1).tolist()
    assert all(v.start == 0 and v.mask is None and v.unconditional_rows == 0 for v in visibilities)
    # The code times the decoder was called with are the official τ_i, bitwise.
    assert torch.equal(torch.tensor([tau for *_, tau in seen]), cases[f"sample{steps}.tau"])
    x_in = torch.stack([x for x, *_ in seen])
    velocity = torch.stack([v for _, _, v, _ in seen])
    assert (x_in - cases[f"sample{steps}.x_in"]).abs().max() <= 1e-5
    assert (velocity - cases[f"sample{steps}.velocity"]).abs().max() <= 1e-5
    assert (final - cases[f"sample{steps}.final"]).abs().max() <= 1e-5


def test_renderer_matches_official(pipe, cases):
    out = pipe(ar(cases["render.ids"]), use_renderer=True, output_type="latent").images
    assert (out - cases["render.pred_latent"]).abs().max() <= 1e-5


def test_batched_cfg_equals_separate_branches(pipe, cases):
    ids, noise, g = ar(cases["sample.ids"]), cases["sample.noise"], 3.0
    ours = pipe(ids, num_inference_steps=4, latents=noise, guidance_scale=g, output_type="latent").images
    codes = pipe.image_tokenizer.embed_tokens(ids).flip(1)
    x = noise.clone()
    pipe.scheduler.set_timesteps(sigmas=torch.linspace(1, 0, 5)[:-1].numpy())
    with torch.no_grad():
        for i, t in enumerate(pipe.scheduler.timesteps):
            sigma = pipe.scheduler.sigmas[i]
            n = int(pipe.token_schedule.visible_count(sigma))
            tau = sigma.expand(x.shape[0])
            cond = pipe.transformer(x, tau, codes[:, :n]).sample
            uncond = pipe.transformer(x, tau, codes, token_mask=torch.zeros(codes.shape[:2], dtype=torch.bool)).sample
            x = pipe.scheduler.step(uncond + g * (cond - uncond), t, x, return_dict=False)[0]
    assert (ours - x).abs().max() <= 1e-5
    plain = pipe(ids, num_inference_steps=4, latents=noise, output_type="latent").images
    assert (ours - plain).abs().max() > 1e-3  # guidance changed something


def test_generator_and_batch_independence(pipe, cases):
    ids = ar(cases["sample.ids"])
    a = pipe(ids, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="latent").images
    b = pipe(ids, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="latent").images
    assert torch.equal(a, b)
    noise = torch.randn(3, *cases["sample.noise"].shape[1:], generator=torch.Generator().manual_seed(2))
    batch = pipe(torch.cat([ids, ids[:1]]), num_inference_steps=3, latents=noise, output_type="latent").images
    single = pipe(ids[:1], num_inference_steps=3, latents=noise[2:], output_type="latent").images
    assert (batch[2:] - single).abs().max() <= 1e-5


def test_output_types(pipe, cases):
    ids = ar(cases["sample.ids"])
    size = pipe.image_tokenizer.config.image_size
    pil = pipe(ids, num_inference_steps=1, output_type="pil").images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (size, size)
    arr = pipe(ids, num_inference_steps=1, output_type="np").images
    assert arr.shape == (2, size, size, 3) and arr.min() >= 0 and arr.max() <= 1
    pt = pipe(ids, use_renderer=True, output_type="pt", return_dict=False)[0]
    assert pt.shape == (2, 3, size, size) and pt.min() >= 0 and pt.max() <= 1


def test_callback_can_replace_latents(pipe, cases):
    calls = []

    def callback(p, i, t, kwargs):
        calls.append(i)
        return {"latents": torch.zeros_like(kwargs["latents"])}

    out = pipe(ar(cases["sample.ids"]), num_inference_steps=3, output_type="latent", callback_on_step_end=callback).images
    assert calls == [0, 1, 2] and torch.equal(out, torch.zeros_like(out))


def test_encode_images_round_trip(pipe):
    size = pipe.image_tokenizer.config.image_size
    images = [PIL.Image.new("RGB", (size + 10, size), (200, 30, 30)), PIL.Image.new("L", (size, size), 90)]
    ids = pipe.encode(images)
    assert ids.shape == (2, pipe.image_tokenizer.config.num_image_tokens) and ids.dtype == torch.int64
    pixel_values = pipe.image_processor(images, return_tensors="pt").pixel_values
    assert torch.equal(pipe.encode(pixel_values), ids)
    assert pipe(ids, num_inference_steps=1, output_type="pt").images.shape == (2, 3, size, size)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
        (dict(guidance_scale=0.5), ValueError, "guidance_scale"),
        (dict(latents=torch.zeros(2, 16, 4, 4)), ValueError, "latents must have shape"),
        (dict(output_type="jpeg"), ValueError, "output_type"),
        (dict(callback_on_step_end_tensor_inputs=["codes"]), ValueError, "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_arguments(pipe, cases, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(ar(cases["sample.ids"]), **kwargs)


@pytest.mark.parametrize(
    "ids, error, match",
    [
        (lambda ids: ids.float(), TypeError, "integer"),
        (lambda ids: ids[:, :-1], ValueError, "shape"),
        (lambda ids: ids + 10_000, ValueError, r"\[0, "),
        (lambda ids: ids[:0], ValueError, "empty"),
    ],
)
def test_bad_token_ids(pipe, cases, ids, error, match):
    with pytest.raises(error, match=match):
        pipe(ids(ar(cases["sample.ids"])))


def test_missing_renderer(pipe, cases):
    renderer, pipe.renderer = pipe.renderer, None
    try:
        with pytest.raises(ValueError, match="no renderer"):
            pipe(ar(cases["sample.ids"]), use_renderer=True)
    finally:
        pipe.renderer = renderer


@pytest.mark.slow
def test_converter_cli_folder_loads_everywhere(reference_dir, cases, tmp_path):
    out = tmp_path / "converted"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        code = convert_main([
            "--config", str(reference_dir / "config.yaml"),
            "--checkpoint", str(reference_dir / "official_tokenizer_state_dict.safetensors"),
            "--renderer-config", str(reference_dir / "renderer_config.yaml"),
            "--renderer-checkpoint", str(reference_dir / "official_renderer_state_dict.safetensors"),
            "--output", str(out),
        ])
    assert code == 0
    for sub in ("image_tokenizer", "transformer", "renderer", "vae", "scheduler"):
        assert (out / sub).is_dir(), sub
    loaded = SelftokDecoderPipeline.from_pretrained(out)
    loaded.set_progress_bar_config(disable=True)
    final = loaded(ar(cases["sample.ids"]), num_inference_steps=8, latents=cases["sample.noise"], output_type="latent").images
    assert (final - cases["sample8.final"]).abs().max() <= 1e-5

    torch.save({"ids": ar(cases["sample.ids"]), "noise": cases["sample.noise"], "final": cases["sample8.final"]}, tmp_path / "case.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["selftok_hf"] = None  # the folder must carry all the code it needs
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        case = torch.load({str(tmp_path / "case.pt")!r})
        final = pipe(case["ids"], num_inference_steps=8, latents=case["noise"], output_type="latent").images
        assert (final - case["final"]).abs().max() <= 1e-5
        print("OK", type(pipe).__module__)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK diffusers_modules" in result.stdout


def test_converter_cli_bad_arguments(reference_dir, tmp_path, capsys):
    assert convert_main(["--config", str(reference_dir / "config.yaml"), "--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        convert_main(["--config", "c.yml", "--checkpoint", "x.pth", "--output", "o", "--renderer-config", "r.yml"])
    assert exc.value.code == 2
