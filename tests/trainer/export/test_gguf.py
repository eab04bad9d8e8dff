"""trainer.export: GGUF files made by llama.cpp's converter, reloaded with transformers and compared.

The converter recognises a BPE tokenizer by hashing how it splits a test string, so the tiny models here
carry a real tokenizer (SmolLM2's, recognised as "smollm"; the embedded Gemma 3's) on a 2-layer body.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import ROOT, build_model, run_module
from trainer import models
from trainer.defaults import GENERATION
from trainer.export.gguf import SUPPORTED, ollama_files, read_metadata
from trainer.export.gotemplate import ollama_messages, render
from trainer.prompts import get_template

CASES = [
    [{"role": "user", "content": "Apa gejala demam berdarah?"}],
    [{"role": "system", "content": "Jawab sebagai dokter."}, {"role": "user", "content": "Saya demam tiga hari."}],
    [{"role": "user", "content": "Halo"}, {"role": "assistant", "content": "Halo, ada keluhan apa?"}, {"role": "user", "content": "Pusing."}],
]


def training_prompt(template, messages, eos: str) -> str:
    """What trainer.train renders for these messages (prompts.Template.format, answers closed by EOS)."""
    out, system = "", ""
    for m in messages:
        if m["role"] == "system":
            system = m["content"]
        elif m["role"] == "user":
            out += template.format(system, m["content"]) if system else template.format(m["content"])
        else:
            out += m["content"] + eos
    return out


def modelfile_template(text: str) -> str:
    return re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)


def gguf_fields(path: Path) -> dict:
    return {k: v for k, v in read_metadata(path).items() if not k.startswith("tokenizer.ggml.merges")}


# --- without the converter ---------------------------------------------------------------------------

def test_modelfile_renders_the_training_prompt_and_carries_the_demo_defaults():
    template = get_template("alpaca-id")
    files = ollama_files(template, "<eos>", "m-q8_0.gguf", "alpaca-medis-270m")
    text = files["modelfile"]
    assert "\nFROM ./m-q8_0.gguf\n" in text
    assert 'PARAMETER stop "### Instruksi"\nPARAMETER stop "### Tanggapan"\n' in text
    assert f"PARAMETER repeat_penalty {GENERATION['repetition_penalty']:g}\n" in text
    assert f"PARAMETER num_predict {GENERATION['max_new_tokens']}\n" in text
    assert "# Bukan pengganti dokter." in text and "SYSTEM" not in text  # the disclaimer is a comment, not a prompt
    for messages in CASES:
        assert render(modelfile_template(text), ollama_messages(messages)) == training_prompt(template, messages, "<eos>")
    assert files["params"]["stop"] == ["### Instruksi", "### Tanggapan"]


@pytest.mark.parametrize("architecture, message", [
    ("InternLMForCausalLM", "InternLM v1 is not supported by llama.cpp's converter"),
    ("MistralForCausalLM", "MistralForCausalLM is not among the architectures"),
])
def test_unsupported_architecture_is_a_clear_error(tmp_path, architecture, message):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    result = run_module("trainer.export", "--model", tmp_path, "--out", tmp_path / "x.gguf", "--template", "alpaca-id")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    if architecture != "InternLMForCausalLM":
        assert all(name in result.stderr for name in SUPPORTED)
    assert not (tmp_path / "x.gguf").exists()


def test_adapter_without_its_base_is_a_clear_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"), "peft_type": "LORA"}))
    result = run_module("trainer.export", "--model", tmp_path, "--out", tmp_path / "x.gguf")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"needs its base model '{tmp_path / 'gone'}'" in result.stderr and "--base_model" in result.stderr


def test_gemma_with_another_layer_layout_is_refused(tiny_gemma, tmp_path):
    """llama.cpp has no field for Gemma 3's layer types: it assumes every sixth layer is global. The tiny
    fixture's [sliding, full] would convert, load, and answer wrongly (measured: 12 % greedy agreement)."""
    result = run_module("trainer.export", "--model", tiny_gemma, "--out", tmp_path / "g.gguf", "--template", "alpaca-id")
    assert result.returncode == 2 and "every sixth layer global" in result.stderr and "Traceback" not in result.stderr


def test_output_must_be_a_gguf_file(tmp_path, tiny_llama):
    result = run_module("trainer.export", "--model", tiny_llama, "--out", tmp_path / "x.bin", "--template", "alpaca-id")
    assert result.returncode == 2 and "must end in .gguf" in result.stderr


# --- through llama.cpp's converter --------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol_tokenizer():
    return AutoTokenizer.from_pretrained(models.prepare_embedded("smollm2-135m"))  # converted once per machine


def tiny_with(tokenizer, kind: str, path: Path) -> Path:
    model = build_model(kind, len(tokenizer))
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def export(model_dir: Path, out: Path | str, outtype: str, *extra: str) -> dict:
    result = run_module("trainer.export", "--model", model_dir, "--out", out, "--outtype", outtype, *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((ROOT / out).with_suffix(".export.json").read_text())


def check_prompts(out: Path, template, tokenizer) -> None:
    """The GGUF metadata's chat template (rendered with Jinja as transformers and llama.cpp do) and the
    Modelfile's TEMPLATE both give the training prompt, byte for byte."""
    fields = gguf_fields(out)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    jinja = env.from_string(fields["tokenizer.chat_template"])
    bos = tokenizer.bos_token if tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id else ""
    go = modelfile_template(out.with_suffix(".Modelfile").read_text())
    assert f"FROM ./{out.name}\n" in out.with_suffix(".Modelfile").read_text()
    for messages in CASES:
        want = training_prompt(template, messages, tokenizer.eos_token)
        assert jinja.render(messages=messages, add_generation_prompt=True, bos_token=tokenizer.bos_token,
                            eos_token=tokenizer.eos_token) == bos + want
        assert render(go, ollama_messages(messages)) == want


def reloaded_logits(out: Path, ids: list[int]) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.slow
# Each architecture and each output type once (not every pair: a conversion and its check cost ~35 s here, and the
# suite keeps to its 15 minutes); `make gguf` exports the shipped model in both types (BENCHMARKS.md).
@pytest.mark.parametrize("kind, outtype", [("llama", "q8_0"), ("gpt2", "f16")])
def test_tiny_models_export_and_reload(tmp_path, smol_tokenizer, kind, outtype):
    source = tiny_with(smol_tokenizer, kind, tmp_path / "model")
    out = tmp_path / "gguf" / f"{kind}-{outtype}.gguf"
    relative = os.path.relpath(out, ROOT)  # the CLI runs from the repo root, the converter from its own folder
    report = export(source, relative, outtype, "--template", "alpaca-id", "--min_agreement", "0.9", "--limit", "6")
    check = report["check"]
    assert report["architecture"] == {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[kind]
    assert check["gguf_chat_template_renders_training_prompt"] and check["modelfile_template_renders_training_prompt"]
    assert check["token_id_mismatches"] == 0 and check["records"] == 6
    check_prompts(out, get_template("alpaca-id"), smol_tokenizer)
    fields = gguf_fields(out)
    assert fields["general.architecture"] == {"llama": "llama", "gpt2": "gpt2"}[kind]
    assert fields["tokenizer.ggml.pre"] == "smollm"
    # Our own reload, independent of the export's check.
    ids = smol_tokenizer("Pasien demam tinggi dan nyeri sendi sejak tiga hari.")["input_ids"]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()(input_ids=torch.tensor([ids])).logits[0]
    got = reloaded_logits(out, ids)
    scale = float(want.abs().max())
    if outtype == "f16":
        assert check["max_abs_logit_diff"] < 0.02 * scale and float((got - want).abs().max()) < 0.02 * scale
        assert check["greedy_agreement"] >= 0.99
    else:  # 8-bit blocks: further off, but far closer than an unrelated model
        assert float((got - want).abs().max()) < 0.1 * scale
        assert check["greedy_agreement"] >= 0.9
    from gguf import GGUFReader

    matrices = [t for t in GGUFReader(out).tensors if len(t.shape) == 2]  # norms and biases stay in f32
    bytes_per_weight = sum(int(t.n_bytes) for t in matrices) / sum(int(t.n_elements) for t in matrices)
    assert report["bytes"] == out.stat().st_size
    # q8_0: blocks of 32 int8 weights and one f16 scale; GPT-2's position embeddings stay in f32
    assert (34 / 32 <= bytes_per_weight < 1.15) if outtype == "q8_0" else (2 <= bytes_per_weight < 2.1)


@pytest.mark.slow
def test_lora_adapter_is_merged_before_conversion(tmp_path, smol_tokenizer):
    from peft import LoraConfig, get_peft_model

    base = tiny_with(smol_tokenizer, "llama", tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    smol_tokenizer.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "adapter.gguf"
    report = export(tmp_path / "adapter", out, "f16", "--template", "alpaca-id", "--limit", "4")
    assert report["base"] == "base" and report["seconds"]["merge"] > 0  # the base by name: the report is uploaded
    ids = smol_tokenizer("Saya batuk berdahak.")["input_ids"]
    with torch.no_grad():
        merged = peft.merge_and_unload().eval()(input_ids=torch.tensor([ids])).logits[0]
        plain = AutoModelForCausalLM.from_pretrained(base).eval()(input_ids=torch.tensor([ids])).logits[0]
    got = reloaded_logits(out, ids)
    assert float((got - merged).abs().max()) < 0.02 * float(merged.abs().max())
    assert float((got - plain).abs().max()) > 10 * float((got - merged).abs().max())  # the adapter is in the file


@pytest.mark.slow
def test_gemma_vocabulary_matches_the_original_gguf(tmp_path):
    """Gemma's converter needs SentencePiece's tokenizer.model, which the embedded base lacks; the export
    rebuilds it from the base's GGUF, so our file's vocabulary is the original release's, piece for piece."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = AutoTokenizer.from_pretrained(models.prepare_embedded("gemma3-270m"))
    torch.manual_seed(0)
    # The release's layout in small: five sliding-window layers, then a global one (llama.cpp assumes it).
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                              layer_types=["sliding_attention"] * 5 + ["full_attention"], bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    source = tmp_path / "model"
    Gemma3ForCausalLM(config).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "gemma-f16.gguf"
    report = export(source, out, "f16", "--template", "alpaca-id", "--limit", "4")
    assert report["check"]["token_id_mismatches"] == 0 and report["check"]["greedy_agreement"] >= 0.99
    ours = gguf_fields(out)
    spec = models.EMBEDDED["gemma3-270m"]
    original = gguf_fields(models.gguf_path(spec, tmp_path))
    assert ours["tokenizer.ggml.model"] == original["tokenizer.ggml.model"] == "llama"
    for key in ("tokens", "scores", "token_type", "add_bos_token", "bos_token_id", "eos_token_id"):
        assert ours[f"tokenizer.ggml.{key}"] == original[f"tokenizer.ggml.{key}"], key
    check_prompts(out, get_template("alpaca-id"), tokenizer)
