"""This machine's peaks: matmul GFLOP/s in fp32 and bf16, memory read bandwidth; and how busy it is.

    python -m trainer.bench --part machine
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time

import torch

from trainer.bench.report import log
from trainer.hw import on_torch_thread


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
    }


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@functools.cache
def memory_bandwidth_gbs(mb: int = 512, device: str = "cpu", repeats: int = 7) -> float:
    """Read bandwidth: the median of `repeats` sums over an `mb` MB fp32 tensor. Decoding one token
    reads every weight once, and a sum is the same access pattern without the arithmetic. The median,
    not the best: on a shared VM a single pass can read far above the rate a decode sustains.
    Measured once per process, so the machine and inference parts report the same number."""
    def measure():
        x = torch.ones(mb * 2**20 // 4, device=device)
        x.sum()  # warm-up
        seconds = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            x.sum()
            _sync(device)
            seconds.append(time.perf_counter() - start)
        return x.numel() * 4 / statistics.median(seconds) / 1e9

    return on_torch_thread(measure)


def matmul_peak_gflops(dtype: torch.dtype, sizes: list[int]) -> tuple[float, int]:
    """(best GFLOP/s, its size) of square CPU matmuls; trainer.train's bf16 check times the same."""
    from trainer.hw import matmul_gflops

    return on_torch_thread(lambda: max((matmul_gflops(dtype, n, seconds=0.2), n) for n in sizes))


def bench_machine(args) -> dict:
    log("machine: matmul fp32 / bf16, memory bandwidth")
    fp32, fp32_n = matmul_peak_gflops(torch.float32, args.matmul_sizes)
    bf16, bf16_n = matmul_peak_gflops(torch.bfloat16, args.matmul_sizes)
    bandwidth = memory_bandwidth_gbs(args.bandwidth_mb, "cpu")
    return {
        "matmul_fp32_gflops": fp32, "matmul_bf16_gflops": bf16, "memory_bandwidth_gbs": bandwidth,
        "table": [
            {"measure": f"matmul fp32, best of n = {', '.join(map(str, args.matmul_sizes))} (n = {fp32_n})", "value": fp32, "unit": "GFLOP/s"},
            {"measure": f"matmul bf16, best of the same (n = {bf16_n})", "value": bf16, "unit": "GFLOP/s"},
            {"measure": f"memory read bandwidth (median of 7 sums over {args.bandwidth_mb} MB fp32)", "value": bandwidth, "unit": "GB/s"},
        ],
    }


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux), to tell whether others shared a part."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the training part's trainer.train runs)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime
