"""Import and build the official Selftok inference code (github selftok-team/SelftokTokenizer) on CPU, for side-by-side
benchmarks against this package.

The official code is not a dependency of selftok-hf: point ``SELFTOK_OFFICIAL_SRC`` (or ``--official-src``) at a
checkout of it, or at a bare git directory of one (it is exported to a temporary folder). Its imports need ``einops``
and ``timm`` (``pip install einops timm``; timm's own ``__init__`` pulls in torchvision, so only the three timm layer
modules the official code uses are loaded, as the reference fixtures were made). Everything runs unmodified, with the
CPU adaptations of the fixtures' README (``/work/shared/reference/README.md``, "How it was produced"):
``Tensor.cuda`` returns the tensor itself, ``mimogpt.utils`` is reduced to its logger, and torchvision/deepspeed are
never imported.

The reduced fixture config registers two names around the official classes (as the fixture script did):
``Enc-Qformer-Uni-Reduced/2`` (``QformerEncoder`` with the size keys of ``encoder_config``) and ``MMDiT_Reduced``
(``model_zoo.MMDiT_XL`` with ``depth`` and ``pos_embed_max_size`` from ``decoder_config``); the release names work
as they are.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

DEFAULT_OFFICIAL_SRC = "/work/.mirror/selftok-team+SelftokTokenizer/repo"
_EXPORTED: dict[str, Path] = {}


def official_source(path: str | os.PathLike | None = None) -> Path:
    """A folder holding the official ``mimogpt/`` package: ``path``, ``$SELFTOK_OFFICIAL_SRC`` or the default mirror;
    a bare git directory is exported (``git archive HEAD``) to a temporary folder once per process."""
    path = Path(path or os.environ.get("SELFTOK_OFFICIAL_SRC") or DEFAULT_OFFICIAL_SRC)
    if (path / "mimogpt").is_dir():
        return path
    if (path / "objects").is_dir() and (path / "HEAD").is_file():
        if str(path) not in _EXPORTED:
            out = Path(tempfile.mkdtemp(prefix="selftok-official-"))
            archive = subprocess.run(["git", "--git-dir", str(path), "archive", "HEAD", "mimogpt"], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
            _EXPORTED[str(path)] = out
        return _EXPORTED[str(path)]
    raise FileNotFoundError(f"no official Selftok code at {path}: set SELFTOK_OFFICIAL_SRC to a checkout of selftok-team/SelftokTokenizer")


def _package(name: str, path: Path) -> None:
    """Register ``name`` as a package at ``path`` without running its ``__init__``."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module


def _install_timm_layers() -> None:
    """``timm.models.vision_transformer`` with the three classes the official code imports (timm's own)."""
    if "timm.models.vision_transformer" in sys.modules:
        return
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the official Selftok code needs timm: pip install timm")
    root = Path(list(spec.submodule_search_locations)[0])
    _package("timm", root)
    _package("timm.layers", root / "layers")
    _package("timm.models", root / "models")
    from timm.layers.attention import Attention
    from timm.layers.mlp import Mlp
    from timm.layers.patch_embed import PatchEmbed

    vit = types.ModuleType("timm.models.vision_transformer")
    vit.Attention, vit.Mlp, vit.PatchEmbed = Attention, Mlp, PatchEmbed
    sys.modules[vit.__name__] = vit


def import_official(path: str | os.PathLike | None = None) -> types.SimpleNamespace:
    """Import the official modules the decoder benchmark needs; returns them as attributes
    (``ImageTokenizer``, ``RectifiedFlow``, ``model_zoo``)."""
    if "mimogpt.models.selftok.image_tokenizer" not in sys.modules:
        import einops  # noqa: F401  (a clear error before the official imports fail on it)

        src = official_source(path)
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU run: .cuda() is a no-op
        _install_timm_layers()
        _package("mimogpt", src / "mimogpt")
        _package("mimogpt.models", src / "mimogpt" / "models")
        utils = types.ModuleType("mimogpt.utils")
        utils.hf_logger = logging.getLogger("selftok-official")
        sys.modules["mimogpt.utils"] = utils
    zoo = importlib.import_module("mimogpt.models.selftok.model_zoo")
    _register_reduced(zoo)
    return types.SimpleNamespace(
        ImageTokenizer=importlib.import_module("mimogpt.models.selftok.image_tokenizer").ImageTokenizer,
        RectifiedFlow=importlib.import_module("mimogpt.models.selftok.sd3.rectified_flow").RectifiedFlow,
        model_zoo=zoo,
    )


def _register_reduced(zoo) -> None:
    """The reduced fixture's registered names (see the fixture README, "Reduced configuration")."""
    image_tokenizer = importlib.import_module("mimogpt.models.selftok.image_tokenizer")

    def encoder(**kwargs):
        sizes = {k: kwargs.pop(k) for k in ("patch_size", "hidden_size", "num_heads", "depth", "query_dim", "query_heads")}
        return zoo.QformerEncoder(bidirectional=False, **sizes, **kwargs)

    def mmdit(depth, pos_embed_max_size, **kwargs):
        width = 64 * depth  # the official MMDiT's head size 64, heads = depth
        return zoo.MMDiT(
            pos_embed_scaling_factor=None,
            pos_embed_offset=None,
            pos_embed_max_size=pos_embed_max_size,
            patch_size=2,
            depth=depth,
            num_patches=pos_embed_max_size**2,
            adm_in_channels=kwargs["encoder_hidden_size"],
            context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": kwargs["encoder_hidden_size"], "out_features": width}},
            device="cpu",
            dtype=torch.float,
            **kwargs,
        )

    for table in (zoo.Enc_models, image_tokenizer.Enc_models):
        table.setdefault("Enc-Qformer-Uni-Reduced/2", encoder)
    for table in (zoo.DiT_models, image_tokenizer.DiT_models):
        table.setdefault("MMDiT_Reduced", mmdit)


def build_official_tokenizer(config_path, state_dict_path, path=None):
    """``ImageTokenizer(**cfg.tokenizer.params)`` in eval mode with the state dict loaded strictly, as
    ``SelftokPipeline.__init__`` builds it (fp32, CPU)."""
    import yaml
    from safetensors.torch import load_file

    official = import_official(path)
    params = copy.deepcopy(yaml.safe_load(Path(config_path).read_text())["tokenizer"]["params"])
    params["noise_schedule_config"]["is_eval"] = True  # SelftokPipeline: cfg.common.is_eval
    model = official.ImageTokenizer(**params)
    model.load_state_dict(load_file(str(state_dict_path)), strict=True)
    model.set_eval()
    return model, params


def official_decode_latents(model, params, ids_code_order, noise, steps=50, cfg_scale=1.0, path=None):
    """The body of ``SelftokPipeline.decoding`` without the VAE: token ids (code order) and initial noise -> the latent
    after ``steps`` Euler steps. ``cfg_scale > 1`` is the official classifier-free guidance
    (``RectifiedFlow.sample_one_step`` with ``MMDiT.cfg_inference`` as the unconditional branch), which ``decoding``
    itself never enables."""
    official = import_official(path)
    flow = official.RectifiedFlow(steps, 1.0, None, val_schedule="uniform", shift=1.0, **params["noise_schedule_config"])
    encoder = model.encoder
    B = ids_code_order.shape[0]
    outs_q = encoder.quantizer.get_output_from_indices(ids_code_order)
    outs_q = outs_q.reshape(B, -1, outs_q.shape[-1])
    if encoder.post_norm:
        outs_q = encoder.final_layer_norm3(outs_q)
    t_mapped = torch.tensor([flow.timestep_map[0]] * B).long()
    mask = encoder.get_encoder_mask(ids_code_order, model.diti.to_indices(t_mapped))
    model_kwargs = dict(encoder_hidden_states=outs_q * mask[..., None].expand_as(outs_q), mask=mask, context_see_xt=True)
    return flow.p_sample_loop(
        model.model,
        noise.shape,
        noise,
        model_kwargs=model_kwargs,
        start_t=steps,
        cond_vary=True,
        diti=model.diti,
        encoder=encoder,
        x_0=noise.float(),
        ori_hidden_states=outs_q,
        uncond_scale=cfg_scale,
    )
