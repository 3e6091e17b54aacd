"""selftok_hf.tokenize_dataset / `selftok tokenize-dataset`: ids equal the pipeline's own encode, other columns kept,
resume after a crash without re-encoding finished chunks (map-style and streaming), 2 processes give the 1-process
dataset, the output feeds selftok-train-lm."""

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from selftok_hf import tokenize_dataset
from selftok_hf.apps.cli import main as selftok_main
from selftok_hf.training.dataset_tokenization import (
    IMAGE_IDS_COLUMN,
    chunks_folder,
    tokenization_record,
    tokenizer_fingerprint,
)

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_ROWS = 10


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)) for i in range(NUM_ROWS)]
    return datasets.Dataset.from_dict({"image": images, "label": list(range(NUM_ROWS)), "text": [f"picture {i}" for i in range(NUM_ROWS)]})


@pytest.fixture(scope="module")
def expected_ids(pairs, tiny_pipeline):
    ids = tiny_pipeline.encode([image.convert("RGB") for image in pairs["image"]])
    assert len({tuple(row) for row in ids.tolist()}) > 1  # the ids depend on the image
    return ids.tolist()


def counting(pipe, fail_at=None):
    """Wrap ``pipe.encode``: the batch sizes it was called with; raise on call number ``fail_at`` (1-based)."""
    calls, encode = [], type(pipe).encode

    def wrapped(images):
        if fail_at is not None and len(calls) + 1 == fail_at:
            raise KeyboardInterrupt("killed")
        calls.append(len(images))
        return encode(pipe, images)

    pipe.encode = wrapped
    return calls


@pytest.fixture
def pipe(tiny_pipeline):
    yield tiny_pipeline
    tiny_pipeline.__dict__.pop("encode", None)


def test_ids_are_the_pipelines_and_other_columns_are_kept(pairs, pipe, expected_ids, tmp_path):
    out = tokenize_dataset(pairs, pipe, tmp_path / "out", chunk_size=4, batch_size=3)
    assert out.column_names == ["label", "text", IMAGE_IDS_COLUMN]
    assert out[IMAGE_IDS_COLUMN] == expected_ids
    assert out["label"] == list(range(NUM_ROWS)) and out["text"] == pairs["text"]
    assert not chunks_folder(tmp_path / "out").exists()
    reloaded = datasets.load_from_disk(str(tmp_path / "out"))
    assert reloaded[IMAGE_IDS_COLUMN] == expected_ids
    record = tokenization_record(reloaded)
    assert record["tokenizer_weights_sha256"] == tokenizer_fingerprint(pipe)
    assert (record["num_image_tokens"], record["codebook_size"], record["order"]) == (32, 64, "ar")
    assert record["ids_column"] == IMAGE_IDS_COLUMN and record["pipeline_class"] == "SelftokDecoderPipeline"

    with pytest.raises(FileExistsError, match="not empty"):
        tokenize_dataset(pairs, pipe, tmp_path / "out")
    kept = tokenize_dataset(pairs, pipe, tmp_path / "out", keep_image=True, overwrite=True, chunk_size=NUM_ROWS)
    assert kept.column_names == ["image", "label", "text", IMAGE_IDS_COLUMN]
    assert kept[IMAGE_IDS_COLUMN] == expected_ids and np.array_equal(np.asarray(kept[3]["image"]), np.asarray(pairs[3]["image"]))
    assert tokenization_record(kept)["image_kept"] is True


def test_a_killed_run_resumes_without_encoding_finished_chunks(pairs, pipe, expected_ids, tmp_path):
    # chunks of 4 rows, batches of 2: chunk 0 = 2 calls, chunk 1 = 2, chunk 2 (2 rows) = 1. Killed in chunk 1's 2nd call.
    counting(pipe, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(pairs, pipe, tmp_path / "out", chunk_size=4, batch_size=2)
    work = chunks_folder(tmp_path / "out")
    assert sorted(p.name for p in work.iterdir()) == ["chunk-000000", "manifest.json"]  # no partial chunk 1
    assert not (tmp_path / "out").exists()
    finished = (work / "chunk-000000" / "state.json").stat().st_mtime_ns

    with pytest.raises(ValueError, match="chunk_size"):  # other options: refused, the chunks are kept
        tokenize_dataset(pairs, pipe, tmp_path / "out", chunk_size=5, batch_size=2)
    assert (work / "chunk-000000" / "state.json").stat().st_mtime_ns == finished

    calls = counting(pipe)
    out = tokenize_dataset(pairs, pipe, tmp_path / "out", chunk_size=4, batch_size=2)
    assert calls == [2, 2, 2]  # chunks 1 and 2 only
    chunks_folder(tmp_path / "other").mkdir()
    (chunks_folder(tmp_path / "other") / "notes.txt").write_text("not ours")
    with pytest.raises(FileExistsError, match="no manifest.json"):  # a folder no run left is never deleted
        tokenize_dataset(pairs, pipe, tmp_path / "other")
    assert out[IMAGE_IDS_COLUMN] == expected_ids and out["label"] == list(range(NUM_ROWS))


def test_streaming_input_and_its_resume(pairs, pipe, expected_ids, tmp_path):
    stream = pairs.to_iterable_dataset(num_shards=3)
    out = tokenize_dataset(stream, pipe, tmp_path / "out", chunk_size=4, batch_size=2)
    assert out[IMAGE_IDS_COLUMN] == expected_ids and out["label"] == list(range(NUM_ROWS))
    assert out.features == tokenize_dataset(pairs, pipe, tmp_path / "map", chunk_size=4).features

    counting(pipe, fail_at=5)  # chunks 0 and 1 finished, killed in chunk 2
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(stream, pipe, tmp_path / "resumed", chunk_size=4, batch_size=2)
    own = chunks_folder(tmp_path / "resumed") / "process-00000-of-00001"
    assert sorted(p.name for p in own.iterdir()) == ["chunk-000000", "chunk-000001"]
    calls = counting(pipe)
    resumed = tokenize_dataset(stream, pipe, tmp_path / "resumed", chunk_size=4, batch_size=2)
    assert calls == [2]  # the last 2 rows: the stream restarts after chunk 1
    assert resumed[IMAGE_IDS_COLUMN] == expected_ids and resumed["label"] == list(range(NUM_ROWS))


def test_cli_tokenize_dataset(pairs, tiny_pipeline_dir, expected_ids, tmp_path, capsys):
    pairs.save_to_disk(str(tmp_path / "data"))
    args = ["tokenize-dataset", str(tmp_path / "data"), str(tmp_path / "out"), "--pipeline", str(tiny_pipeline_dir), "--chunk-size", "3"]
    assert selftok_main(args) == 0
    assert "wrote" in capsys.readouterr().out
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert out.column_names == ["label", "text", IMAGE_IDS_COLUMN] and out[IMAGE_IDS_COLUMN] == expected_ids
    with pytest.raises(SystemExit) as exit_info:
        selftok_main(args)
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert selftok_main([*args, "--streaming", "--overwrite", "--keep-image", "--limit", "4"]) == 0
    streamed = datasets.load_from_disk(str(tmp_path / "out"))
    assert streamed.column_names == ["image", "label", "text", IMAGE_IDS_COLUMN] and streamed[IMAGE_IDS_COLUMN] == expected_ids[:4]


def test_output_feeds_selftok_train_lm(pairs, tmp_path, caplog):
    from selftok_hf.testing import random_tiny_pipeline
    from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline
    from selftok_hf.training import sft

    vlm = tiny_selftok_pipeline("llama")
    assert tokenizer_fingerprint(vlm) == tokenizer_fingerprint(vlm.decoder)
    ids = vlm.processor.encode_images(list(pairs["image"])).tolist()
    vlm.save_pretrained(tmp_path / "vlm")
    tokenize_dataset(pairs, str(tmp_path / "vlm"), tmp_path / "ids", chunk_size=4)  # a SelftokPipeline folder
    assert tokenization_record(datasets.load_from_disk(str(tmp_path / "ids")))["pipeline_class"] == "SelftokPipeline"

    def no_encoding(images):
        raise AssertionError("selftok-train-lm encoded images although the dataset has their ids")

    vlm.processor.encode_images = no_encoding
    args = sft.SFTArguments(output_dir=str(tmp_path / "run"), max_steps=1, batch_size=2, log_every=1, checkpoint_every=0)
    trainer = sft.SelftokSFTTrainer(args, vlm, datasets.load_from_disk(str(tmp_path / "ids")))
    with caplog.at_level("WARNING"):
        history = trainer.run()
    assert torch.isfinite(torch.tensor(history[-1]["loss"])) and trainer.dataset[IMAGE_IDS_COLUMN] == ids
    assert "another image tokenizer" not in caplog.text
    # The command line: the folder has no image column, only the ids.
    run = ["--pipeline", str(tmp_path / "vlm"), "--dataset", str(tmp_path / "ids"), "--output-dir", str(tmp_path / "cli-run")]
    assert sft.main([*run, "--max-steps", "1", "--batch-size", "2", "--log-every", "1", "--checkpoint-every", "0"]) == 0

    other = random_tiny_pipeline(seed=1)  # same K and codebook, other weights: its ids are warned about
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(vlm)
    tokenize_dataset(pairs, other, tmp_path / "other-ids")
    with caplog.at_level("WARNING"):
        sft.SelftokSFTTrainer(args, vlm, datasets.load_from_disk(str(tmp_path / "other-ids"))).build()
    assert "another image tokenizer" in caplog.text


WORKER = """
import json, sys
from pathlib import Path
import datasets
from selftok_hf import SelftokDecoderPipeline, tokenize_dataset
from selftok_hf.training.dataset_tokenization import _partial_state

data, pipeline, out = sys.argv[1:4]
pipe = SelftokDecoderPipeline.from_pretrained(pipeline)
calls, encode = [], pipe.encode
pipe.encode = lambda images: calls.append(len(images)) or encode(images)
pairs = datasets.load_from_disk(data)
tokenize_dataset(pairs, pipe, Path(out) / "map", chunk_size=3, batch_size=2)
tokenize_dataset(pairs.to_iterable_dataset(num_shards=2), pipe, Path(out) / "stream", chunk_size=3, batch_size=2)
Path(out, f"calls-{_partial_state().process_index}.json").write_text(json.dumps(calls))
"""


@pytest.mark.slow
def test_two_processes_give_the_one_process_dataset(pairs, tiny_pipeline_dir, tmp_path):
    from selftok_hf import SelftokDecoderPipeline

    pairs.save_to_disk(str(tmp_path / "data"))
    one = tokenize_dataset(pairs, SelftokDecoderPipeline.from_pretrained(tiny_pipeline_dir), tmp_path / "one", chunk_size=3)
    # A 1-process run killed after chunk 0 (rows 0-2), resumed by 2 processes: they share the remaining chunks.
    loaded = datasets.load_from_disk(str(tmp_path / "data"))
    pipe = SelftokDecoderPipeline.from_pretrained(tiny_pipeline_dir)
    counting(pipe, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(loaded, pipe, tmp_path / "two" / "map", chunk_size=3, batch_size=2)
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(tmp_path / "worker.py"), str(tmp_path / "data"), str(tiny_pipeline_dir), str(tmp_path / "two"),
    ]  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [json.loads((tmp_path / "two" / f"calls-{rank}.json").read_text()) for rank in (0, 1)]
    # Map-style: chunks of rows 0-2, 3-5, 6-8, 9 (batches of 2); chunk c on process c % 2, chunk 0 not encoded again.
    # Then the stream: its 2 shards of 5 rows, one per process, in chunks of 3 + 2 rows.
    assert calls == [[2, 1] + [2, 1, 2], [2, 1, 1] + [2, 1, 2]]
    two = datasets.load_from_disk(str(tmp_path / "two" / "map"))
    assert two.to_dict() == one.to_dict()
    assert tokenization_record(two)["tokenizer_weights_sha256"] == tokenization_record(one)["tokenizer_weights_sha256"]
    # The stream's rows merged process by process: here process 0 read the first shard, process 1 the second.
    assert datasets.load_from_disk(str(tmp_path / "two" / "stream")).to_dict() == one.to_dict()
