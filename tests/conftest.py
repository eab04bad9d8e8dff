"""Offline fixtures: a BPE tokenizer trained on our sample data and 2-layer Llama / GPT-2 / Gemma 3 models.

Both are built from scratch in about a second, so tests never touch the Hub.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from trainer import ROOT

SAMPLE = ROOT / "data" / "sample.jsonl"
REAL_DATA = ROOT.parent / "shared" / "data" / "GenMedGPT-5k-id.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(asgi_app, what: str = "server"):
    """Serve `asgi_app` with uvicorn on a free loopback port, in a thread: (http://127.0.0.1:PORT, server).
    Set `server.should_exit = True` to stop it."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, f"{what} did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def sample_records() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_tokenizer(add_bos: bool):
    """Byte-level BPE trained on the sample data (+ the prompt templates, so markers are cheap)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from trainer.prompts import TEMPLATES

    lines = [r[k] for r in sample_records() for k in ("instruction", "input", "output") if r[k]]
    lines += [t.prompt_input for t in TEMPLATES.values()] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    tok.train_from_iterator(
        lines, trainers.BpeTrainer(vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>" if add_bos else None
    )


def build_model(kind: str, vocab_size: int, seed: int = 0):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "gemma":
        # Gemma 3's shape in small: one sliding-window layer (window 8, shorter than every example) and
        # one global layer, one KV head, a tied head.
        config = Gemma3TextConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
            bos_token_id=1, eos_token_id=2, pad_token_id=3,
        )
        return Gemma3ForCausalLM(config)
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            bos_token_id=1, eos_token_id=2, pad_token_id=3,
        )
        return LlamaForCausalLM(config)
    config = GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=1024, bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(config)


def save_tiny(path: Path, kind: str) -> Path:
    """Llama and Gemma get a BOS-adding tokenizer with its own pad token; GPT-2 one without BOS or pad, like GPT-2."""
    tokenizer = build_tokenizer(add_bos=kind != "gpt2")
    model = build_model(kind, len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-gemma"), "gemma")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def llama_tokenizer():
    return build_tokenizer(add_bos=True)


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    return build_tokenizer(add_bos=False)


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m module args` from the repo root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def torchrun_train(nproc: int, model, out: Path, *args, timeout: int = 600) -> tuple[subprocess.CompletedProcess, dict | None]:
    """`torchrun --standalone --nproc_per_node=N -m trainer.train --model M --output_dir OUT args` from the repo root:
    (the process, its train_summary.json or None). FSDP and DDP tests, on CPUs (gloo) and GPUs (nccl)."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "trainer.train", "--model", str(model), "--output_dir", str(out), *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    summary = json.loads((out / "train_summary.json").read_text()) if (out / "train_summary.json").exists() else None
    return result, summary


# Concurrent readers of a BatchedChat (tests of batching and of int8 serving).
def wait_for(predicate, seconds=60):
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def run_together(batched, threads, seconds=120):
    """Start the readers' threads; the worker starts once all of them wait, so they form one batch."""
    for t in threads:
        t.start()
    wait_for(lambda: len(batched.waiting) == len(threads))
    batched.start()
    for t in threads:
        t.join(timeout=seconds)


def ask_together(batched, questions, **options):
    """Each question from its own thread, answered in one batch."""
    from trainer.serve.inference import GenerationStats  # torch: imported by the tests that ask

    answers, stats = [None] * len(questions), [GenerationStats() for _ in questions]

    def ask(i):
        texts = list(batched.stream(questions[i], stats=stats[i], **options))
        answers[i] = texts[-1] if texts else ""

    run_together(batched, [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))])
    return answers, stats


# ---- `transformers serve` of a tiny model: the real OpenAI-compatible engine that RemoteChat (app.py --backend,
# trainer.evaluate --backend) is tested against. Session-scoped: it starts in ~25 s, once for every test that uses it.

SERVE = Path(sys.executable).with_name("transformers")
SERVER_START_TIMEOUT = 300  # seconds; it starts in ~25 s on the 2-core test machine, most of it imports
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited with code {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"transformers serve not ready after {timeout} s at {url}:\n{log.read_text()[-4000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="session")
def model_folder(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama with the Alpaca chat template, as `trainer.push` bundles it with our models."""
    from transformers import AutoTokenizer

    from trainer.prompts import chat_template_for, get_template

    folder = tmp_path_factory.mktemp("remote") / "tiny-alpaca"
    shutil.copytree(tiny_llama, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = chat_template_for(tokenizer, get_template("alpaca-id"))
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def backend(model_folder, tmp_path_factory):
    """`transformers serve MODEL_FOLDER` on a free port: its /v1 URL. Stopped at the end of the session."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [str(SERVE), "serve", str(model_folder), "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", "--dtype", "float32"]
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE})
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, log, SERVER_START_TIMEOUT)
        print(f"\ntransformers serve ready in {time.monotonic() - started:.1f} s: {' '.join(command)}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
