"""Configuration of the Selftok image tokenizer (encoder + quantizer + token schedule)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .quantizer import QuantizerSettings
from .renamed import renamed_fields, with_new_keys
from .token_schedule import TokenSchedule

__all__ = ["SelftokConfig", "SELFTOK_RELEASE_CONFIG", "SELFTOK_TINY_CONFIG"]

_QUANTIZER = QuantizerSettings()  # the release's quantizer settings


@renamed_fields(num_tokens="num_image_tokens")
@strict
class SelftokConfig(PreTrainedConfig):
    r"""Configuration of [`SelftokModel`]: the dual-stream Q-Former encoder, the cosine VQ quantizer
    with its EMA codebook, the token schedule k(τ) and the SD3 latent space it reads.

    Defaults are the official release (`configs/res256/256-eval.yml`: 256 px, K = 512 tokens,
    codebook 32768 × 16, `Enc-Qformer-Uni-XL/2`).

    Latent space:
        latent_channels (`int`, defaults to 16): channels of the SD3 VAE latent.
        latent_size (`int`, defaults to 32): side of the latent (image side / ``latent_downsample``).
        latent_downsample (`int`, defaults to 8): pixels per latent cell along a side (8 for the SD3 VAE, the
            ``patch_size`` of a [`PixelSpaceAutoencoder`] for pixel-space tokenizers).
        vae_scaling_factor (`float`, defaults to 1.5305) / vae_shift_factor (`float`, defaults to 0.0609):
            SD3 normalisation, ``z_norm = (z - shift) * scale``.
    Encoder, image stream:
        patch_size (`int`, 2), encoder_hidden_size (`int`, 64), encoder_num_heads (`int`, 4),
        encoder_depth (`int`, 16): number of dual blocks,
        pos_embed_max_size (`int`, *optional*): side of the 2-D sin-cos grid in patches, centre-cropped
            to the input; defaults to ``2 * latent_size`` as in the official code.
    Encoder, query stream:
        num_image_tokens (`int`, 512): K learnable queries = tokens per image (formerly ``num_tokens``: still
            accepted, with a FutureWarning; configs saved with it load as they are),
        query_dim (`int`, 512), query_heads (`int`, 8), mlp_ratio (`float`, 4.0),
        query_adaln (`bool`, True): token-aware adaLN from the fake timesteps 1000 + 8k,
        causal_queries (`bool`, False): the official ``attn_mask`` flag. The release ("Uni",
            ``attn_mask: False``) lets the queries attend bidirectionally among themselves and to a
            projection of the image stream, while the image stream attends only to itself; ``True``
            makes query k see only queries <= k (in code order).
    Quantizer:
        codebook_size, code_dim, token_dim, post_norm, ema_decay, ema_eps, kmeans_iters, commitment_weight,
        diversity_weight, diversity_temperature, ema_entropy_ratio, diversity_schedule, dead_code_threshold,
        reset_cluster_size, smart_reactivation: the fields of [`QuantizerSettings`], which holds their defaults and
        meanings (``token_dim`` is ``encoder_hidden_size`` in the official YAML); ``QuantizerSettings.from_config``
        reads them from a config.
    Token schedule:
        schedule_stages (`list[int]`, [200, 400, 600, 800, 1000]) and
        schedule_tokens_per_stage (`list[int]`, [192, 184, 72, 48, 16]); see [`TokenSchedule`].
    """

    model_type = "selftok"

    latent_channels: int = 16
    latent_size: int = 32
    latent_downsample: int = 8
    vae_scaling_factor: float = 1.5305
    vae_shift_factor: float = 0.0609

    patch_size: int = 2
    encoder_hidden_size: int = 64
    encoder_num_heads: int = 4
    encoder_depth: int = 16
    pos_embed_max_size: int | None = None

    num_image_tokens: int = 512
    query_dim: int = 512
    query_heads: int = 8
    mlp_ratio: float = 4.0
    query_adaln: bool = True
    causal_queries: bool = False

    # The quantizer's settings: defaults from QuantizerSettings, where they are written.
    codebook_size: int = _QUANTIZER.codebook_size
    code_dim: int = _QUANTIZER.code_dim
    token_dim: int = _QUANTIZER.token_dim
    post_norm: bool = _QUANTIZER.post_norm
    ema_decay: float = _QUANTIZER.ema_decay
    ema_eps: float = _QUANTIZER.ema_eps
    kmeans_iters: int = _QUANTIZER.kmeans_iters
    commitment_weight: float = _QUANTIZER.commitment_weight
    diversity_weight: float = _QUANTIZER.diversity_weight
    diversity_temperature: float = _QUANTIZER.diversity_temperature
    ema_entropy_ratio: float = _QUANTIZER.ema_entropy_ratio
    diversity_schedule: list[float] | tuple[float, ...] = _QUANTIZER.diversity_schedule
    dead_code_threshold: float = _QUANTIZER.dead_code_threshold
    reset_cluster_size: float = _QUANTIZER.reset_cluster_size
    smart_reactivation: bool = _QUANTIZER.smart_reactivation

    schedule_stages: list[int] | tuple[int, ...] = (200, 400, 600, 800, 1000)
    schedule_tokens_per_stage: list[int] | tuple[int, ...] = (192, 184, 72, 48, 16)

    def __post_init__(self, **kwargs):
        if self.pos_embed_max_size is None:
            self.pos_embed_max_size = 2 * self.latent_size
        self.diversity_schedule = list(self.diversity_schedule)
        self.schedule_stages = list(self.schedule_stages)
        self.schedule_tokens_per_stage = list(self.schedule_tokens_per_stage)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: sizes that must divide or agree."""
        if self.encoder_hidden_size % self.encoder_num_heads:
            raise ValueError(f"encoder_hidden_size {self.encoder_hidden_size} is not divisible by encoder_num_heads {self.encoder_num_heads}")
        if self.query_dim % self.query_heads:
            raise ValueError(f"query_dim {self.query_dim} is not divisible by query_heads {self.query_heads}")
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent_size {self.latent_size} is not divisible by patch_size {self.patch_size}")
        if self.pos_embed_max_size * self.patch_size < self.latent_size:
            raise ValueError(f"pos_embed_max_size {self.pos_embed_max_size} patches cannot cover a {self.latent_size} latent")
        if sum(self.schedule_tokens_per_stage) != self.num_image_tokens:
            raise ValueError(
                f"schedule_tokens_per_stage {list(self.schedule_tokens_per_stage)} sums to "
                f"{sum(self.schedule_tokens_per_stage)}, not num_image_tokens={self.num_image_tokens}"
            )
        self.token_schedule  # validates the stages

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' ``from_dict`` (``from_pretrained`` and ``AutoConfig`` load through it); a config saved with
        an old field name (``num_tokens``) loads as it is."""
        return super().from_dict(with_new_keys(config_dict, cls._renamed_fields), **kwargs)

    @classmethod
    def from_json_file(cls, json_file):
        """transformers' ``from_json_file``; old field names load as in :meth:`from_dict`."""
        return cls.from_dict(cls._dict_from_json_file(json_file))

    @property
    def image_size(self) -> int:
        """Pixel side the tokenizer is trained for."""
        return self.latent_size * self.latent_downsample

    @property
    def token_schedule(self) -> TokenSchedule:
        """The token schedule k(τ) described by this config."""
        return TokenSchedule(self.num_image_tokens, tuple(self.schedule_stages), tuple(self.schedule_tokens_per_stage))


#: The released 256 px tokenizer (`256-eval.yml`): the config defaults, so `SelftokConfig(**SELFTOK_RELEASE_CONFIG)` == `SelftokConfig()`.
SELFTOK_RELEASE_CONFIG: dict = {}

#: A tiny tokenizer for tests and the embedded default (64 px images, 32 tokens, 64 codes).
SELFTOK_TINY_CONFIG: dict = dict(
    latent_size=8,
    encoder_hidden_size=32,
    encoder_num_heads=2,
    encoder_depth=2,
    num_image_tokens=32,
    query_dim=64,
    query_heads=4,
    codebook_size=64,
    code_dim=8,
    token_dim=8,
    schedule_tokens_per_stage=[12, 12, 4, 3, 1],
)
