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
