"""selftok-convert's memory contract (issue 16): the checkpoint is memory-mapped, the decoder takes its tensors
without a copy, and the folder is written as sharded safetensors that load back identically.
(benchmarks/convert_memory.py measures peak RSS at the release size.)"""

import json
import warnings

import pytest
import torch

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.conversion.convert_selftok_checkpoint import (
    build_decoder_from_official,
    build_pipeline_from_official,
    load_official_config,
    load_official_state_dict,
)
from selftok_hf.conversion.convert_selftok_checkpoint import (
    main as convert_main,
)
from selftok_hf.vae import RandomWeightsWarning


@pytest.fixture(scope="module")
def official_pth(reference_dir, tmp_path_factory):
    """The fixture's tokenizer checkpoint as the release ships it: a torch.save'd ``.pth`` (zip format)."""
    path = tmp_path_factory.mktemp("ckpt") / "tokenizer.pth"
    torch.save(load_official_state_dict(str(reference_dir / "official_tokenizer_state_dict.safetensors")), path)
    return path


def test_decoder_holds_the_checkpoints_tensors_without_a_copy(reference_dir, official_pth):
    """Every decoder weight is the mapped checkpoint's memory: renamed tensors are the same tensors, and the split
    qkv projections are slices of the fused one (a copy would make the 2B decoder exist twice)."""
    official = load_official_state_dict(str(official_pth))
    transformer = build_decoder_from_official(load_official_config(str(reference_dir / "config.yaml")), official)
    block = transformer.transformer_blocks[0]
    assert block.ff.net[2].weight.data_ptr() == official["model.joint_blocks.0.x_block.mlp.fc2.weight"].data_ptr()
    qkv = official["model.joint_blocks.0.x_block.attn.qkv.weight"]
    row_bytes = qkv.shape[1] * qkv.element_size()
    rows = qkv.shape[0] // 3
    assert [p.data_ptr() for p in (block.attn.to_q.weight, block.attn.to_k.weight, block.attn.to_v.weight)] == [
        qkv.data_ptr() + i * rows * row_bytes for i in range(3)
    ]
    assert torch.equal(torch.cat([block.attn.to_q.weight, block.attn.to_k.weight, block.attn.to_v.weight]), qkv)
    assert all(p.dtype == torch.float32 and not p.is_meta for p in transformer.parameters())


def test_legacy_pth_is_read_whole(reference_dir, tmp_path):
    """torch's pre-1.6 (non-zip) format cannot be memory-mapped; it is still read."""
    official = load_official_state_dict(str(reference_dir / "official_tokenizer_state_dict.safetensors"))
    path = tmp_path / "legacy.pth"
    torch.save(official, path, _use_new_zipfile_serialization=False)
    loaded = load_official_state_dict(str(path))
    assert loaded.keys() == official.keys() and all(torch.equal(loaded[k], official[k]) for k in official)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_sharded_output_loads_back_identically(reference_dir, official_pth, tmp_path):
    """With a small ``--max-shard-size`` the decoder and renderer are written in several safetensors shards with
    an index, and the folder loads back to exactly the weights converted in memory."""
    out = tmp_path / "converted"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        code = convert_main([
            "--config", str(reference_dir / "config.yaml"),
            "--checkpoint", str(official_pth),
            "--renderer-config", str(reference_dir / "renderer_config.yaml"),
            "--renderer-checkpoint", str(reference_dir / "official_renderer_state_dict.safetensors"),
            "--output", str(out),
            "--max-shard-size", "2MB",
        ])
        expected = build_pipeline_from_official(
            load_official_config(str(reference_dir / "config.yaml")),
            load_official_state_dict(str(official_pth)),
            load_official_config(str(reference_dir / "renderer_config.yaml")),
            load_official_state_dict(str(reference_dir / "official_renderer_state_dict.safetensors")),
        )
    assert code == 0
    for component in ("transformer", "renderer"):
        index = json.loads((out / component / "diffusion_pytorch_model.safetensors.index.json").read_text())
        shards = sorted(p.name for p in (out / component).glob("*.safetensors"))
        assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards, shards
        assert all((out / component / name).stat().st_size <= 2_000_000 for name in shards)

    loaded = SelftokDecoderPipeline.from_pretrained(out)
    for component in ("image_tokenizer", "transformer", "renderer"):
        ours, theirs = _state(getattr(loaded, component)), _state(getattr(expected, component))
        assert ours.keys() == theirs.keys(), component
        different = [k for k in ours if ours[k].dtype != theirs[k].dtype or not torch.equal(ours[k], theirs[k])]
        assert not different, (component, different)
    for component in ("transformer", "renderer"):
        public = [{k: v for k, v in getattr(pipe, component).config.items() if not k.startswith("_")} for pipe in (loaded, expected)]
        assert public[0] == public[1], component


@pytest.mark.parametrize("size", ["0", "5TB", "lots"])
def test_bad_max_shard_size_is_refused_before_any_work(reference_dir, tmp_path, size, capsys):
    with pytest.raises(SystemExit) as exc:
        convert_main([
            "--config", str(reference_dir / "config.yaml"),
            "--checkpoint", str(reference_dir / "official_tokenizer_state_dict.safetensors"),
            "--output", str(tmp_path / "out"), "--max-shard-size", size,
        ])
    assert exc.value.code == 2 and "--max-shard-size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
