"""Peak memory and wall time of `selftok-convert` on a release-layout checkpoint, and of loading its output.

Builds a seeded random checkpoint in the official release layout (every key, shape and dtype of the 256 px
release `ImageTokenizer.state_dict()`, from tests/fixtures/official_reference/release_state_dict_manifest.json; the
tables the converter checks hold their official values), then runs, each in a fresh process measured with
`os.wait4` (peak RSS of that process alone, mapped file pages included):

- `import`: `import selftok_hf` (the interpreter, torch, transformers and diffusers: every process pays it);
- `convert`: `python -m selftok_hf.conversion.convert_selftok_checkpoint` on the checkpoint (a random stand-in VAE);
- `load`: `SelftokDecoderPipeline.from_pretrained(output)`, then every parameter and buffer read once (a sum), so
  that memory-mapped weights count as they would in use.

Ratios are to the checkpoint file's size (convert) and to the converted weights' size (load). The full release
size (`--decoder-layers 24`, the default) is an 8.4 GiB checkpoint and as much again on disk for the output; fewer
decoder layers give a smaller checkpoint of the same layout (0.33 GiB per layer).

    python benchmarks/convert_memory.py --workdir /tmp/convert_memory               # full release size
    python benchmarks/convert_memory.py --workdir /tmp/convert_memory --decoder-layers 4 --max-shard-size 500MB

The work folder is deleted afterwards unless `--keep`. Run it with another selftok_hf on PYTHONPATH to measure that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

MANIFEST = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official_reference" / "release_state_dict_manifest.json"
RELEASE_LAYERS = 24

# The release `configs/res256/256-eval.yml` tokenizer options the converter reads (the manifest was built from it).
RELEASE_PARAMS = {
    "image_size": 256, "k": 512, "stages": "200,400,600,800,1000", "k_per_stage": "192,184,72,48,16",
    "in_channels": 16, "encoder_hidden_size": 16, "enc": "Enc-Qformer-Uni-XL/2", "enable_enc_variable_size": True,
    "context_see_xt": True,
    "encoder_config": {"time_adaln": True, "qformer_mode": "dual", "pre_norm": False, "post_norm": True, "attn_mask": False},
    "quantizer_config": {"codebook_size": 32768, "code_dim": 16, "w_diversity": 1.0, "w_commit": 1.0, "decay": 0.99,
                         "dead_code_threshold": 0.2, "reset_cluster_size": 0.2, "smart_react": True, "reg": [0.1, 0.3]},
}

LOAD_SCRIPT = """
import sys, torch
from selftok_hf import SelftokDecoderPipeline
pipe = SelftokDecoderPipeline.from_pretrained(sys.argv[1])
total = 0.0
with torch.no_grad():
    for name in ("image_tokenizer", "transformer", "vae"):
        for tensor in [*getattr(pipe, name).parameters(), *getattr(pipe, name).buffers()]:
            total += float(tensor.sum()) if tensor.is_floating_point() else 0.0  # reads it, no copy
print("checksum", total)
"""


def release_layout_shapes(decoder_layers: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the release tokenizer checkpoint, with its decoder cut to ``decoder_layers`` joint blocks
    (blocks ``0 .. decoder_layers - 2`` and the release's last, pre-only, block renumbered after them)."""
    entries = json.loads(MANIFEST.read_text())["checkpoints"]["tokenizer"]["keys"]
    if not 2 <= decoder_layers <= RELEASE_LAYERS:
        raise SystemExit(f"--decoder-layers must be 2..{RELEASE_LAYERS}")
    shapes = {}
    for key, entry in entries.items():
        if entry["dtype"] != "float32":
            raise SystemExit(f"{key}: the manifest lists {entry['dtype']}; this benchmark writes float32 only")
        block = re.match(r"model\.joint_blocks\.(\d+)\.(.*)", key)
        if block:
            index = int(block.group(1))
            if index == RELEASE_LAYERS - 1:
                key = f"model.joint_blocks.{decoder_layers - 1}.{block.group(2)}"
            elif index >= decoder_layers - 1:
                continue
        shapes[key] = tuple(entry["shape"])
    return shapes


def make_checkpoint(path: Path, decoder_layers: int, seed: int = 0) -> None:
    """Write a random release-layout checkpoint (``torch.save`` of a flat state dict) to ``path``."""
    import torch

    from selftok_hf.embeddings import sincos_1d, sincos_2d
    from selftok_hf.token_schedule import token_positions

    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in release_layout_shapes(decoder_layers).items():
        if key == "encoder.pos_embed":  # checked to be the 2-D sin-cos table of the (variable-size) grid
            value = sincos_2d(shape[-1], math.isqrt(shape[-2])).reshape(shape)
        elif key == "model.context_pos_embed":  # checked to be the 1-D table at positions 1000 + 8j
            value = sincos_1d(shape[-1], token_positions(shape[-2])).reshape(shape)
        elif key.endswith(("initted", "tpc_initted")):
            value = torch.ones(shape)
        elif key.startswith("diffusion.") or key.endswith(("quantizer.continuous", "quantizer.steps", "quantizer.count")):
            value = torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=generator).mul_(0.02)
        state_dict[key] = value
    torch.save(state_dict, path)


def run_measured(command: list[str]) -> dict:
    """Run ``command``; its wall time and its own peak RSS (``os.wait4``: this child alone, in bytes)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{' '.join(command[:3])} ... failed with exit code {process.returncode}:\n{output[-2000:]}")
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "wall_s": round(wall, 1), "stdout": output.strip().splitlines()[-1:]}


def folder_weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="folder for the checkpoint and the converted output (needs 2x the checkpoint on disk)")
    parser.add_argument("--decoder-layers", type=int, default=RELEASE_LAYERS, help=f"joint blocks of the decoder (release: {RELEASE_LAYERS})")
    parser.add_argument("--max-shard-size", default=None, help="passed to the converter (default: its own)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--make-only", metavar="PATH", help=argparse.SUPPRESS)  # the child that writes the checkpoint
    args = parser.parse_args(argv)
    if args.make_only:
        make_checkpoint(Path(args.make_only), args.decoder_layers)
        return 0

    import yaml

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, config, output = work / "tokenizer_ckpt.pth", work / "256-eval.yml", work / "converted"
    config.write_text(yaml.safe_dump({"tokenizer": {"params": RELEASE_PARAMS}}))
    try:
        results = {}
        results["make"] = run_measured([sys.executable, __file__, "--workdir", str(work), "--decoder-layers", str(args.decoder_layers), "--make-only", str(checkpoint)])
        checkpoint_bytes = checkpoint.stat().st_size
        results["import"] = run_measured([sys.executable, "-c", "import selftok_hf"])
        convert = [sys.executable, "-m", "selftok_hf.conversion.convert_selftok_checkpoint", "--config", str(config), "--checkpoint", str(checkpoint), "--output", str(output)]
        if args.max_shard_size:
            convert += ["--max-shard-size", args.max_shard_size]
        results["convert"] = run_measured(convert)
        weight_bytes = folder_weight_bytes(output)
        shards = sorted(str(p.relative_to(output)) for p in output.rglob("*.safetensors"))
        results["load"] = run_measured([sys.executable, "-c", LOAD_SCRIPT, str(output)])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    gib = 2**30
    print(json.dumps({
        "decoder_layers": args.decoder_layers,
        "checkpoint_gib": round(checkpoint_bytes / gib, 3),
        "converted_weights_gib": round(weight_bytes / gib, 3),
        "shards": shards,
        **{f"{name}_{k}": (round(v / gib, 3) if k == "peak_rss_bytes" else v) for name, r in results.items() for k, v in r.items() if k != "stdout"},
        "convert_peak_rss_over_checkpoint": round(results["convert"]["peak_rss_bytes"] / checkpoint_bytes, 3),
        "load_peak_rss_over_weights": round(results["load"]["peak_rss_bytes"] / weight_bytes, 3),
    }, indent=1).replace("_peak_rss_bytes", "_peak_rss_gib"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
