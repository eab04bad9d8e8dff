"""One flag vocabulary across every command (CONVENTIONS: one flag name per meaning): the model a command
reads is --model, a folder it writes --output_dir, a file it writes --out, a count of records --limit, the
answer budget --max_new_tokens. Older names stay as aliases that parse to the same value; --help shows the
vocabulary's word first. Each parser is built in this process (build_parser), nothing is run."""

from __future__ import annotations

import argparse
import importlib

import pytest
import yaml

from conftest import SAMPLE

# command -> the module whose build_parser() it runs
COMMANDS = {
    "python -m trainer.train": "trainer.train",
    "python -m trainer.evaluate": "trainer.evaluate",
    "python -m trainer.export": "trainer.export.gguf",
    "python -m trainer.export.merge": "trainer.export.merge",
    "python -m trainer.push": "trainer.hub.push",
    "python -m trainer.push_space": "trainer.hub.spaces",
    "python -m trainer.preference_set": "trainer.preference_set",
    "python -m trainer.records": "trainer.records",
    "python -m trainer.inference": "trainer.serve.inference",
    "python -m trainer.serve.redflags": "trainer.serve.redflags",
    "python -m trainer.bench": "trainer.bench.cli",
    "python -m trainer.bench.llama_cpp": "trainer.bench.llama_cpp",
    "python -m trainer.bench.footprint": "trainer.bench.footprint",
    "python -m trainer.bench.gpu_check": "trainer.bench.gpu_check",
    "python app.py": "app",
    "python -m data_gen generate": "data_gen.generate",
    "python -m data_gen translate": "data_gen.translate",
    "python -m data_gen convert": "data_gen.convert",
    "python -m data_gen stats": "data_gen.stats",
    "python -m data_gen conditions": "data_gen.conditions",
    "python -m data_gen.bench_scale": "data_gen.bench_scale",
    "python -m data_gen.bench_rouge": "data_gen.bench_rouge",
}
# (`python -m trainer.models prepare NAME` and `python -m trainer.prompts TEMPLATE TEXT` take no flags.)

# The vocabulary's word for what each former name meant. None of these is any command's primary name.
RENAMED = {
    "--model_name_or_path": "--model", "--model_dir": "--model", "--adapter": "--model",
    "--verify_records": "--limit", "--records": "--limit",
    "--new_tokens": "--max_new_tokens", "--max_tokens": "--max_new_tokens",
    "--output_json": "--out", "--output_file": "--out", "--outfile": "--out", "--output": "--out", "--out_dir": "--output_dir",
}
# Which commands read a model, write a folder, write a file, count records, budget an answer.
TAKES = {
    "--model": ["trainer.train", "trainer.evaluate", "trainer.export", "trainer.export.merge", "trainer.push",
                "trainer.preference_set", "trainer.inference", "trainer.bench", "trainer.bench.llama_cpp",
                "trainer.bench.footprint", "trainer.bench.gpu_check", "app.py", "data_gen generate", "data_gen translate",
                "data_gen conditions"],
    "--output_dir": ["trainer.train", "trainer.evaluate", "trainer.export.merge", "trainer.push", "trainer.bench",
                     "trainer.bench.gpu_check", "data_gen stats"],
    "--out": ["trainer.export", "trainer.preference_set", "trainer.bench.llama_cpp", "data_gen generate",
              "data_gen translate", "data_gen convert", "data_gen conditions"],
    "--limit": ["trainer.evaluate", "trainer.export", "trainer.preference_set", "trainer.bench.llama_cpp",
                "data_gen translate", "data_gen.bench_scale"],
    "--max_new_tokens": ["trainer.evaluate", "trainer.preference_set", "trainer.inference", "trainer.bench",
                         "trainer.bench.llama_cpp", "trainer.bench.footprint", "trainer.bench.gpu_check", "data_gen generate",
                         "data_gen translate", "data_gen conditions"],
}
# new name <- the aliases that must still parse to the same value, per command
ALIASES = {
    "trainer.train": {"--model": ["--model_name_or_path"]},
    "trainer.evaluate": {"--output_dir": ["--out"]},
    "trainer.export": {"--model": ["--model_dir"], "--out": ["--gguf"], "--limit": ["--verify_records"]},
    "trainer.export.merge": {"--model": ["--adapter"]},
    "trainer.push": {"--model": ["--model_dir"]},
    "trainer.bench": {"--max_new_tokens": ["--new_tokens"], "--output_dir": ["--out"]},
    "trainer.bench.llama_cpp": {"--limit": ["--records"], "--max_new_tokens": ["--new_tokens"], "--out": ["--output_json"]},
    "data_gen generate": {"--max_new_tokens": ["--max_tokens"]},
    "data_gen translate": {"--max_new_tokens": ["--max_tokens"]},
    "data_gen conditions": {"--max_new_tokens": ["--max_tokens"]},
    "data_gen stats": {"--output_dir": ["--out"]},
    "data_gen.bench_scale": {"--limit": ["--n"]},
}
NUMBERS = {"--limit", "--max_new_tokens"}


def name(command: str) -> str:
    return command.removeprefix("python -m ").removeprefix("python ")


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    return {name(c): importlib.import_module(m).build_parser() for c, m in COMMANDS.items()}


def required(parser: argparse.ArgumentParser, but: str) -> list[str]:
    """A value for each required flag and positional of `parser` except the `but` dest, so it parses."""
    argv = []
    for action in parser._actions:
        if action.required and action.dest != but:
            value = "1" if action.type in (int, float) else "x"
            argv += [action.option_strings[0], value] if action.option_strings else [value]
    return argv


def options(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """primary name -> all its names (the primary is the one --help shows first)."""
    return {a.option_strings[0]: a.option_strings for a in parser._actions if a.option_strings}


def test_no_command_offers_a_former_name_as_its_own(parsers):
    offending = {f"{c} {o}" for c, p in parsers.items() for o in options(p) if o in RENAMED}
    assert not offending, f"use the vocabulary's name ({RENAMED}) and keep the old one as an alias"
    # push reads GGUF files with --gguf, so export writes its one with --out: one word, one direction.
    assert options(parsers["trainer.export"])["--out"][1:] == ["--gguf"]


@pytest.mark.parametrize("flag", list(TAKES))
def test_each_meaning_has_one_word(parsers, flag):
    missing = [c for c in TAKES[flag] if flag not in options(parsers[c])]
    assert not missing, f"{flag} missing from {missing}"


@pytest.mark.parametrize("command", list(ALIASES))
def test_aliases_parse_to_the_same_value(parsers, command):
    parser = parsers[command]
    for new, olds in ALIASES[command].items():
        assert set(olds) <= set(options(parser)[new]), f"{command}: {olds} should be aliases of {new}"
        action = next(a for a in parser._actions if a.option_strings and a.option_strings[0] == new)
        value = "7" if new in NUMBERS else "somewhere"
        rest = required(parser, but=action.dest)
        expected = parser.parse_args([*rest, new, value])
        assert getattr(expected, action.dest) in ((int(value),) if new in NUMBERS else (value, [value]))
        for old in olds:
            assert parser.parse_args([*rest, old, value]) == expected, f"{command}: {old} parses differently from {new}"
        # --help names the value after the vocabulary's word too: `--limit LIMIT, --records LIMIT`
        assert f"{new} {new.strip('-').upper()}, {olds[0]} {new.strip('-').upper()}" in parser.format_help()


def test_train_reads_the_model_under_both_names_in_flags_and_presets(tmp_path, monkeypatch):
    """stanford_alpaca's --model_name_or_path, on the command line or as a preset's `model_name_or_path:`, is --model."""
    from trainer.train import parse_args

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    base = ["--data_path", str(SAMPLE), "--output_dir", str(tmp_path)]
    assert parse_args(["--model_name_or_path", "a", *base])[0].model == "a"
    assert parse_args(["--model=b", *base])[0].model == "b"
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(yaml.safe_dump({"model_name_or_path": "from-old-preset", "template": "alpaca-id"}))
    new.write_text(yaml.safe_dump({"model": "from-new-preset", "template": "alpaca-id"}))
    assert parse_args(["--config", str(old), *base])[0].model == "from-old-preset"
    assert parse_args(["--config", str(new), *base])[0].model == "from-new-preset"
    assert parse_args(["--config", str(old), "--model", "flag-wins", *base])[0].model == "flag-wins"
    assert parse_args(["--config", str(new), "--model_name_or_path", "flag-wins", *base])[0].model == "flag-wins"
