"""ZeroGPU Spaces: the GPU is lent per call of a function decorated with `@spaces.GPU`, for at most `duration`
seconds, and only to Gradio requests (the visitor's quota travels with the request).

When the `spaces` package is importable (it is preinstalled on Spaces), `gpu()` decorates the demo's
answer function, with a duration from the request's `max_new_tokens`, and app.py launches the Gradio
way (`demo.launch()`, as ZeroGPU requires). Elsewhere `gpu()` returns the function unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

from trainer.defaults import GENERATION

logger = logging.getLogger(__name__)

# Seconds asked per call: loading a turn onto the GPU, then the answer at a pessimistic decode speed for a 7B model
# on a shared A100 slice. Asking less than needed cuts the answer off; asking more lowers the visitor's priority.
BASE_SECONDS = 10
SECONDS_PER_TOKEN = 1 / 20
MAX_SECONDS = 120


def available() -> bool:
    """Whether the `spaces` package is importable. This repository's own `spaces/` folder (Space configs, no
    __init__.py) would import as an empty namespace package from the repository root: that one does not count."""
    spec = importlib.util.find_spec("spaces")
    return spec is not None and spec.origin not in (None, "namespace")


def seconds_for(max_new_tokens) -> int:
    """The GPU time to ask for an answer of up to `max_new_tokens` tokens."""
    try:
        tokens = max(int(max_new_tokens), 1)
    except (TypeError, ValueError):
        tokens = GENERATION["max_new_tokens"]
    return int(min(BASE_SECONDS + tokens * SECONDS_PER_TOKEN, MAX_SECONDS))


def gpu(fn, max_new_tokens_arg: int):
    """`fn` under `@spaces.GPU(duration=...)` when `spaces` is importable, else `fn` itself.

    `max_new_tokens_arg` is the position of max_new_tokens among fn's arguments; ZeroGPU calls the
    duration function with the same arguments as `fn`."""
    if not available():
        return fn
    spaces = importlib.import_module("spaces")

    def duration(*args, **kwargs) -> int:
        return seconds_for(kwargs.get("max_new_tokens", args[max_new_tokens_arg] if len(args) > max_new_tokens_arg
                                                           else GENERATION["max_new_tokens"]))

    logger.info("ZeroGPU: answers run under @spaces.GPU (%d-%d s per answer)", seconds_for(1), MAX_SECONDS)
    return spaces.GPU(duration=duration)(fn)
