"""A training recipe on paper: `trainer.train --dry_run` builds the model of a preset on the meta device (no
weights, nothing downloaded but its config.json; offline from trainer/configs/models/), applies what the run
would (LoRA, FSDP2's sharding over --gpus ranks, the precision) and prints the parameters each rank holds and an
estimate of the memory per GPU, and whether it fits a GPU of --gpu_memory_gb.

    python -m trainer.train --config trainer/configs/llama-2-7b.yaml --dry_run --gpus 4 --gpu_memory_gb 80
    python -m trainer.dry_run --readme README.md     # rewrite README's memory table from the presets

The sharding is FSDP2's own: `fully_shard` runs on the meta model as rank 0 of a fake process group of --gpus
ranks (torch's "fake" backend: collectives do nothing), so the per-rank counts are what trainer/fsdp.py would
hold, padding included. The memory is an estimate (GB = 10^9 bytes), per GPU, at the preset's micro-batch:
- weights: the fp32 parameters trainer.train loads (sharded under FSDP); with --bf16 and no FSDP the Trainer's
  autocast also caches a bf16 copy of every trainable weight during the forward pass;
- gradients (fp32) and AdamW's two fp32 moments, for the trainable parameters only (sharded under FSDP);
- FSDP's gathered parameters: the root's own (embeddings, head) and two decoder layers (one computing, one
  prefetched) unsharded in the compute dtype, plus their unsharded fp32 gradients before the reduce-scatter;
- activations: Korthikanti et al. (2022, "Reducing Activation Recomputation in Large Transformer Models") per
  token and layer, 16-bit, with flash / memory-efficient attention (no sequence-squared term): 11h for
  attention, 4h for the two norms, and the MLP's own (2h + 8i gated, 3h + 4i plain), twice that in fp32;
  with --gradient_checkpointing only each layer's input is kept, plus one layer's activations;
- logits: every position of the micro-batch through the vocabulary, in bf16, upcast to fp32 for the loss, and
  its fp32 gradient (an upper bound: by default only the answer's positions are projected);
- 1 GB for the CUDA context and the allocator's reserve.
Every token of the micro-batch is counted at --model_max_length (a batch of shorter examples needs less).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer import ROOT
from trainer.alpaca_flags import UsageError, expand_config, rename_legacy, take_bool, take_value

logger = logging.getLogger(__name__)

CONFIG_DIR = ROOT / "trainer" / "configs" / "models"
GB = 1e9
CUDA_OVERHEAD_GB = 1.0
# The preset models' published sizes, which the dry run's counts are checked against (tests/trainer/test_dry_run.py).
PUBLISHED = {
    "DAMO-NLP-MT/polylm-1.7b": (1_722e6, "PolyLM paper (arXiv 2307.06018), Table 3: 1,722M"),
    "meta-llama/Llama-2-7b-hf": (6.74e9, "Hugging Face model page of meta-llama/Llama-2-7b-hf: 6.74B"),
    "internlm/internlm-7b": (7.32e9, "Hugging Face model page of internlm/internlm-7b: 7.32B"),
}
PRESETS = ("polylm-1.7b", "llama-2-7b", "internlm-7b")  # the GPU recipes (trainer/configs/<name>.yaml)
TABLE_START, TABLE_END = "<!-- memory-table: python -m trainer.dry_run --readme README.md -->", "<!-- /memory-table -->"


@dataclass
class Memory:
    """Estimated GB per GPU, by what holds it."""

    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    gathered: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    overhead: float = CUDA_OVERHEAD_GB

    @property
    def total(self) -> float:
        return sum(asdict(self).values())


@dataclass
class Plan:
    model: str
    config_source: str
    architecture: str
    gpus: int
    strategy: str  # "fsdp" or "single" (one process; DDP has one whole copy per GPU, the same per GPU)
    precision: str
    method: str
    total_params: int
    trainable_params: int
    params_per_rank: int  # rank 0's, the largest shard
    trainable_per_rank: int
    micro_batch_tokens: int
    gpu_memory_gb: float
    memory: Memory = field(default_factory=Memory)
    wrapped_class: str | None = None
    wrapped_units: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.gpu_memory_gb

    def to_dict(self) -> dict:
        return {**asdict(self), "memory": {**asdict(self.memory), "total": round(self.memory.total, 2)}, "fits": self.fits}

    def report(self) -> str:
        m = self.memory
        lines = [
            f"dry run: {self.model} ({self.architecture}; config from {self.config_source})",
            f"  {self.method}, {self.precision}, "
            + (f"FSDP over {self.gpus} GPUs" if self.strategy == "fsdp" else "one GPU" if self.gpus == 1
               else f"DDP over {self.gpus} GPUs (a whole copy on each)")
            + (f", {self.wrapped_units - 1} × {self.wrapped_class} + root sharded" if self.wrapped_class else ""),
            f"  parameters: {self.total_params:,} ({self.trainable_params:,} trainable); per rank: {self.params_per_rank:,} "
            f"({self.trainable_per_rank:,} trainable)",
            f"  memory per GPU (estimate, GB): weights {m.weights:.1f} + gradients {m.gradients:.1f} + optimizer "
            f"{m.optimizer:.1f} + gathered {m.gathered:.1f} + activations {m.activations:.1f} + logits {m.logits:.1f} "
            f"+ CUDA {m.overhead:.1f} = {m.total:.1f} at {self.micro_batch_tokens:,} tokens per micro-batch",
            f"  {'fits' if self.fits else 'does NOT fit'} a {self.gpu_memory_gb:g} GB GPU",
        ]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


# ------------------------------------------------------------------------------------------------ config


def stored_config_path(model: str) -> Path:
    return CONFIG_DIR / f"{model.replace('/', '--')}.json"


def read_config(model: str, revision: str | None = None) -> tuple[dict, str]:
    """(config.json as a dict, where it came from): a local folder's, else the Hub's (online; the file alone),
    else the stored copy in trainer/configs/models/."""
    from trainer.model_names import EMBEDDED, ModelError, locate

    folder = Path(locate(model))
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text()), str(folder / "config.json")
    if model in EMBEDDED:
        raise UsageError(f"{model} is not converted yet: run `make prepare` (or `python -m trainer.models prepare {model}`).")
    problem = "offline: HF_HUB_OFFLINE"
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "True", "YES", "yes") and "/" in model:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model, "config.json", revision=revision)
            return json.loads(Path(path).read_text()), f"the Hub ({model}" + (f"@{revision[:8]}" if revision else "") + ")"
        except Exception as e:  # noqa: BLE001 - gated, offline, no such repo: all fall back to the stored copy
            problem = f"the Hub refused: {type(e).__name__}"
    stored = stored_config_path(model)
    if stored.is_file():
        return json.loads(stored.read_text()), f"{stored.relative_to(ROOT)}, stored ({problem})"
    raise ModelError(f"No config for {model}: {problem}, and no stored copy at {stored.relative_to(ROOT)}. "
                     "Give a local model folder, run online, or store its config.json there.")


def build_config(raw: dict):
    """A transformers config for the raw config.json, and a note when a stand-in architecture replaces remote code."""
    from transformers import AutoConfig, LlamaConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = {k: v for k, v in raw.items() if k not in ("auto_map", "architectures", "torch_dtype", "dtype")}
    kind = raw.pop("model_type", None)
    if kind in CONFIG_MAPPING:
        return AutoConfig.for_model(kind, **raw), None
    if kind == "internlm":
        # InternLM (remote code) is Llama with biases on q/k/v/o: the same parameters under other class names.
        bias = raw.pop("bias", True)
        return LlamaConfig(attention_bias=bias, **raw), ("InternLM's remote code is not run: built as transformers' Llama with "
                                                         "attention_bias=True (the same parameters; layers are LlamaDecoderLayer)")
    raise UsageError(f"model_type {kind!r} is not in transformers and has no stand-in in trainer/dry_run.py: "
                     "its remote code is not run by a dry run.")


# -------------------------------------------------------------------------------------------------- plan


@contextlib.contextmanager
def fake_ranks(world: int):
    """torch.distributed as rank 0 of `world` ranks whose collectives do nothing: FSDP2 shards as on real GPUs."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise UsageError("--dry_run runs in one process: start it with python, not torchrun.")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def plan(model_args, training_args, gpus: int, precision: str, gpu_memory_gb: float) -> Plan:
    """Build the model on the meta device, apply LoRA and (with --fsdp) the sharding, and estimate memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer import fsdp as fsdp_lib
    from trainer.train import _apply_lora

    raw, source = read_config(model_args.model, model_args.model_revision)
    config, stand_in = build_config(raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    notes = [stand_in] if stand_in else []
    architecture = type(model).__name__
    if model_args.lora_r:
        model = _apply_lora(model, model_args)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    units = root = layer = layer_trainable = 0
    wrapped = None
    strategy = "fsdp" if training_args.fsdp_mode else "single"
    local, local_trainable = total, trainable
    if strategy == "fsdp":
        wrap_name = training_args.fsdp_transformer_layer_cls_to_wrap
        if stand_in and wrap_name:  # the stand-in's layers carry transformers' class name
            wrap_name = None
        layer_cls = fsdp_lib.detect_layer_class(model, wrap_name)
        layers = [m for m in model.modules() if isinstance(m, layer_cls)]
        layer = sum(p.numel() for p in layers[0].parameters())
        layer_trainable = sum(p.numel() for p in layers[0].parameters() if p.requires_grad)
        root = total - layer * len(layers)
        args = argparse.Namespace(fsdp_mode=training_args.fsdp_mode, bf16=precision == "bf16", use_cpu=True)
        with fake_ranks(gpus):
            wrapped, units = fsdp_lib.shard(model, args, layer_cls.__name__)
            local = fsdp_lib.local_numel(model)
            local_trainable = sum(p.to_local().numel() for p in model.parameters() if p.requires_grad)
    micro_tokens = training_args.per_device_train_batch_size * training_args.model_max_length
    memory = estimate(config, model, precision, strategy, "offload" in (training_args.fsdp_mode or ""), local, local_trainable,
                      root, layer, layer_trainable, micro_tokens, training_args.gradient_checkpointing and strategy != "fsdp",
                      lora=bool(model_args.lora_r))
    if training_args.gradient_checkpointing and strategy == "fsdp":
        notes.append("--gradient_checkpointing is ignored under --fsdp (trainer/fsdp.py), so activations are counted whole")
    method = (f"LoRA r={model_args.lora_r} on {','.join(sorted(model.peft_config['default'].target_modules))}"
              if model_args.lora_r else "full fine-tune")
    return Plan(model=model_args.model, config_source=source, architecture=architecture, gpus=gpus, strategy=strategy,
                precision=precision, method=method, total_params=total, trainable_params=trainable, params_per_rank=local,
                trainable_per_rank=local_trainable, micro_batch_tokens=micro_tokens, gpu_memory_gb=gpu_memory_gb,
                memory=memory, wrapped_class=wrapped, wrapped_units=units, notes=notes)


def dims(config) -> tuple[int, int, int, int]:
    """(hidden size, MLP size, layers, vocabulary) of a decoder config, whatever its field names."""
    hidden = config.hidden_size
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    return hidden, inner, config.num_hidden_layers, config.vocab_size


def estimate(config, model, precision, strategy, offload, local, local_trainable, root, layer, layer_trainable, tokens,
             checkpointing, lora) -> Memory:
    h, i, layers, vocab = dims(config)
    gated = any(name.endswith("gate_proj") for name, _ in model.named_modules())
    half = precision in ("bf16", "fp16")
    m = Memory()
    if not offload:  # offloaded parameters, gradients and optimizer state live in CPU memory
        m.weights = 4 * local / GB
        m.gradients = 4 * local_trainable / GB
        m.optimizer = 8 * local_trainable / GB
    if strategy == "fsdp":
        compute = 2 if half else 4
        trainable_root = 0 if lora else root
        m.gathered = (compute * (root + 2 * layer) + 4 * (trainable_root + layer_trainable)) / GB
    elif half and not lora:
        m.weights += 2 * local_trainable / GB  # autocast's bf16 copies of the trainable weights, cached per forward
    mlp = 2 * h + 8 * i if gated else 3 * h + 4 * i
    per_token_layer = (11 * h + 4 * h + mlp) * (1 if half else 2)
    if checkpointing:
        act = tokens * (layers * 2 * h * (1 if half else 2) + per_token_layer)
    else:
        act = tokens * layers * per_token_layer
    m.activations = act / GB
    m.logits = tokens * vocab * ((2 if half else 4) + 4 + 4) / GB
    return Memory(**{k: round(v, 3) for k, v in asdict(m).items()})


# ------------------------------------------------------------------------------------------------- entry


def split_argv(argv: list[str]) -> tuple[list[str], dict]:
    """The flags for trainer.train's parser, and the dry run's own: precision flags are taken out here, since
    TrainingArguments refuses --bf16/--tf32 on a machine without a GPU and the dry run plans for one."""
    argv = rename_legacy(expand_config(list(argv)))
    take_bool(argv, "--dry_run")
    take_bool(argv, "--tf32")
    bf16, fp16 = take_bool(argv, "--bf16"), take_bool(argv, "--fp16")
    own = {"precision": "bf16" if bf16 else "fp16" if fp16 else "fp32"}
    return argv, own


def plan_from_argv(argv: list[str]) -> Plan:
    from trainer.train import build_parser

    rest, own = split_argv(argv)
    try:
        model_args, _, training_args = build_parser().parse_args_into_dataclasses(rest)
    except ValueError as e:
        raise UsageError(str(e)) from None
    gpus, gpu_memory_gb = training_args.gpus, training_args.gpu_memory_gb
    if gpus < 1:
        raise UsageError(f"--gpus {gpus}: plan for at least 1 GPU.")
    if gpus > 1 and not training_args.fsdp_mode:
        logger.info("--gpus %d without --fsdp: DDP, every GPU holds the whole model (the numbers are per GPU)", gpus)
    return plan(model_args, training_args, gpus, own["precision"], gpu_memory_gb)


def quiet_library_warnings() -> None:
    """peft's and transformers' warnings about training details (Conv1D's layout, renamed properties) are not
    about the plan."""
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")
    warnings.filterwarnings("ignore", category=FutureWarning)


def main_train(argv: list[str]) -> int:
    """`trainer.train --dry_run ...`: print the plan (and its JSON with --output_dir's dry_run.json)."""
    from trainer.model_names import ModelError

    quiet_library_warnings()
    try:
        result = plan_from_argv(argv)
    except (UsageError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.report())
    out = take_value(expand_config(list(argv)), "--output_dir")  # only when asked: the parser's default is a folder
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "dry_run.json"), "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    return 0


# ---------------------------------------------------------------------------------------- README's table

# The preset recipes shard with FSDP; `--fsdp ""` turns it off for the one-GPU columns.
VARIANTS = (("full fine-tune, 1 GPU", ["--fsdp", ""], 1), ("full, FSDP on 4 GPUs", [], 4),
            ("LoRA r=8, 1 GPU", ["--lora_r", "8", "--fsdp", ""], 1), ("LoRA r=8, FSDP on 4 GPUs", ["--lora_r", "8"], 4))


def preset_plans(preset: str) -> list[Plan]:
    config = str(ROOT / "trainer" / "configs" / f"{preset}.yaml")
    return [plan_from_argv(["--config", config, *extra, "--gpus", str(gpus)]) for _, extra, gpus in VARIANTS]


def memory_table() -> str:
    lines = ["| preset | parameters (published) | " + " | ".join(v[0] for v in VARIANTS) + " |",
             "|---|---:|" + "---:|" * len(VARIANTS)]
    for preset in PRESETS:
        plans = preset_plans(preset)
        first = plans[0]
        published = PUBLISHED[first.model][0]
        cells = [f"{p.memory.total:.0f} GB" + ("" if p.fits else " ✗") for p in plans]
        lines.append(f"| `{preset}` | {first.total_params / 1e9:.2f} B ({published / 1e9:.2f} B) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rewrite_readme(path: str) -> bool:
    """Replace the table between README's markers with a fresh one; True when it changed."""
    text = Path(path).read_text(encoding="utf-8")
    pattern = re.compile(re.escape(TABLE_START) + r"\n(?:.*?\n)?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise UsageError(f"{path}: no memory table markers ({TABLE_START} ... {TABLE_END}).")
    new = pattern.sub(lambda _: f"{TABLE_START}\n{memory_table()}\n{TABLE_END}", text)
    Path(path).write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The GPU presets' dry runs as README's memory table.")
    parser.add_argument("--readme", default=None, help="rewrite the table between its markers in this file (else print it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    quiet_library_warnings()
    try:
        if args.readme:
            print(f"{args.readme}: {'updated' if rewrite_readme(args.readme) else 'unchanged'}")
        else:
            print(memory_table())
    except (UsageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
