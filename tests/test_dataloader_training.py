"""SFT and GRPO micro-batches through a torch DataLoader (selftok_hf.training.loader): the same batches with 0 and 2
workers, streaming datasets (datasets.IterableDataset) that train, and a killed streaming run that resumes from the
next example of the uninterrupted run."""

import json

import datasets
import pytest
import torch

from selftok_hf import SelftokPipeline
from selftok_hf.assets import bundled_images
from selftok_hf.rl.trainer import GRPOArguments, SelftokGRPOTrainer, load_prompt_stream
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline
from selftok_hf.training.loader import stream_batches
from selftok_hf.training.loop import latest_checkpoint
from selftok_hf.training.sft import SelftokSFTTrainer, SFTArguments

pytestmark = pytest.mark.usefixtures("single_thread")

CAPTIONS = ["an astronaut in a white suit", "a cup of coffee", "a tabby cat"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    tiny_selftok_pipeline("llama").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pairs():
    return datasets.Dataset.from_dict({"image": list(bundled_images().values()), "text": CAPTIONS})


@pytest.fixture(scope="module")
def pairs_parquet(pairs, tmp_path_factory):
    """The pairs, images included, as a parquet file that load_dataset streams."""
    path = tmp_path_factory.mktemp("parquet") / "pairs.parquet"
    pairs.to_parquet(str(path))
    return str(path)


def stream(path):
    return datasets.load_dataset("parquet", data_files=path, split="train", streaming=True)


class Killed(Exception):
    pass


class Recording(SelftokSFTTrainer):
    """Records the batches it trains on; ``kill_at``: dies (an exception) at that micro step."""

    def __init__(self, *args, kill_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kill_at, self.seen = kill_at, []

    def next_batch(self, micro_step):
        if micro_step == self.kill_at:
            raise Killed(f"killed at micro step {micro_step}")
        batch = super().next_batch(micro_step)
        self.seen.append(batch["input_ids"])
        return batch


def sft(base_dir, dataset, out, **overrides):
    args = {"output_dir": str(out), "max_steps": 3, "batch_size": 2, "learning_rate": 1e-3, "log_every": 1, "checkpoint_every": 0,
            "task_mix": "t2i=1,i2t=1", "cache_dir": str(out.parent / "token-cache"), **overrides}  # fmt: skip
    kill_at = args.pop("kill_at", None)
    return Recording(SFTArguments(**args), SelftokPipeline.from_pretrained(base_dir), dataset, kill_at=kill_at)


@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_sft_batches_and_losses_are_the_same_with_0_and_2_workers(base_dir, pairs, pairs_parquet, streaming, tmp_path):
    runs = []
    for workers in (0, 2):
        trainer = sft(base_dir, stream(pairs_parquet) if streaming else pairs, tmp_path / f"w{workers}", dataloader_num_workers=workers)
        history = trainer.run()
        runs.append((trainer.seen, [h["loss"] for h in history]))
    (seen0, losses0), (seen2, losses2) = runs
    assert len(seen0) == 3 and all(torch.equal(a, b) for a, b in zip(seen0, seen2))
    assert losses0 == losses2


def test_a_streaming_dataset_trains_on_its_rows_in_order(base_dir, pairs, pairs_parquet, tmp_path):
    trainer = sft(base_dir, stream(pairs_parquet), tmp_path / "run", max_steps=4, learning_rate=3e-3, task_mix="t2i=1", caption_dropout=0.0)
    history = trainer.run()
    assert [h["step"] for h in history] == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    # The stream's images were tokenised as they were read: the same ids as the map-style pre-tokenisation.
    tokenised = SelftokSFTTrainer(SFTArguments(cache_dir=str(tmp_path / "cache")), trainer.pipeline, pairs)
    tokenised._load_data()
    rows = list(tokenised.dataset)
    # Rows in file order, 2 per step, the next epoch continuing the stream: 0 1 | 2 0 | 1 2 | 0 1.
    for step, batch in enumerate(trainer.seen):
        expected = trainer.make_batch(step, [rows[(2 * step + i) % 3] for i in range(2)])
        assert torch.equal(batch, expected["input_ids"]), step


def test_killed_streaming_run_resumes_at_the_next_example(base_dir, pairs_parquet, tmp_path):
    common = {"max_steps": 4, "checkpoint_every": 2, "resume_from": "latest"}
    straight = sft(base_dir, stream(pairs_parquet), tmp_path / "straight", **common)
    straight_losses = [h["loss"] for h in straight.run()]

    killed = sft(base_dir, stream(pairs_parquet), tmp_path / "killed", kill_at=3, dataloader_num_workers=2, **common)
    with pytest.raises(Killed):
        killed.run()  # dies in step 4, its workers having read ahead of the step-2 checkpoint
    checkpoint = latest_checkpoint(tmp_path / "killed")
    assert checkpoint.name == "step-00000002"
    state = json.loads((checkpoint / "data_state_0.json").read_text())
    assert state["epoch"] == 1  # 4 of the 3 rows read: one into the second epoch

    resumed = sft(base_dir, stream(pairs_parquet), tmp_path / "killed", **common)
    history = resumed.run()
    assert [h["step"] for h in history] == [3, 4]
    assert all(torch.equal(a, b) for a, b in zip(resumed.seen, straight.seen[2:], strict=True))
    assert [h["loss"] for h in history] == pytest.approx(straight_losses[2:], abs=1e-6)

    # A checkpoint without a stream position (not written by a streaming run) is refused, not read from row 0.
    checkpoint = latest_checkpoint(tmp_path / "killed")
    (checkpoint / "data_state_0.json").unlink()
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    del trainer_state["files"]["data_state_0.json"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(trainer_state))
    with pytest.raises(ValueError, match="holds no stream position"):
        sft(base_dir, stream(pairs_parquet), tmp_path / "killed", **{**common, "max_steps": 5}).run()


def test_stream_batches_roll_over_epochs_and_resume():
    rows = datasets.Dataset.from_dict({"i": list(range(5))}).to_iterable_dataset(num_shards=1)
    batches = stream_batches(rows, 2)
    got = [next(batches) for _ in range(4)]
    assert [[r["i"] for r in b] for b, _ in got] == [[0, 1], [2, 3], [4, 0], [1, 2]]
    resumed = stream_batches(rows, 2, json.loads(json.dumps(got[1][1])))  # through JSON, as in a checkpoint
    assert [[r["i"] for r in next(resumed)[0]] for _ in range(2)] == [[4, 0], [1, 2]]
    with pytest.raises(ValueError, match="no rows"):
        next(stream_batches(datasets.IterableDataset.from_generator(_no_rows), 2))


def _no_rows():
    yield from ()


# ----------------------------------------------------------------------------------------------------------- GRPO
@pytest.fixture(scope="module")
def tiny_vlm():
    return tiny_selftok_pipeline("llama", seed=0)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    prompts = ["a red circle", "two blue squares", "a green triangle", "a red square left of a blue circle", "three circles"]
    path.write_text("".join(json.dumps({"prompt": p, "source": f"line {i}"}) + "\n" for i, p in enumerate(prompts)))
    return path


def low_codes(prompts, token_ids, images, metadata):
    return (token_ids < 32).float().mean(1).tolist()


class RecordingGRPO(SelftokGRPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def next_batch(self, micro_step):
        batch = super().next_batch(micro_step)
        self.seen.append(batch)
        return batch


def grpo(tiny_vlm, out, prompt_rows, **overrides):
    import copy

    args = {"output_dir": str(out), "batch_size": 2, "group_size": 2, "learning_rate": 1e-2, "log_every": 1, "checkpoint_every": 0, **overrides}
    return RecordingGRPO(GRPOArguments(**args), pipeline=copy.deepcopy(tiny_vlm), prompts=prompt_rows, reward=low_codes)


@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_grpo_prompt_batches_are_the_same_with_0_and_2_workers(tiny_vlm, prompt_file, streaming, tmp_path):
    prompts = load_prompt_stream(str(prompt_file)) if streaming else [json.loads(line) for line in prompt_file.read_text().splitlines()]
    batches = []
    for workers in (0, 2):
        trainer = grpo(tiny_vlm, tmp_path / f"w{workers}", prompts, dataloader_num_workers=workers)
        trainer.build()
        batches.append([trainer.next_batch(m) for m in range(4)])
        trainer.close_batches()
    for a, b in zip(*batches):
        assert a["rows"] == b["rows"] and torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
    texts = [[row["prompt"] for row in batch["rows"]] for batch in batches[0]]
    if streaming:  # the file's prompts in order, each group_size times, the stream starting again after the fifth
        lines = [json.loads(line)["prompt"] for line in prompt_file.read_text().splitlines()]
        assert texts == [[lines[(2 * m + i) % 5] for i in (0, 0, 1, 1)] for m in range(4)]
        assert batches[0][0]["rows"][0]["source"] == "line 0"  # the other keys are kept as metadata
    else:
        assert len({t for batch in texts for t in batch}) > 2  # drawn at random


def test_grpo_trains_on_a_prompt_stream_and_resumes_it(tiny_vlm, prompt_file, tmp_path):
    common = {"streaming": True, "prompts": str(prompt_file), "resume_from": "latest"}
    straight = grpo(tiny_vlm, tmp_path / "straight", None, max_steps=3, **common)
    straight_history = straight.run()
    assert [h["step"] for h in straight_history] == [1, 2, 3]
    first = grpo(tiny_vlm, tmp_path / "resumed", None, max_steps=2, dataloader_num_workers=2, **common)
    first.run()
    resumed = grpo(tiny_vlm, tmp_path / "resumed", None, max_steps=3, **common)
    history = resumed.run()
    assert [h["step"] for h in history] == [3]
    assert resumed.seen[0]["rows"] == straight.seen[2]["rows"]
    # The file's fifth prompt, then the stream's second epoch starts: the first prompt.
    assert [row["prompt"] for row in resumed.seen[0]["rows"]] == ["three circles"] * 2 + ["a red circle"] * 2
    for key in ("loss", "reward_mean", "kl"):
        assert history[-1][key] == pytest.approx(straight_history[-1][key], abs=1e-6)
