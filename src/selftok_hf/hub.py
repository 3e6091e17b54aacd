"""Push a saved selftok-hf folder to the Hugging Face Hub.

Every artifact of selftok-hf saves to a self-contained folder (weights, configs and the code files that
``trust_remote_code=True`` loads where selftok_hf is not installed). Pushing is uploading that folder as one
commit, so the Hub repo loads with the same call as the local folder:

    - Selftok tokenizer (``SelftokModel.save_pretrained``): ``AutoModel.from_pretrained(repo)``;
    - decoder pipeline (``SelftokDecoderPipeline.save_pretrained``): ``SelftokDecoderPipeline.from_pretrained(repo)``;
    - VLM (``SelftokPipeline.save_pretrained``): ``SelftokPipeline.from_pretrained(snapshot_download(repo))``;
    - PEFT adapter (``peft`` ``save_pretrained``): ``PeftModel.from_pretrained(language_model, repo)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi

__all__ = ["artifact_kind", "push_folder"]

#: Marker file -> artifact name, checked in this order (a VLM folder also holds a config.json).
ARTIFACT_MARKERS = (
    ("selftok_pipeline.json", "SelftokPipeline"),
    ("model_index.json", "SelftokDecoderPipeline"),
    ("adapter_config.json", "PEFT adapter"),
)


def artifact_kind(folder: str | os.PathLike) -> str:
    """Name the selftok-hf artifact saved in ``folder`` (see the module docstring), or raise ``ValueError``."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    for marker, kind in ARTIFACT_MARKERS:
        if (root / marker).is_file():
            return kind
    config = root / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == "selftok":
        return "SelftokModel"
    raise ValueError(
        f"{root} holds no saved selftok-hf artifact: expected selftok_pipeline.json (SelftokPipeline), model_index.json "
        "(SelftokDecoderPipeline), adapter_config.json (PEFT adapter) or a config.json with model_type 'selftok' (SelftokModel)"
    )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Create ``repo_id`` on the Hub if needed and upload the saved artifact in ``folder`` as one commit.

    Args:
        folder: a folder written by one of the ``save_pretrained`` methods in the module docstring.
        repo_id: ``"user/name"`` or ``"org/name"``.
        token: a Hub token (default: the one ``huggingface-cli login`` stored, or ``HF_TOKEN``).
        private: create the repo private (ignored when it already exists).
        commit_message: defaults to ``"Upload <artifact> with selftok-hf"``.
        create_pr: open a pull request instead of committing to ``main``.
    Returns:
        The ``CommitInfo`` of the upload (``commit_url``, ``oid``, ``pr_url``).
    """
    kind = artifact_kind(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or f"Upload {kind} with selftok-hf",
        create_pr=create_pr,
    )
