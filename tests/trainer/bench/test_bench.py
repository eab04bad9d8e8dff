import json

import pytest
import torch

from conftest import SAMPLE, build_model, run_module
from trainer.bench import cli
from trainer.bench import inference as bench_inference
from trainer.bench import report as bench_report
from trainer.import_graph import ROOT

TINY = ["--prompt_tokens", "80", "--max_new_tokens", "6", "--repeats", "1", "--no-compile",
        "--matmul_sizes", "64", "128", "--bandwidth_mb", "16", "--dedup_n", "100"]


def test_every_part_on_tiny_fixtures(tiny_llama, tmp_path):
    out = tmp_path / "bench"
    result = run_module("trainer.bench", "--part", "machine", "inference", "data", "--model", tiny_llama,
                        "--template", "alpaca-id", "--data_path", SAMPLE, "--output_dir", out, *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    machine, inference, data = (report["parts"][name] for name in ("machine", "inference", "data"))

    assert machine["matmul_fp32_gflops"] > 0 and machine["matmul_bf16_gflops"] > 0
    # one bandwidth measurement per process: the bound uses the number the machine part reports
    assert inference["memory_bandwidth_gbs"] == machine["memory_bandwidth_gbs"] > 0

    assert 75 <= inference["prompt_tokens"] <= 85 and inference["new_tokens"] == 6
    variants = {v["variant"]: v for v in inference["variants"]}
    assert [v["in_app_path"] for v in variants.values()].count(True) == 1
    assert any(name.startswith("HF generate, float32") for name in variants) and "stream + static KV cache" in variants
    for v in variants.values():
        assert "error" not in v, v
        assert v["ttft_seconds"] > 0 and v["decode_tokens_per_s"] > 0 and v["warmup_seconds"] > 0
        assert 1 <= v["new_tokens"] <= 6  # the stream path ends early only at a marker
        assert v["bound_tokens_per_s"] == pytest.approx(inference["memory_bandwidth_gbs"] * 1e9 / v["weight_bytes_per_token"])
    assert all(v["new_tokens"] == 6 for name, v in variants.items() if not name.startswith(("ChatModel", "stream")))
    # every engine: the page's own (quantize auto), and unquantized, int8 head and every layer int8 beside it
    engines = [v for v in variants.values() if v["peak_rss_mb"] is not None]
    assert len(engines) == 4 and all(100 < v["peak_rss_mb"] < 4000 for v in engines)
    int8 = next(v for name, v in variants.items() if "int8" in name and ("every layer" in name or "int8 weights" in name))
    fp32 = variants["stream, unquantized float32 (where bf16 is slow)"] if "stream, unquantized float32 (where bf16 is slow)" in variants \
        else variants["stream, unquantized float32"]
    assert int8["weight_bytes_per_token"] < fp32["weight_bytes_per_token"] / 3  # a byte per weight, against four
    parts = [p["part"] for p in inference["first_token"]]
    assert parts[0].startswith("chat template") and parts[-1].startswith("first text, BatchedChat.stream")
    assert all(p["ms"] > 0 for p in inference["first_token"])

    assert data["records"] == 48 and data["tokens"] > 48 and data["tokenize_records_per_s"] > 0
    assert data["dedup"]["n"] == 100 and data["dedup_texts_per_s"] > 0

    md = (out / "bench.md").read_text()
    assert report["command"] in md and "Machine: " in md and f"torch {report['machine']['torch']}" in md
    for heading in ("## machine", "## inference", "## data"):
        assert heading in md
    assert "| variant | TTFT (s) | decode tok/s | weight MB/token | bound tok/s | % of bound | peak RSS (MB) |" in md
    assert "Where the first token's time goes" in md and "| part | ms |" in md
    assert "| matmul fp32" in md and "| tokenize_records" in md and "| RougeDedup.add" in md
    assert "TTFT < 0.5 s" in md and result.stdout.strip() == md.strip()


def test_a_missing_data_file_is_named_with_the_fix(tmp_path, capsys):
    missing = tmp_path / "nothing.json"
    assert cli.main(["--part", "data", "--data_path", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--data_path" in err and err.count("\n") == 1


def test_weight_bytes_count_int8_layers_at_a_byte_per_weight():
    from trainer.serve.quantize import quantize_int8

    gemma = build_model("gemma", vocab_size=600)  # tied: after quantizing, the head is an int8 copy; the lookup reads a row
    linear = sum(m.weight.numel() for m in gemma.modules() if isinstance(m, torch.nn.Linear) and m is not gemma.lm_head)
    others = sum(p.numel() for p in gemma.parameters()) - linear - gemma.lm_head.weight.numel()
    heads = gemma.lm_head.weight.numel()
    outputs = sum(m.weight.shape[0] for m in gemma.modules() if isinstance(m, torch.nn.Linear))
    quantize_int8(gemma)
    assert bench_inference.weight_bytes_per_token(gemma) == linear + heads + 4 * outputs + 4 * others  # others: the norms


def test_weight_bytes_count_a_tied_embedding_once_and_an_untied_one_not_at_all():
    gpt2 = build_model("gpt2", vocab_size=600)  # lm_head is the embedding matrix
    assert bench_inference.weight_bytes_per_token(gpt2) == 4 * sum(p.numel() for p in gpt2.parameters())
    llama = build_model("llama", vocab_size=600)  # untied: a token reads one row of the embedding
    embedding = llama.get_input_embeddings().weight
    assert bench_inference.weight_bytes_per_token(llama) == 4 * (sum(p.numel() for p in llama.parameters()) - embedding.numel())


def test_ttft_and_decode_speed_come_from_a_one_token_and_a_long_run(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench_inference.time, "perf_counter", lambda: clock[0])

    def run(n):  # 0.5 s to the first token, then 10 tokens/s
        clock[0] += 0.5 + 0.1 * (n - 1)
        return n

    result = bench_inference.time_generation(run, new_tokens=21, repeats=2)
    assert result == pytest.approx({"warmup_seconds": 2.5, "ttft_seconds": 0.5, "new_tokens": 21, "decode_tokens_per_s": 10.0})


def test_markdown_tables_align_numbers_right_and_format_them():
    table = bench_report.markdown_table([{"name": "a", "seconds": 0.01234, "n": 5000, "kept": True, "gap": None},
                                        {"name": "b", "seconds": 123.4, "n": 7, "kept": False, "gap": None}])
    assert table.splitlines() == [
        "| name | seconds | n | kept | gap |",
        "|---|---:|---:|---|---|",
        "| a | 0.012 | 5,000 | yes |  |",
        "| b | 123 | 7 | no |  |",
    ]


def test_parts_are_named_functions_of_the_arguments():
    assert {"machine", "inference", "data"} <= set(cli.PARTS) and all(callable(f) for f in cli.PARTS.values())
    assert cli.parse_args([]).part == list(cli.PARTS)
    assert cli.parse_args([]).data_path.endswith("shared/data/GenMedGPT-5k-id.json")
    assert not cli.parse_args([]).data_path.startswith(str(ROOT) + "/")  # beside the repository, not in it


def test_out_is_an_alias_of_output_dir():
    assert cli.parse_args(["--out", "some/dir"]).output_dir == "some/dir" == cli.parse_args(["--output_dir", "some/dir"]).output_dir
    assert cli.parse_args([]).output_dir is None
