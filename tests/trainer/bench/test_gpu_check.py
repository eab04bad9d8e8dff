"""`make gpu-check` on a machine without a GPU (one line, nothing run), the CUDA build it picks for a driver, the GPU
tests collected and skipped with their reason, and its run, page and report stages end to end on the CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import SAMPLE, run_module
from gpu.conftest import SKIP_REASON
from trainer import ROOT
from trainer.bench.gpu_check import GpuCheckError, cuda_build, gpu_tests, nvidia_smi


def test_make_gpu_check_without_a_gpu_says_so_in_one_line():
    if nvidia_smi() is not None:
        pytest.skip("an NVIDIA GPU is here: `make gpu-check` would run the whole check")
    # As a user types it: not as a sub-make of `make test`, which would add its "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    result = subprocess.run(["make", "gpu-check"], cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == "gpu-check: no NVIDIA GPU on this machine (nvidia-smi lists none); nothing to check.\n"


def test_the_module_imports_no_torch_before_it_installs_one():
    code = "import sys, trainer.bench.gpu_check; print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr[-2000:]


def test_the_cuda_build_follows_the_driver_and_the_gpus():
    assert cuda_build((13, 0), [(8, 0), (9, 0)])[0] == "cu130"
    assert cuda_build((13, 2), [(12, 0)])[0] == "cu130"  # Blackwell: CUDA 13's PTX
    assert cuda_build((13, 0), [(7, 0)])[0] == "cu126"  # V100: CUDA 13 builds have no Volta kernels
    build, why = cuda_build((12, 4), [(8, 6)])
    assert build == "cu126" and "minor-version compatibility" in why  # a CUDA 12.4 driver runs CUDA 12.6
    with pytest.raises(GpuCheckError, match=r"driver CUDA 12\.8, compute capability 12\.0\).*driver >= 580\.65\.06"):
        cuda_build((12, 8), [(12, 0)])  # Blackwell needs CUDA 13, which this driver cannot run
    with pytest.raises(GpuCheckError, match="Update the NVIDIA driver"):
        cuda_build((11, 8), [(8, 0)])


@pytest.mark.slow  # ~5 s: pytest collects tests/gpu in a subprocess
def test_the_gpu_tests_are_collected_and_skipped_with_their_reason(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the GPU tests would run")
    monkeypatch.delenv("ALPACA_MEDIS_GPU_TESTS_ON_CPU", raising=False)
    with pytest.raises(GpuCheckError, match="0 failed, 0 errors, 0 passed") as refused:
        gpu_tests(tmp_path)  # make gpu-check's test stage: with nothing passed it fails
    counts = refused.value.result
    assert counts["skipped"] >= 20 and counts["skip_reasons"] == [SKIP_REASON]


@pytest.mark.slow  # ~20 s: a 2-step run of the preset and app.py serving it, on the tiny Llama
def test_the_run_the_page_and_the_report_on_the_cpu(tiny_llama, tmp_path):
    if nvidia_smi() is not None:
        pytest.skip("an NVIDIA GPU is here: its install stage would install torch for it (make gpu-check runs these stages)")
    out = tmp_path / "gpu-check"
    # As make gpu-check runs it: the install stage alone first (here it has no GPU to install for), then the rest.
    installed = run_module("trainer.bench.gpu_check", "--install_only", "--allow_cpu", "--output_dir", out)
    assert installed.returncode == 0 and json.loads((out / "install.json").read_text())["stage"]["note"] == "skipped (no GPU)"
    result = run_module("trainer.bench.gpu_check", "--skip_install", "--skip_tests", "--allow_cpu", "--model", tiny_llama,
                        "--data_path", SAMPLE, "--steps", "2", "--max_new_tokens", "16", "--output_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and [name for name, s in report["stages"].items() if s["ok"]] == ["install", "device", "tests", "run", "page"]
    assert report["stages"]["install"]["note"] == "skipped (no GPU)" and not (out / "install.json").exists()
    assert report["stages"]["tests"]["note"] == "skipped (--skip_tests)" and report["device"]["count"] == 0
    assert f"gpu-check: 0 GPU(s); driver None (CUDA None); torch {report['device']['torch']} (CUDA None" in result.stderr
    run, page = report["run"], report["page"]
    assert run["steps"] == 2 and run["model"] == str(tiny_llama) and run["method"] == "lora (r=16, alpha=32)"  # the preset's LoRA
    assert run["device"] == "cpu" and run["batching"] == "packed" and run["attention"] == "packed_sdpa"
    assert run["learned_tokens_per_second"] > 0 and run["seconds_per_step"] > 0 and run["peak_rss_mb"] > 0
    assert run["cuda_peak_allocated_mb"] is None and run["eval_loss_initial"] > 0 and run["eval_loss_final"] > 0
    assert page["model"] == run["output_dir"] and page["device"] == "cpu" and page["settings"].startswith("cpu, ")
    assert isinstance(page["answer"], str) and page["answer"] and page["seconds"] > 0 and page["start_seconds"] > 0
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# gpu-check: passed\n") and "| learned tokens per second |" in markdown
    assert f"`/ask` answered in {page['seconds']} s" in markdown and "| run | yes |" in markdown
    assert (out / "train.log").read_text().count("packing: one row per batch") == 1 and (out / "page.log").exists()
