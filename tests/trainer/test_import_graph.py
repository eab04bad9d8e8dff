"""Dependencies point one way: data_gen and records never import torch, serving never imports training,
and no module-level import cycle exists. Checked twice: by reading the source (every import, also inside
functions) and by importing in a fresh interpreter (what actually runs)."""

import subprocess
import sys

import pytest

from trainer.import_graph import ROOT, all_modules, external_imports, imports_of, reachable, top_level_cycles

TRAINING = {"trainer.train", "trainer.fsdp", "trainer.packing", "trainer.batches", "trainer.records",
            "trainer.evaluate", "trainer.alpaca_flags", "trainer.bench", "trainer.hub"}
SERVING = ("app", "trainer.serve.inference", "trainer.serve.openai_api")
# Every data_gen module, read from the package's files: a new one is fenced in without editing this list.
DATA_GEN = tuple(m for m in all_modules() if m.split(".")[0] == "data_gen")


def fresh_import(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_data_gen_imports_no_torch():
    assert len(DATA_GEN) > 10 and {"data_gen.stats", "data_gen.generate", "data_gen.__main__"} <= set(DATA_GEN)
    assert not {"torch", "transformers", "peft", "accelerate"} & external_imports(*DATA_GEN)
    code = f"import sys, {', '.join(DATA_GEN)}; print('torch' in sys.modules)"
    assert fresh_import(code) == "False"


def test_stats_reads_a_tokenizer_without_torch(tiny_llama):
    # The tokenizer of `stats --tokenizer` (a folder here; embedded names resolve to folders the same way).
    code = (f"import sys; from data_gen.stats import load_tokenizer; t = load_tokenizer({str(tiny_llama)!r}); "
            "print(len(t.encode('Saya demam.', add_special_tokens=False).ids) > 0, "
            "sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    assert fresh_import(code) == "True []"


def test_records_and_prompts_import_nothing_heavy():
    heavy = {"torch", "transformers", "peft", "accelerate"}
    assert not heavy & external_imports("trainer.records")
    assert not heavy & external_imports("trainer.prompts")
    assert not heavy & external_imports("trainer.preferences")
    code = ("import sys, trainer.records, trainer.prompts, trainer.run_summary, trainer.models; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    assert fresh_import(code) == "[]"


def test_data_gen_reaches_trainer_only_through_records():
    reached = reachable(*DATA_GEN)
    # records, the templates they render through, the preference formats, and model names (stats --tokenizer):
    # all pure Python
    assert {m for m in reached if m.startswith("trainer.")} == {"trainer.records", "trainer.prompts", "trainer.preferences",
                                                                "trainer.model_names"}


@pytest.mark.parametrize("root", SERVING)
def test_serving_reaches_no_training_module(root):
    reached = reachable(root)
    assert not {m for m in reached if any(m == t or m.startswith(t + ".") for t in TRAINING)}, sorted(reached)
    assert "trainer.serve.inference" in reached


def test_serving_in_a_fresh_interpreter_loads_no_training_module():
    code = ("import sys, app; print(sorted(m for m in sys.modules if m.startswith('trainer.') and "
            "not m.startswith(('trainer.serve', 'trainer.models', 'trainer.model_names', 'trainer.prompts', 'trainer.hw', 'trainer.defaults', "
            "'trainer.preferences'))))")
    assert fresh_import(code) == "[]"


def test_no_import_cycles():
    assert top_level_cycles() == []


def test_the_graph_reader_sees_imports_inside_functions(tmp_path):
    # evaluate imports serving at module level and the graph knows it; records' split imports datasets lazily.
    assert "trainer.serve.inference" in imports_of("trainer.evaluate")[0]
    assert "datasets" in imports_of("trainer.records")[1]
    assert set(all_modules()) >= {"app", "trainer.serve.inference", "trainer.hub.push", "data_gen.generate"}
