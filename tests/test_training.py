"""Tokenizer and renderer trainers: the objective, learning, exact resume, atomic checkpoints, DDP, export."""

import json
import os
import shutil
import subprocess
import sys

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.pixel_space import PixelSpaceAutoencoder
from selftok_hf.training.data import StepBatches, random_resize_crop
from selftok_hf.training.loop import latest_checkpoint
from selftok_hf.training.renderer import (
    PatchDiscriminator,
    RendererTrainer,
    RendererTrainingArguments,
    pixel_loss,
    renderer_from_decoder,
    renderer_loss_weights,
    train_renderer,
)
from selftok_hf.training.tokenizer import (
    TokenizerTrainer,
    TokenizerTrainingArguments,
    decoder_parameter_groups,
    scale_token_gradients,
    train_tokenizer,
)
from selftok_hf.training.tokenizer import (
    main as tokenizer_main,
)

IMAGE_SIZE = 16  # conftest.TRAINING_IMAGE_SIZE, the side of the image_dir fixture's images


def _args(tmp_path, image_dir, **overrides):
    base = {"output_dir": str(tmp_path / "run"), "dataset": image_dir, "max_steps": 4, "batch_size": 2, "log_every": 1, "checkpoint_every": 2}
    base.update(overrides)
    return TokenizerTrainingArguments(**base)


def test_token_gradient_scaling_is_identity_forward_and_k_over_k_minus_j_backward():
    codes = torch.randn(2, 4, 3, requires_grad=True)
    out = scale_token_gradients(codes)
    assert torch.allclose(out, codes, rtol=1e-6, atol=1e-6)  # w x + (x - w x): exact up to float rounding
    out.sum().backward()
    expected = torch.tensor([4 / 4, 4 / 3, 4 / 2, 4 / 1])
    assert torch.allclose(codes.grad[0, :, 0], expected)


def test_random_resize_crop_is_the_official_rule():
    image = PIL.Image.new("RGB", (200, 100))
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert random_resize_crop(image, 32, rng).size == (32, 32)
    # r > ratio: shortest edge to `size` exactly; r <= ratio: between size and the original shortest edge.
    class FixedRng:
        def __init__(self, r):
            self.r = r

        def random(self):
            return self.r

        def integers(self, lo, hi):
            return lo

    from selftok_hf.training import data

    sides = []
    original = data._resize_shortest
    data._resize_shortest = lambda im, side: (sides.append(side), original(im, side))[1]
    try:
        random_resize_crop(image, 32, FixedRng(0.9))
        random_resize_crop(image, 32, FixedRng(0.25))  # mix 0.5 -> 0.5 * 32 + 0.5 * 100 = 66
    finally:
        data._resize_shortest = original
    assert sides == [32, 66]


def test_step_batches_depend_only_on_seed_and_step(image_dir):
    ds = datasets.load_from_disk(image_dir)
    a = StepBatches(ds, 3, IMAGE_SIZE, seed=1)
    b = StepBatches(ds, 3, IMAGE_SIZE, seed=1)
    assert torch.equal(a.batch(5), b.batch(5))  # b never produced steps 0..4
    # Two processes split the global batch: together they cover what one process with twice the batch sees.
    p0, p1 = (StepBatches(ds, 2, IMAGE_SIZE, seed=1, num_processes=2, process_index=i) for i in range(2))
    assert sorted(p0._indices(0) + p1._indices(0)) == sorted(StepBatches(ds, 4, IMAGE_SIZE, seed=1)._indices(0))
    # Every image is visited once per epoch.
    one = StepBatches(ds, 1, IMAGE_SIZE, seed=3)
    assert sorted(one._indices(s)[0] for s in range(4)) == [0, 1, 2, 3]


def test_parameter_groups_split_image_stream_from_the_rest(tmp_path, image_dir):
    trainer = TokenizerTrainer(_args(tmp_path, image_dir))
    _, decoder, _ = trainer._build_models()
    image, rest = decoder_parameter_groups(decoder)
    ids = {id(p) for p in image}
    names = [n for n, p in decoder.named_parameters() if id(p) in ids]
    assert "pos_embed.proj.weight" in names and "transformer_blocks.0.attn.to_q.weight" in names
    assert not any("context" in n or "add_" in n or "token_embedder" in n for n in names)
    assert len(image) + len(rest) == len(list(decoder.parameters()))


def test_training_reduces_the_loss_on_a_fixed_batch(tmp_path, image_dir):
    args = _args(tmp_path, image_dir, max_steps=40, checkpoint_every=0, batch_size=4, encoder_lr=2e-3, decoder_image_lr=2e-3, decoder_token_lr=2e-3, log_every=40)
    trainer = TokenizerTrainer(args)

    def fixed_batch_mse():
        objective = trainer.accelerator.unwrap_model(trainer.models["objective"]) if trainer.models else trainer.objective
        objective.image_tokenizer.quantizer.eval()  # no EMA update while measuring
        torch.manual_seed(123)
        with torch.no_grad():
            _, logs = objective(trainer._latents(trainer.batches.batch(0)))
        objective.image_tokenizer.quantizer.train()
        return logs["mse"]

    torch.manual_seed(args.seed)
    trainer.build()
    before = fixed_batch_mse()
    trainer.models, trainer.optimizers = {}, {}
    trainer.run()  # rebuilds from the same seed: same initial weights
    after = fixed_batch_mse()
    assert after < 0.7 * before, (before, after)


def test_resume_reproduces_the_uninterrupted_losses_exactly(tmp_path, image_dir):
    straight = TokenizerTrainer(_args(tmp_path / "a", image_dir, max_steps=4))
    straight_history = straight.run()

    first = TokenizerTrainer(_args(tmp_path / "b", image_dir, max_steps=2))
    first.run()
    resumed = TokenizerTrainer(_args(tmp_path / "b", image_dir, max_steps=4, resume_from="latest"))
    resumed_history = resumed.run()
    assert [h["step"] for h in resumed_history] == [3, 4]
    for a, b in zip(straight_history[2:], resumed_history):
        assert a["loss"] == b["loss"] and a["mse"] == b["mse"], (a, b)


def test_a_killed_save_leaves_the_previous_checkpoint_intact(tmp_path, image_dir, monkeypatch):
    trainer = TokenizerTrainer(_args(tmp_path, image_dir, max_steps=2, checkpoint_every=1))
    trainer.run()
    good = latest_checkpoint(trainer.output_dir)
    assert good.name == "step-00000002"

    later = TokenizerTrainer(_args(tmp_path, image_dir, max_steps=3, resume_from="latest"))
    real_save = later.accelerator.save_state

    def dies_midway(path, *a, **k):
        real_save(path, *a, **k)
        for f in sorted(os.listdir(path))[:1]:
            os.remove(os.path.join(path, f))  # a partial write ...
        raise KeyboardInterrupt("killed while saving")  # ... then the process dies

    monkeypatch.setattr(later.accelerator, "save_state", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        later.run()
    assert latest_checkpoint(trainer.output_dir) == good
    assert (good / "trainer_state.json").exists()
    # The next run resumes from the intact checkpoint and ignores the partial directory.
    again = TokenizerTrainer(_args(tmp_path, image_dir, max_steps=3, resume_from="latest"))
    assert [h["step"] for h in again.run()] == [3]
    assert latest_checkpoint(trainer.output_dir).name == "step-00000003"


def test_export_writes_a_loadable_pipeline_and_cli_errors(tmp_path, image_dir, capsys):
    trainer = train_tokenizer(_args(tmp_path, image_dir, max_steps=1), export_dir=str(tmp_path / "export"))
    pipe = SelftokDecoderPipeline.from_pretrained(str(tmp_path / "export"))
    assert isinstance(pipe.vae, PixelSpaceAutoencoder)
    index = json.loads((tmp_path / "export" / "model_index.json").read_text())
    assert index["vae"] == ["pixel_space", "PixelSpaceAutoencoder"]
    trained = trainer.accelerator.unwrap_model(trainer.models["objective"]).image_tokenizer.state_dict()
    for k, v in pipe.image_tokenizer.state_dict().items():
        assert torch.equal(v, trained[k]), k
    pipe.set_progress_bar_config(disable=True)
    ids = pipe.encode(PIL.Image.open(os.path.join(os.path.dirname(__file__), "..", "src", "selftok_hf", "assets", "coffee.jpg")))
    assert ids.shape == (1, pipe.image_tokenizer.config.num_image_tokens)
    assert pipe(ids, num_inference_steps=2, output_type="pil").images[0].size == (IMAGE_SIZE, IMAGE_SIZE)

    with pytest.raises(SystemExit) as err:
        tokenizer_main(["--latent-space", "nope", "--output-dir", str(tmp_path / "x")])
    assert err.value.code == 2 and "latent_space" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_ddp_run_keeps_one_codebook(tmp_path, image_dir):
    out = tmp_path / "ddp"
    cmd = [
        # The shipped CPU config: accelerate's torchrun launcher (`accelerate launch --cpu` starts a single process in
        # accelerate 1.x); the trainer selects gloo on CPU when no GPU is present.
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        os.path.join(os.path.dirname(__file__), "..", "examples", "accelerate_configs", "ddp_cpu_2proc.yaml"),
        "-m", "selftok_hf.training.tokenizer",
        "--dataset", image_dir, "--output-dir", str(out), "--max-steps", "3", "--batch-size", "2",
        "--log-every", "1", "--checkpoint-every", "0",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == [1, 2, 3]
    assert all(entry["codebook_divergence"] == 0.0 for entry in logs)
    assert SelftokDecoderPipeline.from_pretrained(str(out / "pipeline")).image_tokenizer.quantizer.initted.item() == 1


def test_renderer_starts_from_the_decoder_and_trains(tmp_path, image_dir):
    train_tokenizer(_args(tmp_path, image_dir, max_steps=1), export_dir=str(tmp_path / "tok"))
    decoder = SelftokDecoderPipeline.from_pretrained(str(tmp_path / "tok")).transformer
    renderer = renderer_from_decoder(decoder)
    shared = renderer.state_dict()
    for k, v in decoder.state_dict().items():
        if not k.startswith("pos_embed."):
            assert torch.equal(shared[k], v), k

    assert renderer_loss_weights(29_999, 30_000) == (0.1, 0.0)
    assert renderer_loss_weights(30_000, 30_000) == (0.5, 0.5)

    torch.manual_seed(0)
    perceptual_net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())

    def perceptual(a, b):  # a small random network, as LPIPS weights cannot be downloaded
        return (perceptual_net(a) - perceptual_net(b)).pow(2).flatten(1).mean(1)

    args = RendererTrainingArguments(
        output_dir=str(tmp_path / "ren"), pipeline=str(tmp_path / "tok"), dataset=image_dir, max_steps=3,
        batch_size=2, log_every=1, checkpoint_every=0, loss_switch_step=1, learning_rate=1e-3,
    )
    discriminator = PatchDiscriminator(channels=8, num_layers=1)
    d_before = [p.detach().clone() for p in discriminator.parameters()]
    trainer = train_renderer(args, export_dir=str(tmp_path / "with-renderer"), perceptual=perceptual, discriminator=discriminator)
    history = trainer.history
    assert "perceptual" in history[0] and "generator_loss" not in history[0]  # step 0: (0.1, 0)
    assert "generator_loss" in history[1] and history[1]["gan_weight"] == 0.5
    assert any(not torch.equal(a, b) for a, b in zip(d_before, discriminator.parameters()))
    pipe = SelftokDecoderPipeline.from_pretrained(str(tmp_path / "with-renderer"))
    trained = trainer.accelerator.unwrap_model(trainer.models["renderer"]).state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in pipe.renderer.state_dict().items())
    assert not torch.equal(pipe.renderer.state_dict()["canvas_token"], renderer.state_dict()["canvas_token"])
    ids = torch.zeros(1, pipe.image_tokenizer.config.num_image_tokens, dtype=torch.long)
    assert pipe(ids, use_renderer=True, output_type="pt").images.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    shutil.rmtree(tmp_path / "ren")


def test_renderer_pixel_loss_term(tmp_path, image_dir):
    """The optional pixel term: off by default (the paper's loss), and when on it is added to the latent MSE."""
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert pixel_loss(a, b, "l1").item() == pytest.approx(0.5) and pixel_loss(a, b, "mse").item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="pixel_loss"):
        RendererTrainingArguments(pipeline="x", pixel_loss="l2")
    train_tokenizer(_args(tmp_path, image_dir, max_steps=1), export_dir=str(tmp_path / "tok"))
    runs = {}
    for weight in (0.0, 2.0):
        args = RendererTrainingArguments(
            output_dir=str(tmp_path / f"ren{weight}"), pipeline=str(tmp_path / "tok"), dataset=image_dir, max_steps=1,
            batch_size=2, log_every=1, checkpoint_every=0, loss_switch_step=2, pixel_loss="mse", pixel_loss_weight=weight,
        )
        runs[weight] = RendererTrainer(args).run()[0]
    assert "pixel_loss" not in runs[0.0] and runs[0.0]["loss"] == pytest.approx(runs[0.0]["mse"])
    # Same seed, same batch, same start: the same latent MSE, plus twice the pixel MSE.
    assert runs[2.0]["mse"] == pytest.approx(runs[0.0]["mse"], rel=1e-6)
    assert runs[2.0]["loss"] == pytest.approx(runs[2.0]["mse"] + 2.0 * runs[2.0]["pixel_loss"], rel=1e-6)
    assert runs[2.0]["pixel_loss"] > 0


def test_training_options_accumulation_bf16_checkpointing_cached_latents(tmp_path, image_dir):
    """Each option runs end to end and changes what it should."""
    base = TokenizerTrainer(_args(tmp_path / "base", image_dir, max_steps=1, batch_size=2))
    base_loss = base.run()[0]["loss"]
    accumulated = TokenizerTrainer(_args(tmp_path / "acc", image_dir, max_steps=1, batch_size=2, gradient_accumulation_steps=2))
    history = accumulated.run()
    # The logged loss is the mean of the micro-batches; micro-batch 0 is the base run's only batch.
    assert history[0]["loss"] != base_loss and np.isfinite(history[0]["loss"])
    checkpointed = TokenizerTrainer(_args(tmp_path / "ckpt", image_dir, max_steps=1, batch_size=2, gradient_checkpointing=True))
    # Recomputing activations changes nothing but memory: same loss as the base run.
    assert checkpointed.run()[0]["loss"] == pytest.approx(base_loss, rel=1e-5)
    objective = checkpointed.accelerator.unwrap_model(checkpointed.models["objective"])
    assert objective.image_tokenizer.encoder.gradient_checkpointing and objective.decoder.gradient_checkpointing
    # accelerate fixes the precision once per process: bf16 autocast runs in a fresh one.
    out = tmp_path / "bf16"
    result = subprocess.run(
        [sys.executable, "-m", "selftok_hf.training.tokenizer", "--dataset", image_dir, "--output-dir", str(out),
         "--max-steps", "2", "--batch-size", "2", "--log-every", "1", "--mixed-precision", "bf16"],
        capture_output=True, text=True, timeout=600, check=False, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(entry["loss"]) for entry in logs)
    exported = SelftokDecoderPipeline.from_pretrained(str(out / "pipeline"))
    assert exported.image_tokenizer.quantizer.embed.dtype == torch.float32  # the quantizer stays fp32
    cached = TokenizerTrainer(_args(tmp_path / "cache", image_dir, max_steps=1, cache_latents=True))
    cached.run()
    assert "latents" in cached.batches.dataset.column_names
    assert cached.batches.batch(0).shape == (2, 12, 8, 8)


def test_decoder_image_stream_from_an_sd3_transformer(tmp_path, image_dir):
    from diffusers import SD3Transformer2DModel

    from selftok_hf.modeling_selftok_decoder import SELFTOK_DECODER_TINY_CONFIG

    cfg = SELFTOK_DECODER_TINY_CONFIG
    sd3 = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=12, out_channels=12, num_layers=cfg["num_layers"],
        attention_head_dim=cfg["attention_head_dim"], num_attention_heads=cfg["num_attention_heads"],
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=cfg["pos_embed_max_size"],
    )
    sd3.save_pretrained(tmp_path / "sd3")
    trainer = TokenizerTrainer(_args(tmp_path, image_dir, sd3_transformer=str(tmp_path / "sd3")))
    _, decoder, _ = trainer._build_models()
    theirs = sd3.state_dict()
    assert torch.equal(decoder.state_dict()["transformer_blocks.0.attn.to_q.weight"], theirs["transformer_blocks.0.attn.to_q.weight"])
    assert torch.equal(decoder.state_dict()["pos_embed.proj.weight"], theirs["pos_embed.proj.weight"])
