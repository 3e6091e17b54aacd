"""The project's own corpus of bad inputs and faults: every case that once failed badly (a crash deep inside, a
silent wrong result, data loss, a race) gets a test here, so it stays fixed."""

import threading

import pytest
import torch

from selftok_hf.quickstart import random_tiny_pipeline


@pytest.fixture(scope="module")
def tiny_pipeline():
    pipe = random_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------- concurrency
def test_one_decoder_pipeline_shared_by_threads_gives_the_single_threaded_results(tiny_pipeline):
    """Servers share one pipeline between request threads: 4 threads (started together, and staggered) must get
    bitwise the outputs of one thread. It used to fail on every call (the scheduler's step index was shared)."""
    K, C = tiny_pipeline.image_tokenizer.config.num_tokens, tiny_pipeline.image_tokenizer.config.codebook_size
    requests = [
        dict(token_ids=torch.randint(0, C, (1, K), generator=torch.Generator().manual_seed(i)), num_inference_steps=3 + i,
             guidance_scale=1.0 + (i % 2), prefix_length=None if i < 2 else K // 2)
        for i in range(4)
    ]

    def decode(request, seed):
        return tiny_pipeline(**request, generator=torch.Generator().manual_seed(seed), output_type="pt").images

    expected = [decode(r, i) for i, r in enumerate(requests)]
    for stagger in (False, True):
        results, errors = [None] * 4, []
        barrier = threading.Barrier(4)

        def worker(i):
            try:
                if not stagger:
                    barrier.wait()
                for _ in range(2):
                    results[i] = decode(requests[i], i)
            except Exception as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
            if stagger:
                threading.Event().wait(0.01)
        for thread in threads:
            thread.join()
        assert not errors, errors
        for got, want in zip(results, expected):
            assert torch.equal(got, want)
    # No sampling loop leaves a cache behind (it would go stale when the weights change).
    assert tiny_pipeline.transformer._token_modulation_caches == {}


# --------------------------------------------------------------------------------------------- checkpoints
class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['SELFTOK_PWNED']).write_text('ran')",))


def test_resuming_sft_never_unpickles_code_from_the_checkpoint_folder(tmp_path, monkeypatch):
    """accelerate loads ``custom_checkpoint_*.pkl`` with ``weights_only=False``; the SFT trainer used to register its
    LR scheduler there. The warm-up is now a pure function of the step, so nothing is registered, and a checkpoint
    holding such a pickle is refused with a clear error before accelerate sees it (every other file accelerate
    loads with ``weights_only=True``)."""
    import pickle

    import datasets

    from selftok_hf import SelftokPipeline
    from selftok_hf.quickstart import bundled_images
    from selftok_hf.tiny_vlm import tiny_selftok_pipeline
    from selftok_hf.training.loop import latest_checkpoint
    from selftok_hf.training.sft import SFTArguments, SFTTrainer

    torch.set_num_threads(1)
    base = tmp_path / "base"
    tiny_selftok_pipeline("llama").save_pretrained(base)
    images = list(bundled_images().values())
    pairs = datasets.Dataset.from_dict({"image": images, "text": ["a", "b", "c"]})

    def args(steps):
        return SFTArguments(output_dir=str(tmp_path / "run"), max_steps=steps, batch_size=2, learning_rate=1e-3, warmup_steps=4,
                            log_every=1, checkpoint_every=2, resume_from="latest")

    first = SFTTrainer(args(2), SelftokPipeline.from_pretrained(base), pairs)
    history = first.run()
    assert [h["lr/language_model"] for h in history] == pytest.approx([1e-3 / 4, 2e-3 / 4])
    assert first.accelerator._custom_objects == []
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    with open(checkpoint / "custom_checkpoint_0.pkl", "wb") as f:
        pickle.dump(_RunsCodeWhenUnpickled(), f)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SELFTOK_PWNED", str(marker))
    with pytest.raises(ValueError, match="refusing to load"):
        SFTTrainer(args(4), SelftokPipeline.from_pretrained(base), pairs).run()
    assert not marker.exists()
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    resumed = SFTTrainer(args(4), SelftokPipeline.from_pretrained(base), pairs)
    history = resumed.run()
    # The warm-up continues where it stopped: a resumed run needs no scheduler state.
    assert [h["step"] for h in history] == [3, 4]
    assert [h["lr/language_model"] for h in history] == pytest.approx([3e-3 / 4, 1e-3])
