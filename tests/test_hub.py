"""Pushing every selftok-hf artifact to the Hub, and their model cards.

No network: the Hub client of each push path is an ``HfApi`` whose server is a local folder (hf_conventions.md
section 5): ``selftok_hf.hub`` (our ``push_to_hub`` overrides, ``save_pretrained(push_to_hub=True)``, ``selftok push``)
and transformers' shared client (``PreTrainedModel``, ``ProcessorMixin``, image processors and PEFT's ``PeftModel``
push through ``transformers.utils.hub``), whose remote card lookup reads the fake repos. The pushed repos are then
reloaded by the real loaders in two fresh processes, one with selftok_hf and one where it cannot be imported, and
every Python block of every generated card runs there against the pushed tiny checkpoints.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from importlib import resources
from pathlib import Path

import pytest
import torch
import transformers.utils.hub
from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    RepoUrl,
)
from huggingface_hub.errors import EntryNotFoundError
from peft import LoraConfig, get_peft_model

import selftok_hf.hub
from selftok_hf import SelftokPipeline
from selftok_hf.apps.cli import main
from selftok_hf.assets import bundled_images, embedded_pipeline
from selftok_hf.hub import model_card, write_model_card
from selftok_hf.modeling_selftok_lm import embedding_module_names, lora_target_modules
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline
from selftok_hf.vae import pixels_to_latents

#: The repos whose cards the snippet checks run (artifact -> repo), all pushed by the `hub` fixture.
CARD_REPOS = {
    "SelftokModel": "org/tok",
    "SelftokDecoderPipeline": "org/dec",
    "SelftokPipeline": "org/vlm",
    "PEFT adapter": "org/lora",
}
PROMPT = "a red circle"


class RecordingHfApi(HfApi):
    """An ``HfApi`` whose server is a local folder: ``create_commit`` writes each added file to ``root/<repo_id>``
    (``root/<repo_id>@<branch>`` for another branch) and removes each deleted one."""

    root: Path
    calls: list

    def _repo_dir(self, repo_id, revision=None) -> Path:
        return self.root / (repo_id if revision in (None, "main") else f"{repo_id}@{revision}")

    def create_branch(self, repo_id, *, branch, exist_ok=False, **kwargs):
        self.calls.append(("create_branch", repo_id, {"branch": branch, "exist_ok": exist_ok}))
        if not self._repo_dir(repo_id, branch).exists():
            shutil.copytree(self._repo_dir(repo_id), self._repo_dir(repo_id, branch))

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        return local_files(self._repo_dir(repo_id, revision))

    def create_repo(self, repo_id, *, private=None, exist_ok=False, **kwargs):
        self.calls.append(
            ("create_repo", repo_id, {"private": private, "exist_ok": exist_ok})
        )
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(
        self, repo_id, operations, *, commit_message, create_pr=None, revision=None, **kwargs
    ):
        operations = list(operations)
        deleted = sorted(op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete))
        operations = [op for op in operations if not isinstance(op, CommitOperationDelete)]
        self.calls.append(
            (
                "create_commit",
                repo_id,
                {
                    "commit_message": commit_message,
                    "paths": sorted(op.path_in_repo for op in operations),
                    **({"revision": revision} if revision is not None else {}),
                    **({"deleted": deleted} if deleted else {}),
                },
            )
        )
        repo_dir = self._repo_dir(repo_id, revision)
        for path in deleted:
            (repo_dir / path).unlink()
        digest = hashlib.sha1()
        for op in operations:
            assert isinstance(op, CommitOperationAdd), f"unexpected operation {op!r}"
            target = repo_dir / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            with op.as_file() as source:
                data = source.read()
            target.write_bytes(data)
            digest.update(op.path_in_repo.encode() + data)
        oid = digest.hexdigest()
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}",
            commit_message=commit_message,
            commit_description="",
            oid=oid,
        )


class RecordingHubModelCard(ModelCard):
    """transformers' remote card lookup (``ModelCard.load(repo_id)`` before a push), served by the fake repos."""

    @classmethod
    def load(cls, repo_id_or_path, **kwargs):
        card = RecordingHfApi.root / str(repo_id_or_path) / "README.md"
        if not card.is_file():
            raise EntryNotFoundError(f"{repo_id_or_path} has no README.md")
        return super().load(card, ignore_metadata_errors=True)


def install_fake_hub(monkeypatch, root: Path) -> list:
    calls = []
    monkeypatch.setattr(RecordingHfApi, "root", root, raising=False)
    monkeypatch.setattr(RecordingHfApi, "calls", calls, raising=False)
    monkeypatch.setattr(selftok_hf.hub, "HfApi", RecordingHfApi)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", RecordingHfApi())
    monkeypatch.setattr(transformers.utils.hub, "ModelCard", RecordingHubModelCard)
    monkeypatch.setenv(
        "HF_HUB_OFFLINE", "1"
    )  # anything that still tried the network would fail
    return calls


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    root = tmp_path / "hub"
    return root, install_fake_hub(monkeypatch, root)


def local_files(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
    )


def card_metadata(folder: Path) -> dict:
    return ModelCard.load(folder / "README.md").data.to_dict()


def perturb_trainable_(model, seed: int) -> None:
    """LoRA B starts at zero and trained token rows as copies: give every trainable tensor seeded values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Every artifact pushed once, through every push path, to a fake Hub; the expected outputs for the reloads."""
    work = tmp_path_factory.mktemp("hub_test")
    root = work / "hub"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calls = install_fake_hub(monkeypatch, root)
        vlm = tiny_selftok_pipeline("llama", seed=0)
        vlm.set_progress_bar_config(disable=True)
        decoder, tokenizer, image_processor = (
            vlm.decoder,
            vlm.decoder.image_tokenizer,
            vlm.decoder.image_processor,
        )
        local = {
            "tok": work / "local" / "tok",
            "dec": work / "local" / "dec",
            "vlm": work / "local" / "vlm",
        }
        tokenizer.save_pretrained(local["tok"])
        image_processor.save_pretrained(local["tok"])
        decoder.save_pretrained(local["dec"])
        vlm.save_pretrained(local["vlm"])

        # Our push_to_hub overrides, save_pretrained(push_to_hub=True) and the CLI: all through hub.push_folder.
        tokenizer.push_to_hub("org/tok", private=True)
        image_processor.push_to_hub(
            "org/tok"
        )  # transformers' own push, into the tokenizer's repo
        decoder.push_to_hub("org/dec", card_data={"datasets": ["org/images"]})
        decoder.save_pretrained(
            work / "dec-saved", push_to_hub=True, repo_id="org/dec-saved"
        )
        vlm.push_to_hub("org/vlm")
        assert main(["push", str(local["dec"]), "org/dec-cli"]) == 0
        # transformers' own pushes: the plain LM and the processor, into one repo.
        vlm.language_model.push_to_hub("org/lm")
        vlm.processor.push_to_hub("org/lm")

        # A LoRA adapter of the pushed VLM. Its base_model: loaded from the Hub, the LM's name_or_path would be the
        # repo id; loaded here from the fake repo's folder, the card is told.
        lora = SelftokPipeline.from_pretrained(root / "org/vlm")
        lora.set_progress_bar_config(disable=True)
        vocabulary = lora.vocabulary
        rows = list(range(vocabulary.first_visual_id, vocabulary.lm_vocab_size))
        trainable = {
            name.rsplit(".", 1)[-1]: rows
            for name in embedding_module_names(lora.language_model)
            if name
        }
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=lora_target_modules(lora.language_model),
            trainable_token_indices=trainable,
            task_type="CAUSAL_LM",
        )
        lora.language_model = get_peft_model(lora.language_model, config)
        perturb_trainable_(lora.language_model, seed=1)
        prompt = vlm.processor.pad(
            [vlm.processor.chat_prompt(PROMPT, generate_image=True)]
        )
        lora.push_lora_adapter("org/lora", card_data={"base_model": "org/vlm"})
        lora_card = (root / "org/lora/README.md").read_text()
        # PEFT's own push (transformers' PushToHubMixin) updates the adapter and keeps the repo's card.
        perturb_trainable_(lora.language_model, seed=2)
        with torch.no_grad():
            lora_logits_updated = lora.language_model(**prompt).logits
        lora.language_model.push_to_hub("org/lora")

        image = bundled_images()["coffee.jpg"]
        pixel_values = image_processor([image], return_tensors="pt").pixel_values
        cfg = tokenizer.config
        latents = pixels_to_latents(
            decoder.vae, pixel_values, cfg.vae_scaling_factor, cfg.vae_shift_factor
        )
        with torch.no_grad():
            expected = {
                "latents": latents,
                "tokenizer_ids": tokenizer.encode(latents=latents).token_ids,
                "pixel_values": pixel_values,
                "decoder_ids": decoder.encode(pixel_values),
                "rendered": decoder(
                    decoder.encode(pixel_values), use_renderer=True, output_type="pt"
                ).images,
                "answer": vlm.describe(image, max_new_tokens=6),
                "generated_ids": vlm(
                    PROMPT,
                    output_type="ids",
                    generator=torch.Generator().manual_seed(0),
                ).token_ids,
                "prompt": dict(prompt),
                "lm_logits": vlm.language_model(**prompt).logits,
                "lora_logits_updated": lora_logits_updated,
            }
    torch.set_num_threads(threads)
    torch.save(expected, work / "expected.pt")
    # The pushed VLM as the Hub cache holds a downloaded repo, for loading it by its repo id offline.
    cached = work / "hf_cache" / "models--org--vlm"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text("0" * 40)
    shutil.copytree(root / "org/vlm", cached / "snapshots" / ("0" * 40))
    shutil.copyfile(
        resources.files("selftok_hf") / "assets" / "coffee.jpg", work / "image.jpg"
    )  # the cards' snippets open it
    return {
        "root": root,
        "work": work,
        "local": local,
        "calls": calls,
        "lora_card": lora_card,
    }


def test_pushed_repos_hold_what_save_pretrained_writes(hub):
    root, local, calls = hub["root"], hub["local"], hub["calls"]
    commits = {repo: info for name, repo, info in calls if name == "create_commit"}
    # One commit per push; our pushes hold exactly the saved folder (README.md rendered for the repo).
    for repo, folder in (
        ("org/dec", local["dec"]),
        ("org/dec-saved", local["dec"]),
        ("org/dec-cli", local["dec"]),
        ("org/vlm", local["vlm"]),
    ):
        assert (
            local_files(root / repo) == local_files(folder) == commits[repo]["paths"]
        ), repo
        assert f'from_pretrained("{repo}"' in (root / repo / "README.md").read_text()
    assert ("create_repo", "org/tok", {"private": True, "exist_ok": True}) in calls
    assert local_files(root / "org/tok") == local_files(local["tok"])
    assert (
        commits["org/dec"]["commit_message"]
        == "Upload SelftokDecoderPipeline with selftok-hf"
    )
    # The code travels: the decoder's components, the VLM root (for get_class_from_dynamic_module), the processor.
    for path in (
        "pipeline_selftok_decoder.py",
        "hub.py",
        "transformer/modeling_selftok_decoder.py",
        "image_tokenizer/modeling_selftok.py",
    ):
        assert (root / "org/dec" / path).is_file(), path
    for path in (
        "pipeline_selftok.py",
        "generation_selftok.py",
        "processing_selftok.py",
        "decoder/model_index.json",
    ):
        assert (root / "org/vlm" / path).is_file(), path
    assert (
        not (root / "org/vlm/decoder/README.md").exists()
        and not (root / "org/dec/image_tokenizer/README.md").exists()
    )
    for repo, config in (
        ("org/tok", "preprocessor_config.json"),
        ("org/lm", "processor_config.json"),
    ):
        assert "auto_map" in json.loads((root / repo / config).read_text()), repo
    assert {
        "processing_selftok.py",
        "visual_vocabulary.py",
        "config.json",
        "model.safetensors",
    } <= set(local_files(root / "org/lm"))
    # The LoRA repo: adapter + processor from push_lora_adapter, the adapter updated by PEFT's push.
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "processor_config.json",
        "tokenizer.json",
    } <= set(local_files(root / "org/lora"))
    assert [name for name, repo, _ in calls if repo == "org/lora"] == [
        "create_repo",
        "create_commit",
    ] * 2


def test_card_metadata(hub):
    root = hub["root"]
    tok, dec, vlm, lora = (
        card_metadata(root / repo)
        for repo in ("org/tok", "org/dec", "org/vlm", "org/lora")
    )
    # No pipeline_tag: the Hub would offer a pipeline(task, model=repo) call that fails for every artifact (hub.py).
    assert not [card for card in (tok, dec, vlm, lora) if "pipeline_tag" in card]
    assert (tok["library_name"], tok["license"]) == ("transformers", "mit")
    # transformers' image-processor push kept the tokenizer's card (its remote lookup found it).
    assert {"selftok", "image-tokenizer"} <= set(tok["tags"])
    assert (dec["library_name"], dec["datasets"]) == ("diffusers", ["org/images"])
    assert (dec["license"], dec["license_name"]) == (
        "other",
        "stabilityai-ai-community",
    )  # its vae/ is an AutoencoderKL
    assert vlm["library_name"] == "transformers" and "license" not in vlm
    assert (lora["library_name"], lora["base_model"]) == (
        "peft",
        "org/vlm",
    ) and "lora" in lora["tags"]
    assert not any(tag.startswith("base_model:") for tag in lora["tags"])
    assert (
        card_metadata(root / "org/lora") == ModelCard(hub["lora_card"]).data.to_dict()
    )  # PEFT's push kept it
    text = (root / "org/tok/README.md").read_text()
    assert (
        "Results reported in the paper (not measured on these weights)" in text
        and "0.70 | 24.14 | 0.709 | 0.084" in text
    )
    assert (
        "token ids are exactly equal" in text
        and "architecture differs from the official 256 px release" in text
    )


def test_user_metadata_survives_re_rendering_and_own_vae_or_pixel_pipelines_are_mit(hub, tmp_path):
    folder = tmp_path / "dec"
    shutil.copytree(hub["local"]["dec"], folder)
    write_model_card(
        folder,
        license="apache-2.0",
        datasets=["org/photos"],
        base_model="/local/path",
        tags=["base_model:adapter:/x", "mine"],
    )
    card = model_card(folder, repo_id="org/again").data.to_dict()
    assert (
        card["license"] == "apache-2.0" and "license_name" not in card
    )  # the user's license replaces the SD3 default
    assert (
        card["datasets"] == ["org/photos"] and "base_model" not in card
    )  # a local path is no Hub id
    assert card["tags"][-1] == "mine" and not any(
        tag.startswith("base_model:") for tag in card["tags"]
    )
    with pytest.raises(ValueError, match="card_data may set"):
        model_card(folder, pipeline_tag="text-generation")
    # The embedded default holds a VAE trained here (4x, not SD3-shaped): selftok-hf's license, and the card says so.
    embedded_pipeline().save_pretrained(tmp_path / "embedded")
    assert card_metadata(tmp_path / "embedded")["license"] == "mit"
    assert "small SD3-shaped VAE trained with `selftok-train-vae`" in (tmp_path / "embedded" / "README.md").read_text()
    # A pixel-space pipeline is MIT too, and its card says it reads pixels.
    from selftok_hf.pixel_space import PixelSpaceAutoencoder

    pixel_pipe = embedded_pipeline()
    pixel_pipe.register_modules(vae=PixelSpaceAutoencoder(patch_size=4))
    pixel_pipe.save_pretrained(tmp_path / "pixel")
    assert card_metadata(tmp_path / "pixel")["license"] == "mit"
    assert "pixels (" in (tmp_path / "pixel" / "README.md").read_text()


def card_snippets(root: Path, with_selftok_hf: bool) -> list[tuple[str, str]]:
    """The ```python blocks of the pushed cards that need selftok_hf (or not), with repo ids replaced by the repos'
    folders; every block of every card is in one of the two lists."""
    snippets = []
    for kind, repo in CARD_REPOS.items():
        for block in re.findall(
            r"```python\n(.*?)```",
            (root / repo / "README.md").read_text(),
            flags=re.DOTALL,
        ):
            if ("selftok_hf" in block) == with_selftok_hf:
                for name in CARD_REPOS.values():
                    block = block.replace(f'"{name}"', repr(str(root / name)))
                snippets.append((kind, block))
    return snippets


def run_fresh_process(hub, script: str, snippets: list[tuple[str, str]]) -> str:
    """Run ``script`` and then every snippet (each in its own namespace) in a fresh Python process."""
    work = hub["work"]
    (work / "snippets.json").write_text(json.dumps(snippets))
    program = textwrap.dedent(script) + textwrap.dedent(
        f"""
        import json
        for kind, code in json.load(open({str(work / "snippets.json")!r})):
            exec(compile(code, f"<card snippet: {{kind}}>", "exec"), {{}})
            print("snippet ran:", kind)
        """
    )
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        HF_MODULES_CACHE=str(work / "modules"),
        HF_HUB_CACHE=str(work / "hf_cache"),
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_reload_and_card_snippets_with_selftok_hf(hub):
    snippets = card_snippets(hub["root"], with_selftok_hf=True)
    assert {kind for kind, _ in snippets} == set(CARD_REPOS)
    script = f"""
        import tempfile
        from pathlib import Path
        import torch
        from huggingface_hub import ModelCard
        from transformers import AutoModel
        from selftok_hf import SelftokDecoderPipeline, SelftokModel, SelftokPipeline
        from selftok_hf.assets import bundled_images
        hub, expected = {str(hub["root"])!r}, torch.load({str(hub["work"] / "expected.pt")!r})
        torch.set_num_threads(1)
        tokenizer = AutoModel.from_pretrained(hub + "/org/tok").eval()
        assert isinstance(tokenizer, SelftokModel)
        assert torch.equal(tokenizer.encode(latents=expected["latents"]).token_ids, expected["tokenizer_ids"])
        for repo in ("org/dec", "org/dec-saved", "org/dec-cli"):
            decoder = SelftokDecoderPipeline.from_pretrained(hub + "/" + repo)
            ids = decoder.encode(expected["pixel_values"])
            assert torch.equal(ids, expected["decoder_ids"])
            assert torch.allclose(decoder(ids, use_renderer=True, output_type="pt").images, expected["rendered"], atol=1e-5)
        vlm = SelftokPipeline.from_pretrained("org/vlm")  # a repo id: snapshot_download, here from the Hub cache
        vlm.set_progress_bar_config(disable=True)
        assert vlm.describe(bundled_images()["coffee.jpg"], max_new_tokens=6) == expected["answer"]
        with tempfile.TemporaryDirectory() as folder:  # loaded by its repo id, the LM is the next save's base_model
            vlm.save_pretrained(folder)
            assert ModelCard.load(Path(folder) / "README.md").data.base_model == "org/vlm"
        generated = vlm("{PROMPT}", output_type="ids", generator=torch.Generator().manual_seed(0)).token_ids
        assert torch.equal(generated, expected["generated_ids"])
        vlm.load_lora(hub + "/org/lora")
        with torch.no_grad():
            assert torch.allclose(vlm.language_model(**expected["prompt"]).logits, expected["lora_logits_updated"], atol=1e-5)
        print("reloaded with selftok_hf")
    """
    out = run_fresh_process(hub, script, snippets)
    assert "reloaded with selftok_hf" in out and out.count("snippet ran:") == len(
        snippets
    )


@pytest.mark.slow
def test_reload_and_card_snippets_without_selftok_hf(hub):
    snippets = card_snippets(hub["root"], with_selftok_hf=False)
    assert {kind for kind, _ in snippets} == set(CARD_REPOS)
    script = f"""
        import sys, tempfile
        from pathlib import Path
        sys.modules["selftok_hf"] = None  # the pushed repos must carry all the code they need
        import torch
        from diffusers import DiffusionPipeline
        from peft import PeftModel
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoProcessor
        from transformers.dynamic_module_utils import get_class_from_dynamic_module
        hub, expected = {str(hub["root"])!r}, torch.load({str(hub["work"] / "expected.pt")!r})
        torch.set_num_threads(1)
        tokenizer = AutoModel.from_pretrained(hub + "/org/tok", trust_remote_code=True).eval()
        assert type(tokenizer).__module__.startswith("transformers_modules.")
        assert torch.equal(tokenizer.encode(latents=expected["latents"]).token_ids, expected["tokenizer_ids"])
        image_processor = AutoImageProcessor.from_pretrained(hub + "/org/tok", trust_remote_code=True)
        image = Image.open("image.jpg").convert("RGB")
        assert torch.equal(image_processor([image], return_tensors="pt").pixel_values, expected["pixel_values"])
        with tempfile.TemporaryDirectory() as folder:  # this copy of the code has no card templates: saves without a card
            tokenizer.save_pretrained(folder)
            assert not (Path(folder) / "README.md").exists()
            assert torch.equal(AutoModel.from_pretrained(folder, trust_remote_code=True).encode(latents=expected["latents"]).token_ids, expected["tokenizer_ids"])
        decoder = DiffusionPipeline.from_pretrained(hub + "/org/dec", trust_remote_code=True)
        ids = decoder.encode(expected["pixel_values"])
        assert torch.equal(ids, expected["decoder_ids"])
        assert torch.allclose(decoder(ids, use_renderer=True, output_type="pt").images, expected["rendered"], atol=1e-5)
        SelftokPipeline = get_class_from_dynamic_module("pipeline_selftok.SelftokPipeline", hub + "/org/vlm")
        vlm = SelftokPipeline.from_pretrained(hub + "/org/vlm", trust_remote_code=True)
        vlm.set_progress_bar_config(disable=True)
        assert vlm.describe(image, max_new_tokens=6) == expected["answer"]
        generated = vlm("{PROMPT}", output_type="ids", generator=torch.Generator().manual_seed(0)).token_ids
        assert torch.equal(generated, expected["generated_ids"])
        language_model = AutoModelForCausalLM.from_pretrained(hub + "/org/lm")
        processor = AutoProcessor.from_pretrained(hub + "/org/lm", trust_remote_code=True)
        prompt = processor.pad([processor.chat_prompt("{PROMPT}", generate_image=True)])
        assert torch.equal(prompt["input_ids"], expected["prompt"]["input_ids"])
        with torch.no_grad():
            assert torch.equal(language_model(**prompt).logits, expected["lm_logits"])
            lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hub + "/org/vlm"), hub + "/org/lora")
            assert torch.allclose(lora(**prompt).logits, expected["lora_logits_updated"], atol=1e-5)
        print("reloaded without selftok_hf")
    """
    out = run_fresh_process(hub, script, snippets)
    assert "reloaded without selftok_hf" in out and out.count("snippet ran:") == len(
        snippets
    )


def test_push_rejects_a_folder_without_an_artifact(fake_hub, tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(tmp_path / "stuff"), "org/x"])
    assert exit_info.value.code == 2
    assert "holds no saved selftok-hf artifact" in capsys.readouterr().err
    assert fake_hub[1] == []  # nothing was sent


def test_push_revision_tags_and_stale_weights(fake_hub, tmp_path):
    """revision= commits to that branch (created from main), tags= reach the card, and a re-push after a change of
    sharding deletes the weight files the new upload does not hold."""
    root, calls = fake_hub
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = tiny_selftok_pipeline("llama", seed=0).decoder.image_tokenizer

    def commit():
        return [info for name, _, info in calls if name == "create_commit"][-1]

    tokenizer.push_to_hub("org/t")
    assert "model.safetensors" in local_files(root / "org/t") and "deleted" not in commit()
    tokenizer.push_to_hub("org/t", max_shard_size="300KB")
    files = local_files(root / "org/t")
    assert "model.safetensors" not in files and "model.safetensors.index.json" in files
    assert commit()["deleted"] == ["model.safetensors"]
    shards = [name for name in files if name.startswith("model-0")]
    assert len(shards) > 1
    tokenizer.push_to_hub("org/t")  # and back: the shards and their index go
    assert commit()["deleted"] == sorted([*shards, "model.safetensors.index.json"])
    assert [name for name in local_files(root / "org/t") if name.endswith((".safetensors", ".index.json"))] == ["model.safetensors"]

    tokenizer.push_to_hub("org/t", revision="dev", tags=["mine"])
    assert ("create_branch", "org/t", {"branch": "dev", "exist_ok": True}) in calls
    assert commit()["revision"] == "dev"
    assert "mine" in card_metadata(root / "org/t@dev")["tags"] and "mine" not in card_metadata(root / "org/t")["tags"]
    # save_pretrained(push_to_hub=True) and the CLI pass them on too
    tokenizer.save_pretrained(tmp_path / "tok", push_to_hub=True, repo_id="org/t", revision="v2", tags="saved")
    assert commit()["revision"] == "v2" and "saved" in card_metadata(root / "org/t@v2")["tags"]
    write_model_card(tmp_path / "tok", tags=["in-folder"])
    assert main(["push", str(tmp_path / "tok"), "org/t", "--revision", "v3", "--tag", "a", "--tag", "b"]) == 0
    assert commit()["revision"] == "v3"
    assert {"a", "b", "in-folder"} <= set(card_metadata(root / "org/t@v3")["tags"])  # the folder card's are kept


def test_pipeline_from_pretrained_loads_every_part_from_the_revision(fake_hub, monkeypatch, tmp_path):
    """SelftokPipeline.from_pretrained(repo, revision=...) takes the LM, the processor and the decoder from that
    revision, and hands revision / cache_dir / token / local_files_only / force_download to the download."""
    import huggingface_hub

    root, _ = fake_hub
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_pipe, dev_pipe = tiny_selftok_pipeline("llama", seed=0), tiny_selftok_pipeline("llama", seed=1)
    main_pipe.push_to_hub("org/vlm")
    dev_pipe.push_to_hub("org/vlm", revision="dev")
    downloads = []

    def fake_snapshot_download(repo_id, **kwargs):
        downloads.append((repo_id, kwargs))
        return str(RecordingHfApi()._repo_dir(repo_id, kwargs.get("revision")))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    cache = tmp_path / "cache"
    loaded = SelftokPipeline.from_pretrained(
        "org/vlm", revision="dev", cache_dir=cache, token="hf_x", local_files_only=True, force_download=True
    )
    assert downloads == [
        ("org/vlm", {"revision": "dev", "cache_dir": cache, "token": "hf_x", "local_files_only": True, "force_download": True, "allow_patterns": None})
    ]

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    assert same(loaded.language_model, dev_pipe.language_model) and not same(loaded.language_model, main_pipe.language_model)
    assert same(loaded.decoder.transformer, dev_pipe.decoder.transformer)
    assert not same(loaded.decoder.transformer, main_pipe.decoder.transformer)
    assert loaded.language_model.name_or_path == "org/vlm"  # the repo id, not the snapshot folder
    # subfolder=, for a repo id (only that folder is downloaded) and for a local folder
    shutil.copytree(root / "org/vlm@dev", root / "org/outer" / "pipe")
    SelftokPipeline.from_pretrained("org/outer", subfolder="pipe")
    assert downloads[-1][1]["allow_patterns"] == ["pipe/*"]
    local = SelftokPipeline.from_pretrained(root / "org/outer", subfolder="pipe")
    assert same(local.decoder.transformer, dev_pipe.decoder.transformer)


@pytest.mark.skipif(
    not (os.environ.get("HF_TOKEN") and os.environ.get("SELFTOK_HUB_TEST_REPO")),
    reason="real Hub test: set HF_TOKEN and SELFTOK_HUB_TEST_REPO (a repo id you may write to)",
)
def test_push_to_the_real_hub(tmp_path):
    from huggingface_hub import snapshot_download

    from selftok_hf import SelftokDecoderPipeline

    decoder = tiny_selftok_pipeline("llama", seed=0).decoder
    repo_id = os.environ["SELFTOK_HUB_TEST_REPO"]
    commit = decoder.push_to_hub(repo_id, private=True)
    snapshot = Path(
        snapshot_download(repo_id, revision=commit.oid, cache_dir=tmp_path / "cache")
    )
    assert ModelCard.load(snapshot / "README.md").data.library_name == "diffusers"
    pixel_values = decoder.image_processor(
        [bundled_images()["coffee.jpg"]], return_tensors="pt"
    ).pixel_values
    assert torch.equal(
        SelftokDecoderPipeline.from_pretrained(snapshot).encode(pixel_values),
        decoder.encode(pixel_values),
    )
