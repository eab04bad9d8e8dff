"""What this machine computes fast, measured rather than read from CPU flags: VMs misreport them, and a CPU
without AVX-512-BF16/AMX emulates bf16 at ~1 % of fp32 speed. Used by training, serving and benchmarks.
And the one thread all torch work of serving, evaluation and the benchmarks runs on (`on_torch_thread`)."""

from __future__ import annotations

import functools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch


def matmul_gflops(dtype: torch.dtype, n: int = 256, seconds: float = 0.05) -> float:
    """Measured CPU matmul throughput. Flags lie in VMs: a CPU may list avx512_bf16 yet run bf16 fast,
    or lack it and emulate bf16 at ~1% of fp32 speed, so we time it (~0.1 s)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    start, reps = time.perf_counter(), 0
    while reps < 2 or time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def cpu_has_fast_bf16() -> tuple[bool, str]:
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    return bf16 >= 0.5 * fp32, f"bf16 matmul {bf16:.1f} GFLOP/s vs fp32 {fp32:.1f} GFLOP/s"


@functools.cache
def fast_cpu_dtype() -> tuple[torch.dtype, str]:
    """bf16 where this CPU multiplies bf16 at least half as fast as fp32 (AVX-512-BF16, AMX), else fp32:
    CPUs without such units emulate bf16 at ~1% of fp32 speed. Timed (~0.1 s), since VMs misreport flags."""
    fast, measured = cpu_has_fast_bf16()
    return (torch.bfloat16 if fast else torch.float32), measured


def call_ms(fn, onednn: bool | None = None, repeats: int = 5) -> float:
    """Mean milliseconds of fn() over `repeats` calls after one warm-up, with oneDNN on or off if `onednn` says
    (restored after)."""
    before = torch.backends.mkldnn.enabled
    if onednn is not None:
        torch.backends.mkldnn.enabled = onednn
    try:
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats * 1000
    finally:
        torch.backends.mkldnn.enabled = before


@functools.cache
def one_token_faster_without_onednn(rows: int = 16384, cols: int = 2048) -> tuple[bool, str]:
    """Whether a bf16 matrix-vector product (every linear layer of a one-token decode step) is faster
    without oneDNN. ATen's own bf16 kernel reads the weights at memory bandwidth; oneDNN, much faster for a
    prompt's matrix-matrix products, can fall well short of it there (BENCHMARKS.md, inference). Timed on a
    64 MB matrix, larger than the caches (~0.1 s)."""
    weight = torch.full((rows, cols), 0.01, dtype=torch.bfloat16)
    x = torch.full((1, 1, cols), 0.01, dtype=torch.bfloat16)

    def ms(onednn: bool) -> float:
        return call_ms(lambda: torch.nn.functional.linear(x, weight), onednn)

    with_onednn, without = ms(True), ms(False)
    return without < 0.8 * with_onednn, f"bf16 matrix-vector {without:.2f} ms without oneDNN, {with_onednn:.2f} ms with"


# All torch work of the chat models (loading, generating) runs on this one thread. OpenMP gives each
# thread that runs parallel ops its own team of workers; once two teams exist there are more threads
# than cores, and libgomp then makes workers sleep between ops instead of spinning. So generating on a
# new thread per answer, beside the team of the thread that loaded the model, slows decoding (by ~40 %
# on the 2-core machine of BENCHMARKS.md).
_torch_thread_id: list[int] = []  # set by the thread itself when it starts


def _new_torch_thread() -> ThreadPoolExecutor:
    _torch_thread_id.clear()
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch",
                              initializer=lambda: _torch_thread_id.append(threading.get_ident()))


TORCH_THREAD = _new_torch_thread()


def _after_fork_in_child() -> None:
    # A forked child (ZeroGPU runs each @spaces.GPU call in one) has no threads but the forking one, while
    # the executor still counts its worker: work submitted there would wait forever. A fresh executor runs it.
    global TORCH_THREAD
    TORCH_THREAD = _new_torch_thread()


os.register_at_fork(after_in_child=_after_fork_in_child)


def on_torch_thread(fn, *args, **kwargs):
    """fn(*args, **kwargs), run on TORCH_THREAD: serving's generation, evaluation's losses, and the benchmarks,
    which time torch work as the app runs it.
    Called from TORCH_THREAD itself it runs fn directly: waiting on its own queue would deadlock."""
    if threading.get_ident() in _torch_thread_id:
        return fn(*args, **kwargs)
    return TORCH_THREAD.submit(fn, *args, **kwargs).result()
