"""Release-size Selftok, stage by stage: time, peak memory and FLOP/s of encode, one decoder step, the 50-step decode,
the one-step renderer and the VAE decode, in float32 and bfloat16, on a CPU or a GPU.

    python benchmarks/release_size.py                                          # GPU if there is one, fp32 + bf16
    python benchmarks/release_size.py --device cuda --dtype bf16 --batch 32 --compile --json /tmp/release.json
    python benchmarks/release_size.py --device cpu --steps 2 --repeats 1 --threads 2   # 2 of 50 steps, extrapolated
    python benchmarks/release_size.py --decoder-layers 2 --convert --workdir /tmp/release_convert

**Models.** The released 256 px sizes (``SELFTOK_RELEASE_CONFIG``, ``SELFTOK_DECODER_RELEASE_CONFIG``,
``SELFTOK_RENDERER_RELEASE_CONFIG``, the full SD3 VAE) with seeded random weights (speed does not depend on them):
every parameter N(0, 0.02) (norm scales 1, shifts 0), so that no block is the identity the zero-initialised adaLN
gates would make it; the VAE is ``vae.random_sd3_vae(tiny=False)``. ``--depth-scale`` or ``--encoder-layers`` /
``--decoder-layers`` / ``--renderer-layers`` keep the release widths at fewer blocks, ``--image-size`` a smaller image
(same token count, codebook and widths). ``--convert`` instead writes a random checkpoint in the official release
layout (``benchmarks/convert_memory.py``; the renderer's is the same checkpoint with the renderer's canvas tensors
for the patch embedder, the only difference the release manifest lists), converts it with ``selftok-convert`` (its
wall time and peak RSS are reported as the ``convert`` record) and loads every component from the converted folder
with its class's ``from_pretrained``. Only the models a stage needs are held at once (the fp32 decoder and renderer
are 8.4 GiB each); each is built in float32, measured, then cast to bfloat16 with ``pipe.to(dtype=...)``, which
keeps the image tokenizer in float32, as the pipeline always does.

**Stages** (the library's own calls, SDPA attention; ``--compile`` applies ``torch.compile`` to the tokenizer's
encoder, the decoder, the renderer and the VAE's encoder and decoder after the FLOP count):

- ``encode``: ``SelftokDecoderPipeline.encode(pixel_values)``: VAE encode (posterior mode) + ``SelftokModel.encode``;
- ``decoder_step``: one ``SelftokDecoderTransformer`` forward as the sampling loop makes it at τ = 1 (all K tokens
  visible); on its own it computes the token stream's modulation tables, which the loop computes once per call;
- ``decode``: ``SelftokDecoderPipeline.__call__(ids, num_inference_steps=50, output_type="latent")``. With
  ``--steps S`` < 50 the call is stopped after the first S steps of the 50-step schedule (``pipe._interrupt``); the
  50-step time and FLOPs are then **extrapolated**: measured steps as measured, each remaining step as the last
  measured one scaled by the analytical per-step FLOP ratio (``benchmark_decoder.mmdit_flops`` at its visible-token
  count; step 0 also builds the modulation tables, so S >= 2 extrapolates from a plain step);
- ``renderer``: ``SelftokDecoderPipeline.__call__(ids, use_renderer=True, output_type="latent")``;
- ``vae``: ``vae.latents_to_pixels`` (the pipeline's VAE decode) of 16-channel latents.

**Numbers.** Time: median of ``--repeats`` calls after the FLOP-counting call and ``--warmup`` untimed calls
(``torch.cuda.synchronize`` around each on a GPU). FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one eager
call (exact for matmuls, convolutions and SDPA; elementwise work is not counted; the CPU's fused SDPA kernel, absent
from torch's table, is counted with torch's own SDPA formula); FLOP/s = FLOPs / median time; on a GPU also MFU
against ``--peak-tflops`` (bf16; default 989, H100/H200 dense) or ``--peak-tflops-fp32`` (default 67, their non-tensor
fp32). Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` over the timed calls (and its rise over the memory
held before them); on a CPU the process's peak RSS over the timed calls (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` before them) and its rise over the RSS before them; where ``clear_refs`` cannot be written,
the lifetime ``ru_maxrss`` (said so in the output; the reset also lowers what a parent's ``wait4`` / ``time -v`` reports).
On a CPU, ``cpu/wall`` is the process's CPU seconds per wall second over the timed calls: about ``--threads`` on an
idle machine, less where other processes share the cores (the times then overstate). bf16 outputs are compared with fp32 ones (relative L2; ids:
the fraction equal). ``--json PATH`` writes every record.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_decoder import mmdit_flops  # noqa: E402
from convert_memory import MANIFEST, RELEASE_LAYERS, RELEASE_PARAMS, run_measured  # noqa: E402

from selftok_hf import (  # noqa: E402
    SELFTOK_RELEASE_CONFIG,
    SelftokConfig,
    SelftokDecoderPipeline,
    SelftokDecoderTransformer,
    SelftokModel,
    SelftokRenderer,
    to_code_order,
)
from selftok_hf.modeling_selftok_decoder import (  # noqa: E402
    SELFTOK_DECODER_RELEASE_CONFIG,
    SELFTOK_RENDERER_RELEASE_CONFIG,
)
from selftok_hf.pipeline_selftok_decoder import sampler_sigmas  # noqa: E402
from selftok_hf.vae import RandomWeightsWarning, latents_to_pixels, random_sd3_vae  # noqa: E402

STAGES = ("encode", "decoder_step", "decode", "renderer", "vae")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SCHEDULE_STEPS = 50
RELEASE_ENCODER_LAYERS = SelftokConfig().encoder_depth
GIB = 2**30


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's SDPA formula (``flop_counter.sdpa_flop_count``) for the CPU's fused kernel, whose arguments begin
    (query, key, value) as the CUDA kernels' do: it has no entry in torch's table (its attention would count as 0)."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


CPU_SDPA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


# ------------------------------------------------------------------------------------------------ sizes and models
@dataclass(frozen=True)
class ModelSizes:
    """Constructor arguments of the three models, and which VAE."""

    tokenizer: dict = field(default_factory=lambda: dict(SELFTOK_RELEASE_CONFIG))
    decoder: dict = field(default_factory=lambda: dict(SELFTOK_DECODER_RELEASE_CONFIG))
    renderer: dict = field(default_factory=lambda: dict(SELFTOK_RENDERER_RELEASE_CONFIG))
    tiny_vae: bool = False

    @property
    def image_size(self) -> int:
        return SelftokConfig(**self.tokenizer).image_size


def release_sizes(image_size: int = 256, depth_scale: float = 1.0, encoder_layers: int | None = None,
                  decoder_layers: int | None = None, renderer_layers: int | None = None) -> ModelSizes:
    """The release widths, heads, token count, codebook and latent channels, at ``depth_scale`` times the release depth
    (at least 2 blocks: the decoder's and renderer's last block differs from the others) unless a layer count is given,
    for ``image_size`` px images (latent side ``image_size / 8``; the position tables stay the release's, cropped)."""
    def depth(release: int, given: int | None) -> int:
        return given if given is not None else max(2, round(release * depth_scale))

    if image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16 (the VAE's 8 x the patch 2), got {image_size}")
    latent = image_size // 8
    release_latent = SelftokConfig().latent_size
    return ModelSizes(
        tokenizer={**SELFTOK_RELEASE_CONFIG, "latent_size": latent, "pos_embed_max_size": 2 * release_latent,
                   "encoder_depth": depth(RELEASE_ENCODER_LAYERS, encoder_layers)},
        decoder={**SELFTOK_DECODER_RELEASE_CONFIG, "sample_size": latent,
                 "num_layers": depth(SELFTOK_DECODER_RELEASE_CONFIG["num_layers"], decoder_layers)},
        renderer={**SELFTOK_RENDERER_RELEASE_CONFIG, "sample_size": latent,
                  "num_layers": depth(SELFTOK_RENDERER_RELEASE_CONFIG["num_layers"], renderer_layers)},
    )


@torch.no_grad()
def random_model(make_model: Callable[[], torch.nn.Module], device: str, seed: int, std: float = 0.02) -> torch.nn.Module:
    """``make_model()`` in eval mode on ``device`` with seeded N(0, ``std``) parameters (norm scales 1, shifts 0); the
    same ``seed`` gives the same model.

    Built under accelerate's ``init_empty_weights`` (parameters on the meta device, buffers real) and given its
    parameters with ``load_state_dict(assign=True)``, drawn on ``device``: the 2B-parameter decoder is initialised once
    (no default init to overwrite) and never exists on the host when ``device`` is a GPU.
    """
    from accelerate import init_empty_weights

    # Buffers drawn at construction (the quantizer's codebook) use the global generator: seeded too, caller's kept.
    with torch.random.fork_rng(devices=[]), init_empty_weights():
        torch.manual_seed(seed)
        model = make_model()
    generator = torch.Generator(device).manual_seed(seed)
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)
    state = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            value = torch.empty(param.shape, device=device)
            if isinstance(module, norms):
                value.fill_(1.0 if name == "weight" else 0.0)
            else:
                value.normal_(0.0, std, generator=generator)
            state[f"{module_name}.{name}" if module_name else name] = value
    state.update({k: v.to(device) for k, v in model.state_dict().items() if k not in state})  # the real buffers
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()  # non-persistent buffers (not in the state dict) follow here


class RandomComponents:
    """The models of ``sizes`` with seeded random weights, built on request (each call builds a fresh one)."""

    def __init__(self, sizes: ModelSizes, device: str, seed: int = 0):
        self.sizes, self.device, self.seed = sizes, device, seed

    def tokenizer(self) -> SelftokModel:
        return random_model(lambda: SelftokModel(SelftokConfig(**self.sizes.tokenizer)), self.device, self.seed)

    def decoder(self) -> SelftokDecoderTransformer:
        return random_model(lambda: SelftokDecoderTransformer(**self.sizes.decoder), self.device, self.seed + 1)

    def renderer(self) -> SelftokRenderer:
        return random_model(lambda: SelftokRenderer(**self.sizes.renderer), self.device, self.seed + 2)

    def vae(self) -> AutoencoderKL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            return random_sd3_vae(self.seed, tiny=self.sizes.tiny_vae).to(self.device)


class ConvertedComponents:
    """The components of a converted folder, each loaded with its class's ``from_pretrained`` on request."""

    def __init__(self, folder: Path, device: str):
        self.folder, self.device = str(folder), device

    def _load(self, cls, subfolder: str):
        return cls.from_pretrained(self.folder, subfolder=subfolder).to(self.device).eval()

    def tokenizer(self) -> SelftokModel:
        return self._load(SelftokModel, "image_tokenizer")

    def decoder(self) -> SelftokDecoderTransformer:
        return self._load(SelftokDecoderTransformer, "transformer")

    def renderer(self) -> SelftokRenderer:
        return self._load(SelftokRenderer, "renderer")

    def vae(self) -> AutoencoderKL:
        return self._load(AutoencoderKL, "vae")


def convert_random_release(workdir: Path, decoder_layers: int, seed: int = 0) -> tuple[Path, dict]:
    """Write random release-layout tokenizer and renderer checkpoints (``decoder_layers`` joint blocks) and the full
    random SD3 VAE into ``workdir``, convert them with ``selftok-convert``; the output folder and the converter's
    wall time and peak RSS (``convert_memory.run_measured``: that process alone)."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer_ckpt, renderer_ckpt, output = workdir / "tokenizer_ckpt.pth", workdir / "renderer_ckpt.pth", workdir / "converted"
    # convert_memory.py's own child process writes the tokenizer checkpoint (its memory is not this process's).
    run_measured([sys.executable, str(Path(__file__).with_name("convert_memory.py")), "--workdir", str(workdir),
                  "--decoder-layers", str(decoder_layers), "--make-only", str(tokenizer_ckpt)])
    release_renderer_keys = json.loads(MANIFEST.read_text())["checkpoints"]["renderer"]["keys"]
    state = torch.load(tokenizer_ckpt, mmap=True, weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    state = {k: v for k, v in state.items() if not k.startswith("model.x_embedder.")}
    for key in ("model.positional_embedding", "model.mask_token"):  # the renderer's canvas, for the patch embedder
        state[key] = torch.randn(release_renderer_keys[key]["shape"], generator=generator).mul_(0.02)
    torch.save(state, renderer_ckpt)
    del state
    vae_dir = workdir / "vae"
    RandomComponents(ModelSizes(), "cpu", seed).vae().save_pretrained(vae_dir)
    config, renderer_config = workdir / "256-eval.yml", workdir / "renderer-eval.yml"
    config.write_text(yaml.safe_dump({"tokenizer": {"params": RELEASE_PARAMS}}))
    renderer_config.write_text(yaml.safe_dump({"tokenizer": {"params": {**RELEASE_PARAMS, "decoder_config": {"repeat": True}}}}))
    convert = shutil.which("selftok-convert", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if convert is None:
        raise SystemExit("selftok-convert not found (pip install -e . installs it)")
    record = run_measured([convert, "--config", str(config), "--checkpoint", str(tokenizer_ckpt), "--renderer-config", str(renderer_config),
                           "--renderer-checkpoint", str(renderer_ckpt), "--vae", str(vae_dir), "--output", str(output), "--overwrite"])
    return output, {"stage": "convert", "wall_s": record["wall_s"], "peak_rss_gib": round(record["peak_rss_bytes"] / GIB, 3),
                    "checkpoint_gib": round(tokenizer_ckpt.stat().st_size / GIB, 3)}


def make_pipeline(tokenizer, vae, decoder=None, renderer=None) -> SelftokDecoderPipeline:
    pipe = SelftokDecoderPipeline(tokenizer, decoder, vae, FlowMatchEulerDiscreteScheduler(shift=1.0), renderer)
    pipe.set_progress_bar_config(disable=True)
    # Inference only; and FlopCounterMode's module tracker fails on parameters that require grad under no_grad
    # (the encoder passes its query parameter to its blocks: "Expected gradient function to be set").
    for model in (tokenizer, vae, decoder, renderer):
        if model is not None:
            model.requires_grad_(False)
    return pipe


# ------------------------------------------------------------------------------------------------ stages
@dataclass
class Inputs:
    """Seeded inputs of every stage, on the device: images in [-1, 1], AR-order ids, initial noise / latents."""

    pixel_values: torch.Tensor
    token_ids: torch.Tensor
    noise: torch.Tensor


def make_inputs(config: SelftokConfig, batch: int, device: str, seed: int = 0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, config.image_size, config.image_size, generator=generator) * 2 - 1
    ids = torch.randint(0, config.codebook_size, (batch, config.num_image_tokens), generator=generator)
    noise = torch.randn(batch, config.latent_channels, config.latent_size, config.latent_size, generator=generator)
    return Inputs(pixels.to(device), ids.to(device), noise.to(device))


class StepClock:
    """``callback_on_step_end`` of the decode: the time (and, under a FLOP counter, the FLOPs) at the end of every
    step, and the stop after ``steps`` steps (``pipe._interrupt``, the pipeline's documented way)."""

    def __init__(self, steps: int, device: str):
        self.steps, self.device, self.counter = steps, device, None
        self.reset()

    def reset(self, counter: FlopCounterMode | None = None) -> None:
        self.counter = counter
        self.times, self.flops = [], []
        synchronize(self.device)
        self.start = time.perf_counter()

    def __call__(self, pipe, step, timestep, callback_kwargs):
        synchronize(self.device)
        self.times.append(time.perf_counter() - self.start - sum(self.times))
        if self.counter is not None:
            self.flops.append(self.counter.get_total_flops() - sum(self.flops))
        if step + 1 >= self.steps:
            pipe._interrupt = True
        return {}


def stage_call(stage: str, pipe: SelftokDecoderPipeline, inputs: Inputs, clock: StepClock | None = None) -> Callable[[], torch.Tensor]:
    """The call ``stage`` times, as a function of nothing returning its output (see the module docstring)."""
    cfg = pipe.image_tokenizer.config
    if stage == "encode":
        return lambda: pipe.encode(inputs.pixel_values)
    if stage == "decoder_step":
        codes = to_code_order(pipe.image_tokenizer.embed_tokens(inputs.token_ids)).to(pipe.transformer.dtype)
        visible = cfg.token_schedule.visible_count(torch.tensor([1.0])).item()  # all K at τ = 1
        timestep = torch.ones(inputs.noise.shape[0], device=inputs.noise.device)
        noise = inputs.noise.to(pipe.transformer.dtype)
        return lambda: pipe.transformer(hidden_states=noise, timestep=timestep, token_codes=codes[:, :visible]).sample
    if stage == "decode":
        return lambda: pipe(inputs.token_ids, num_inference_steps=SCHEDULE_STEPS, latents=inputs.noise, output_type="latent",
                            callback_on_step_end=clock).images
    if stage == "renderer":
        return lambda: pipe(inputs.token_ids, use_renderer=True, output_type="latent").images
    if stage == "vae":
        return lambda: latents_to_pixels(pipe.vae, inputs.noise, cfg.vae_scaling_factor, cfg.vae_shift_factor)
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")


def compile_modules(pipe: SelftokDecoderPipeline) -> None:
    """``torch.compile`` (``Module.compile``: in place, the pipeline's components keep their classes) of the modules
    whose forward the stages run."""
    for module in (pipe.image_tokenizer.encoder, pipe.transformer, pipe.renderer, pipe.vae.encoder, pipe.vae.decoder):
        if module is not None and not getattr(module, "_selftok_compiled", False):
            module.compile()
            module._selftok_compiled = True


# ------------------------------------------------------------------------------------------------ measuring
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _proc_status_bytes(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field_name)


class PeakMemory:
    """Peak memory over a stretch of calls: the CUDA allocator's peak, or the process's peak RSS (see the docstring)."""

    def __init__(self, device: str):
        self.device = device
        if device.startswith("cuda"):
            self.method = "torch.cuda.max_memory_allocated"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.method = "peak RSS (VmHWM reset via /proc/self/clear_refs)"
            except OSError:
                self.method = "process lifetime peak RSS (ru_maxrss; /proc/self/clear_refs not writable)"

    def reset(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            if self.method.startswith("peak RSS"):
                Path("/proc/self/clear_refs").write_text("5")
            self.before = _proc_status_bytes("VmRSS")

    def peak(self) -> tuple[int, int]:
        """(peak bytes, peak - bytes held at :meth:`reset`)."""
        if self.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated()
        elif self.method.startswith("peak RSS"):
            peak = _proc_status_bytes("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak, peak - self.before


def measure(fn: Callable[[], torch.Tensor], device: str, warmup: int, repeats: int, memory: PeakMemory,
            clock: StepClock | None = None, before_timing: Callable[[], None] | None = None) -> tuple[torch.Tensor, dict]:
    """Count ``fn``'s FLOPs over one eager call, run ``before_timing`` (compilation), ``warmup`` untimed calls, then
    time ``repeats`` calls. Returns the last output and the record (per-step times/FLOPs of a stopped decode too)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS) as counter:
        if clock is not None:
            clock.reset(counter)
        fn()
    record = {"flops": counter.get_total_flops()}
    if clock is not None:
        record["step_flops"] = clock.flops
    if before_timing is not None:
        before_timing()
    for _ in range(warmup):
        fn()
    synchronize(device)
    memory.reset()
    times, step_times, cpu_start = [], [], time.process_time()
    for _ in range(repeats):
        if clock is not None:
            clock.reset()
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if clock is not None:
            step_times.append(clock.times)
    peak, delta = memory.peak()
    # CPU seconds per wall second of this process: about the thread count on an idle CPU, less on a shared one.
    cpu_per_wall = (time.process_time() - cpu_start) / sum(times)
    record.update(time_s=statistics.median(times), times_s=times, cpu_per_wall=cpu_per_wall, peak_bytes=peak, peak_delta_bytes=delta)
    if step_times:
        record["step_times_s"] = [statistics.median(column) for column in zip(*step_times)]
    return out, record


def extrapolate_decode(record: dict, pipe: SelftokDecoderPipeline) -> dict:
    """The 50-step decode's time and FLOPs from its first S steps (see the module docstring)."""
    dcfg, tcfg = pipe.transformer.config, pipe.image_tokenizer.config
    counts = tcfg.token_schedule.visible_count(torch.from_numpy(sampler_sigmas(SCHEDULE_STEPS))).tolist()
    width, image_tokens = dcfg.num_attention_heads * dcfg.attention_head_dim, (dcfg.sample_size // dcfg.patch_size) ** 2
    per_step = [mmdit_flops(width, dcfg.num_layers, image_tokens, n, dcfg.context_see_xt) for n in counts]
    measured = len(record["step_times_s"])
    ratio = sum(per_step[measured:]) / per_step[measured - 1]
    return {
        "measured_steps": measured,
        "time_s": record["time_s"] + record["step_times_s"][-1] * ratio,
        "flops": record["flops"] + record["step_flops"][-1] * ratio,
        "method": f"first {measured} of {SCHEDULE_STEPS} steps measured; each later step = the last measured one x its "
                  "analytical FLOP ratio (benchmark_decoder.mmdit_flops at its visible-token count)",
    }


def compare(out: torch.Tensor, reference: torch.Tensor, origin: torch.Tensor | None = None) -> dict:
    """bf16 output against the fp32 one: relative L2 (float outputs) or the fraction of equal ids. A decode is compared
    by its displacement from the initial noise ``origin`` (after a few of 50 steps the latent is still mostly that
    noise, which both share exactly)."""
    if not out.is_floating_point():
        return {"ids_equal": (out == reference).float().mean().item()}
    out, reference = out.double(), reference.double()
    if origin is not None:
        out, reference = out - origin.double(), reference - origin.double()
    return {"relative_l2": ((out - reference).norm() / reference.norm()).item()}


# ------------------------------------------------------------------------------------------------ the run
#: The models each stage needs besides the tokenizer and the VAE; stages are run in groups that share them.
STAGE_GROUPS = ((("encode",), None), (("decoder_step", "decode"), "decoder"), (("renderer",), "renderer"), (("vae",), None))


@dataclass
class Options:
    """What :func:`run` measures (the command line's options)."""

    sizes: ModelSizes = field(default_factory=ModelSizes)
    device: str = "cpu"
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    batch: int = 1
    steps: int = SCHEDULE_STEPS
    stages: tuple[str, ...] = STAGES
    warmup: int = 0
    repeats: int = 3
    compile: bool = False
    peak_tflops: float = 989.0
    peak_tflops_fp32: float = 67.0
    convert_dir: Path | None = None
    seed: int = 0


def run(options: Options, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Measure every stage in every dtype. Returns the report (what ``--json`` writes) and the outputs
    ``{dtype: {stage: tensor on the CPU}}``."""
    device, sizes = options.device, options.sizes
    if not 1 <= options.steps <= SCHEDULE_STEPS:
        raise ValueError(f"steps must be in [1, {SCHEDULE_STEPS}], got {options.steps}")
    dtypes = sorted(options.dtypes, key=list(DTYPES).index)  # fp32 first: each model is cast once, after it
    records, outputs = [], {name: {} for name in dtypes}
    convert_record = None
    if options.convert_dir is not None:
        log(f"converting a random release-layout checkpoint ({sizes.decoder['num_layers']} decoder layers) in {options.convert_dir}")
        folder, convert_record = convert_random_release(options.convert_dir, sizes.decoder["num_layers"], options.seed)
        log(f"  convert: {convert_record}")
        components = ConvertedComponents(folder, device)
    else:
        components = RandomComponents(sizes, device, options.seed)
    memory = PeakMemory(device)
    tokenizer, base_vae = components.tokenizer(), components.vae()
    inputs = make_inputs(tokenizer.config, options.batch, device, options.seed)
    for stages, big in STAGE_GROUPS:
        stages = [s for s in stages if s in options.stages]
        if not stages:
            continue
        start = time.perf_counter()
        big_model = getattr(components, big)() if big else None
        if big:
            log(f"built the {big} ({sum(p.numel() for p in big_model.parameters()) / 1e9:.3f} B parameters) in {time.perf_counter() - start:.0f} s")
        for dtype_name in dtypes:
            vae = base_vae if dtype_name == "fp32" else copy.deepcopy(base_vae)
            pipe = make_pipeline(tokenizer, vae, **({big: big_model} if big else {})).to(device=device, dtype=DTYPES[dtype_name])
            for stage in stages:
                clock = StepClock(options.steps, device) if stage == "decode" and options.steps < SCHEDULE_STEPS else None
                with torch.no_grad():
                    out, record = measure(stage_call(stage, pipe, inputs, clock), device, options.warmup, options.repeats, memory, clock,
                                          before_timing=functools.partial(compile_modules, pipe) if options.compile else None)
                record = {"stage": stage, "dtype": dtype_name, **record}
                if stage == "decode" and options.steps < SCHEDULE_STEPS:
                    record["extrapolated_50_steps"] = extrapolate_decode(record, pipe)
                record["tflop_per_s"] = record["flops"] / record["time_s"] / 1e12
                if device.startswith("cuda"):
                    peak = options.peak_tflops if dtype_name == "bf16" else options.peak_tflops_fp32
                    record["mfu"] = record["tflop_per_s"] / peak
                outputs[dtype_name][stage] = out.detach().cpu()
                if dtype_name != "fp32" and "fp32" in outputs:
                    origin = inputs.noise.cpu() if stage == "decode" else None
                    record["vs_fp32"] = compare(outputs[dtype_name][stage], outputs["fp32"][stage], origin)
                records.append(record)
                log(format_record(record))
            del pipe, vae
        del big_model
    report = {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": options.batch,
        "image_size": sizes.image_size,
        "steps": options.steps,
        "schedule_steps": SCHEDULE_STEPS,
        "repeats": options.repeats,
        "warmup": options.warmup,
        "compile": options.compile,
        "converted": options.convert_dir is not None,
        "sizes": asdict(sizes) if options.convert_dir is None else "converted release layout",
        "layers": {"encoder": tokenizer.config.encoder_depth, "decoder": sizes.decoder["num_layers"], "renderer": sizes.renderer["num_layers"]},
        "flop_method": "torch.utils.flop_counter.FlopCounterMode over one eager call (matmuls, convolutions, SDPA)",
        "memory_method": memory.method,
        "records": ([convert_record] if convert_record else []) + records,
    }
    return report, outputs


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_record(r: dict) -> str:
    mfu = f" MFU {r['mfu']:6.1%}" if "mfu" in r else ""
    line = (f"{r['stage']:<13} {r['dtype']}  {r['time_s'] * 1e3:10.1f} ms  {r['flops'] / 1e12:9.3f} TFLOP  {r['tflop_per_s']:7.3f} TFLOP/s{mfu}  "
            f"peak {r['peak_bytes'] / GIB:6.2f} GiB (+{r['peak_delta_bytes'] / GIB:.2f})  cpu/wall {r['cpu_per_wall']:.2f}")
    if "vs_fp32" in r:
        line += "  vs fp32: " + ", ".join(f"{k} {v:.2e}" for k, v in r["vs_fp32"].items())
    if "extrapolated_50_steps" in r:
        e = r["extrapolated_50_steps"]
        line += f"\n{'':<13} {r['dtype']}  50 steps EXTRAPOLATED from {e['measured_steps']}: {e['time_s']:.1f} s, {e['flops'] / 1e12:.2f} TFLOP"
    return line


def parse_args(argv=None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=SCHEDULE_STEPS, help=f"decode steps run (of the {SCHEDULE_STEPS}-step schedule; fewer: extrapolated)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--depth-scale", type=float, default=1.0, help="blocks = this x the release depth (at least 2), for every model")
    parser.add_argument("--encoder-layers", type=int, help=f"encoder blocks (release {RELEASE_ENCODER_LAYERS})")
    parser.add_argument("--decoder-layers", type=int, help=f"decoder blocks (release {RELEASE_LAYERS})")
    parser.add_argument("--renderer-layers", type=int, help=f"renderer blocks (release {SELFTOK_RENDERER_RELEASE_CONFIG['num_layers']})")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (release 256)")
    parser.add_argument("--convert", action="store_true", help="convert a random official-layout checkpoint first and load the result")
    parser.add_argument("--workdir", type=Path, help="--convert's folder (checkpoints and output; kept); default a temporary one, deleted")
    parser.add_argument("--warmup", type=int, help="untimed calls after the FLOP-counting call (default: 2 with --compile, whose "
                        "first call does not compile every graph; else 1 on a GPU, 0 on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (the median is reported)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (meant for the GPU)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 peak for MFU (H100/H200 dense: 989)")
    parser.add_argument("--peak-tflops-fp32", type=float, default=67.0, help="fp32 peak for MFU (H100/H200 non-tensor: 67)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    stages = tuple(s for s in args.stages.split(",") if s)
    if unknown := [s for s in stages if s not in STAGES]:
        parser.error(f"--stages: unknown {unknown}; expected a subset of {','.join(STAGES)}")
    if args.convert and (args.image_size != 256 or args.encoder_layers is not None or args.renderer_layers is not None):
        parser.error("--convert writes the release layout: 256 px, the release encoder; only --decoder-layers (or --depth-scale) applies")
    sizes = release_sizes(args.image_size, args.depth_scale, args.encoder_layers, args.decoder_layers, args.renderer_layers)
    if args.convert:  # the converted renderer comes from the same checkpoint, so it has the decoder's depth
        sizes = release_sizes(256, decoder_layers=sizes.decoder["num_layers"], renderer_layers=sizes.decoder["num_layers"],
                              encoder_layers=RELEASE_ENCODER_LAYERS)
        if not 2 <= sizes.decoder["num_layers"] <= RELEASE_LAYERS:
            parser.error(f"--convert: decoder layers must be 2..{RELEASE_LAYERS}")
    options = Options(
        sizes=sizes, device=args.device, dtypes=tuple(DTYPES) if args.dtype == "both" else (args.dtype,), batch=args.batch,
        steps=args.steps, stages=stages, warmup=args.warmup if args.warmup is not None else 2 if args.compile else int(args.device.startswith("cuda")),
        repeats=args.repeats, compile=args.compile, peak_tflops=args.peak_tflops, peak_tflops_fp32=args.peak_tflops_fp32, seed=args.seed,
    )
    return options, args


def main(argv=None) -> dict:
    options, args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        if args.convert:
            if args.workdir is None:
                import tempfile

                args.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="selftok_release_")))
            options.convert_dir = args.workdir
        print(f"{device_name(options.device)}, torch {torch.__version__}, batch {options.batch}, {options.sizes.image_size} px, "
              f"dtypes {','.join(options.dtypes)}, decode steps {options.steps}/{SCHEDULE_STEPS}, repeats {options.repeats}, "
              f"warmup {options.warmup}{', compiled' if options.compile else ''}", flush=True)
        report, _ = run(options, log=lambda line: print(line, flush=True))
    print(f"FLOPs: {report['flop_method']}; memory: {report['memory_method']}")
    if args.json:
        write_report(report, args.json)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
