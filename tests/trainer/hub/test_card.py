"""trainer/hub/card.py: the model card from a typed RunSummary, and the naming rules push and the card share.
No Hub, no training: the end-to-end cards are checked in test_push.py."""

from __future__ import annotations

import subprocess
import sys

from huggingface_hub import ModelCard

from conftest import ROOT
from trainer.hub.card import CardInfo, default_datasets, default_license, hub_model_id, model_card, training_table
from trainer.import_graph import reachable
from trainer.run_summary import ExampleCounts, RecordCounts, RunSummary


def summary(**changes) -> RunSummary:
    values = dict(
        model="google/gemma-3-270m", template="alpaca-id", method="lora (r=16, alpha=32)",
        data_path="/data/GenMedGPT-5k-id.json",
        records=RecordCounts(valid=5000, train=4500, val=500, val_evaluated=100, train_used=4500, train_empty_input=2250),
        examples={"train": ExampleCounts(examples=4500, truncated=3, dropped=1, learned_tokens=235172, tokens=600551),
                  "val": ExampleCounts(examples=100, learned_tokens=5309, tokens=15113)},
        global_step=563, epochs=1.0, train_loss_first=2.885521125793457, train_loss_final=1.6733642578125,
        eval_loss_initial=3.45839786529541, eval_loss_final=1.591493844985962, learned_tokens_trained=235172,
        tokens_trained=600551, wall_time_s=3884.18, learned_tokens_per_second=60.5, device="cpu",
        transformers_version="5.0.0", torch_version="2.9.0",
    )
    return RunSummary(**{**values, **changes})


def test_naming_rules():
    from trainer.models import DEFAULT_MODEL

    assert hub_model_id(DEFAULT_MODEL) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_model_id("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert hub_model_id("/home/me/models/base") is None and hub_model_id("./out") is None and hub_model_id(None) is None
    assert default_license("meta-llama/Llama-2-7b-hf") == "llama2"
    assert default_license("HuggingFaceTB/SmolLM2-135M-Instruct") == "apache-2.0"
    assert default_license("internlm/internlm-7b") == "other"
    assert default_datasets(RunSummary(data_path="../shared/data/GenMedGPT-5k-id.json")) == ["GenMedGPT-5k-id"]
    assert default_datasets(RunSummary(data_path="someone/medical-id")) == ["someone/medical-id"]
    assert default_datasets(RunSummary()) == [] and default_datasets(None) == []


def test_training_table_reads_the_typed_summary():
    rows = training_table(summary(), "[google/gemma-3-270m](https://huggingface.co/google/gemma-3-270m)").splitlines()
    assert rows[:2] == ["| | |", "|---|---|"]
    assert rows[2:] == [
        "| base model | [google/gemma-3-270m](https://huggingface.co/google/gemma-3-270m) |",
        "| method | lora (r=16, alpha=32) |",
        "| prompt template | `alpaca-id` |",
        "| data | GenMedGPT-5k-id.json: 5,000 records → 4,500 train / 500 validation |",  # the file name, not its path
        "| prompt shapes | 2,250 of 4,500 training records in the demo's empty-input shape (the patient's words as "
        "the instruction), the rest as given |",
        "| steps | 563 (1 epochs) |",
        "| examples | 4,500 train (3 truncated, 1 dropped), 100 evaluated |",
        "| eval loss | 3.4584 → 1.5915 (before → after training) |",
        "| train loss | 2.8855 → 1.6734 (first → last step) |",
        "| learned tokens | 235,172 trained on (of 600,551 tokens; the rest is prompt and padding) |",
        "| wall time | 64 min 44 s (60.5 learned tokens/s), evaluations included |",
        "| hardware | 1 × cpu (single), fp32 |",
        "| software | transformers 5.0.0, torch 2.9.0 |",
    ]


def test_training_table_shows_what_a_summary_lacks_as_a_dash():
    table = training_table(summary(records=RecordCounts(), examples={}, template=None, data_path=None, device=None,
                                   eval_loss_initial=None, torch_version=None), "a local model")
    assert "| data | – |" in table and "prompt shapes" not in table
    assert "| prompt template | – |" in table
    assert "| examples | – train (– truncated, – dropped), – evaluated |" in table
    assert "| eval loss | – → 1.5915 (before → after training) |" in table
    assert "| hardware | 1 × – (single), fp32 |" in table and "torch – |" in table


def test_the_shipped_summary_renders():
    shipped = RunSummary.read(ROOT / "models" / "alpaca-medis-270m")
    if shipped is None:
        import pytest

        pytest.skip("models/alpaca-medis-270m has no train_summary.json")
    table = training_table(shipped, "x")
    assert f"| steps | {shipped.global_step:,} (" in table
    assert f"{shipped.records.valid:,} records" in table and "| – |" not in table


def card(**changes) -> str:
    values = dict(repo_id="alpaca-medis/alpaca-medis-270m", kind="adapter", base_model="google/gemma-3-270m",
                  datasets=["GenMedGPT-5k-id"], license="gemma", summary=summary(), has_loss_plot=True,
                  embedded_base="gemma3-270m")
    return model_card(CardInfo(**{**values, **changes}))


def test_card_from_a_typed_summary():
    text = card()
    meta = ModelCard(text).data.to_dict()
    assert meta["base_model"] == "google/gemma-3-270m" and meta["datasets"] == ["GenMedGPT-5k-id"]
    assert meta["license"] == "gemma" and meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "with the `alpaca-id` prompt template." in text and "not a substitute for a doctor" in text
    assert "## Base model and license" in text and "Gemma Terms of Use" in text
    assert "## Training\n\nFrom `train_summary.json`:\n\n| | |" in text and "![loss](loss.png)" in text
    assert "## Evaluation" not in text
    assert text.index("## Usage") < text.index("## Base model") < text.index("## Training")


def test_card_without_a_summary_has_no_training_section():
    text = card(summary=None, kind="full", base_model=None, datasets=[], license="other", embedded_base=None,
                has_loss_plot=False, eval_data={"exact_match": 0.5}, has_eval_md=True)
    assert "## Training" not in text and "| prompt template |" not in text and "prompt template." not in text
    assert "is a fine-tune of a local model that answers" in text and "trained on Alpaca-format medical conversations" in text
    assert "## Evaluation\n\nFrom `eval.json`:\n\n| metric | value |\n|---|---|\n| exact_match | 0.5 |" in text
    assert "Details: [eval.md](eval.md)" in text


def test_card_does_not_import_push():
    """push imports card at module level; the other way round would be a cycle."""
    assert "trainer.hub.push" not in reachable("trainer.hub.card")
    code = "import sys, trainer.hub.card; print('trainer.hub.push' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]
