import pytest
import torch
import yaml

from selftok_hf import SelftokConfig, TokenSchedule, to_ar_order, to_code_order


def schedule_from_fixture(reference_dir, name="config.yaml"):
    params = yaml.safe_load(open(reference_dir / name))["tokenizer"]["params"]
    return TokenSchedule.from_strings(int(params["k"]), params["stages"], params["k_per_stage"])


def test_reduced_k_table_matches_official(reference_dir, cases):
    assert torch.equal(schedule_from_fixture(reference_dir).k_table(), cases["schedule.reduced.k_table"])


def test_release_k_table_matches_official(cases):
    release = SelftokConfig().token_schedule
    assert torch.equal(release.k_table(), cases["schedule.release.k_table"])
    assert torch.equal(release.token_index(release.sampler_timesteps(cases["schedule.release.tau50"])), cases["schedule.release.k50"])
    assert torch.equal(release.sampler_timesteps(cases["schedule.release.tau50"]), cases["schedule.release.t_mapped50"])


@pytest.mark.parametrize("n", [50, 8])
def test_sampler_k_and_masks_match_official(reference_dir, cases, n):
    schedule = schedule_from_fixture(reference_dir)
    tau = cases[f"sample{n}.tau"]
    assert torch.equal(schedule.sampler_timesteps(tau), cases[f"sample{n}.t_mapped"])
    k = schedule.token_index(schedule.sampler_timesteps(tau))
    assert torch.equal(k, cases[f"sample{n}.k"])
    mask = schedule.visible_mask(k)
    B = cases[f"sample{n}.mask"].shape[1]
    assert torch.equal(mask[:, None].expand(-1, B, -1), cases[f"sample{n}.mask"])


def test_decoder_case_k_from_integer_timesteps(reference_dir, cases):
    schedule = schedule_from_fixture(reference_dir)
    assert torch.equal(schedule.token_index(cases["dec.t_mapped"]), cases["dec.k"])
    assert torch.equal(schedule.visible_mask(cases["dec.k"]), cases["dec.mask"])


def test_float_timesteps_truncate_like_training():
    s = TokenSchedule.uniform(512)
    assert s.token_index(torch.tensor([0.0, 1.9, 999.99, 1000.0])).tolist() == [0, 0, 511, 511]
    assert s.visible_count(torch.tensor([1.0, 0.0])).tolist() == [512, 1]


def test_invalid_schedules_rejected():
    with pytest.raises(ValueError, match="increasing"):
        TokenSchedule(8, (500, 400), (4, 4))
    with pytest.raises(ValueError, match="equal length"):
        TokenSchedule(8, (500, 1000), (8,))


def test_order_flip_is_an_involution():
    ids = torch.arange(12).view(2, 6)
    assert torch.equal(to_code_order(to_ar_order(ids)), ids)
    assert to_ar_order(ids)[0, 0] == 5
