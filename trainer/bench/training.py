"""Training throughput: stanford_alpaca's padded batches vs --group_by_length vs --packing.

    python -m trainer.bench --part training

Every configuration is a real `python -m trainer.train` run (HF Trainer, same model, data, seed,
batch size and number of optimizer steps; padded and packed runs see the very same examples), read
back from its train_summary.json. The first step is warm-up and left out of the rates.

Model FLOPs of a step (the same for every configuration of the same examples, so MFU ratios are
speed ratios): 6 x (decoder parameters) per real token, 6 x (vocabulary projection) per learned
token (only those need logits), and 6 x layers x hidden x length^2 per example for causal attention.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import torch

from trainer.bench.machine import matmul_peak_gflops
from trainer.bench.report import log
from trainer.run_summary import RunSummary
from trainer.hw import on_torch_thread

# name, flags (beyond the common ones), what it is
CONFIGS = [
    ("padded", ["--learned_logits_only", "False"], "stanford_alpaca: pad to the batch's longest, logits everywhere"),
    ("group_by_length", ["--group_by_length", "--learned_logits_only", "False"], "padded, batches of similar lengths"),
    ("packing", ["--packing", "--learned_logits_only", "False"], "one row per batch, no padding, logits everywhere"),
    ("packing + learned logits", ["--packing"], "what `--packing` ships: logits only where labels are learned"),
]
BF16_CONFIG = ("packing + learned logits, bf16", ["--packing", "--bf16", "True"], "the same under bf16 autocast")


class BenchError(Exception):
    """A benchmark run that failed; the message holds the end of its log."""


def model_shape(model_name: str) -> dict:
    """Parameter counts that set the FLOPs: decoder body (no embeddings), vocabulary projection, layers, hidden."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer.models import resolve

    config = AutoConfig.from_pretrained(resolve(model_name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    positions = sum(m.weight.numel() for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Embedding) and m is not model.get_input_embeddings())
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    body = total - embed - positions - (0 if tied else head)
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    return {"params": total, "body_params": body, "head_params": head, "layers": layers, "hidden": hidden}


def step_flops(step: dict, shape: dict) -> float:
    return 6 * (shape["body_params"] * step["tokens"] + shape["head_params"] * step["learned"]
                + shape["layers"] * shape["hidden"] * step["sum_sq_lengths"])


def epoch_padding(lengths: list[int], batch_size: int, seed: int) -> dict:
    """Useful (non-padding) share of an epoch's padded batches: random order (stanford_alpaca) and
    the Trainer's length-grouped order. Packing's is 1 by construction."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    def useful(order):
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        return sum(lengths[i] for i in order) / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    generator = torch.Generator().manual_seed(seed)
    random_order = torch.randperm(len(lengths), generator=generator).tolist()
    grouped = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(seed))
    return {"random": useful(random_order), "group_by_length": useful(grouped)}


# Published anchors for the 4 x A100 estimate (not measured here).
LLAMA2_7B_TOKENS_PER_GPU_S = 2.0e12 / (184_320 * 3600)  # Llama 2 paper, Table 2: 184,320 A100-80GB hours for 2T tokens
ALPACA_7B_EXAMPLES_PER_GPU_S = 52_002 * 3 / (8 * 3 * 3600)  # Alpaca: 3 epochs of 52K in 3 hours on 8 A100-80GB


def a100_estimate(tokens_per_epoch: int, examples_per_epoch: int, useful_fraction: float, gpus: int = 4, epochs: int = 3) -> list[dict]:
    """Hours for `epochs` of our training split on `gpus` A100s for Llama-2-7B, from published throughputs."""
    rows = [
        {"basis": "stanford_alpaca's own run (padded, FSDP), per example", "batching": "padded",
         "hours": epochs * examples_per_epoch / (gpus * ALPACA_7B_EXAMPLES_PER_GPU_S) / 3600},
        {"basis": "Llama 2 pre-training throughput (packed), per token", "batching": "packed",
         "hours": epochs * tokens_per_epoch / (gpus * LLAMA2_7B_TOKENS_PER_GPU_S) / 3600},
    ]
    rows.append({**rows[1], "batching": "padded (measured padding)", "hours": rows[1]["hours"] / useful_fraction})
    return rows


def run_config(name, flags, args, out_dir) -> RunSummary:
    """One `python -m trainer.train` run; its train_summary.json."""
    out = os.path.join(out_dir, name.replace(" ", "_").replace(",", "").replace("+", "plus"))
    cmd = [sys.executable, "-m", "trainer.train", "--model", args.model, "--data_path", args.data_path,
           "--template", "alpaca-id", "--val_set_size", "0", "--max_steps", str(args.steps),
           "--per_device_train_batch_size", str(args.batch_size), "--model_max_length", str(args.max_length),
           "--learning_rate", "2e-5", "--logging_steps", "1", "--save_strategy", "no", "--seed", "42",
           "--disable_tqdm", "True", "--report_to", "none", "--output_dir", out, *flags]
    log(f"training: {name}: python -m trainer.train {' '.join(cmd[3:])}")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"training run {name!r} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    summary = RunSummary.read(out)
    if summary is None:
        raise BenchError(f"training run {name!r} wrote no train_summary.json in {out}:\n{result.stderr[-3000:]}")
    return summary


def bench_training(args) -> dict:
    """Run every configuration; rows with learned tokens/s, padding, memory, and MFU against the matmul
    peaks measured in this run (fp32, and bf16 for the bf16 row)."""
    # Its few torch ops (sampler orders, model shapes) run on the torch thread too: a second OpenMP
    # team on the main thread slows every later decode step of the inference part (BENCHMARKS.md).
    return on_torch_thread(_bench_training, args)


def _bench_training(args) -> dict:
    from trainer import batches as batch_lib
    from trainer import records as record_lib
    from trainer.hw import cpu_has_fast_bf16
    from trainer.models import load_tokenizer
    from trainer.prompts import get_template

    records = record_lib.load_records(args.data_path).records
    tokenizer = load_tokenizer(args.model)
    examples, stats = batch_lib.tokenize_records(records, tokenizer, get_template("alpaca-id"), args.max_length)
    lengths = [len(e["input_ids"]) for e in examples]
    epoch = epoch_padding(lengths, args.batch_size, seed=42)
    shape = model_shape(args.model)
    log("training: matmul peaks")
    peaks = {"fp32": matmul_peak_gflops(torch.float32, args.matmul_sizes)[0],
             "bf16": matmul_peak_gflops(torch.bfloat16, args.matmul_sizes)[0]}
    configs = list(CONFIGS)
    fast_bf16, why = cpu_has_fast_bf16()
    if fast_bf16 or torch.cuda.is_available():
        configs.append(BF16_CONFIG)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name, flags, what in configs:
            summary = run_config(name, flags, args, tmp)
            t = summary.throughput
            steady = t.steps[1:] or t.steps
            seconds = sum(s["seconds"] for s in steady)
            flops = sum(step_flops(s, shape) for s in steady)
            rows.append({
                "config": name, "what": what, "flags": " ".join(flags), "precision": summary.precision,
                "steps_timed": len(steady), "examples_per_step": args.batch_size,
                "learned_tokens_per_s": t.learned_tokens_per_second, "tokens_per_s": t.tokens_per_second,
                "seconds_per_step": t.seconds_per_step, "padding_fraction": t.padding_fraction,
                "peak_rss_mb": t.peak_rss_mb, "model_gflops_per_s": flops / seconds / 1e9,
                "learned": sum(s["learned"] for s in steady), "tokens": sum(s["tokens"] for s in steady),
                "useful_fraction": sum(s["tokens"] for s in steady) / sum(s["slots"] for s in steady),
            })
    base = rows[0]["model_gflops_per_s"]
    for row in rows:
        # Useful work per second. On the same examples (padded, packing) this is the ratio of learned
        # tokens/s; --group_by_length trains other examples in its first steps (longest first).
        row["speedup"] = row["model_gflops_per_s"] / base
        row["mfu"] = row["model_gflops_per_s"] / peaks["bf16" if row["precision"] == "bf16" else "fp32"]
    packed = next(r for r in rows if r["config"] == "packing")
    timed_useful = rows[0]["useful_fraction"]
    result = {
        "model": args.model, "shape": shape, "matmul_peak_gflops": peaks, "batch_size": args.batch_size, "max_length": args.max_length,
        "steps": args.steps, "examples": len(examples), "truncated": stats.truncated, "bf16_check": why,
        "learned_share_of_tokens": stats.learned_tokens / stats.tokens,
        "epoch_useful_fraction": epoch,
        "timed_useful_fraction": timed_useful,
        "packing_bound": 1 / timed_useful,
        "packing_share_of_bound": packed["speedup"] * timed_useful,
        "tokens_per_epoch": round(stats.tokens * 0.9),
        "a100_estimate": a100_estimate(round(stats.tokens * 0.9), round(len(examples) * 0.9), epoch["random"]),
        "rows": rows,
    }
    return {**result, **markdown_parts(result)}


def markdown_parts(r: dict) -> dict:
    """The part's `notes` (above its table), `table` rows and `after` lines, for trainer.bench's report."""
    e = r["epoch_useful_fraction"]
    notes = [
        f"Model `{r['model']}` ({r['shape']['params'] / 1e6:.1f} M parameters, {r['shape']['layers']} layers, hidden "
        f"{r['shape']['hidden']}), batch {r['batch_size']}, max length {r['max_length']}, {r['steps']} optimizer steps "
        f"per configuration through `python -m trainer.train` (the first is warm-up, not timed); MFU against the matmul "
        f"peak measured in this run: {r['matmul_peak_gflops']['fp32']:.0f} GFLOP/s fp32, "
        f"{r['matmul_peak_gflops']['bf16']:.0f} GFLOP/s bf16.",
    ]
    table = [{
        "configuration": row["config"], "precision": row["precision"], "learned tokens/s": row["learned_tokens_per_s"],
        "real tokens/s": row["tokens_per_s"], "s/step": row["seconds_per_step"], "padding": f"{row['padding_fraction']:.1%}",
        "peak RSS GiB": row["peak_rss_mb"] / 1024, "model GFLOP/s": row["model_gflops_per_s"],
        "speedup": f"{row['speedup']:.2f}x", "MFU": f"{row['mfu']:.0%}",
    } for row in r["rows"]]
    after = [
        "",
        "Speedup = model GFLOP/s against the padded run, i.e. useful work per second. Padded and packed runs train the "
        "very same examples, so for them it is also the ratio of learned tokens/s; --group_by_length's sampler puts "
        "the longest examples first, so its timed steps hold other (longer) examples.",
        "",
        f"Useful (non-padding) share of the timed padded batches: {r['timed_useful_fraction']:.1%}, so packing's bound "
        f"is {r['packing_bound']:.2f}x; packing alone reached {r['packing_share_of_bound']:.0%} of it. Over a whole "
        f"epoch of random batches of {r['batch_size']} the useful share is {e['random']:.1%} (bound "
        f"{1 / e['random']:.2f}x), with --group_by_length {e['group_by_length']:.1%}. Learned (answer + EOS) tokens "
        f"are {r['learned_share_of_tokens']:.1%} of the real tokens; {r['truncated']} of {r['examples']:,} examples "
        f"were truncated at {r['max_length']}.",
        "",
        "Estimate, not a measurement: Llama-2-7B, 3 epochs of the 90 % training split "
        f"({r['examples'] * 0.9:,.0f} examples, {r['tokens_per_epoch']:,} tokens counted with `{r['model']}`'s "
        "tokenizer) on 4 A100-80GB, from published throughputs:",
        "",
        "| basis | batches | hours |",
        "|---|---|---:|",
        *[f"| {x['basis']} | {x['batching']} | {x['hours']:.2f} |" for x in r["a100_estimate"]],
    ]
    return {"notes": notes, "table": table, "after": after}
