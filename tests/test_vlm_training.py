"""SFT of the VLM: overfitting a handful of pairs reproduces their image ids and captions; LoRA adapters hold only the
new rows, reload exactly and merge; cached image pre-tokenisation; the console script."""

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open

from selftok_hf import SelftokPipeline
from selftok_hf.assets import bundled_images
from selftok_hf.processing_selftok import IGNORE_INDEX
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline
from selftok_hf.training.sft import (
    SelftokSFTTrainer,
    SFTArguments,
    SFTExampleBuilder,
    main,
    parse_task_mix,
    pretokenize_images,
)

CAPTIONS = {"astronaut.jpg": "an astronaut in a white suit", "coffee.jpg": "a cup of coffee", "chelsea.jpg": "a tabby cat"}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pairs():
    images = bundled_images()
    return datasets.Dataset.from_dict({"image": list(images.values()), "text": [CAPTIONS[name] for name in images]})


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A saved, untrained tiny VLM (Llama) to fine-tune."""
    path = tmp_path_factory.mktemp("base")
    tiny_selftok_pipeline("llama").save_pretrained(path)
    return path


def test_overfit_reproduces_images_and_captions(base_dir, pairs, tmp_path):
    args = SFTArguments(
        output_dir=str(tmp_path), max_steps=150, batch_size=6, learning_rate=3e-3, log_every=10, checkpoint_every=0,
        task_mix="t2i=0.5,i2t=0.5", caption_dropout=0.1,
    )
    trainer = SelftokSFTTrainer(args, SelftokPipeline.from_pretrained(base_dir), pairs)
    history = trainer.run()
    losses = [h["loss"] for h in history]
    assert losses[0] > 1.0 and losses[-1] < 0.05, losses
    written = trainer.export()

    pipe = SelftokPipeline.from_pretrained(written["pipeline"])
    pipe.set_progress_bar_config(disable=True)
    training_ids = torch.tensor(trainer.dataset["image_token_ids"])
    assert torch.equal(training_ids, pipe.processor.encode_images(list(bundled_images().values())))
    generated = pipe(list(CAPTIONS.values()), guidance_scale=1.0, do_sample=False, output_type="ids").token_ids
    assert torch.equal(generated, training_ids)
    assert pipe.describe(list(bundled_images().values()), max_new_tokens=16) == list(CAPTIONS.values())


def test_lora_adapter_holds_new_rows_reloads_exactly_and_merges(base_dir, pairs, tmp_path):
    args = SFTArguments(
        pipeline=str(base_dir), output_dir=str(tmp_path), max_steps=6, batch_size=4, learning_rate=1e-2, log_every=3,
        checkpoint_every=0, lora=True, lora_rank=4, lora_alpha=8,
    )
    trainer = SelftokSFTTrainer(args, dataset=pairs)
    trainer.run()
    adapter_dir = trainer.export()["adapter"]
    trained = trainer.pipeline.language_model.eval()

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}  # noqa: SIM118
    token_rows = {k: v for k, v in shapes.items() if "trainable_tokens" in k}
    # the 128 new rows (64 visual + 2 markers + 62 padding) of the embedding and of the untied head, nothing more
    assert sorted(token_rows.values()) == [(128, 64), (128, 64)]
    assert all(v[0] != 1152 for v in shapes.values())  # no full vocabulary matrix
    assert "selftok" in ModelCard.load(adapter_dir / "README.md").data.tags  # our LoRA card, not PEFT's (selftok_hf.hub)

    example = trainer.builder(trainer.dataset[0], "t2i", np.random.default_rng(0))
    input_ids = torch.tensor([example["input_ids"]])
    with torch.no_grad():
        expected = trained(input_ids).logits
        base = SelftokPipeline.from_pretrained(base_dir)
        assert not torch.allclose(base.language_model(input_ids).logits, expected, atol=1e-3)  # training changed the model
        reloaded = base.load_lora(adapter_dir)
        assert torch.equal(reloaded.language_model(input_ids).logits, expected)
        merged = reloaded.merge_lora().language_model
        assert not reloaded.has_lora
        assert torch.allclose(merged(input_ids).logits, expected, atol=1e-4)


def test_pretokenisation_is_cached(base_dir, pairs, tmp_path):
    pipe = SelftokPipeline.from_pretrained(base_dir)
    calls = []
    encode = pipe.processor.encode_images
    pipe.processor.encode_images = lambda images: calls.append(len(images)) or encode(images)
    first = pretokenize_images(pairs, pipe, cache_dir=tmp_path)
    assert calls == [3] and first.column_names == ["text", "image_token_ids"]
    second = pretokenize_images(pairs, pipe, cache_dir=tmp_path)
    assert calls == [3]  # read back from the Arrow cache
    assert second["image_token_ids"] == first["image_token_ids"] == encode(list(bundled_images().values())).tolist()
    assert len(list(tmp_path.glob("selftok-image-tokens-*.arrow"))) == 1


def test_token_cache_stays_out_of_the_dataset_folder(base_dir, pairs, tmp_path, monkeypatch):
    import datasets

    pairs.save_to_disk(str(tmp_path / "pairs"))
    on_disk = datasets.load_from_disk(str(tmp_path / "pairs"))
    before = sorted(p.name for p in (tmp_path / "pairs").iterdir())
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    pretokenize_images(on_disk, SelftokPipeline.from_pretrained(base_dir))
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == before
    assert len(list((tmp_path / "hf-cache" / "selftok-image-tokens").glob("selftok-image-tokens-*.arrow"))) == 1


def test_example_builder_tasks(base_dir):
    processor = SelftokPipeline.from_pretrained(base_dir).processor
    row = {"text": "a cat", "image_token_ids": list(range(32))}
    rng = np.random.default_rng(0)
    t2i = SFTExampleBuilder(processor, caption_dropout=0.0)(row, "t2i", rng)
    span = processor.vocabulary.image_span(torch.arange(32)[None])[0].tolist()
    answer = span + [processor.tokenizer.eos_token_id]
    assert t2i["input_ids"][-len(answer) :] == answer and t2i["labels"][-len(answer) :] == answer
    assert set(t2i["labels"][: -len(answer)]) == {IGNORE_INDEX}
    dropped = SFTExampleBuilder(processor, caption_dropout=1.0)(row, "t2i", rng)
    assert dropped["input_ids"] == processor.chat_prompt("") + answer
    i2t = SFTExampleBuilder(processor)(row, "i2t", rng)
    caption = processor.tokenizer(" a cat", add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
    assert [t for t in i2t["labels"] if t != IGNORE_INDEX] == caption
    # With an answer column, understanding examples answer with it while text-to-image keeps the caption.
    described = {**row, "answer": "a black cat left of a dog"}
    builder = SFTExampleBuilder(processor, answer_column="answer", caption_dropout=0.0)
    answer_ids = processor.tokenizer(" a black cat left of a dog", add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
    assert [t for t in builder(described, "i2t", rng)["labels"] if t != IGNORE_INDEX] == answer_ids
    assert builder(described, "t2i", rng) == t2i
    text = SFTExampleBuilder(processor)(row, "text", rng)
    assert text["labels"][1:] == text["input_ids"][1:]
    assert parse_task_mix("t2i=3,i2t=1") == {"t2i": 0.75, "i2t": 0.25}
    for bad in ("t2i", "video=1", "t2i=-1", "t2i=0"):
        with pytest.raises(ValueError):
            parse_task_mix(bad)
    with pytest.raises(ValueError, match="merge_lora needs lora"):
        SFTArguments(merge_lora=True)


def test_console_script(base_dir, pairs, tmp_path, capsys):
    pairs.save_to_disk(str(tmp_path / "pairs"))
    out = tmp_path / "run"
    main([
        "--pipeline", str(base_dir), "--dataset", str(tmp_path / "pairs"), "--output-dir", str(out), "--max-steps", "2",
        "--batch-size", "2", "--task-mix", "t2i=1,i2t=1,image=1,text=1", "--lora", "--lora-rank", "2", "--merge-lora",
        "--checkpoint-every", "0", "--cache-dir", str(tmp_path / "cache"),
    ])
    printed = capsys.readouterr().out
    assert "wrote adapter" in printed and "wrote pipeline" in printed
    assert (out / "log.jsonl").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    merged = SelftokPipeline.from_pretrained(out / "pipeline")
    assert not merged.has_lora and merged.vocabulary.num_image_tokens == 32

