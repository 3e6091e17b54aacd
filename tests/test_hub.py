"""``selftok push`` / ``selftok_hf.hub``: the real ``HfApi.upload_folder`` with the network replaced by a local
recorder (hf_conventions.md section 5), then the pushed repos reloaded by the real loaders in fresh processes."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import huggingface_hub.hf_api
import pytest
import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, RepoUrl

import selftok_hf.hub
from selftok_hf.cli import main
from selftok_hf.quickstart import bundled_images, random_tiny_pipeline
from selftok_hf.tiny_vlm import tiny_selftok_pipeline
from selftok_hf.vae import RandomWeightsWarning, pixels_to_latents


class RecordingHfApi(HfApi):
    """An ``HfApi`` whose server is a local folder: ``create_commit`` writes each added file to ``root/<repo_id>``."""

    root: Path
    calls: list

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok}))
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, *, commit_message, create_pr=None, **kwargs):
        operations = list(operations)
        self.calls.append(("create_commit", repo_id, {"commit_message": commit_message, "paths": sorted(op.path_in_repo for op in operations)}))
        digest = hashlib.sha1()
        for op in operations:
            assert isinstance(op, CommitOperationAdd), f"unexpected operation {op!r}"
            target = self.root / repo_id / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            with op.as_file() as source:
                data = source.read()
            target.write_bytes(data)
            digest.update(op.path_in_repo.encode() + data)
        oid = digest.hexdigest()
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message=commit_message, commit_description="", oid=oid)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    calls = []
    monkeypatch.setattr(RecordingHfApi, "root", root, raising=False)
    monkeypatch.setattr(RecordingHfApi, "calls", calls, raising=False)
    monkeypatch.setattr(selftok_hf.hub, "HfApi", RecordingHfApi)
    # One commit through create_commit (the xet pipeline would upload in batches over the network).
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root, calls


def local_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_push_all_artifacts_and_reload(fake_hub, tmp_path, capsys):
    root, calls = fake_hub
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        decoder = random_tiny_pipeline(seed=0)
    vlm = tiny_selftok_pipeline("llama", seed=0)
    folders = {"org/tok": tmp_path / "tok", "org/dec": tmp_path / "dec", "org/vlm": tmp_path / "vlm"}
    decoder.image_tokenizer.save_pretrained(folders["org/tok"])
    decoder.image_processor.save_pretrained(folders["org/tok"])
    decoder.save_pretrained(folders["org/dec"])
    vlm.save_pretrained(folders["org/vlm"])

    image = bundled_images()["coffee.jpg"]
    pixel_values = decoder.image_processor([image], return_tensors="pt").pixel_values
    cfg = decoder.image_tokenizer.config
    latents = pixels_to_latents(decoder.vae, pixel_values, cfg.vae_scaling_factor, cfg.vae_shift_factor)
    expected = {
        "latents": latents,
        "tokenizer_ids": decoder.image_tokenizer.encode(latents=latents).token_ids,
        "pixel_values": pixel_values,
        "decoder_ids": decoder.encode(pixel_values),
        "answer": vlm.describe(image, max_new_tokens=6),
    }
    torch.save(expected, tmp_path / "expected.pt")

    kinds = {"org/tok": "SelftokModel", "org/dec": "SelftokDecoderPipeline", "org/vlm": "SelftokPipeline"}
    for repo_id, folder in folders.items():
        assert main(["push", str(folder), repo_id, "--private"]) == 0
        out = capsys.readouterr().out
        assert f"pushed {kinds[repo_id]}" in out and f"https://huggingface.co/{repo_id}/commit/" in out
    assert [(name, repo) for name, repo, _ in calls] == [(name, repo) for repo in folders for name in ("create_repo", "create_commit")]
    for (_, repo_id, repo_args), (_, _, commit) in zip(calls[::2], calls[1::2]):
        assert repo_args == {"private": True, "exist_ok": True}
        assert commit["commit_message"] == f"Upload {kinds[repo_id]} with selftok-hf"
        assert commit["paths"] == local_files(folders[repo_id])
        assert local_files(root / repo_id) == local_files(folders[repo_id])
    assert "model_index.json" in local_files(root / "org/dec") and "decoder/model_index.json" in local_files(root / "org/vlm")

    # Fresh processes read only the pushed copies (the saved folders are gone).
    for folder in folders.values():
        shutil.rmtree(folder)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    with_package = f"""
        import torch
        from transformers import AutoModel
        from selftok_hf import SelftokDecoderPipeline, SelftokModel, SelftokPipeline
        from selftok_hf.quickstart import bundled_images
        hub, expected = {str(root)!r}, torch.load({str(tmp_path / "expected.pt")!r})
        tokenizer = AutoModel.from_pretrained(hub + "/org/tok").eval()
        assert isinstance(tokenizer, SelftokModel)
        assert torch.equal(tokenizer.encode(latents=expected["latents"]).token_ids, expected["tokenizer_ids"])
        decoder = SelftokDecoderPipeline.from_pretrained(hub + "/org/dec")
        assert torch.equal(decoder.encode(expected["pixel_values"]), expected["decoder_ids"])
        vlm = SelftokPipeline.from_pretrained(hub + "/org/vlm")
        assert vlm.describe(bundled_images()["coffee.jpg"], max_new_tokens=6) == expected["answer"]
        print("OK with package")
    """
    without_package = f"""
        import sys, torch
        sys.modules["selftok_hf"] = None  # the pushed repos must carry all the code they need
        from diffusers import DiffusionPipeline
        from transformers import AutoModel
        hub, expected = {str(root)!r}, torch.load({str(tmp_path / "expected.pt")!r})
        tokenizer = AutoModel.from_pretrained(hub + "/org/tok", trust_remote_code=True).eval()
        assert torch.equal(tokenizer.encode(latents=expected["latents"]).token_ids, expected["tokenizer_ids"])
        decoder = DiffusionPipeline.from_pretrained(hub + "/org/dec", trust_remote_code=True)
        assert torch.equal(decoder.encode(expected["pixel_values"]), expected["decoder_ids"])
        print("OK without package", type(tokenizer).__module__.split(".")[0])
    """
    for script, marker in ((with_package, "OK with package"), (without_package, "OK without package transformers_modules")):
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        assert marker in result.stdout


def test_push_rejects_a_folder_without_an_artifact(fake_hub, tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(tmp_path / "stuff"), "org/x"])
    assert exit_info.value.code == 2
    assert "holds no saved selftok-hf artifact" in capsys.readouterr().err
    assert fake_hub[1] == []  # nothing was sent


@pytest.mark.skipif(
    not (os.environ.get("HF_TOKEN") and os.environ.get("SELFTOK_HUB_TEST_REPO")),
    reason="real Hub test: set HF_TOKEN and SELFTOK_HUB_TEST_REPO (a repo id you may write to)",
)
def test_push_to_the_real_hub(tmp_path):
    from huggingface_hub import snapshot_download

    from selftok_hf import SelftokDecoderPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        decoder = random_tiny_pipeline(seed=0)
    decoder.save_pretrained(tmp_path / "dec")
    repo_id = os.environ["SELFTOK_HUB_TEST_REPO"]
    commit = selftok_hf.hub.push_folder(tmp_path / "dec", repo_id, private=True)
    snapshot = snapshot_download(repo_id, revision=commit.oid, cache_dir=tmp_path / "cache")
    pixel_values = decoder.image_processor([bundled_images()["coffee.jpg"]], return_tensors="pt").pixel_values
    assert torch.equal(SelftokDecoderPipeline.from_pretrained(snapshot).encode(pixel_values), decoder.encode(pixel_values))
