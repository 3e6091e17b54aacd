"""One quantity, one name (issue 17, item 5): every renamed public name works under its new name, and its old one
still works for a release with a FutureWarning naming the new one (selftok_hf.renamed). Configs saved with an old
key load as they are, without a warning (the shipped assets are such configs)."""

import contextlib
import json
import warnings
from importlib import resources

import pytest
import torch

from selftok_hf import (
    SelftokConfig,
    SelftokDecoderTransformer,
    SelftokRenderer,
    TokenSchedule,
)
from selftok_hf.configuration_selftok import SELFTOK_TINY_CONFIG
from selftok_hf.modeling_selftok import SelftokModel
from selftok_hf.modeling_selftok_decoder import (
    SELFTOK_DECODER_TINY_CONFIG,
    SELFTOK_RENDERER_TINY_CONFIG,
    SelftokJointBlock,
)
from selftok_hf.renamed import renamed_kwargs

ASSETS = resources.files("selftok_hf") / "assets"
SMALL32 = ASSETS / "selftok-small32"  # saved before the renames: num_tokens, code_dim


@contextlib.contextmanager
def renamed(old, new):
    """Expects a FutureWarning for ``old`` naming ``new``, attributed to the line using the old name (in this file)."""
    with pytest.warns(FutureWarning, match=rf"{old}.* was renamed .*{new}") as record:
        yield
    assert all(w.filename == __file__ for w in record if issubclass(w.category, FutureWarning)), [w.filename for w in record]


@contextlib.contextmanager
def no_future_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        yield


def _with_old_keys(config: dict, renames: dict) -> dict:
    return {next((old for old, new in renames.items() if new == key), key): value for key, value in config.items()}


# -------------------------------------------------------------------------------- K: num_image_tokens
def test_selftok_config_num_image_tokens():
    config = SelftokConfig(**SELFTOK_TINY_CONFIG)
    assert config.num_image_tokens == 32 and "num_tokens" not in config.to_dict()
    old = _with_old_keys(SELFTOK_TINY_CONFIG, {"num_tokens": "num_image_tokens"})
    with renamed(r"SelftokConfig\(num_tokens", "num_image_tokens"):
        assert SelftokConfig(**old).to_dict() == config.to_dict()
    with renamed("SelftokConfig.num_tokens", "SelftokConfig.num_image_tokens"):
        assert config.num_tokens == 32
    with renamed("SelftokConfig.num_tokens", "SelftokConfig.num_image_tokens"):
        config.num_tokens = 32
    with pytest.raises(TypeError, match="both num_tokens= and num_image_tokens="):
        SelftokConfig(**old, num_image_tokens=32)
    # A config saved with the old key: from_dict / from_pretrained / AutoConfig read it silently.
    with no_future_warning():
        assert SelftokConfig.from_dict(old).to_dict() == config.to_dict()


def test_saved_configs_with_old_keys_load_silently(tmp_path):
    from transformers import AutoConfig

    from selftok_hf.hub import model_card

    assert "num_tokens" in json.loads((SMALL32 / "image_tokenizer" / "config.json").read_text())
    assert "code_dim" in json.loads((SMALL32 / "transformer" / "config.json").read_text())
    with no_future_warning():
        for config in (
            SelftokConfig.from_pretrained(SMALL32 / "image_tokenizer"),
            SelftokConfig.from_json_file(SMALL32 / "image_tokenizer" / "config.json"),
            AutoConfig.from_pretrained(SMALL32 / "image_tokenizer"),
        ):
            assert config.num_image_tokens == 32
        decoder = SelftokDecoderTransformer.from_pretrained(SMALL32 / "transformer")
        renderer = SelftokRenderer.from_pretrained(SMALL32 / "renderer")
        assert (decoder.config.token_dim, decoder.config.num_image_tokens) == (16, 32) == (renderer.config.token_dim, renderer.config.num_image_tokens)
        card = str(model_card(SMALL32 / "image_tokenizer"))
    assert "| tokens per image | 32 |" in card
    # Saved again: the new keys only.
    decoder.save_pretrained(tmp_path / "decoder")
    saved = json.loads((tmp_path / "decoder" / "config.json").read_text())
    assert {"token_dim", "num_image_tokens"} <= saved.keys() and not {"code_dim", "num_tokens"} & saved.keys()
    SelftokConfig.from_pretrained(SMALL32 / "image_tokenizer").save_pretrained(tmp_path / "tokenizer")
    assert "num_tokens" not in json.loads((tmp_path / "tokenizer" / "config.json").read_text())


def test_token_schedule_num_image_tokens():
    schedule = TokenSchedule(8, (500, 1000), (4, 4))
    assert schedule.num_image_tokens == 8
    with renamed(r"TokenSchedule\(num_tokens", "num_image_tokens"):
        assert TokenSchedule(num_tokens=8, stages=(500, 1000), tokens_per_stage=(4, 4)) == schedule
    with renamed("TokenSchedule.num_tokens", "TokenSchedule.num_image_tokens"):
        assert schedule.num_tokens == 8
    with renamed(r"uniform\(num_tokens", "num_image_tokens"):
        assert TokenSchedule.uniform(num_tokens=8) == TokenSchedule.uniform(num_image_tokens=8)
    with renamed(r"from_strings\(num_tokens", "num_image_tokens"):
        assert TokenSchedule.from_strings(num_tokens=8, stages="500,1000", tokens_per_stage="4,4") == schedule


def test_num_image_tokens_of_the_tools(tmp_path):
    import numpy as np

    from selftok_hf.apps.cli import write_token_ids
    from selftok_hf.apps.demo import prefix_lengths
    from selftok_hf.evaluation.raster_vq import RasterVQAutoencoder
    from selftok_hf.evaluation.reconstruction import default_prefix_lengths

    with renamed(r"default_prefix_lengths\(num_tokens", "num_image_tokens"):
        assert default_prefix_lengths(num_tokens=32) == default_prefix_lengths(num_image_tokens=32) == [0, 1, 2, 4, 8, 16, 32]
    with renamed(r"prefix_lengths\(num_tokens", "num_image_tokens"):
        assert prefix_lengths(num_tokens=32) == prefix_lengths(num_image_tokens=32)
    raster = RasterVQAutoencoder(image_size=16, downsample=4, channels=16, codebook_size=16, code_dim=8)
    with renamed("RasterVQAutoencoder.num_tokens", "RasterVQAutoencoder.num_image_tokens"):
        assert raster.num_tokens == raster.num_image_tokens == 16
    ids = np.zeros((1, 4), dtype=np.int64)
    with renamed(r"write_token_ids\(num_tokens", "num_image_tokens"):
        write_token_ids(tmp_path / "ids.json", ids, ["a.png"], num_tokens=4, codebook_size=8)
    assert json.loads((tmp_path / "ids.json").read_text())["num_image_tokens"] == 4


# ------------------------------------------------------------------------- the decoder's width: token_dim
@pytest.mark.parametrize("model_class, tiny", [(SelftokDecoderTransformer, SELFTOK_DECODER_TINY_CONFIG), (SelftokRenderer, SELFTOK_RENDERER_TINY_CONFIG)])
def test_decoder_token_dim_and_num_image_tokens(model_class, tiny):
    model = model_class(**tiny)
    assert (model.config.token_dim, model.config.num_image_tokens) == (8, 32) == (SelftokConfig(**SELFTOK_TINY_CONFIG).token_dim, 32)
    renames = {"code_dim": "token_dim", "num_tokens": "num_image_tokens"}
    for old, new in renames.items():
        with renamed(rf"{model_class.__name__}\({old}", new):
            assert dict(model_class(**_with_old_keys(tiny, {old: new})).config) == dict(model.config)
        with renamed(f"config.{old}", f"config.{new}"):
            assert getattr(model.config, old) == model.config[new]
        with renamed(rf"config\['{old}'\]", new):
            assert model.config[old] == model.config[new]
    with pytest.raises(AttributeError):
        _ = model.config.no_such_key
    with no_future_warning():  # a saved config with the old keys
        assert dict(model_class.from_config(_with_old_keys(tiny, renames)).config) == dict(model.config)


# ----------------------------------------------------------------------------------- context_see_xt
def test_forward_context_see_xt():
    torch.manual_seed(0)
    decoder = SelftokDecoderTransformer(**SELFTOK_DECODER_TINY_CONFIG).eval()
    with torch.no_grad():
        for p in decoder.parameters():  # the default init zeroes the adaLN gates: attention would not show
            p.normal_(0, 0.3)
    cfg = decoder.config
    x = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    codes = torch.randn(1, cfg.num_image_tokens, cfg.token_dim)
    with torch.no_grad():
        new = decoder(x, 0.5, codes, context_see_xt=False).sample
        with renamed(r"forward\(context_sees_image", "context_see_xt"):
            old = decoder(x, 0.5, codes, context_sees_image=False).sample
        assert torch.equal(new, old) and not torch.equal(new, decoder(x, 0.5, codes).sample)
        block = SelftokJointBlock(16, 2, 8, 4.0, True, context_pre_only=False)
        args = (torch.randn(1, 4, 16), torch.randn(1, 3, 16), torch.randn(1, 16), torch.zeros(3, 96))
        with renamed(r"SelftokJointBlock.forward\(context_sees_image", "context_see_xt"):
            old = block(*args, context_sees_image=False)
        assert all(torch.equal(a, b) for a, b in zip(old, block(*args, context_see_xt=False)))


# ------------------------------------------------------------------------------- num_inference_steps
def test_vlm_pipeline_num_inference_steps():
    from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline

    pipe = tiny_selftok_pipeline("llama", seed=0)
    pipe.set_progress_bar_config(disable=True)

    def call(**steps):
        return pipe("a cat", guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="pt", **steps).images

    with renamed(r"SelftokPipeline.__call__\(decoder_steps", "num_inference_steps"):
        old = call(decoder_steps=2)
    assert torch.equal(old, call(num_inference_steps=2)) and not torch.equal(old, call(num_inference_steps=3))


def test_rl_evaluation_num_inference_steps(tiny_pipeline):
    from selftok_hf.rl import ShapesWorld, shapes_geneval
    from selftok_hf.rl.evaluation import decode_images
    from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline

    ids = torch.zeros(1, tiny_pipeline.image_tokenizer.config.num_image_tokens, dtype=torch.long)
    tiny_pipeline.set_progress_bar_config(disable=True)
    with renamed(r"decode_images\(decoder_steps", "num_inference_steps"):
        decode_images(tiny_pipeline, ids, use_renderer=False, decoder_steps=1)
    vlm = tiny_selftok_pipeline("llama", seed=0)
    specs = ShapesWorld(image_size=32).split(seed=0)["held_out"][:1]
    def blank(token_ids):
        return torch.ones(token_ids.shape[0], 3, 32, 32)

    with renamed(r"shapes_geneval\(decoder_steps", "num_inference_steps"):
        shapes_geneval(vlm, specs, images_per_prompt=1, decoder_steps=1, image_decoder=blank)


def test_trainer_arguments_num_inference_steps(tmp_path):
    from selftok_hf.rl.trainer import GRPOArguments, main
    from selftok_hf.training.tokenizer import TokenizerTrainingArguments

    assert GRPOArguments(num_inference_steps=3).num_inference_steps == 3
    with renamed(r"GRPOArguments\(decoder_steps", "num_inference_steps"):
        args = GRPOArguments(decoder_steps=3)
    with renamed("GRPOArguments.decoder_steps", "GRPOArguments.num_inference_steps"):
        assert args.decoder_steps == args.num_inference_steps == 3
    with renamed(r"TokenizerTrainingArguments\(eval_decoder_steps", "eval_num_inference_steps"):
        assert TokenizerTrainingArguments(eval_decoder_steps=3).eval_num_inference_steps == 3
    # The old key in a config file (the flags: tests/test_training_cli.py): the new field, a warning naming the file.
    (tmp_path / "pipe").mkdir()
    config = tmp_path / "rl.yaml"
    config.write_text(f"pipeline: {tmp_path / 'pipe'}\ndecoder_steps: 3\n")
    from selftok_hf.rl import trainer

    class Parsed(Exception):
        pass

    def capture(args):
        raise Parsed(args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "SelftokGRPOTrainer", capture)
        with pytest.warns(FutureWarning, match=r"config file .*rl.yaml: decoder_steps was renamed num_inference_steps"), pytest.raises(Parsed) as parsed:
            main([str(config)])
    assert parsed.value.args[0].num_inference_steps == 3


# ---------------------------------------------------------------------------- trainers: not trl's names
@pytest.mark.parametrize(
    "module, old, new",
    [
        ("selftok_hf.rl", "GRPOTrainer", "SelftokGRPOTrainer"),
        ("selftok_hf.rl.trainer", "GRPOTrainer", "SelftokGRPOTrainer"),
        ("selftok_hf.training.sft", "SFTTrainer", "SelftokSFTTrainer"),
    ],
)
def test_trainer_class_names(module, old, new):
    import importlib

    namespace = importlib.import_module(module)
    assert new in namespace.__all__ and old not in namespace.__all__
    with renamed(rf"{module}.{old}", f"{module}.{new}"):
        assert getattr(namespace, old) is getattr(namespace, new)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchTrainer'"):
        _ = namespace.NoSuchTrainer


# ------------------------------------------------------------------- the image model: image_tokenizer
def test_objective_image_tokenizer(tmp_path):
    from safetensors.torch import load_model, save_file

    from selftok_hf.training.renderer import RendererTrainer
    from selftok_hf.training.tokenizer import SelftokTokenizerObjective

    torch.manual_seed(0)
    image_tokenizer = SelftokModel(SelftokConfig(**SELFTOK_TINY_CONFIG))
    objective = SelftokTokenizerObjective(image_tokenizer, SelftokDecoderTransformer(**SELFTOK_DECODER_TINY_CONFIG))
    assert objective.image_tokenizer is image_tokenizer
    with renamed(r"SelftokTokenizerObjective\(tokenizer", "image_tokenizer"):
        SelftokTokenizerObjective(tokenizer=image_tokenizer, decoder=objective.decoder)
    with renamed("SelftokTokenizerObjective.tokenizer", "SelftokTokenizerObjective.image_tokenizer"):
        assert objective.tokenizer is image_tokenizer
    # A training checkpoint saved when the attribute was `tokenizer` resumes (accelerate loads it with safetensors).
    state = {key.replace("image_tokenizer.", "tokenizer.", 1): value.clone() for key, value in objective.state_dict().items()}
    assert any(key.startswith("tokenizer.") for key in state)
    save_file(state, tmp_path / "model.safetensors")
    fresh = SelftokTokenizerObjective(SelftokModel(SelftokConfig(**SELFTOK_TINY_CONFIG)), SelftokDecoderTransformer(**SELFTOK_DECODER_TINY_CONFIG))
    load_model(fresh, tmp_path / "model.safetensors")  # strict
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), objective.state_dict().values()))
    trainer = object.__new__(RendererTrainer)  # the attribute alone (build() sets image_tokenizer)
    trainer.image_tokenizer = image_tokenizer
    with renamed("RendererTrainer.tokenizer", "RendererTrainer.image_tokenizer"):
        assert trainer.tokenizer is image_tokenizer


# ------------------------------------------------------------------------------------------ the CLI
def test_selftok_generate_guidance_options():
    from selftok_hf.apps.cli import build_parser

    parser = build_parser()
    base = ["generate", "a cat", "-o", "out.png"]
    args = parser.parse_args(base + ["--guidance-scale", "3", "--decoder-guidance-scale", "2"])
    assert (args.guidance_scale, args.decoder_guidance_scale) == (3.0, 2.0)
    assert parser.parse_args(base).guidance_scale == 5.0
    with pytest.warns(FutureWarning, match="the option --cfg was renamed --guidance-scale"):
        assert parser.parse_args(base + ["--cfg", "3"]).guidance_scale == 3.0
    # decode and reconstruct run the decoder alone: its guidance is --guidance-scale, as in SelftokDecoderPipeline.
    assert parser.parse_args(["decode", "ids.npy", "-o", "out", "--guidance-scale", "2"]).guidance_scale == 2.0


def test_renamed_kwargs_helper():
    @renamed_kwargs(old="new")
    def f(new=0):
        return new

    assert f(new=1) == 1
    with renamed(r"f\(old", r"f\(new"):
        assert f(old=2) == 2
    with pytest.raises(TypeError, match="both old= and new="):
        f(old=1, new=2)
