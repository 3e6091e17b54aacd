"""Publish selftok-hf artifacts on the Hugging Face Hub: model cards and pushes.

Every artifact of selftok-hf saves to a self-contained folder: weights, configs, the code files that
``trust_remote_code=True`` loads where selftok_hf is not installed, and a ``README.md`` model card. Pushing is
uploading that folder as one commit, with the card rendered for the target repo, so the Hub repo loads with the same
call as the local folder:

    - Selftok tokenizer (``SelftokModel``): ``AutoModel.from_pretrained(repo, trust_remote_code=True)``;
    - decoder pipeline (``SelftokDecoderPipeline``): ``DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)``;
    - VLM (``SelftokPipeline``): ``SelftokPipeline.from_pretrained(repo)``; its root alone with
      ``AutoModelForCausalLM`` / ``AutoProcessor(trust_remote_code=True)``;
    - PEFT adapter (``SelftokPipeline.save_lora_adapter``): ``SelftokPipeline.load_lora(repo)``.

**Model cards.** A card is a function of the saved folder: what it holds is read from its configs and the headers of
its weight files, and rendered with ``huggingface_hub.ModelCard`` from the Jinja templates in the repository's
``model_cards/`` folder (shipped in the wheel as ``selftok_hf/model_cards/``): ``selftok_tokenizer.md`` (a
``SelftokModel`` or ``SelftokDecoderPipeline`` folder), ``selftok_vlm.md`` (a ``SelftokPipeline`` folder),
``selftok_lora.md`` (a LoRA adapter of a Selftok VLM's LM). The card text is generated; its metadata is the user's to
extend: ``license``, ``license_name``, ``license_link``, ``datasets``, ``base_model`` and extra ``tags`` found in the
folder's existing ``README.md`` (or passed as ``card_data``) are kept when the card is rendered again.

**Pushes.** :func:`push_folder` is the one upload path: ``selftok push``, the classes' ``push_to_hub``
(:class:`SelftokHubMixin`, which replaces transformers' and diffusers' versions: both overwrite README.md with their
generic card) and ``save_pretrained(..., push_to_hub=True)`` all end in it.

This module travels with the code files of every saved folder (the classes' ``push_to_hub`` lives here; one module, since
diffusers' remote-code loader copies only a file's direct relative imports). The card templates do not travel: a copy
loaded with ``trust_remote_code=True`` saves without a card (with a warning) and pushes the folder's card as it is.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    ModelCardData,
)
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .portable_config import without_local_name_or_path
from .renamed import with_new_keys
from .vae import SD3_VAE_CONFIG

__all__ = [
    "SelftokHubMixin",
    "artifact_kind",
    "model_card",
    "push_folder",
    "push_saved",
    "remote_code_files",
    "write_model_card",
]

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"

#: Marker file -> artifact name, checked in this order (a VLM folder also holds a config.json).
ARTIFACT_MARKERS = (
    ("selftok_pipeline.json", "SelftokPipeline"),
    ("model_index.json", "SelftokDecoderPipeline"),
    ("adapter_config.json", "PEFT adapter"),
)

#: Per artifact: the card template (in ``model_cards/``) and the Hub metadata of its card.
#: No ``pipeline_tag``: the Hub turns it into a ``transformers.pipeline(task, model=repo)`` (or diffusers) snippet and
#: an inference widget, and no task runs these artifacts: image-feature-extraction needs pixel input (a tokenizer
#: folder reads VAE latents and has no image processor), transformers has no image-to-image or text-to-image
#: pipeline and diffusers' snippet calls ``pipe(prompt/image)`` (ours takes token ids), and any-to-any /
#: image-text-to-text reject a ``*ForCausalLM`` (text-generation would run but only ever write text). The cards'
#: own snippets show the working calls; ``tags`` keep the artifacts findable.
CARD_KINDS = {
    "SelftokModel": {
        "template": "selftok_tokenizer.md",
        "library_name": "transformers",
        "tags": ["selftok", "selftok-hf", "image-tokenizer", "discrete-visual-tokens"],
    },
    "SelftokDecoderPipeline": {
        "template": "selftok_tokenizer.md",
        "library_name": "diffusers",
        "tags": ["selftok", "selftok-hf", "image-tokenizer", "discrete-visual-tokens"],
    },
    "SelftokPipeline": {
        "template": "selftok_vlm.md",
        "library_name": "transformers",
        "tags": ["selftok", "selftok-hf", "text-to-image", "image-text-to-text"],
    },
    "PEFT adapter": {
        "template": "selftok_lora.md",
        "library_name": "peft",
        "tags": [
            "selftok",
            "selftok-hf",
            "lora",
            "text-to-image",
            "image-text-to-text",
        ],
    },
}

#: Metadata a user may set (in the folder's README.md or as ``card_data``); a re-rendered card keeps it.
USER_METADATA = (
    "license",
    "license_name",
    "license_link",
    "datasets",
    "base_model",
    "tags",
)

LICENSE_KEYS = ("license", "license_name", "license_link")

#: The license of the SD3 VAE, which a pipeline whose ``vae/`` is an ``AutoencoderKL`` holds.
SD3_LICENSE = {
    "license": "other",
    "license_name": "stabilityai-ai-community",
    "license_link": "https://huggingface.co/stabilityai/stable-diffusion-3-medium/blob/main/LICENSE.md",
}


def artifact_kind(folder: str | os.PathLike) -> str:
    """Name the selftok-hf artifact saved in ``folder`` (a key of :data:`CARD_KINDS`), or raise ``ValueError``."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    for marker, kind in ARTIFACT_MARKERS:
        if (root / marker).is_file():
            return kind
    if _read_json(root / "config.json").get("model_type") == "selftok":
        return "SelftokModel"
    raise ValueError(
        f"{root} holds no saved selftok-hf artifact: expected selftok_pipeline.json (SelftokPipeline), model_index.json "
        "(SelftokDecoderPipeline), adapter_config.json (PEFT adapter) or a config.json with model_type 'selftok' (SelftokModel)"
    )


def template_dir() -> Path | None:
    """The folder of card templates: ``model_cards/`` inside the installed package (wheel), or at the top of the source
    checkout (editable install). None in a copy of the code loaded with ``trust_remote_code`` (no templates travel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "model_cards", here.parents[1] / "model_cards"):
        if all(
            (candidate / kind["template"]).is_file() for kind in CARD_KINDS.values()
        ):
            return candidate
    return None


def hub_model_id(name: str | None) -> str | None:
    """``name`` if it can be a Hub model id (``base_model`` must be one); None for empty names and local folders."""
    if not name or os.path.isabs(name) or os.path.isdir(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def remote_code_files(module_path: str | os.PathLike) -> list[str]:
    """File names a saved folder needs for ``module_path`` to load as remote code: the module itself and every file
    it imports relatively, transitively (transformers' own resolver), each once, in a stable order."""
    from transformers.dynamic_module_utils import get_relative_import_files

    module_path = Path(module_path)
    return [module_path.name, *sorted({Path(f).name for f in get_relative_import_files(str(module_path))} - {module_path.name})]


def drop_local_name_or_path(folder: str | os.PathLike) -> None:
    """Remove the ``_name_or_path`` that diffusers writes into a saved pipeline's ``model_index.json`` and its
    components' configs when it is a local folder (the one the pipeline was loaded from: a machine path, no use
    anywhere else). Hub model ids are kept."""
    root = Path(folder)
    for path in [root / "model_index.json", *root.glob("*/config.json"), *root.glob("*/scheduler_config.json")]:
        config = _read_json(path)
        portable = without_local_name_or_path(config)
        if portable != config:
            path.write_text(json.dumps(portable, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _parameter_count(folder: Path) -> int:
    """Parameters stored in the ``*.safetensors`` files directly in ``folder`` (read from their headers only)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            names = weights.keys()  # safe_open is not iterable
            total += sum(
                math.prod(weights.get_slice(name).get_shape()) for name in names
            )
    return total


# Template variables, read from a saved folder; `metadata` holds the folder's default card metadata.
def _tokenizer_variables(folder: Path) -> dict[str, Any]:
    """A ``SelftokModel`` folder (its ``config.json``: ``SelftokConfig`` fields, as saved)."""
    from .configuration_selftok import SelftokConfig

    config = with_new_keys(_read_json(folder / "config.json"), SelftokConfig._renamed_fields)  # as SelftokConfig reads it
    # The config's defaults are the official 256 px release; its own fields are the architecture and training
    # settings (the base class's are bookkeeping: auto_map, architectures, versions).
    release, fields = SelftokConfig().to_dict(), SelftokConfig.__annotations__
    return {
        # selftok-hf's and the official Selftok code's license
        "metadata": {"license": "mit"},
        "num_image_tokens": config["num_image_tokens"],
        "codebook_size": config["codebook_size"],
        "code_dim": config["code_dim"],
        "token_dim": config["token_dim"],
        "latent_channels": config["latent_channels"],
        "latent_size": config["latent_size"],
        "image_size": config["latent_size"] * config["latent_downsample"],
        "is_release_architecture": all(
            config.get(key) == release[key] for key in fields
        ),
        "parameters": _parameter_count(folder),
    }


def _pipeline_variables(folder: Path) -> dict[str, Any]:
    """A ``SelftokDecoderPipeline`` folder."""
    index = _read_json(folder / "model_index.json")
    vae_config = _read_json(folder / "vae" / "config.json")
    autoencoder = index["vae"][1] == "AutoencoderKL"
    # An SD3-shaped VAE (16 channels, 8x: SD3's own, or the converter's random stand-in for it) carries SD3's license;
    # another AutoencoderKL is one trained with selftok-train-vae (the embedded default's 4x), under selftok-hf's.
    sd3_vae = autoencoder and (
        len(vae_config.get("block_out_channels", ())) == len(SD3_VAE_CONFIG["block_out_channels"])
        and vae_config.get("latent_channels") == SD3_VAE_CONFIG["latent_channels"]
    )
    if sd3_vae:
        vae_text = "SD3 VAE (`AutoencoderKL`)"
    elif autoencoder:
        down = 2 ** (len(vae_config.get("block_out_channels", [0])) - 1)
        vae_text = f"small SD3-shaped VAE trained with `selftok-train-vae` (`AutoencoderKL`, {vae_config.get('latent_channels')} channels, {down}x)"
    else:
        vae_text = f"pixel-space stand-in (`{index['vae'][1]}`)"
    descriptions = {
        "image_tokenizer": "Selftok encoder + quantizer",
        "transformer": "rectified-flow MMDiT decoder",
        "renderer": "one-step renderer",
        "vae": vae_text,
    }
    present = [
        name
        for name in descriptions
        if isinstance(index.get(name), list) and index[name][0] is not None
    ]
    return {
        **_tokenizer_variables(folder / "image_tokenizer"),
        "metadata": SD3_LICENSE if sd3_vae else {"license": "mit"},
        "has_renderer": "renderer" in present,
        "pixel_space": not autoencoder,
        "sd3_vae": sd3_vae,
        "vae_text": vae_text,
        "components": [
            (name, descriptions[name], _parameter_count(folder / name))
            for name in present
        ],
    }


def _vlm_variables(folder: Path) -> dict[str, Any]:
    """A ``SelftokPipeline`` folder. No default license: the LM's applies, which only the user knows."""
    decoder_folder = _read_json(folder / "selftok_pipeline.json").get(
        "decoder", "decoder"
    )
    config = _read_json(folder / "config.json")
    return {
        **_pipeline_variables(folder / decoder_folder),
        "metadata": {},
        "decoder_folder": decoder_folder,
        "language_model_class": (
            config.get("architectures") or [config.get("model_type")]
        )[0],
        "language_model_parameters": _parameter_count(folder),
        "vocabulary": config["selftok_visual_vocabulary"],
    }


def _lora_variables(folder: Path) -> dict[str, Any]:
    """A PEFT LoRA adapter folder with the processor saved next to it. No default license (the base LM's applies)."""
    adapter = _read_json(folder / "adapter_config.json")
    target_modules = adapter.get("target_modules") or []
    return {
        "metadata": {
            "base_model": hub_model_id(adapter.get("base_model_name_or_path"))
        },
        "rank": adapter.get("r"),
        "lora_alpha": adapter.get("lora_alpha"),
        "target_modules": sorted(target_modules)
        if isinstance(target_modules, list)
        else [target_modules],
        "trainable_token_indices": sorted(adapter.get("trainable_token_indices") or {}),
        "vocabulary": _read_json(folder / "processor_config.json").get(
            "visual_vocabulary"
        ),
        "adapter_parameters": _parameter_count(folder),
    }


TEMPLATE_VARIABLES = {
    "SelftokModel": _tokenizer_variables,
    "SelftokDecoderPipeline": _pipeline_variables,
    "SelftokPipeline": _vlm_variables,
    "PEFT adapter": _lora_variables,
}


def _user_metadata(folder: Path, card_data: dict[str, Any]) -> dict[str, Any]:
    """The user-settable metadata of the folder's current card, updated with ``card_data``."""
    unknown = set(card_data) - set(USER_METADATA)
    if unknown:
        raise ValueError(
            f"card_data may set {list(USER_METADATA)}, got {sorted(unknown)}"
        )
    user: dict[str, Any] = {}
    if (folder / CARD_NAME).is_file():
        existing = ModelCard.load(
            folder / CARD_NAME, ignore_metadata_errors=True
        ).data.to_dict()
        user = {
            key: existing[key] for key in USER_METADATA if existing.get(key) is not None
        }
    # A new license comes with its own name and link, or none.
    if card_data.get("license"):
        for key in LICENSE_KEYS:
            user.pop(key, None)
    user.update({key: value for key, value in card_data.items() if value is not None})
    # `base_model:...` tags are the Hub's own, derived from base_model (PEFT writes them even for local paths).
    user["tags"] = [
        tag for tag in user.get("tags") or [] if not tag.startswith("base_model:")
    ]
    if "base_model" in user:
        names = (
            [user["base_model"]]
            if isinstance(user["base_model"], str)
            else user["base_model"]
        )
        ids = [name for name in map(hub_model_id, names) if name]
        user["base_model"] = ids[0] if len(ids) == 1 else ids or None
    return user


def model_card(
    folder: str | os.PathLike, repo_id: str | None = None, **card_data: Any
) -> ModelCard:
    """Render the card of the selftok-hf artifact saved in ``folder``.

    Args:
        folder: a folder written by a selftok-hf ``save_pretrained`` (see :func:`artifact_kind`).
        repo_id: the repo the usage snippets load (default: the folder's name, i.e. the folder itself from its parent).
        card_data: metadata to set (``license``, ``license_name``, ``license_link``, ``datasets``, ``base_model``,
            ``tags``; tags are added). It overrides the folder's current ``README.md``, which overrides the defaults.
    Raises:
        ValueError: if ``folder`` holds no selftok-hf artifact, or for unknown ``card_data`` keys.
        FileNotFoundError: where the templates are not available (code loaded with ``trust_remote_code``).
    """
    root = Path(folder)
    kind = artifact_kind(root)
    templates = template_dir()
    if templates is None:
        raise FileNotFoundError(
            "the model card templates ship with selftok_hf (pip install selftok-hf); this copy of the code has none"
        )
    repo_id = repo_id or root.resolve().name
    variables = TEMPLATE_VARIABLES[kind](root)
    metadata = {"library_name": CARD_KINDS[kind]["library_name"]}
    metadata.update(variables.pop("metadata"))
    user = _user_metadata(root, card_data)
    metadata["tags"] = list(dict.fromkeys(CARD_KINDS[kind]["tags"] + user.pop("tags")))
    # The user's license replaces the default one, name and link included.
    if user.get("license"):
        for key in LICENSE_KEYS:
            metadata.pop(key, None)
    metadata.update(user)
    # A pipeline pushed back to the repo it was loaded from is not its own base model.
    if metadata.get("base_model") == repo_id:
        del metadata["base_model"]
    metadata = {key: value for key, value in metadata.items() if value is not None}
    return ModelCard.from_template(
        ModelCardData(**metadata),
        template_path=str(templates / CARD_KINDS[kind]["template"]),
        kind=kind,
        repo_id=repo_id,
        base_model=metadata.get("base_model"),
        license=metadata.get("license"),
        **variables,
    )


def write_model_card(folder: str | os.PathLike, **card_data: Any) -> Path | None:
    """Render :func:`model_card` for ``folder`` and write it to ``folder/README.md``; returns its path.

    Where the templates are not available (a copy of the code loaded with ``trust_remote_code=True`` in an
    environment without selftok_hf), logs a warning and writes nothing (returns None).
    """
    try:
        card = model_card(folder, **card_data)
    except FileNotFoundError as error:
        logger.warning("README.md not written: %s", error)
        return None
    path = Path(folder) / CARD_NAME
    card.save(path)
    return path


#: Weight files of the repo that a push deletes when its upload does not hold them (``upload_folder``'s
#: ``delete_patterns``): after a change of sharding (``model.safetensors`` <-> ``model-0000x-of-0000n.safetensors``
#: and an index) the stale files would otherwise stay, and loaders prefer the unsharded file.
STALE_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    tags: str | list[str] | None = None,
    card_data: dict[str, Any] | None = None,
    delete_patterns: str | list[str] | tuple[str, ...] | None = STALE_WEIGHT_PATTERNS,
) -> CommitInfo:
    """Create ``repo_id`` on the Hub if needed and upload the saved artifact in ``folder`` as one commit.

    The commit holds every file of ``folder`` (hidden ones excepted) and a ``README.md`` model card rendered for
    ``repo_id`` (its snippets load ``repo_id``), keeping the metadata of the folder's own card.

    Args:
        folder: a folder written by a selftok-hf ``save_pretrained`` (see the module docstring).
        repo_id: ``"user/name"`` or ``"org/name"``.
        token: a Hub token (default: the one ``hf auth login`` stored, or ``HF_TOKEN``).
        private: create the repo private (ignored when it already exists).
        commit_message: defaults to ``"Upload <artifact> with selftok-hf"``.
        commit_description: the commit's description.
        create_pr: open a pull request instead of committing (to ``revision``, default ``main``).
        revision: the branch to commit to (created from ``main`` if missing), as ``push_to_hub(revision=...)``.
        tags: tags added to the card's (to those of the folder's ``README.md``, or of ``card_data``).
        card_data: card metadata to set (``license``, ``datasets``, ``base_model``, ``tags``, ...; see
            :func:`model_card`).
        delete_patterns: files of the repo (at ``revision``) matching these patterns that the upload does not
            hold are deleted in the same commit; by default stale weight files (:data:`STALE_WEIGHT_PATTERNS`).
    Returns:
        The ``CommitInfo`` of the upload (``commit_url``, ``oid``, ``pr_url``).
    """
    root = Path(folder)
    kind = artifact_kind(root)
    if tags:
        card_data = dict(card_data or {})
        base = card_data.get("tags")
        if base is None and template_dir() is not None:
            base = _user_metadata(root, {}).get("tags")
        card_data["tags"] = list(dict.fromkeys([*(base or []), *([tags] if isinstance(tags, str) else tags)]))
    operations = [
        CommitOperationAdd(
            path_in_repo=path.relative_to(root).as_posix(), path_or_fileobj=str(path)
        )
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and path.relative_to(root).as_posix() != CARD_NAME
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    if template_dir() is not None:
        card = model_card(root, repo_id=repo_id, **(card_data or {}))
        operations.append(
            CommitOperationAdd(
                path_in_repo=CARD_NAME, path_or_fileobj=str(card).encode()
            )
        )
    # Code loaded with trust_remote_code has no templates: the folder's card goes up as it is.
    elif (root / CARD_NAME).is_file():
        if card_data:
            logger.warning("card_data and tags not applied: this copy of the code has no card templates")
        operations.append(
            CommitOperationAdd(
                path_in_repo=CARD_NAME, path_or_fileobj=str(root / CARD_NAME)
            )
        )
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    if delete_patterns:
        patterns = [delete_patterns] if isinstance(delete_patterns, str) else list(delete_patterns)
        uploaded = {operation.path_in_repo for operation in operations}
        operations += [
            CommitOperationDelete(path_in_repo=path)
            for path in api.list_repo_files(repo_id, revision=revision)
            if path not in uploaded and any(fnmatch.fnmatch(path, pattern) for pattern in patterns)
        ]
    return api.create_commit(
        repo_id=repo_id,
        operations=operations,
        commit_message=commit_message or f"Upload {kind} with selftok-hf",
        commit_description=commit_description,
        create_pr=create_pr,
        revision=revision,
    )


def push_saved(
    save: Callable[[str], None], repo_id: str, **push_kwargs: Any
) -> CommitInfo:
    """Call ``save(folder)`` on a temporary folder and :func:`push_folder` it to ``repo_id`` (``push_kwargs``)."""
    with tempfile.TemporaryDirectory() as folder:
        save(folder)
        return push_folder(folder, repo_id, **push_kwargs)


#: ``save_pretrained(..., push_to_hub=True, **kwargs)``: the keyword arguments that go to the push, as in
#: transformers and diffusers (``repo_id`` defaults to the folder's name).
PUSH_ARGUMENTS = (
    "repo_id",
    "token",
    "private",
    "commit_message",
    "commit_description",
    "create_pr",
    "revision",
    "tags",
)


class SelftokHubMixin:
    """``push_to_hub`` for the selftok-hf classes that save a whole artifact (``SelftokModel``,
    ``SelftokDecoderPipeline``, ``SelftokPipeline``): the repo receives exactly what ``save_pretrained`` writes,
    in one commit, through :func:`push_folder`. Their ``save_pretrained`` ends with :meth:`_finish_save`."""

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        revision: str | None = None,
        tags: str | list[str] | None = None,
        card_data: dict[str, Any] | None = None,
        **save_kwargs: Any,
    ) -> CommitInfo:
        """Save to a temporary folder and upload it to ``repo_id`` as one commit (weights, configs, code files and
        the model card).

        Args:
            repo_id: ``"user/name"`` or ``"org/name"`` (created if missing).
            commit_message / commit_description / private / token / create_pr / revision / tags: see
                :func:`push_folder` (stale weight files of the repo are deleted in the same commit).
            card_data: model card metadata to set, e.g. ``{"license": "apache-2.0", "datasets": ["org/data"]}``.
            save_kwargs: passed to ``save_pretrained`` (e.g. ``max_shard_size``).
        Returns:
            The ``CommitInfo`` of the upload.
        """
        return push_saved(
            lambda folder: self.save_pretrained(folder, **save_kwargs),
            repo_id,
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            create_pr=create_pr,
            revision=revision,
            tags=tags,
            card_data=card_data,
        )

    @staticmethod
    def _pop_push_arguments(
        save_directory: str | os.PathLike, push_to_hub: bool, kwargs: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Take the push arguments of ``save_pretrained(..., push_to_hub=True, ...)`` out of ``kwargs`` (so that the
        base class saves without pushing: it would upload before the code files and the card are written)."""
        if not push_to_hub:
            return None
        arguments = {
            name: kwargs.pop(name) for name in PUSH_ARGUMENTS if name in kwargs
        }
        arguments.setdefault("repo_id", Path(save_directory).resolve().name)
        return arguments

    @staticmethod
    def _finish_save(
        save_directory: str | os.PathLike,
        push_arguments: dict[str, Any] | None,
        **card_data: Any,
    ) -> None:
        """The end of every selftok-hf ``save_pretrained``: write the model card, then push if asked to."""
        write_model_card(save_directory, **card_data)
        if push_arguments is not None:
            push_folder(save_directory, **push_arguments)
