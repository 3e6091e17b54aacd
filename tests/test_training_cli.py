"""The trainer CLIs on transformers' HfArgumentParser: the same flags, defaults and parsed values as the argparse
code they replaced (recorded in fixtures/trainer_cli_flags.json), help from the fields' metadata, and one JSON or
YAML config file instead of options."""

import argparse
import contextlib
import dataclasses
import importlib
import json
from pathlib import Path

import pytest

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "trainer_cli_flags.json").read_text())

CLIS = {
    "selftok-train-tokenizer": ("selftok_hf.training.tokenizer", "TokenizerTrainingArguments"),
    "selftok-train-renderer": ("selftok_hf.training.renderer", "RendererTrainingArguments"),
    "selftok-train-vae": ("selftok_hf.training.autoencoder", "AutoencoderTrainingArguments"),
    "selftok-train-lm": ("selftok_hf.training.sft", "SFTArguments"),
    "selftok-rl": ("selftok_hf.rl.trainer", "GRPOArguments"),
}
#: Options the CLIs gained with the DataLoader (issue 14, item 10), besides the underscore spellings of every option.
ADDED = {
    "selftok-train-lm": {"--dataloader-num-workers", "--streaming", "--no-streaming"},
    "selftok-rl": {"--dataloader-num-workers", "--streaming", "--no-streaming"},
    "selftok-train-renderer": {"--pixel-loss", "--pixel-loss-weight"},
}
#: Fields renamed so that each quantity has one name (issue 17): their recorded options set the new field, warning.
RENAMED = {
    "selftok-rl": {"decoder_steps": "num_inference_steps"},
    "selftok-train-tokenizer": {"eval_decoder_steps": "eval_num_inference_steps"},
}


class _Parser(Exception):
    pass


def cli_parser(cli: str) -> argparse.ArgumentParser:
    """The parser the CLI's ``main`` builds: caught at its first ``parse_known_args``, which argparse's ``parse_args``
    and HfArgumentParser's ``parse_args_into_dataclasses`` both call (how the fixture was recorded too)."""

    def catch(self, *args, **kwargs):
        raise _Parser(self)

    module = importlib.import_module(CLIS[cli][0])
    original = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = catch
    try:
        module.main([])
    except _Parser as caught:
        return caught.args[0]
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise AssertionError(f"{cli} parsed nothing")


def typed(value):
    return [value, type(value).__name__]


@pytest.mark.parametrize("cli", list(CLIS))
def test_flags_defaults_and_parsed_values_are_unchanged(cli):
    before, renamed = FIXTURE[cli], RENAMED.get(cli, {})
    parser = cli_parser(cli)
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    options = {s: a.dest for a in actions for s in a.option_strings}
    # Every old spelling still exists and sets the same field (its new name, for a renamed one).
    assert {s: options.get(s) for s in before["options"]} == {s: renamed.get(dest, dest) for s, dest in before["options"].items()}
    # What is new: the underscore spelling of every option (HfArgumentParser), the DataLoader's options and the new
    # names of renamed fields.
    new_names = {"--" + new.replace("_", "-") for new in renamed.values()}
    added = {s for s in options if s not in before["options"]}
    dashed = {"--" + s[2:].replace("_", "-") for s in added}
    assert dashed <= set(before["options"]) | ADDED.get(cli, set()) | new_names
    assert {s for s in added if "_" not in s} == ADDED.get(cli, set()) | new_names
    assert sorted({a.dest for a in actions if a.required}) == sorted(before["required"])

    required = [token for a in actions if a.required for token in (a.option_strings[0], "req")]
    namespace, unknown = parser.parse_known_args(required)
    assert not unknown
    defaults = {dest: typed(getattr(namespace, renamed.get(dest, dest))) for dest in before["defaults"]}
    assert defaults == {**before["defaults"], **{d: ["req", "str"] for d in before["required"]}}
    for sample in before["samples"]:
        dest = renamed.get(sample["dest"], sample["dest"])
        for argv in (sample["argv"], ["--" + token[2:].replace("-", "_") if token.startswith("--") else token for token in sample["argv"]]):
            with pytest.warns(FutureWarning, match="renamed") if dest != sample["dest"] else contextlib.nullcontext():
                namespace, unknown = parser.parse_known_args(argv)
            assert not unknown and typed(getattr(namespace, dest)) == sample["value"], (cli, argv)


def test_boolean_spellings():
    parser = cli_parser("selftok-train-lm")
    base = ["--pipeline", "p", "--dataset", "d"]
    for argv, lora, chat in [
        ([], False, True),
        (["--lora", "--chat-format"], True, True),
        (["--lora", "true", "--chat_format", "false"], True, False),
        (["--lora", "yes", "--no-chat-format"], True, False),
        (["--lora", "--no-lora", "--no_chat_format"], False, False),
        (["--lora", "--no_lora", "--chat-format", "1"], False, True),
    ]:
        namespace = parser.parse_args(base + argv)
        assert (namespace.lora, namespace.chat_format) == (lora, chat), argv
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--lora", "maybe"])


@pytest.mark.parametrize("cli", list(CLIS))
def test_every_field_has_help_in_its_metadata(cli):
    from selftok_hf.training.loop import ExportArguments

    module, name = CLIS[cli]
    cls = getattr(importlib.import_module(module), name)
    for klass in (cls, ExportArguments):
        missing = [f.name for f in dataclasses.fields(klass) if not f.metadata.get("help")]
        assert not missing, f"give these fields of {klass.__name__} field(metadata={{'help': ...}}): {missing}"
        assert all("`" not in f.metadata["help"] and "%" not in f.metadata["help"] for f in dataclasses.fields(klass))
    help_text = cli_parser(cli).format_help()
    assert all(f.metadata["help"].split()[0] in help_text for f in dataclasses.fields(cls))
    assert "config.json" in help_text and "config.yaml" in help_text


def _values(cli, tmp_path):
    """Non-default options of every kind (int, float, str, bool both ways, Optional, --resume-from latest)."""
    (tmp_path / "pipe").mkdir(exist_ok=True)
    values = {"output_dir": str(tmp_path / "run"), "max_steps": 7, "seed": 3, "ema_decay": 0.5, "resume_from": "latest", "gradient_checkpointing": True, "report_to": None}
    values.update({
        "selftok-train-tokenizer": {"max_train_images": 5, "cache_latents": True, "encoder_lr": 2.5e-5, "tokenizer_config": "release", "export_dir": str(tmp_path / "out")},
        "selftok-train-renderer": {"pipeline": str(tmp_path / "pipe"), "max_image_side": 64, "loss_switch_step": 4},
        "selftok-train-vae": {"vae_config": "tiny", "kl_weight": 0.001, "image_size": 16},
        "selftok-train-lm": {"pipeline": str(tmp_path / "pipe"), "dataset": "pairs", "chat_format": False, "lora": True, "lora_rank": 4, "dataloader_num_workers": 2, "streaming": True},
        "selftok-rl": {"pipeline": str(tmp_path / "pipe"), "use_renderer": False, "group_size": 3, "held_out_fraction": 0.25},
    }[cli])
    return values


def _argv(values):
    argv = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def parsed_arguments(cli, argv, monkeypatch):
    """What the CLI's ``main`` hands to training: the arguments dataclass (and the export folder, for the trainers
    that take one)."""
    module = importlib.import_module(CLIS[cli][0])

    class Parsed(Exception):
        pass

    def capture(args, export_dir=None):
        raise Parsed(args, export_dir)

    target = {"selftok-train-tokenizer": "train_tokenizer", "selftok-train-renderer": "train_renderer", "selftok-train-vae": "train_autoencoder",
              "selftok-train-lm": "SelftokSFTTrainer", "selftok-rl": "SelftokGRPOTrainer"}[cli]  # fmt: skip
    monkeypatch.setattr(module, target, capture)
    with pytest.raises(Parsed) as parsed:
        module.main(argv)
    return parsed.value.args


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize("cli", list(CLIS))
def test_a_config_file_gives_what_the_same_options_give(cli, suffix, tmp_path, monkeypatch):
    import yaml

    values = _values(cli, tmp_path)
    from_options = parsed_arguments(cli, _argv(values), monkeypatch)
    config = tmp_path / f"config{suffix}"
    config.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values))
    from_file = parsed_arguments(cli, [str(config)], monkeypatch)
    assert from_file == from_options
    args = from_file[0]
    for name, value in values.items():
        if name != "export_dir":
            assert typed(getattr(args, name)) == typed(value), name
    assert from_file[1] == values.get("export_dir")
    assert isinstance(args.ema_decay, float) and args.resume_from == "latest"


def test_config_file_errors_exit_2_naming_the_file_and_key(tmp_path, capsys):
    from selftok_hf.training.sft import main

    def error(text, suffix=".yaml"):
        path = tmp_path / f"c{suffix}"
        path.write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            main([str(path)])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    (tmp_path / "pipe").mkdir()
    ok = f"pipeline: {tmp_path / 'pipe'}\ndataset: pairs\n"
    assert "learning_rate must be float, got '1e-4' (YAML reads 1e-4 as text: write 1.0e-4)" in error(ok + "learning_rate: 1e-4\n")
    assert "Some keys are not used by the HfArgumentParser: ['max_stepz']" in error(ok + "max_stepz: 3\n")
    assert "max_steps must be int, got '3'" in error(ok + "max_steps: '3'\n")
    assert "c.yaml: dataset is required" in error(f"pipeline: {tmp_path / 'pipe'}\n")
    assert "max_steps must be >= 1" in error(ok + "max_steps: 0\n")
    assert "task mix items" in error(ok + "task_mix: t2i=1,cats=2\n")
    assert "--pipeline: no such file or folder" in error(f"pipeline: {tmp_path / 'nope'}\ndataset: pairs\n")
    assert "expected an object" in error("[1, 2]\n")
    assert "c.json" in error("{", suffix=".json")
    assert "--resume-from" in error(ok + f"output_dir: {tmp_path}\nresume_from: {tmp_path / 'no-checkpoint'}\n")


def test_unknown_options_exit_2(capsys):
    from selftok_hf.training.tokenizer import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--max-steps", "3", "--frobnicate"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --frobnicate" in capsys.readouterr().err
