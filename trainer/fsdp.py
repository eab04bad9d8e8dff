"""Fully sharded data parallel training (FSDP2) on CUDA (nccl) and on CPU (gloo).

    torchrun --nproc_per_node=2 -m trainer.train --fsdp "full_shard auto_wrap" \
        --data_path ../shared/data/GenMedGPT-5k-id.json --max_steps 10 --output_dir out

Why a loop of our own rather than the HF Trainer: with `use_cpu` the Trainer and accelerate
silently run plain DDP when `--fsdp` is given, every rank holding the whole model. Here each
decoder layer (and then the root) goes through `torch.distributed.fsdp.fully_shard`, so every rank
holds 1/world_size of each parameter, on any device. The loop keeps the Trainer's semantics that
matter for comparable runs: the same AdamW, scheduler, warmup, gradient clipping and accumulation,
and the loss averaged over all learned tokens of the global batch.

Checkpoints: `checkpoint-N/` holds the sharded model and optimizer state (torch.distributed.checkpoint)
plus the step, scheduler and log, and resumes with `--resume_from_checkpoint`. The final model is
consolidated once, on rank 0's CPU, into a normal safetensors checkpoint (or a LoRA adapter).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from trainer import packing
from trainer.batches import DataCollator, SupervisedDataset, batch_counts, learned_loss_sum, to_device

logger = logging.getLogger(__name__)

FSDP_OPTIONS = {"full_shard", "shard_grad_op", "auto_wrap", "offload"}


class FsdpError(Exception):
    """An FSDP configuration that cannot work; the message names the fix."""


def init_process_group(args) -> None:
    """nccl between GPUs, gloo between CPU processes; torchrun's environment says who is who."""
    if not dist.is_initialized():
        on_gpu = torch.cuda.is_available() and not args.use_cpu
        dist.init_process_group(backend="nccl" if on_gpu else "gloo")


def parse_mode(mode: str) -> set[str]:
    options = set(mode.replace(",", " ").split())
    unknown = options - FSDP_OPTIONS
    if unknown:
        raise FsdpError(f"--fsdp {mode!r}: unknown option(s) {', '.join(sorted(unknown))}; use e.g. \"full_shard auto_wrap\".")
    if not options & {"full_shard", "shard_grad_op"}:
        raise FsdpError(f"--fsdp {mode!r}: say how to shard: full_shard or shard_grad_op.")
    return options


def layer_classes(model: torch.nn.Module) -> list[str]:
    """Names of the repeated blocks of a model (the children of its ModuleLists)."""
    names = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            names += [type(child).__name__ for child in module]
    return list(dict.fromkeys(names))


def detect_layer_class(model: torch.nn.Module, requested: str | None = None) -> type:
    """The decoder layer class to shard: the one named, or the model's `_no_split_modules`."""
    present = {type(m).__name__: type(m) for m in model.modules()}
    if requested:
        if requested not in present:
            raise FsdpError(
                f"--fsdp_transformer_layer_cls_to_wrap {requested}: this model has no such layer. "
                f"Its layer classes: {', '.join(layer_classes(model)) or '(none)'}. "
                "Drop the flag to detect it from the model."
            )
        return present[requested]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in getattr(base, "_no_split_modules", None) or []:
        if name in present:
            return present[name]
    repeated = layer_classes(model)
    if len(repeated) == 1:
        return present[repeated[0]]
    raise FsdpError(
        f"Cannot tell which layer to shard in {type(base).__name__}: pass "
        f"--fsdp_transformer_layer_cls_to_wrap (its layer classes: {', '.join(repeated) or '(none)'})."
    )


def local_numel(model: torch.nn.Module) -> int:
    """Parameter elements this rank holds in memory (a DTensor's local shard, or the whole tensor)."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())


@dataclass
class RunResult:
    """What a training run reports to the summary, whichever loop ran it."""

    log_history: list[dict] = field(default_factory=list)
    global_step: int = 0
    epoch: float = 0.0
    wall: float = 0.0
    parallel: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)  # per optimizer step: seconds + batch counts, all ranks

    def total(self, key: str) -> int:
        return sum(s[key] for s in self.steps)


def gather(value) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def sum_steps(steps: list[dict]) -> list[dict]:
    """Per-step counts summed over ranks (rank 0's seconds), for the summary."""
    per_rank = gather(steps)
    return [{**mine, **{k: sum(r[i][k] for r in per_rank) for k in mine if k != "seconds"}} for i, mine in enumerate(per_rank[0])]


def all_sum(*values: float, device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def shard(model, args, wrap_name: str | None):
    """fully_shard every decoder layer, then the root; returns (layer class name, units wrapped)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    options = parse_mode(args.fsdp_mode)
    layer_cls = detect_layer_class(model, wrap_name)
    device_type = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    kwargs = dict(mesh=mesh, reshard_after_forward="full_shard" in options)
    if args.bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if "offload" in options:
        if device_type == "cpu":
            logger.warning("--fsdp offload ignored: parameters already live in CPU memory")
        else:
            kwargs["offload_policy"] = CPUOffloadPolicy()
    units = 0
    if "auto_wrap" in options:
        for module in list(model.modules()):
            if isinstance(module, layer_cls):
                fully_shard(module, **kwargs)
                units += 1
    fully_shard(model, **kwargs)
    return layer_cls.__name__, units + 1


def _evaluate(model, val_examples, collator, args, device) -> float:
    """The Trainer's eval loss: each batch's mean over its learned tokens, averaged over examples, on
    the same length-sorted batches, so `eval_loss` means one thing in every train_summary.json.
    Batches go round-robin to ranks; a rank short of batches runs a zero-weight batch so that every
    rank makes the same collective calls."""
    rank, world = dist.get_rank(), dist.get_world_size()
    ordered, size = sorted(val_examples, key=lambda e: len(e["input_ids"])), args.per_device_eval_batch_size
    batches = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    mine = batches[rank::world]
    rounds = math.ceil(len(batches) / world)
    total = count = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(rounds):
            real = i < len(mine)
            batch = to_device(collator(mine[i] if real else batches[0]), device)
            loss, n = learned_loss_sum(model, batch, args.learned_logits_only)
            if real:
                examples = len(mine[i])
                total += float(loss) / max(n, 1) * examples
                count += examples
    model.train()
    total, count = all_sum(total, count, device=device)
    return total / max(count, 1)


def train(model, tokenizer, train_examples, val_examples, args, log_line) -> RunResult:
    """Train `model` sharded across the torchrun processes; returns what the summary needs."""
    recipe = _Recipe(model, val_examples, args, log_line)
    recipe.setup(tokenizer, train_examples)
    return recipe.train()


class _Recipe:
    """One FSDP run: `setup` builds its parts in a fixed order, `train` runs the steps (torchtune's recipe shape).

    Every rank runs the same methods in the same order, so their collective calls always pair up."""

    def __init__(self, model, val_examples, args, log_line):
        self.model, self.val_examples, self.args, self.log_line = model, val_examples, args, log_line
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.step = 0

    def setup(self, tokenizer, train_examples) -> None:
        warn_unsupported(self.args)
        self.device = self._setup_device()
        self.result = RunResult(parallel=self._setup_sharding())
        self.collator, self.sampler, self.loader = self._setup_data(tokenizer, train_examples)
        self.accum = self.args.gradient_accumulation_steps
        self.steps_per_epoch = math.ceil(len(self.loader) / self.accum)  # an epoch's last step may have fewer micro-batches
        self.max_steps = (self.args.max_steps if self.args.max_steps > 0
                          else math.ceil(self.args.num_train_epochs * self.steps_per_epoch))
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # this rank's shards of them
        self.optimizer, self.scheduler = self._setup_optimizer()
        if self.args.resume_from_checkpoint:
            self.step, self.result.log_history = _load_checkpoint(
                self.args.resume_from_checkpoint, self.model, self.optimizer, self.scheduler)
            logger.info("resumed from %s at step %d", self.args.resume_from_checkpoint, self.step)
        elif self.val_examples:
            self._evaluate_and_log()  # the curve's first point: the model before any step

    def _setup_device(self) -> torch.device:
        if not torch.cuda.is_available() or self.args.use_cpu:
            return torch.device("cpu")
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        # No model.to(device): fully_shard moves one unit at a time and keeps only its shard there,
        # so the whole model never sits on one GPU.
        torch.cuda.set_device(device)
        return device

    def _setup_sharding(self) -> dict:
        """Shard the model; returns what the summary reports about the sharding."""
        total_params = sum(p.numel() for p in self.model.parameters())
        wrapped_class, units = shard(self.model, self.args, self.args.fsdp_transformer_layer_cls_to_wrap)
        parallel = {
            "world_size": self.world, "strategy": "fsdp", "fsdp": self.args.fsdp_mode, "wrapped_class": wrapped_class,
            "wrapped_units": units, "total_params": total_params, "local_params_per_rank": gather(local_numel(self.model)),
        }
        logger.info("fsdp: %d ranks, %d units of %s + root, %s parameter elements per rank (of %d)",
                    self.world, units - 1, wrapped_class, parallel["local_params_per_rank"], total_params)
        return parallel

    def _setup_data(self, tokenizer, train_examples):
        """(collator, sampler, loader) of this rank's micro-batches."""
        args = self.args
        collator = packing.collator() if args.packing else DataCollator(tokenizer.pad_token_id)
        dataset = SupervisedDataset(train_examples)
        if args.group_by_length:
            from transformers.trainer_pt_utils import DistributedLengthGroupedSampler

            sampler = DistributedLengthGroupedSampler(args.per_device_train_batch_size * args.gradient_accumulation_steps,
                                                      dataset, num_replicas=self.world, rank=self.rank, seed=args.seed)
        else:
            # Rank r takes positions r, r+world, ... of one seeded permutation, so for the same global batch
            # the optimizer sees the same examples whatever the number of ranks.
            sampler = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=args.seed)
        loader = DataLoader(dataset, batch_size=args.per_device_train_batch_size, sampler=sampler, collate_fn=collator)
        return collator, sampler, loader

    def _setup_optimizer(self):
        """The Trainer's AdamW (no weight decay on biases and norms) and learning-rate schedule."""
        from transformers import get_scheduler

        args = self.args
        optimizer = torch.optim.AdamW(
            [{"params": [p for p in self.params if p.ndim >= 2], "weight_decay": args.weight_decay},
             {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0}],
            lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
        )
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(self.max_steps),
                                  num_training_steps=self.max_steps)
        return optimizer, scheduler

    def train(self) -> RunResult:
        start = time.perf_counter()
        self.model.train()
        progress = _progress(self.max_steps, self.step, self.rank)
        micro = _micro_batches(self.loader, self.sampler, epoch=self.step // self.steps_per_epoch,
                               skip=(self.step % self.steps_per_epoch) * self.accum)
        while self.step < self.max_steps:
            entry, ms = self._train_step(self._next_batches(micro))
            self._log_evaluate_save(entry, ms)
            if progress:
                progress.update(1)
        if progress:
            progress.close()
        if self.val_examples and not any(h.get("step") == self.step and "eval_loss" in h for h in self.result.log_history):
            self._evaluate_and_log()  # the curve's last point, whatever the evaluation interval
        return self._finish(wall=time.perf_counter() - start)

    def _next_batches(self, micro) -> list[dict]:
        """The micro-batches of one optimizer step: `accum` of them, fewer at an epoch's end."""
        batches = []
        for index, batch in micro:
            batches.append(batch)
            if len(batches) == self.accum or index == len(self.loader) - 1:
                break
        return batches

    def _train_step(self, batches) -> tuple[dict, float]:
        """One optimizer step; (its log entry, its milliseconds)."""
        tic = time.perf_counter()
        counts = [batch_counts(b) for b in batches]
        step_counts = {k: sum(c[k] for c in counts) for k in counts[0]}
        (global_learned,) = all_sum(step_counts["learned"], device=self.device)
        total = 0.0
        for b in batches:
            loss, _ = learned_loss_sum(self.model, to_device(b, self.device), self.args.learned_logits_only)
            # Gradients are averaged over ranks, so scale by world / global count for a per-token mean.
            (loss * self.world / max(global_learned, 1)).backward()
            total += float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.args.max_grad_norm) if self.args.max_grad_norm else None
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        (total,) = all_sum(total, device=self.device)
        train_loss = total / max(global_learned, 1)
        ms = 1000 * (time.perf_counter() - tic)
        self.result.steps.append({"seconds": ms / 1000, **step_counts})
        entry = {"loss": train_loss, "learning_rate": lr, "step": self.step, "epoch": self.epoch}
        if grad_norm is not None:
            entry["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        return entry, ms

    def _log_evaluate_save(self, entry: dict, ms: float) -> None:
        """What is due after a step, at the Trainer's intervals: the log line, an evaluation, a checkpoint."""
        args, step = self.args, self.step
        if _due("steps", args.logging_steps, step, self.max_steps, self.steps_per_epoch) or step == self.max_steps:
            self.result.log_history.append(entry)
            self.log_line(step, loss=entry["loss"], lr=entry["learning_rate"], ms=ms)
        if self.val_examples and _due(args.eval_strategy, args.eval_steps or args.logging_steps, step, self.max_steps,
                                      self.steps_per_epoch):
            self._evaluate_and_log()
        if _due(args.save_strategy, args.save_steps, step, self.max_steps, self.steps_per_epoch):
            _save_checkpoint(args, step, self.model, self.optimizer, self.scheduler, self.result.log_history)

    def _evaluate_and_log(self) -> None:
        eval_loss = _evaluate(self.model, self.val_examples, self.collator, self.args, self.device)
        self.result.log_history.append({"eval_loss": eval_loss, "step": self.step, "epoch": self.epoch})
        self.log_line(self.step, eval_loss=eval_loss)

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    def _finish(self, wall: float) -> RunResult:
        """The result, with every rank's step counts summed."""
        self.result.wall = wall
        self.result.global_step, self.result.epoch = self.step, self.epoch
        self.result.steps = sum_steps(self.result.steps)
        return self.result


def _micro_batches(loader, sampler, epoch: int, skip: int):
    """(index in epoch, batch) forever, starting `skip` micro-batches into `epoch` (for resuming)."""
    while True:
        sampler.set_epoch(epoch)
        for index, batch in enumerate(loader):
            if index >= skip:
                yield index, batch
        skip, epoch = 0, epoch + 1


def _due(strategy, every, step, max_steps, steps_per_epoch) -> bool:
    """The Trainer's interval rules: "steps" every N (N < 1 is a share of max_steps), or "epoch"."""
    if strategy == "epoch":
        return step % steps_per_epoch == 0
    if strategy != "steps" or not every:
        return False
    every = math.ceil(every * max_steps) if every < 1 else int(every)
    return step % max(every, 1) == 0


# Trainer flags this loop does not implement; a non-default value gets a warning, not silence.
UNSUPPORTED = ("optim", "fp16", "activation_checkpointing", "gradient_checkpointing", "torch_compile", "label_smoothing_factor",
               "lr_scheduler_kwargs", "dataloader_num_workers", "load_best_model_at_end")


def warn_unsupported(args) -> None:
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(args)}

    def default(name):
        f = fields[name]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    # None, False, 0 and {} all mean "off": only a value that turns something on counts.
    ignored = [n for n in UNSUPPORTED if n in fields and getattr(args, n) != default(n) and (getattr(args, n) or default(n))]
    if getattr(args, "train_sampling_strategy", "random") not in ("random", "group_by_length"):
        ignored.append(f"train_sampling_strategy {args.train_sampling_strategy}")
    if ignored:
        logger.warning("ignored under --fsdp (the FSDP loop does not implement them): %s", ", ".join(f"--{n}" for n in ignored))


def _progress(total, done, rank):
    if rank != 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="fsdp steps")


def _save_checkpoint(args, step, model, optimizer, scheduler, log_history):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = os.path.join(args.output_dir, f"checkpoint-{step}")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    if dist.get_rank() == 0:
        torch.save(scheduler.state_dict(), os.path.join(path, "scheduler.pt"))
        with open(os.path.join(path, "trainer_state.json"), "w") as f:
            json.dump({"global_step": step, "log_history": log_history, "world_size": dist.get_world_size()}, f, indent=2)
        if args.save_total_limit:
            _rotate(args.output_dir, args.save_total_limit)
    dist.barrier()


def _rotate(output_dir, limit):
    checkpoints = sorted((d for d in os.listdir(output_dir) if d.startswith("checkpoint-")), key=lambda d: int(d.split("-")[1]))
    for old in checkpoints[:-limit]:
        shutil.rmtree(os.path.join(output_dir, old), ignore_errors=True)


def _load_checkpoint(path, model, optimizer, scheduler):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state_file = os.path.join(path, "trainer_state.json")
    if not os.path.exists(state_file):
        raise FsdpError(f"{path} is not an FSDP checkpoint of this trainer (missing trainer_state.json).")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
    with open(state_file) as f:
        saved = json.load(f)
    return saved["global_step"], saved["log_history"]


def save_consolidated(model, output_dir: str, trust_remote_code: bool = False) -> None:
    """Gather the full state dict onto rank 0's CPU (never whole on any accelerator) and save it there."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        if hasattr(model, "peft_config"):
            from peft import get_peft_model_state_dict

            model.save_pretrained(output_dir, state_dict=get_peft_model_state_dict(model, state_dict=full))
        else:
            from transformers import AutoModelForCausalLM

            with torch.device("meta"):
                plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32, trust_remote_code=trust_remote_code)
            plain.load_state_dict(full, assign=True)
            plain.tie_weights()
            plain.generation_config = model.generation_config
            plain.save_pretrained(output_dir)
    dist.barrier()
