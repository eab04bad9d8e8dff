"""Supervised fine-tuning on Alpaca records or chat conversations (full or LoRA): one process, DDP, or FSDP.

    python -m trainer.train --model smollm2-135m \
        --data_path ../shared/data/GenMedGPT-5k-id.json --template alpaca-id \
        --max_steps 20 --output_dir out
    torchrun --nproc_per_node=2 -m trainer.train --fsdp "full_shard auto_wrap" ...   # sharded
    python -m trainer.train --config trainer/configs/llama-2-7b.yaml --dry_run --gpus 4   # the plan, no training

One process and DDP (torchrun without --fsdp) run the Hugging Face Trainer; --fsdp under torchrun
runs trainer/fsdp.py, which really shards parameters on GPUs and CPUs alike.

stanford_alpaca's README command is accepted as written: `--model_name_or_path` is an alias of `--model`
(in presets too), `--evaluation_strategy` (now `--eval_strategy`) and `--warmup_ratio` (now a fractional
`--warmup_steps`) are renamed, and the GPU-only `--tf32` and `--bf16` are dropped with a warning where
they cannot help (see `trainer/alpaca_flags.py`). Flags override a `--config file.yaml`.

Steps: parse_args -> load_datasets -> load_model_and_tokenizer -> build_datasets -> train (Trainer or FSDP) -> save.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
import transformers
from transformers import HfArgumentParser, Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from trainer import alpaca_flags
from trainer import batches as batch_lib
from trainer import fsdp as fsdp_lib
from trainer import packing as packing_lib
from trainer import records as record_lib
from trainer.alpaca_flags import UsageError
from trainer.models import DEFAULT_MODEL, ModelError, load_model, load_tokenizer
from trainer.preferences import METHODS
from trainer.prompts import DEFAULT_TEMPLATE, TEMPLATES, chat_template_for, get_template
from trainer.run_summary import RecordCounts, RunSummary, Throughput

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model: str = field(
        default=DEFAULT_MODEL,
        # stanford_alpaca's name stays an alias, on the command line and in presets (`model_name_or_path:`)
        metadata={"help": f"`{DEFAULT_MODEL}` (embedded, offline), a local folder or a Hub id.", "aliases": ["--model_name_or_path"]},
    )
    template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": f"Prompt template: {', '.join(TEMPLATES)}. Saved as the chat_template."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the model repo's own code (needs --model_revision)."})
    model_revision: str | None = field(default=None, metadata={"help": "Hub commit to pin the model (and its remote code) to."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 = full fine-tune (the original Spaces used 8)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "Comma-separated module names, e.g. q_proj,v_proj. Default: peft's choice for the architecture."}
    )
    init_adapter: str | None = field(
        default=None,
        metadata={"help": "A LoRA adapter folder to continue training from (its rank and target modules win over "
                  "--lora_*), e.g. the shipped v1 model for a second stage on new data."},
    )


@dataclass
class DataArguments:
    data_path: str = field(
        default=None,
        metadata={"help": "Alpaca records or chat conversations (OpenAI `messages` or ShareGPT `conversations`, one "
                  "format per file): JSON array, JSON Lines, or a Hub dataset id."},
    )
    val_set_size: float = field(default=record_lib.VAL_SET_SIZE, metadata={"help": "Validation share (<1) or count (>=1); 0 = none. Seed 42."})
    skip_invalid: bool = field(default=False, metadata={"help": "Skip invalid records (and report the count) instead of stopping."})
    empty_input_share: float = field(
        default=0.0,
        metadata={"help": "Share of training records with an input rendered as the demo asks: the input as the "
                  "instruction, no input (0-1, seed 42). Alpaca records only: conversations keep their turns. "
                  "The validation records keep their shape."},
    )
    max_train_samples: int = field(
        default=0, metadata={"help": "Train on the first N records of the training split (0 = all); for quick runs and benchmarks."}
    )
    extra_data_path: str | None = field(
        default=None,
        metadata={"help": "Training-only records (Alpaca or conversations) added after the split, comma-separated files (e.g. the condition "
                  "records of `python -m data_gen conditions`). Never validated on; their prompt shapes are kept as written."},
    )
    max_eval_samples: int = field(
        default=100,
        metadata={"help": "Evaluate during training on the first N validation records (0 = all): a pass over "
                  "GenMedGPT's 500 takes minutes per evaluation with smollm2-135m on 2 CPU cores."},
    )
    train_on: str = field(
        default="all",
        metadata={"help": "Which assistant turns of a conversation are learned: all (each answer and its EOS) or last "
                  "(the final answer only). User and system turns never are; an Alpaca record has one answer.",
                  "choices": list(batch_lib.TRAIN_ON)},
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(
        default=512, metadata={"help": "Examples are truncated to this many tokens (a conversation's oldest exchanges "
                               "first, then the prompt side)."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log the training loss every N steps."})
    fsdp_mode: str | None = field(
        default=None, metadata={"help": "What `--fsdp` sets: e.g. \"full_shard auto_wrap\" (under torchrun)."}
    )
    fsdp_transformer_layer_cls_to_wrap: str | None = field(
        default=None, metadata={"help": "Decoder layer class FSDP shards; default: detected from the model."}
    )
    packing: bool = field(
        default=False,
        metadata={"help": "Padding-free batches: each batch's examples in one row, position_ids restarting per example, "
                  "attention kept within each example (trainer/packing.py). Same examples and steps as padded batches."},
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch examples of similar length (less padding, less random batches); "
                                 "the cheap alternative to --packing."},
    )
    learned_logits_only: bool = field(
        default=True,
        metadata={"help": "Compute the vocabulary projection only where a label is learned (the answer), not over the "
                  "prompt and padding. False = stanford_alpaca's full logits and the model's own loss (benchmarks)."},
    )
    method: str = field(
        default="sft",
        metadata={"help": "sft (supervised, Alpaca records or conversations), or preference tuning on top of an SFT model "
                  "or adapter with TRL: dpo (records with chosen/rejected) or kto (completion + boolean label); "
                  "trainer/preference.py."},
    )
    beta: float = field(default=0.1, metadata={"help": "dpo/kto: how far the tuned model may move from the reference (higher = less)."})
    sft_weight: float = field(
        default=0.0, metadata={"help": "dpo: weight of a supervised loss on the chosen answers added to DPO's (RPO), which "
                               "keeps their likelihood from falling with the rejected ones'; 0 = plain DPO."},
    )
    config: str | None = field(default=None, metadata={"help": "YAML file of flags; flags given on the command line win."})
    dry_run: bool = field(
        default=False,
        metadata={"help": "Train nothing: build the model on the meta device from its config (offline: trainer/configs/models/), "
                  "apply LoRA, --fsdp over --gpus ranks and the precision, and print the parameters per rank and the "
                  "estimated memory per GPU (trainer/dry_run.py). No --data_path needed."},
    )
    gpus: int = field(default=1, metadata={"help": "--dry_run: the GPUs (ranks) to plan for."})
    gpu_memory_gb: float = field(default=80.0, metadata={"help": "--dry_run: the GPU memory to check the plan against (GB)."})
    strategy: str = field(default="single", init=False, metadata={"help": "single, ddp or fsdp; chosen from the launch."})

    def __post_init__(self):
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; on CPU it only warns
        problems = []
        if self.model_max_length < 8:
            problems.append(f"--model_max_length {self.model_max_length} is too small; use e.g. 512.")
        if self.warmup_steps < 0:
            problems.append("--warmup_steps/--warmup_ratio must be >= 0.")
        if problems:
            raise ValueError(" ".join(problems))
        if self.group_by_length:  # transformers 5 folded the flag into train_sampling_strategy
            self.train_sampling_strategy = "group_by_length"
        super().__post_init__()


# ------------------------------------------------------------------------------------ argument parsing


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))


def parse_args(argv: list[str]):
    argv = alpaca_flags.expand_config(list(argv))
    argv = alpaca_flags.rename_legacy(argv)
    argv = alpaca_flags.cpu_adjust(argv)
    parser = build_parser()
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    except ValueError as e:  # TrainingArguments.__post_init__ checks flag combinations
        raise UsageError(str(e)) from None
    problems = []
    if not data_args.data_path:
        problems.append("--data_path is required (a JSON/JSON Lines file of Alpaca records or conversations).")
    if model_args.template not in TEMPLATES:
        problems.append(f"--template {model_args.template!r} is unknown; choose one of {', '.join(TEMPLATES)}.")
    if model_args.trust_remote_code and not model_args.model_revision:
        problems.append("--trust_remote_code needs --model_revision COMMIT so the remote code is pinned.")
    if model_args.lora_r < 0:
        problems.append("--lora_r must be >= 0 (0 = full fine-tune).")
    if training_args.method not in ("sft", *METHODS):
        problems.append(f"--method {training_args.method!r} is unknown; choose sft, {', '.join(METHODS)}.")
    elif training_args.sft_weight and training_args.method != "dpo":
        problems.append("--sft_weight is for --method dpo (an SFT loss beside DPO's).")
    elif training_args.method != "sft" and (training_args.fsdp_mode or training_args.packing or model_args.init_adapter):
        problems.append(f"--method {training_args.method} trains a LoRA adapter on one process, without --fsdp, --packing or "
                        "--init_adapter: give the SFT model or adapter as --model.")
    try:
        training_args.strategy = choose_strategy(training_args)
    except fsdp_lib.FsdpError as e:
        problems.append(str(e))
    if training_args.strategy == "single" and training_args.n_gpu > 1:
        # The Trainer would wrap the model in DataParallel, which splits every batch tensor along its first
        # dimension: a packed row, its cu_seq_lens and the logits_to_keep positions cannot be split that way.
        problems.append(f"{training_args.n_gpu} GPUs are visible to one process: train on all of them with "
                        f"`torchrun --nproc_per_node={training_args.n_gpu} -m trainer.train ...`, or on one with CUDA_VISIBLE_DEVICES=0.")
    if problems:
        raise UsageError("\n".join(problems))
    return model_args, data_args, training_args


def choose_strategy(args: TrainingArguments) -> str:
    """"fsdp" (trainer/fsdp.py), "ddp" (Trainer under torchrun) or "single" (Trainer)."""
    if not args.fsdp_mode and alpaca_flags.accelerate_fsdp():
        # `accelerate launch --config_file trainer/configs/accelerate_fsdp.yaml`: same as --fsdp.
        args.fsdp_mode = "full_shard auto_wrap"
        args.fsdp_transformer_layer_cls_to_wrap = args.fsdp_transformer_layer_cls_to_wrap or os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") or None
    launched = "LOCAL_RANK" in os.environ  # set by torchrun / accelerate launch
    if args.fsdp_mode:
        fsdp_lib.parse_mode(args.fsdp_mode)
        if launched:
            return "fsdp"
        logger.warning(
            "--fsdp %r ignored: FSDP shards a model across processes, so it needs a launcher: "
            "`torchrun --nproc_per_node=N -m trainer.train ...`. Training in one process.", args.fsdp_mode,
        )
        args.fsdp_mode = None
        return "single"
    return "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"


# ---------------------------------------------------------------------------------------------- steps


def load_datasets(data_args: DataArguments):
    """Validated records, split; returns (train records, eval records, record counts)."""
    loaded = record_lib.load_records(data_args.data_path, data_args.skip_invalid, conversations=True)
    train_records, val_records = record_lib.split_records(loaded.records, data_args.val_set_size)
    counts = RecordCounts(valid=len(loaded.records), skipped_invalid=len(loaded.skipped), train=len(train_records),
                          val=len(val_records), val_set_size=data_args.val_set_size)
    logger.info("data: %d valid records (%s) from %s (%d invalid skipped) -> %d train / %d validation",
                counts.valid, loaded.format, data_args.data_path, counts.skipped_invalid, counts.train, counts.val)
    if 0 < data_args.max_eval_samples < len(val_records):
        logger.info("evaluating during training on the first %d of %d validation records (--max_eval_samples, 0 = all)",
                    data_args.max_eval_samples, len(val_records))
        val_records = val_records[: data_args.max_eval_samples]
    counts.val_evaluated = len(val_records)
    if 0 < data_args.max_train_samples < len(train_records):
        logger.info("training on the first %d of %d training records (--max_train_samples)", data_args.max_train_samples, len(train_records))
        train_records = train_records[: data_args.max_train_samples]
    counts.train_used = len(train_records)
    if data_args.empty_input_share:
        train_records, counts.train_empty_input = record_lib.with_empty_input_share(train_records, data_args.empty_input_share)
        logger.info("%d of %d training records rendered with an empty input (--empty_input_share %g)",
                    counts.train_empty_input, len(train_records), data_args.empty_input_share)
    if data_args.extra_data_path:
        for path in data_args.extra_data_path.split(","):
            extra = record_lib.load_records(path, data_args.skip_invalid, conversations=True)
            train_records = train_records + extra.records
            counts.train_extra += len(extra.records)
            counts.skipped_invalid += len(extra.skipped)
            logger.info("%d training-only records from %s (%d invalid skipped; --extra_data_path)",
                        len(extra.records), path, len(extra.skipped))
    return train_records, val_records, counts


def build_datasets(train_records, val_records, tokenizer, model_args, training_args, train_on: str = "all"):
    """Tokenized examples and their stats per split (`train_on`: a conversation's assistant turns learned, all or last)."""
    template = get_template(model_args.template)
    examples, stats = {}, {}
    for split, records in (("train", train_records), ("val", val_records)):
        examples[split], stats[split] = batch_lib.tokenize_records(records, tokenizer, template, training_args.model_max_length,
                                                                   train_on)
        logger.info("%s: %d examples, %d learned tokens (%d truncated, %d dropped)", split,
                    stats[split].examples, stats[split].learned_tokens, stats[split].truncated, stats[split].dropped)
    if not examples["train"]:
        raise record_lib.DataError("No training example left after tokenization.")
    return examples, stats


def load_model_and_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
    kwargs = dict(trust_remote_code=model_args.trust_remote_code, revision=model_args.model_revision)
    tokenizer = load_tokenizer(model_args.model, **kwargs)
    tokenizer.model_max_length = training_args.model_max_length
    if tokenizer.pad_token is None:
        # Safe because padding is masked by position (batches.DataCollator), never by token id.
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = chat_template_for(tokenizer, get_template(model_args.template))
    # fp32 weights: the Trainer's --bf16 autocasts on GPUs, and on CPUs without bf16 units fp32 is fastest.
    model = load_model(model_args.model, dtype=torch.float32, **kwargs)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model_args.init_adapter:
        model = _continue_lora(model, model_args)
    elif model_args.lora_r:
        model = _apply_lora(model, model_args)
    return model, tokenizer


def _continue_lora(model, model_args: ModelArguments):
    """The base with a trained adapter's weights, trainable: a second training stage starts where the first ended."""
    from peft import PeftModel

    folder = model_args.init_adapter
    if not os.path.isfile(os.path.join(folder, "adapter_config.json")):
        raise UsageError(f"--init_adapter {folder}: no adapter_config.json there. Give a LoRA adapter folder "
                         "(e.g. models/alpaca-medis-270m of an earlier release, or a trainer.train --lora_r output).")
    model = PeftModel.from_pretrained(model, folder, is_trainable=True)
    config = model.peft_config["default"]
    if model_args.lora_r and model_args.lora_r != config.r:
        logger.warning("--lora_r %d ignored: %s has rank %d, kept", model_args.lora_r, folder, config.r)
    model_args.lora_r, model_args.lora_alpha = config.r, config.lora_alpha
    base = model_args.model
    config.base_model_name_or_path = os.path.abspath(base) if os.path.isdir(base) else base
    return model


def _apply_lora(model, model_args: ModelArguments):
    from peft import LoraConfig, get_peft_model

    targets = model_args.lora_target_modules.split(",") if model_args.lora_target_modules else None
    config = LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=targets, task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as e:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UsageError(f"LoRA: {e}. Linear modules of this model: {', '.join(linear)}. Pass --lora_target_modules.") from None
    # The adapter names its base as the user did (e.g. `smollm2-135m`), not a cache path on this machine.
    base = model_args.model
    model.peft_config["default"].base_model_name_or_path = os.path.abspath(base) if os.path.isdir(base) else base
    return model


class CountingTrainer(Trainer):
    """The HF Trainer with our loss (logits only where labels are learned) and per-step counts of
    what the batches held (learned tokens, real tokens, slots incl. padding, attention cost)."""

    def __init__(self, *args, learned_logits_only: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.learned_logits_only = learned_logits_only
        self.pending = Counter()  # counts of the optimizer step in progress
        self.steps: list[dict] = []  # one entry per optimizer step: seconds + counts (this rank)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.pending.update(batch_lib.batch_counts(inputs))
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.learned_logits_only:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, n = batch_lib.learned_loss_sum(model, inputs)
        # As the Trainer does for models that take loss kwargs: divide by the learned tokens of the
        # whole accumulated (and, with several ranks, global) batch, so the loss is one mean per step.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if num_items_in_batch is None:
            loss = loss / max(n, 1)
        else:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        return (loss, {}) if return_outputs else loss


class StepRecorder(TrainerCallback):
    """Wall time of each optimizer step (without evaluation and saving) beside its batch counts."""

    def __init__(self, trainer: CountingTrainer):
        self.trainer = trainer
        self.tic = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.tic = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.steps.append({"seconds": time.perf_counter() - self.tic, **self.trainer.pending})
        self.trainer.pending = Counter()


def log_step(step: int, loss=None, lr=None, ms=None, eval_loss=None) -> None:
    """One line per interval with the same keys: `step 20 | loss 1.23 | lr 2e-05 | 312 ms/step`."""
    if eval_loss is not None:
        logger.info("step %d | eval_loss %.4f", step, eval_loss)
    else:
        logger.info("step %d | loss %.4f | lr %.3g | %.0f ms/step", step, loss, lr, ms)


class QuietProgress(ProgressCallback):
    """The Trainer's progress bars without its per-log dict prints: LogLine says the same in one line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class LogLine(TrainerCallback):
    def __init__(self):
        self.last = (time.perf_counter(), 0)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.last[1]:  # first step, or first after an evaluation
            self.last = (time.perf_counter(), state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now, step = time.perf_counter(), state.global_step
        if "loss" in logs:
            log_step(step, logs["loss"], logs.get("learning_rate", 0), 1000 * (now - self.last[0]) / max(step - self.last[1], 1))
            self.last = (now, step)
        elif "eval_loss" in logs:
            log_step(step, eval_loss=logs["eval_loss"])
            self.last = (now, step)  # evaluation time is not step time


def resolve_resume(training_args: TrainingArguments) -> str | None:
    resume = training_args.resume_from_checkpoint
    if resume and resume.lower() in ("true", "last"):
        from transformers.trainer_utils import get_last_checkpoint

        resume = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if resume is None:
            raise UsageError(f"--resume_from_checkpoint: no checkpoint-* folder in {training_args.output_dir}.")
    elif resume and not os.path.isdir(resume):
        raise UsageError(f"--resume_from_checkpoint {resume}: no such folder.")
    training_args.resume_from_checkpoint = resume
    return resume


def use_packing(model) -> None:
    name = packing_lib.enable(model)
    if name.startswith("flash_attention"):  # CUDA kernels: isolation by construction, no CPU check possible
        logger.info("packing: one row per batch, attention %s (varlen)", name)
        return
    try:
        diff = packing_lib.check_isolation(model)
    except packing_lib.PackingError as e:
        raise UsageError(str(e)) from None
    logger.info("packing: one row per batch, attention %s (examples isolated: max logit difference %.1e)", name, diff)


def fit(trainer, has_eval: bool, resume: str | None) -> float:
    """Train (SFT's Trainer or TRL's) with our progress lines, evaluated before the first step and after the last;
    returns the wall time, training plus its evaluations."""
    if trainer.pop_callback(ProgressCallback) is not None:  # absent with --disable_tqdm
        trainer.add_callback(QuietProgress)
    # The eval curve starts before the first step (train() resets the log, so not a separate evaluate()).
    trainer.args.eval_on_start = has_eval and not resume
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    last_eval = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    if has_eval and (last_eval is None or last_eval["step"] != trainer.state.global_step):
        trainer.evaluate()
    return time.perf_counter() - start


def loss_curves(history: list[dict]) -> tuple[list, list]:
    """(step, train loss) and (step, eval loss) pairs of a Trainer's log history."""
    return ([(h["step"], h["loss"]) for h in history if "loss" in h],
            [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h])


def train_with_trainer(model, tokenizer, examples, training_args) -> tuple[fsdp_lib.RunResult, Trainer]:
    """One process or DDP: the Hugging Face Trainer."""
    trainer = CountingTrainer(
        model=model,
        args=training_args,
        train_dataset=batch_lib.SupervisedDataset(examples["train"]),
        # Sorted by length: evaluation order does not change the loss, and less padding is less compute.
        eval_dataset=batch_lib.SupervisedDataset(sorted(examples["val"], key=lambda e: len(e["input_ids"]))) if examples["val"] else None,
        data_collator=packing_lib.collator() if training_args.packing else batch_lib.DataCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[LogLine()],
        learned_logits_only=training_args.learned_logits_only,
    )
    trainer.add_callback(StepRecorder(trainer))
    wall = fit(trainer, has_eval=bool(examples["val"]), resume=training_args.resume_from_checkpoint)
    steps, local = trainer.steps, [fsdp_lib.local_numel(model)]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        steps = fsdp_lib.sum_steps(steps)
        local = fsdp_lib.gather(local[0])
    parallel = {"world_size": training_args.world_size, "strategy": training_args.strategy, "wrapped_class": None,
                "wrapped_units": 0, "total_params": sum(p.numel() for p in model.parameters()), "local_params_per_rank": local}
    result = fsdp_lib.RunResult(trainer.state.log_history, trainer.state.global_step, trainer.state.epoch,
                                wall, parallel, steps)
    return result, trainer


def process_rank(training_args) -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else training_args.process_index


def save(model, trainer, tokenizer, model_args, data_args, training_args, counts, stats, result):
    out = training_args.output_dir
    packing_lib.disable(model)  # the saved config names plain sdpa, which loads anywhere
    if training_args.strategy == "fsdp":
        fsdp_lib.save_consolidated(model, out, trust_remote_code=model_args.trust_remote_code)
    else:
        trainer.save_model(out)  # safetensors weights, or only the adapter for LoRA
    if process_rank(training_args) != 0:
        return None
    tokenizer.save_pretrained(out)
    train_losses, eval_losses = loss_curves(result.log_history)
    summary = RunSummary(
        model=model_args.model,
        template=model_args.template,
        method=f"lora (r={model_args.lora_r}, alpha={model_args.lora_alpha})" if model_args.lora_r else "full",
        data_path=data_args.data_path,
        extra_data_path=data_args.extra_data_path,
        init_adapter=model_args.init_adapter,
        records=counts,
        examples=stats,
        **result.parallel,
        global_step=result.global_step,
        epochs=result.epoch,
        train_loss_first=train_losses[0][1] if train_losses else None,
        train_loss_final=train_losses[-1][1] if train_losses else None,
        eval_loss_initial=eval_losses[0][1] if eval_losses else None,
        eval_loss_final=eval_losses[-1][1] if eval_losses else None,
        learned_tokens_trained=result.total("learned"),
        tokens_trained=result.total("tokens"),
        wall_time_s=round(result.wall, 2),
        learned_tokens_per_second=round(result.total("learned") / result.wall, 1) if result.wall > 0 else None,
        throughput=throughput(result.steps, training_args),
        device=str(training_args.device),
        precision="bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
    )
    summary.write(out)
    title = f"{model_args.model} on {os.path.basename(data_args.data_path)}"
    plot_losses(train_losses, eval_losses, os.path.join(out, "loss.png"), title=title)
    return summary


def throughput(steps: list[dict], training_args) -> Throughput:
    total = Counter()
    for step in steps:
        total.update(step)
    steady = steps[1:] or steps
    seconds = sum(s["seconds"] for s in steady)
    on_cuda = torch.cuda.is_available() and not training_args.use_cpu
    return Throughput(
        batching="packed" if training_args.packing else "group_by_length" if training_args.group_by_length else "padded",
        learned_logits_only=training_args.learned_logits_only,
        padding_fraction=round(1 - total["tokens"] / total["slots"], 4) if total["slots"] else None,
        learned_tokens_per_second=round(sum(s["learned"] for s in steady) / seconds, 2) if seconds else None,
        tokens_per_second=round(sum(s["tokens"] for s in steady) / seconds, 2) if seconds else None,
        seconds_per_step=round(seconds / len(steady), 3) if steady else None,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        cuda_peak_allocated_mb=round(torch.cuda.max_memory_allocated() / 2**20) if on_cuda else None,
        steps=[{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()} for s in steps],
    )


def plot_losses(train_losses, eval_losses, path, title=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train_losses:
        ax.plot(*zip(*train_losses), label="train loss", marker="." if len(train_losses) < 50 else None)
    if eval_losses:
        ax.plot(*zip(*eval_losses), label="eval loss", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (learned tokens)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_preferences(model_args, data_args, training_args) -> RunSummary:
    """--method dpo|kto: a new LoRA adapter on the SFT model or adapter, with TRL's trainer (trainer/preference.py)."""
    from peft import get_peft_model_state_dict

    from trainer import preference

    method = training_args.method
    train_records, val_records, counts = preference.load_preference_datasets(data_args, method)
    resolve_resume(training_args)
    transformers.set_seed(training_args.seed)
    model, tokenizer, sft_adapter = preference.load_policy(model_args, training_args)
    peft_config = preference.lora_config(model_args, sft_adapter)
    trainer = preference.make_trainer(method, model, tokenizer, preference.trl_config(training_args, method),
                                      preference.trl_rows(train_records, tokenizer, method),
                                      preference.trl_rows(val_records, tokenizer, method), peft_config, [LogLine()])
    wall = fit(trainer, has_eval=bool(val_records), resume=training_args.resume_from_checkpoint)
    out = training_args.output_dir
    if sft_adapter:  # one adapter on the original base: the SFT adapter and the new one stacked (exact)
        preference.stack_adapters(sft_adapter, get_peft_model_state_dict(trainer.model), peft_config, out)
    else:
        trainer.save_model(out)
    tokenizer.save_pretrained(out)
    history = trainer.state.log_history
    train_losses, eval_losses = loss_curves(history)
    evals = [h for h in history if "eval_loss" in h]
    pick = lambda h: {k.removeprefix("eval_"): round(v, 4) for k, v in h.items() if "rewards/" in k or k == "eval_loss"}  # noqa: E731
    summary = RunSummary(
        model=model_args.model, template=model_args.template,
        method=f"{method} (beta={training_args.beta}" + (f", sft_weight={training_args.sft_weight}" if training_args.sft_weight else "")
        + f"), lora (r={peft_config.r}, alpha={peft_config.lora_alpha})"
        + (" stacked on the SFT adapter" if sft_adapter else ""),
        data_path=data_args.data_path, records=counts, total_params=sum(p.numel() for p in trainer.model.parameters()),
        global_step=trainer.state.global_step, epochs=trainer.state.epoch,
        train_loss_first=train_losses[0][1] if train_losses else None, train_loss_final=train_losses[-1][1] if train_losses else None,
        eval_loss_initial=eval_losses[0][1] if eval_losses else None, eval_loss_final=eval_losses[-1][1] if eval_losses else None,
        wall_time_s=round(wall, 2), device=str(training_args.device),
        precision="bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        preference={"method": method, "beta": training_args.beta, "sft_weight": training_args.sft_weight,
                    "reference": "the same weights with the new adapter off",
                    "initial": pick(evals[0]) if evals else None, "final": pick(evals[-1]) if evals else None},
        transformers_version=transformers.__version__, torch_version=torch.__version__,
    )
    summary.write(out)
    plot_losses(train_losses, eval_losses, os.path.join(out, "loss.png"),
                title=f"{method} on {model_args.model} with {os.path.basename(data_args.data_path)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else argv
    if alpaca_flags.take_bool(list(argv), "--dry_run"):
        from trainer import dry_run

        return dry_run.main_train(argv)
    try:
        model_args, data_args, training_args = parse_args(argv)
        if training_args.strategy == "fsdp":
            fsdp_lib.init_process_group(training_args)
        if process_rank(training_args) != 0:
            logging.getLogger().setLevel(logging.WARNING)  # log on rank 0 only
        logger.info("config: %s", json.dumps({**asdict(model_args), **asdict(data_args)}))
        if training_args.method in METHODS:
            summary = train_preferences(model_args, data_args, training_args)
            logger.info("done in %.0f s: eval loss %s -> %s; saved to %s", summary.wall_time_s, summary.eval_loss_initial,
                        summary.eval_loss_final, training_args.output_dir)
            return 0
        # Data first: a broken dataset stops before any model is loaded or file written.
        train_records, val_records, counts = load_datasets(data_args)
        resolve_resume(training_args)
        transformers.set_seed(training_args.seed)  # identical LoRA init on every rank: FSDP shards, it does not broadcast
        model, tokenizer = load_model_and_tokenizer(model_args, training_args)
        if training_args.packing:
            use_packing(model)
        examples, stats = build_datasets(train_records, val_records, tokenizer, model_args, training_args, data_args.train_on)
        if training_args.strategy == "fsdp":
            result, trainer = fsdp_lib.train(model, tokenizer, examples["train"], examples["val"], training_args, log_step), None
        else:
            result, trainer = train_with_trainer(model, tokenizer, examples, training_args)
        summary = save(model, trainer, tokenizer, model_args, data_args, training_args, counts, stats, result)
    except (record_lib.DataError, ModelError, UsageError, fsdp_lib.FsdpError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        # Leave together: a rank that tears gloo down while its peer is still writing can hang the
        # peer, and one left to interpreter shutdown can abort ("terminate called without an
        # active exception") after the work is done.
        dist.barrier()
        dist.destroy_process_group()
    if summary:
        logger.info(
            "done in %.0f s: eval loss %s -> %s, %s learned tokens/s; saved to %s",
            summary.wall_time_s, summary.eval_loss_initial, summary.eval_loss_final,
            summary.learned_tokens_per_second, training_args.output_dir,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
