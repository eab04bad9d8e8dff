"""stanford_alpaca's command line, accepted as written: flags transformers 5 renamed (`--evaluation_strategy`,
`--warmup_ratio`, `--fsdp`), GPU-only flags on a CPU (`--tf32` dropped, `--bf16` kept only where this CPU
runs bf16 fast) and preset files (`--config f.yaml`, whose flags the command line overrides).
`trainer.train.parse_args` runs these rewrites before HfArgumentParser sees the flags."""

from __future__ import annotations

import logging
import os

import torch

from trainer.hw import cpu_has_fast_bf16

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """A flag or flag combination that cannot work; the message names the flag and the fix."""


def accelerate_fsdp() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def expand_config(argv: list[str]) -> list[str]:
    """Turn `--config f.yaml` into flags placed before the command line's, so the command line wins."""
    path = take_value(argv, "--config")
    if path is None:
        return argv
    import yaml

    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror}.") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag names to values.")
    flags = []
    for key, value in cfg.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(str(v) for v in values)]
    return flags + argv


def take_value(argv: list[str], flag: str) -> str | None:
    """Remove `flag VALUE` / `flag=VALUE` from argv (all occurrences); return the last value."""
    value = None
    i = 0
    while i < len(argv):
        if argv[i] == flag:
            value = argv[i + 1] if i + 1 < len(argv) else ""
            del argv[i : i + 2]
        elif argv[i].startswith(flag + "="):
            value = argv[i].split("=", 1)[1]
            del argv[i]
        else:
            i += 1
    return value


def take_bool(argv: list[str], flag: str) -> bool | None:
    """Remove a boolean flag (`--bf16`, `--bf16 True`, `--bf16=false`) and return its value."""
    value = None
    i = 0
    while i < len(argv):
        if argv[i] == flag:
            nxt = argv[i + 1].lower() if i + 1 < len(argv) else ""
            if nxt in ("true", "false", "1", "0", "yes", "no"):
                value = nxt in ("true", "1", "yes")
                del argv[i : i + 2]
            else:
                value = True
                del argv[i]
        elif argv[i].startswith(flag + "="):
            value = argv[i].split("=", 1)[1].lower() in ("true", "1", "yes")
            del argv[i]
        else:
            i += 1
    return value


def rename_legacy(argv: list[str]) -> list[str]:
    """transformers 5 renamed or removed flags that stanford_alpaca's command still uses."""
    # --fsdp goes to our own field: trainer/fsdp.py shards, not the Trainer (which degrades to DDP on CPUs).
    renames = {"--evaluation_strategy": "--eval_strategy", "--warmup_ratio": "--warmup_steps", "--fsdp": "--fsdp_mode"}
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(renames.get(name, name) + eq + value)
    ratio = take_value(out, "--warmup_steps")
    if ratio is not None:
        if "--warmup_ratio" in argv and float(ratio) >= 1:
            raise UsageError(f"--warmup_ratio {ratio} must be below 1 (it is a share of the training steps).")
        out += ["--warmup_steps", ratio]
    return out


def cpu_adjust(argv: list[str], fast_bf16=cpu_has_fast_bf16) -> list[str]:
    """Keep GPU-oriented flags from stopping (or crawling through) a CPU run; say so in a warning."""
    use_cpu = bool(take_bool(list(argv), "--use_cpu"))
    on_gpu = torch.cuda.is_available() and not use_cpu
    tf32 = take_bool(argv, "--tf32")
    if tf32 is not None:
        if on_gpu:
            argv += ["--tf32", str(tf32)]
        elif tf32:
            logger.warning("--tf32 ignored: TF32 is a CUDA (Ampere+) feature and this run is on the CPU.")
    bf16 = take_bool(argv, "--bf16")
    if bf16 and not on_gpu:
        fast, measured = fast_bf16()
        if fast:
            logger.info("--bf16 on CPU: this CPU runs bf16 fast (%s)", measured)
            argv += ["--bf16", "True"] + ([] if use_cpu else ["--use_cpu", "True"])
        else:
            logger.warning(
                "--bf16 ignored: this CPU emulates bf16 (%s; it lacks AVX-512-BF16/AMX), so bf16 "
                "training would be many times slower. Training in fp32.", measured,
            )
    elif bf16 is not None:
        argv += ["--bf16", str(bf16)]
    fsdp = any(a.startswith("--fsdp_mode") for a in argv) or accelerate_fsdp()
    if not on_gpu and not use_cpu and not fsdp and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Without use_cpu the Trainer leaves CPU processes unconnected under torchrun: each would
        # train alone on all the data and write the same files. With it they run DDP over gloo.
        argv += ["--use_cpu", "True"]
    return argv
