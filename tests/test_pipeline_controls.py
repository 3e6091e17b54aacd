"""diffusers' and transformers' run-time controls on both pipelines: ``interrupt`` / ``num_timesteps`` /
``guidance_scale`` (kept per thread), ``num_images_per_prompt`` on the decoder, and ``callback_on_step_end`` /
``streamer`` on the VLM."""

import threading

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline


@pytest.fixture(scope="module")
def vlm():
    pipe = tiny_selftok_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ids(pipe, rows, seed=0):
    cfg = pipe.image_tokenizer.config
    return torch.randint(0, cfg.codebook_size, (rows, cfg.num_image_tokens), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ decoder
def test_decoder_exposes_diffusers_call_properties(tiny_pipeline):
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append((pipe.num_timesteps, pipe.guidance_scale, pipe.do_classifier_free_guidance, pipe.interrupt))
        return {}

    tiny_pipeline(_ids(tiny_pipeline, 1), num_inference_steps=3, guidance_scale=2.0, output_type="latent", callback_on_step_end=callback)
    assert seen == [(3, 2.0, True, False)] * 3
    assert (tiny_pipeline.num_timesteps, tiny_pipeline.guidance_scale) == (3, 2.0)  # kept after the call, as in diffusers
    tiny_pipeline(_ids(tiny_pipeline, 1), use_renderer=True, output_type="latent")
    assert (tiny_pipeline.num_timesteps, tiny_pipeline.guidance_scale) == (1, 1.0)


def test_decoder_interrupt_skips_the_remaining_steps_and_resets_on_the_next_call(tiny_pipeline):
    ids, calls, latents_at = _ids(tiny_pipeline, 2), [], {}

    def callback(pipe, i, t, kwargs):
        calls.append(i)
        latents_at[i] = kwargs["latents"].clone()
        if i == 1:
            pipe._interrupt = True
        return {}

    out = tiny_pipeline(ids, num_inference_steps=5, output_type="latent", callback_on_step_end=callback,
                  generator=torch.Generator().manual_seed(0)).images
    assert calls == [0, 1] and tiny_pipeline.interrupt
    assert torch.equal(out, latents_at[1])  # the latent when it stopped is what comes back
    full = tiny_pipeline(ids, num_inference_steps=5, output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert not tiny_pipeline.interrupt and not torch.equal(full, out)  # the next call starts uninterrupted


def test_decoder_num_images_per_prompt_orders_rows_like_diffusers(tiny_pipeline):
    ids, n = _ids(tiny_pipeline, 2), 3
    seeds = list(range(6))
    out = tiny_pipeline(ids, num_inference_steps=2, num_images_per_prompt=n, output_type="pt",
                  generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    assert out.shape[0] == 6
    for k, seed in enumerate(seeds):  # image k is row k // n decoded alone with generator k
        alone = tiny_pipeline(ids[k // n : k // n + 1], num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(seed)).images
        torch.testing.assert_close(out[k], alone[0], rtol=0, atol=1e-5)  # batched vs alone: float rounding only
    assert (out[0] - out[1]).abs().max() > 1e-3  # different noise per copy  # different noise per copy
    # One generator: the same as repeating each row n times.
    one = tiny_pipeline(ids, num_inference_steps=2, num_images_per_prompt=n, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    repeated = tiny_pipeline(ids.repeat_interleave(n, 0), num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(one, repeated)
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        tiny_pipeline(ids, num_images_per_prompt=0)
    with pytest.raises(ValueError, match="latents must have shape"):
        tiny_pipeline(ids, num_images_per_prompt=2, latents=torch.zeros(tiny_pipeline._latent_shape(2)))
    with pytest.raises(ValueError, match="generators"):
        tiny_pipeline(ids, num_images_per_prompt=2, generator=[torch.Generator()] * 2)


def test_decoder_call_state_is_per_thread(tiny_pipeline):
    """Thread A interrupts its own call from its callback while thread B runs: B sees neither A's interrupt nor
    A's num_timesteps, and B's result is bitwise the single-threaded one."""
    ids = _ids(tiny_pipeline, 1)
    expected_b = tiny_pipeline(ids, num_inference_steps=4, guidance_scale=2.0, output_type="pt", generator=torch.Generator().manual_seed(1)).images
    barrier, seen, results, errors = threading.Barrier(2, timeout=60), {}, {}, []

    def callback_a(pipe, i, t, kwargs):
        if i == 0:
            pipe._interrupt = True
            barrier.wait()  # B is inside its loop now
            barrier.wait()  # B has read its state
            seen["a"] = (pipe.interrupt, pipe.num_timesteps, pipe.guidance_scale)
        return {}

    def callback_b(pipe, i, t, kwargs):
        if i == 0:
            barrier.wait()
            seen["b"] = (pipe.interrupt, pipe.num_timesteps, pipe.guidance_scale)
            barrier.wait()
        return {}

    def run(name, callback, steps, scale, seed):
        try:
            results[name] = tiny_pipeline(ids, num_inference_steps=steps, guidance_scale=scale, output_type="pt",
                                    generator=torch.Generator().manual_seed(seed), callback_on_step_end=callback).images
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=run, args=("a", callback_a, 6, 1.0, 0)), threading.Thread(target=run, args=("b", callback_b, 4, 2.0, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert seen == {"a": (True, 6, 1.0), "b": (False, 4, 2.0)}
    assert torch.equal(results["b"], expected_b)


# ---------------------------------------------------------------------------------------------- VLM
class CollectingStreamer(BaseStreamer):
    """What ``TextStreamer`` sees: every ``put`` and whether ``end`` came."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        assert not self.ended
        self.puts.append(value.clone())

    def end(self):
        self.ended = True


def test_vlm_streamer_receives_the_prompt_then_exactly_the_generated_ids(vlm):
    streamer = CollectingStreamer()
    out = vlm("a red circle", guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="ids", streamer=streamer)
    prompt = vlm.processor.pad([vlm.processor.chat_prompt("a red circle", generate_image=True)])["input_ids"]
    assert torch.equal(streamer.puts[0], prompt) and streamer.ended
    K = vlm.vocabulary.num_image_tokens
    assert len(streamer.puts) == 1 + K and all(p.shape == (1,) for p in streamer.puts[1:])
    assert torch.equal(torch.stack(streamer.puts[1:], 1), vlm.vocabulary.to_lm_ids(out.token_ids))
    # A streamer does not change what is sampled.
    again = vlm("a red circle", guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="ids")
    assert torch.equal(again.token_ids, out.token_ids)


def test_vlm_describe_streams_like_generate(vlm):
    from transformers import TextStreamer

    image_ids = torch.randint(0, vlm.vocabulary.codebook_size, (1, vlm.vocabulary.num_image_tokens), generator=torch.Generator().manual_seed(0))
    streamer = CollectingStreamer()
    answer = vlm.describe(image_token_ids=image_ids, max_new_tokens=6, streamer=streamer)[0]
    assert streamer.ended and len(streamer.puts) >= 2
    generated = torch.cat([p.flatten() for p in streamer.puts[1:]])
    assert vlm.processor.tokenizer.decode(generated, skip_special_tokens=True).strip() == answer
    text_streamer = TextStreamer(vlm.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    assert vlm.describe(image_token_ids=image_ids, max_new_tokens=6, streamer=text_streamer)[0] == answer


def test_vlm_callback_sees_every_token_and_can_replace_it(vlm):
    K, steps = vlm.vocabulary.num_image_tokens, []

    def callback(pipe, step, token_index, kwargs):
        assert step == token_index and pipe.num_timesteps == K and pipe.guidance_scale == 1.0
        assert kwargs["token_ids"].shape == (2, step + 1) and kwargs["logits"].shape[0] == 2
        steps.append(step)
        token_ids = kwargs["token_ids"].clone()
        token_ids[:, -1] = step % vlm.vocabulary.codebook_size
        return {"token_ids": token_ids}

    out = vlm(["a", "b"], guidance_scale=1.0, output_type="ids", callback_on_step_end=callback,
              callback_on_step_end_tensor_inputs=["token_ids", "logits"])
    assert steps == list(range(K))
    assert torch.equal(out.token_ids, torch.arange(K).remainder(vlm.vocabulary.codebook_size).expand(2, K))
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        vlm("a", callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])

    def rewrites_history(pipe, step, token_index, kwargs):
        return {"token_ids": kwargs["token_ids"] + 1} if step > 0 else {}

    with pytest.raises(ValueError, match="only replace the token just sampled"):
        vlm("a", guidance_scale=1.0, output_type="ids", callback_on_step_end=rewrites_history)


def test_vlm_interrupt_stops_early_and_decodes_the_prefix(vlm):
    streamer, calls = CollectingStreamer(), []

    def callback(pipe, step, token_index, kwargs):
        calls.append(step)
        if step == 4:
            pipe._interrupt = True
        return {}

    generator = torch.Generator().manual_seed(0)
    out = vlm("a cat", guidance_scale=2.0, generator=generator, num_inference_steps=2, output_type="pt", callback_on_step_end=callback, streamer=streamer)
    assert calls == list(range(5)) and vlm.interrupt
    assert out.token_ids.shape == (1, 5) and len(streamer.puts) == 1 + 5 and streamer.ended
    full = vlm("a cat", guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="ids")
    assert not vlm.interrupt and torch.equal(full.token_ids[:, :5], out.token_ids)  # the prefix of the full run
    K = vlm.vocabulary.num_image_tokens
    padded = torch.cat([out.token_ids, torch.zeros(1, K - 5, dtype=torch.long)], 1)
    # The image is the decoder's decode of that AR prefix (same noise: the generator continues as in the call).
    generator = torch.Generator().manual_seed(0)
    vlm("a cat", guidance_scale=2.0, generator=generator, output_type="ids", callback_on_step_end=callback)
    expected = vlm.decoder(padded, num_inference_steps=2, prefix_length=5, generator=generator, output_type="pt").images
    assert torch.equal(out.images, expected)
