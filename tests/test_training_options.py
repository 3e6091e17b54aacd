"""Options the shared training loop adds to every trainer (learning-rate warm-up, EMA weights), its resume safety,
and the small-VAE trainer with a tokenizer trained on its latents."""

import json
import math
import os

import pytest
import torch
from diffusers import AutoencoderKL

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.training.autoencoder import AutoencoderTrainingArguments, latent_statistics, train_autoencoder
from selftok_hf.training.data import StepBatches, load_image_dataset
from selftok_hf.training.loop import latest_checkpoint
from selftok_hf.training.tokenizer import TokenizerTrainer, TokenizerTrainingArguments, train_tokenizer

IMAGE_SIZE = 16  # conftest.TRAINING_IMAGE_SIZE, the side of the image_dir fixture's images


def _args(output_dir, image_dir, **overrides):
    base = {"output_dir": str(output_dir), "dataset": image_dir, "max_steps": 4, "batch_size": 2, "log_every": 1, "checkpoint_every": 2}
    return TokenizerTrainingArguments(**{**base, **overrides})


def test_warmup_scales_every_group_linearly_then_holds(tmp_path, image_dir):
    history = TokenizerTrainer(_args(tmp_path, image_dir, warmup_steps=3, encoder_lr=3e-4, decoder_image_lr=1e-4, decoder_token_lr=2e-4)).run()
    for logs, factor in zip(history, (1 / 3, 2 / 3, 1.0, 1.0)):
        assert logs["lr/encoder"] == pytest.approx(3e-4 * factor)
        assert logs["lr/decoder_image_stream"] == pytest.approx(1e-4 * factor)
        assert logs["lr/decoder_rest"] == pytest.approx(2e-4 * factor)


def test_cosine_decay_of_the_last_steps_resumes_exactly(tmp_path, image_dir):
    args = _args(tmp_path / "a", image_dir, max_steps=6, warmup_steps=2, decay_steps=3, encoder_lr=1e-3)
    history = TokenizerTrainer(args).run()
    cosine = [0.5 * (1 + math.cos(math.pi * d / 4)) for d in (1, 2, 3)]
    assert [h["lr/encoder"] for h in history] == pytest.approx([1e-3 * f for f in (0.5, 1.0, 1.0, *cosine)])
    # A pure function of the step: killed after the checkpoint at step 4, the resumed run logs the same rates and losses.
    TokenizerTrainer(_args(tmp_path / "b", image_dir, max_steps=6, warmup_steps=2, decay_steps=3, encoder_lr=1e-3, checkpoint_every=4)).run()
    resumed = TokenizerTrainer(_args(tmp_path / "b", image_dir, max_steps=6, warmup_steps=2, decay_steps=3, encoder_lr=1e-3, checkpoint_every=4,
                                     resume_from=str(tmp_path / "b" / "checkpoints" / "step-00000004"))).run()
    assert [h["loss"] for h in resumed] == pytest.approx([h["loss"] for h in history[4:]], rel=1e-6)
    with pytest.raises(ValueError, match="decay_steps"):
        _args(tmp_path, image_dir, max_steps=4, decay_steps=5)


def test_ema_weights_are_exported_and_resume_exactly(tmp_path, image_dir):
    plain = TokenizerTrainer(_args(tmp_path / "plain", image_dir))
    plain_history = plain.run()
    straight = train_tokenizer(_args(tmp_path / "a", image_dir, ema_decay=0.9), export_dir=str(tmp_path / "export"))
    # The average does not change training: same losses as without it ...
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in plain_history]
    shadow = [p.clone() for p in straight.ema.shadow_params]
    trained = [p.detach() for p in straight._trained_parameters()]
    # ... after run() the models hold the averaged weights, which are not the last training weights ...
    assert all(torch.equal(a, b) for a, b in zip(shadow, trained))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(shadow, plain._trained_parameters()))
    # ... and the exported pipeline is the averaged model.
    exported = SelftokDecoderPipeline.from_pretrained(str(tmp_path / "export"))
    tokenizer = straight.accelerator.unwrap_model(straight.models["objective"]).image_tokenizer
    for name, value in exported.image_tokenizer.state_dict().items():
        assert torch.equal(value, tokenizer.state_dict()[name]), name

    first = TokenizerTrainer(_args(tmp_path / "b", image_dir, ema_decay=0.9, max_steps=2))
    first.run()
    assert (latest_checkpoint(tmp_path / "b") / "ema.safetensors").exists()
    resumed = TokenizerTrainer(_args(tmp_path / "b", image_dir, ema_decay=0.9, resume_from="latest"))
    resumed.run()
    for a, b in zip(shadow, resumed.ema.shadow_params):
        assert torch.equal(a, b)


def test_resume_never_silently_restarts_and_does_not_repeat_log_lines(tmp_path, image_dir):
    run = tmp_path / "run"
    TokenizerTrainer(_args(run, image_dir, max_steps=2, checkpoint_every=1)).run()
    TokenizerTrainer(_args(run, image_dir, max_steps=3, resume_from="latest")).run()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # A resume that finds the checkpoint at step 2 again (log lines of step 3 were written after it): no repeats.
    (run / "checkpoints" / "latest").write_text("step-00000002")
    TokenizerTrainer(_args(run, image_dir, max_steps=3, resume_from="latest")).run()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    # Re-saving an existing step: a death after the old copy was moved aside resumes from that copy.
    root = run / "checkpoints"
    os.replace(root / "step-00000003", root / ".replaced-step-00000003")
    (root / "latest").write_text("step-00000003")
    resumed = TokenizerTrainer(_args(run, image_dir, max_steps=3, resume_from="latest"))
    assert resumed.run() == [] and resumed.step == 3
    assert (root / "step-00000003").is_dir() and not (root / ".replaced-step-00000003").exists()

    # `latest` naming a folder that is gone, or checkpoints without a pointer: an error, not a restart from step 0.
    import shutil

    shutil.rmtree(root / "step-00000003")
    with pytest.raises(FileNotFoundError, match="missing"):
        TokenizerTrainer(_args(run, image_dir, max_steps=3, resume_from="latest")).run()
    (root / "latest").unlink()
    with pytest.raises(FileNotFoundError, match="no 'latest' pointer"):
        TokenizerTrainer(_args(run, image_dir, max_steps=3, resume_from="latest")).run()
    with pytest.raises(FileNotFoundError, match="not found"):
        TokenizerTrainer(_args(run, image_dir, max_steps=3, resume_from=str(root / "step-00000099"))).run()
    # A fresh folder with resume_from="latest" starts at step 0 (the documented first invocation).
    assert [h["step"] for h in TokenizerTrainer(_args(tmp_path / "fresh", image_dir, max_steps=1, resume_from="latest")).run()] == [1]


def test_small_vae_trainer_learns_normalises_and_a_tokenizer_reads_its_latents(tmp_path, image_dir):
    vae_args = AutoencoderTrainingArguments(
        output_dir=str(tmp_path / "vae-run"), dataset=image_dir, image_size=IMAGE_SIZE, vae_config="tiny", max_steps=30,
        batch_size=4, log_every=1, checkpoint_every=0, learning_rate=3e-3, statistics_images=16,
    )
    trainer = train_autoencoder(vae_args, export_dir=str(tmp_path / "vae"))
    assert trainer.history[-1]["mse"] < 0.6 * trainer.history[0]["mse"]
    vae = AutoencoderKL.from_pretrained(str(tmp_path / "vae"))
    assert vae.config.latent_channels == 16 and not vae.config.use_quant_conv
    crops = StepBatches(load_image_dataset(image_dir), 16, IMAGE_SIZE, seed=vae_args.seed + 1).batch(0)
    shift, scale = latent_statistics(vae, crops)
    assert (shift, scale) == pytest.approx((vae.config.shift_factor, vae.config.scaling_factor), rel=1e-5)
    with torch.no_grad():
        z = (vae.encode(crops).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor
    assert abs(z.mean().item()) < 1e-4 and z.std().item() == pytest.approx(1.0, abs=1e-3)

    # latent_space="vae": channels, downsampling and normalisation come from the VAE's config.
    tok = TokenizerTrainer(_args(tmp_path / "tok", image_dir, latent_space="vae", vae_path=str(tmp_path / "vae"), max_steps=1,
                                 tokenizer_config=json.dumps({"latent_size": IMAGE_SIZE // 4, "patch_size": 1})))
    tok.run()
    config = tok.accelerator.unwrap_model(tok.models["objective"]).image_tokenizer.config
    assert (config.latent_channels, config.latent_downsample, config.image_size) == (16, 4, IMAGE_SIZE)
    assert (config.vae_scaling_factor, config.vae_shift_factor) == (vae.config.scaling_factor, vae.config.shift_factor)


def test_opencv_photos_source_names_what_is_missing(tmp_path, monkeypatch):
    from selftok_hf.training import data

    monkeypatch.setattr(data, "OPENCV_DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="opencv-doc"):
        load_image_dataset("offline:opencv-photos", "test")
    with pytest.raises(ValueError, match="splits"):
        load_image_dataset("offline:opencv-photos", "nope")
    assert not set(data.OPENCV_PHOTOS["test"]) & (set(data.OPENCV_PHOTOS["train"]) | set(data.OPENCV_PHOTOS["validation"]))
