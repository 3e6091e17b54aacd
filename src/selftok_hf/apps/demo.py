"""A Gradio demo of Selftok: upload an image, see its token ids and its reconstruction; change the number of
decoding steps, switch to the one-step renderer, or decode from only the first p tokens to watch the image go from
coarse to fine. With a VLM (a :class:`~selftok_hf.SelftokPipeline`), a second tab turns a prompt into an image.

    pip install "selftok-hf[demo]"
    selftok demo                                  # the bundled trained 32-px pipeline, http://127.0.0.1:7860
    selftok demo --pipeline converted/ --vlm my-vlm/
    selftok demo --tiny                           # adds the seeded random tiny VLM (meaningless images)

In Python: ``build_demo(pipeline, vlm).launch()``. The functions behind the page (:func:`reconstruct`,
:func:`coarse_to_fine`, :func:`token_grid`) need no Gradio. Gradio is imported by :func:`build_demo` only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import PIL.Image
import torch

from ..evaluation.metrics import psnr
from ..image_processing_selftok import postprocess_images
from ..pipeline_selftok_decoder import SelftokDecoderPipeline
from ..renamed import renamed_kwargs

if TYPE_CHECKING:
    import gradio as gr

    from ..pipeline_selftok import SelftokPipeline

__all__ = ["DISPLAY_SIDE", "build_demo", "coarse_to_fine", "grid_table", "offline_theme", "prefix_lengths", "reconstruct", "token_grid", "zoom"]

#: Images are shown at least this many pixels wide (nearest-neighbour zoom: a 32-px image stays a 32-px image).
DISPLAY_SIDE = 256


def token_grid(token_ids: torch.Tensor) -> list[list[int]]:
    """One image's ids ``(K,)`` as rows of a near-square grid in AR order (row-major; e.g. 4 x 8 for K = 32,
    16 x 32 for K = 512): the first row holds the coarsest tokens."""
    ids = token_ids.tolist()
    columns = next(c for c in range(math.ceil(math.sqrt(len(ids))), len(ids) + 1) if len(ids) % c == 0)
    return [ids[start : start + columns] for start in range(0, len(ids), columns)]


def grid_table(token_ids: torch.Tensor) -> dict:
    """:func:`token_grid` as a table for ``gradio.Dataframe``: a first column with the positions of each row."""
    rows = token_grid(token_ids)
    columns = len(rows[0])
    data = [[f"{r * columns}-{r * columns + columns - 1}", *row] for r, row in enumerate(rows)]
    return {"headers": ["positions", *(f"+{j}" for j in range(columns))], "data": data}


@renamed_kwargs(num_tokens="num_image_tokens")
def prefix_lengths(num_image_tokens: int) -> list[int]:
    """The prefixes of the coarse-to-fine strip: 1, 2, 4, ... and K."""
    return [2**i for i in range(int(math.log2(num_image_tokens)) + 1) if 2**i < num_image_tokens] + [num_image_tokens]


def zoom(image: PIL.Image.Image, side: int = DISPLAY_SIDE) -> PIL.Image.Image:
    """Enlarge a small image by an integer factor (nearest neighbour) so that it is at least ``side`` pixels wide."""
    factor = max(1, math.ceil(side / image.width))
    return image.resize((image.width * factor, image.height * factor), PIL.Image.NEAREST)


@torch.no_grad()
def reconstruct(
    pipeline: SelftokDecoderPipeline,
    image: PIL.Image.Image,
    num_inference_steps: int = 50,
    use_renderer: bool = False,
    prefix_length: int | None = None,
    seed: int = 0,
) -> tuple[PIL.Image.Image, torch.LongTensor, PIL.Image.Image, float]:
    """Image -> tokens -> image.

    Args:
        pipeline: the decoder pipeline.
        image: any PIL image (resized and centre-cropped to the tokenizer's size).
        num_inference_steps / prefix_length: for the diffusion decoder (see :class:`SelftokDecoderPipeline`).
        use_renderer: decode with the one-step renderer instead (from all K tokens; ``prefix_length`` is ignored).
        seed: seed of the decoder's initial noise.
    Returns:
        The tokenizer's input (after resize and crop), its token ids ``(K,)`` in AR order, the reconstruction, and the
        reconstruction's PSNR (dB) against the tokenizer's input.
    """
    pixel_values = pipeline.image_processor([image.convert("RGB")], return_tensors="pt").pixel_values
    token_ids = pipeline.encode(pixel_values.to(pipeline.device, pipeline.image_tokenizer.dtype))
    output = pipeline(
        token_ids,
        num_inference_steps=num_inference_steps,
        use_renderer=use_renderer,
        prefix_length=None if use_renderer else prefix_length,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    )
    decoded = output.images.float().cpu()
    target = (pixel_values.float().clamp(-1, 1) + 1) / 2
    model_input, reconstruction = postprocess_images(torch.cat([target, decoded]), "pil")
    return model_input, token_ids[0].cpu(), reconstruction, float(psnr(decoded, target))


@torch.no_grad()
def coarse_to_fine(
    pipeline: SelftokDecoderPipeline, token_ids: torch.LongTensor, num_inference_steps: int = 50, seed: int = 0
) -> list[tuple[PIL.Image.Image, str]]:
    """Decodes of one image's ids ``(K,)`` from its first 1, 2, 4, ..., K tokens (the same noise for each), with
    captions."""
    strip = []
    for length in prefix_lengths(token_ids.numel()):
        image = pipeline(
            token_ids[None].to(pipeline.device),
            num_inference_steps=num_inference_steps,
            prefix_length=length,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        strip.append((image, f"first {length} token{'s' * (length > 1)}"))
    return strip


def offline_theme() -> gr.themes.Base:
    """Gradio's default theme with system fonts: the page then loads nothing from outside the server."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def build_demo(pipeline: SelftokDecoderPipeline | None = None, vlm: SelftokPipeline | None = None) -> gr.Blocks:
    """The demo page.

    Args:
        pipeline: the :class:`SelftokDecoderPipeline` of the image tab (default: the bundled trained 32-px pipeline,
            :func:`selftok_hf.assets.embedded_pipeline`).
        vlm: a :class:`~selftok_hf.SelftokPipeline`; adds the text-to-image tab.
    Returns:
        A ``gradio.Blocks``; serve it with ``.launch()`` (e.g. ``launch(theme=offline_theme())``).
    """
    import gradio as gr

    if pipeline is None:
        from ..assets import embedded_pipeline

        pipeline = embedded_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    cfg = pipeline.image_tokenizer.config
    has_renderer = pipeline.renderer is not None

    def run_reconstruction(image, steps, use_renderer, prefix, seed):
        if image is None:
            raise gr.Error("Upload an image first.")
        model_input, ids, reconstruction, value = reconstruct(pipeline, image, int(steps), bool(use_renderer), int(prefix), int(seed))
        if use_renderer:
            how = "one-step renderer, all tokens"
        else:
            how = f"{int(steps)}-step decoder, first {int(prefix)} of {cfg.num_image_tokens} tokens"
        summary = f"**PSNR {value:.2f} dB** ({how}) against the tokenizer's input"
        return zoom(model_input), ids, grid_table(ids), zoom(reconstruction), summary

    def run_coarse_to_fine(ids, steps, seed):
        if ids is None:
            return []
        return [(zoom(decoded, 128), caption) for decoded, caption in coarse_to_fine(pipeline, ids, int(steps), int(seed))]

    with gr.Blocks(title="Selftok") as demo:
        gr.Markdown(
            f"# Selftok: image → {cfg.num_image_tokens} discrete tokens → image\n"
            f"Tokenizer: {cfg.image_size} px images, {cfg.num_image_tokens} tokens from a codebook of {cfg.codebook_size}, "
            "in autoregressive order (the first tokens carry the coarse content). Images are shown enlarged."
        )
        with gr.Tab("Image → tokens → image"):
            with gr.Row():
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], elem_id="input-image")
                model_input = gr.Image(label=f"Tokenizer input ({cfg.image_size} px)", format="png", interactive=False, elem_id="model-input")
                reconstruction = gr.Image(label="Reconstruction", format="png", interactive=False, elem_id="reconstruction")
            with gr.Row():
                steps = gr.Slider(1, 100, value=50, step=1, label="Decoding steps (diffusion decoder)")
                prefix = gr.Slider(0, cfg.num_image_tokens, value=cfg.num_image_tokens, step=1, label="Decode from the first p tokens (0: unconditional)")
                use_renderer = gr.Checkbox(value=False, label="One-step renderer (all tokens)", visible=has_renderer)
                seed = gr.Number(value=0, precision=0, label="Seed")
            button = gr.Button("Tokenize and reconstruct", variant="primary", elem_id="run")
            token_ids = gr.State()
            score = gr.Markdown(elem_id="psnr")
            grid = gr.Dataframe(label="Token ids (AR order, row-major)", interactive=False, elem_id="token-grid")
            strip = gr.Gallery(
                label="Coarse to fine: decodes from the first p tokens", columns=len(prefix_lengths(cfg.num_image_tokens)), height="auto", elem_id="coarse-to-fine"
            )

            reconstruction_io = {
                "fn": run_reconstruction,
                "inputs": [image, steps, use_renderer, prefix, seed],
                "outputs": [model_input, token_ids, grid, reconstruction, score],
            }
            strip_io = {"fn": run_coarse_to_fine, "inputs": [token_ids, steps, seed], "outputs": strip}
            for trigger in (button.click, image.upload, steps.release, seed.submit):
                trigger(**reconstruction_io).then(**strip_io)
            for trigger in (prefix.release, use_renderer.change):
                trigger(**reconstruction_io)

        if vlm is not None:
            vlm.set_progress_bar_config(disable=True)
            vlm_cfg = vlm.decoder.image_tokenizer.config

            def run_generation(prompt, guidance, steps, use_renderer, seed):
                if not prompt.strip():
                    raise gr.Error("Enter a prompt.")
                out = vlm(
                    prompt,
                    guidance_scale=float(guidance),
                    generator=torch.Generator().manual_seed(int(seed)),
                    num_inference_steps=int(steps),
                    use_renderer=bool(use_renderer),
                )
                return zoom(out.images[0]), grid_table(out.token_ids[0])

            with gr.Tab("Text → image"):
                gr.Markdown(f"The language model samples {vlm_cfg.num_image_tokens} visual tokens, the Selftok decoder turns them into an image.")
                with gr.Row():
                    prompt = gr.Textbox(label="Prompt", value="a red circle left of a blue square", elem_id="prompt")
                    generated = gr.Image(label="Generated image", format="png", interactive=False, elem_id="generated")
                with gr.Row():
                    guidance = gr.Slider(1, 10, value=5, step=0.5, label="Classifier-free guidance (LM)")
                    generation_steps = gr.Slider(1, 100, value=50, step=1, label="Decoding steps")
                    generation_renderer = gr.Checkbox(value=False, label="One-step renderer", visible=vlm.decoder.renderer is not None)
                    generation_seed = gr.Number(value=0, precision=0, label="Seed")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                generated_grid = gr.Dataframe(label="Sampled token ids (AR order, row-major)", interactive=False, elem_id="generated-grid")
                generate.click(
                    run_generation,
                    inputs=[prompt, guidance, generation_steps, generation_renderer, generation_seed],
                    outputs=[generated, generated_grid],
                )
    return demo
