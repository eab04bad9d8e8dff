"""`make gpu-check`: does every CUDA branch of the project work on this GPU machine? One command, about ten minutes.

    make gpu-check       # no NVIDIA GPU: says so in one line. Else --install_only, `make prepare`, then the checks:
    python -m trainer.bench.gpu_check --skip_install --data_path ../shared/data/GenMedGPT-5k-id.json --output_dir out/gpu-check

Stages, in order; a failed stage is reported and the later ones still run where they can:
1. install: the CUDA build of the torch that requirements.txt pins, chosen from the driver's CUDA version and the GPUs'
   compute capability (`cuda_build`), unless the installed torch already sees the GPU; flash-attn only as a prebuilt
   wheel for that torch (none: `--packing` runs packed_sdpa instead of flash-attention's varlen kernel).
2. device: each GPU's name, memory and compute capability; the driver and its CUDA; torch, its CUDA, cuDNN, NCCL.
3. tests: `pytest -m gpu` (tests/gpu/), every CUDA branch with tiny models: passed, failed, skipped.
4. run: the alpaca-medis-270m preset (gemma3-270m, LoRA, bf16, packing) for --steps steps on one GPU; from its
   train_summary.json: learned tokens/s, seconds per step, CUDA peak memory; from its log, the attention that packed.
5. page: app.py serving that adapter answers one Indonesian question through gradio_client (`/ask`), timed.
6. report: report.json (every number) and report.md in --output_dir; the exit code is 0 only if every stage passed.

Torch is imported only after stage 1, which may replace it, and every later stage runs in processes of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from trainer import ROOT
from trainer.bench.report import log, markdown_table
from trainer.defaults import GENERATION

PRESET = "trainer/configs/alpaca-medis-270m.yaml"
QUESTION = "Saya demam tiga hari, badan pegal dan sakit kepala. Apa yang harus saya lakukan?"
INDEX = "https://download.pytorch.org/whl/{build}"
# The stable CUDA builds of torch BUILDS_OF (pytorch's RELEASE.md: "Release Compatibility Matrix" and "CUDA Support
# Matrix"), newest first: (build, its CUDA, the lowest compute capability it has kernels for, the highest or None
# where PTX covers newer GPUs). To be looked up again when requirements.txt moves the pin to another minor release.
BUILDS_OF = "2.13"
CUDA_BUILDS = (("cu130", (13, 0), (7, 5), None), ("cu126", (12, 6), (5, 0), (9, 0)))
# The oldest Linux driver of each CUDA major; a driver runs every minor release of its major (minor-version compatibility).
DRIVER_FOR_CUDA = {12: "525.60.13", 13: "580.65.06"}
# One process, one GPU: trainer.train refuses several (its Trainer would split batches with DataParallel).
ONE_GPU = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
TORCH_STATUS = ("import json, torch; print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda, "
                "'available': torch.cuda.is_available()}))")
FLASH_ATTN_STATUS = "import flash_attn; from flash_attn import flash_attn_varlen_func; print(flash_attn.__version__)"


class GpuCheckError(Exception):
    """A stage that failed; the message says what to do. `result` is what the stage measured all the same."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


@dataclass
class Gpus:
    """What nvidia-smi says about this machine."""

    names: list[str]
    capabilities: list[tuple[int, int]]  # empty where the driver cannot report them
    driver: str
    driver_cuda: tuple[int, int]


def version_text(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


def nvidia_smi() -> Gpus | None:
    """The GPUs nvidia-smi lists, or None when there is no nvidia-smi or no GPU."""
    def query(fields: str) -> list[list[str]] | None:
        try:
            result = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                                    text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        rows = [[cell.strip() for cell in line.split(",")] for line in result.stdout.splitlines() if line.strip()]
        return rows if result.returncode == 0 and rows else None

    # compute_cap is a field of drivers from 510 on; older ones list the GPUs without it.
    rows = query("name,driver_version,compute_cap") or [[*row, ""] for row in query("name,driver_version") or []]
    if not rows:
        return None
    header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
    cuda = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", header)
    if cuda is None:
        raise GpuCheckError("nvidia-smi lists a GPU but names no CUDA version in its header: reinstall the NVIDIA driver.")
    capabilities = [tuple(int(p) for p in cap.split(".")) for *_, cap in rows if re.fullmatch(r"\d+\.\d+", cap)]
    return Gpus([r[0] for r in rows], capabilities if len(capabilities) == len(rows) else [], rows[0][1],
                (int(cuda[1]), int(cuda[2])))


def cuda_build(driver_cuda: tuple[int, int], capabilities: list[tuple[int, int]]) -> tuple[str, str]:
    """(build, why): the newest CUDA build of torch whose CUDA major the driver runs and that has kernels for every GPU."""
    for build, cuda, lowest, highest in CUDA_BUILDS:
        if driver_cuda[0] >= cuda[0] and all(lowest <= cc and (highest is None or cc <= highest) for cc in capabilities):
            why = f"the driver runs CUDA {version_text(driver_cuda)}"
            if driver_cuda < cuda:
                why += f" (CUDA {version_text(cuda)} runs on it by minor-version compatibility)"
            if capabilities:
                why += f"; compute capability {', '.join(sorted({version_text(c) for c in capabilities}))}"
            return build, why
    builds = "; ".join(f"{b}: CUDA {version_text(c)} (driver >= {DRIVER_FOR_CUDA[c[0]]}), compute capability "
                       f"{version_text(lo)}" + (f" to {version_text(hi)}" if hi else " and newer") for b, c, lo, hi in CUDA_BUILDS)
    here = f"driver CUDA {version_text(driver_cuda)}" + (
        f", compute capability {', '.join(version_text(c) for c in capabilities)}" if capabilities else "")
    raise GpuCheckError(f"No CUDA build of torch {BUILDS_OF} runs on this machine ({here}). Its builds: {builds}. "
                        "Update the NVIDIA driver (or use a GPU one of them supports), then rerun `make gpu-check`.")


def pinned_torch() -> str:
    """The torch version requirements.txt pins (`torch==X`)."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if match := re.fullmatch(r"torch==([\w.]+)", line.split("#")[0].strip()):
            return match[1]
    raise GpuCheckError("requirements.txt pins no torch (a line `torch==X.Y.Z`).")


def python_says(code: str) -> str | None:
    """What `python -c code` prints in a fresh interpreter (the packages as installed now), or None if it fails."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return result.stdout.strip() if result.returncode == 0 else None


def pip(*args: str) -> int:
    log(f"gpu-check: pip {' '.join(args)}")
    return subprocess.run([sys.executable, "-m", "pip", *args]).returncode


def install(gpus: Gpus) -> dict:
    """Stage 1: torch's CUDA build for this driver (unless the installed torch sees the GPU), then flash-attn if a wheel fits."""
    pinned = pinned_torch()
    status = python_says(TORCH_STATUS)
    current = json.loads(status) if status else None
    if current and current["available"] and current["version"].split("+")[0] == pinned:
        result = {"torch": current["version"], "action": f"kept torch {current['version']}: it sees the GPU"}
    else:
        if not pinned.startswith(BUILDS_OF + "."):
            log(f"gpu-check: requirements.txt pins torch {pinned}, CUDA_BUILDS lists torch {BUILDS_OF}'s builds: if pip finds "
                "none, update CUDA_BUILDS in trainer/bench/gpu_check.py from pytorch's RELEASE.md")
        build, why = cuda_build(gpus.driver_cuda, gpus.capabilities)
        url = INDEX.format(build=build)
        log(f"gpu-check: installing torch {pinned}+{build} ({why})")
        if pip("install", f"torch=={pinned}+{build}", "--index-url", url):
            raise GpuCheckError(f"pip could not install torch=={pinned}+{build} from {url}. Install a CUDA build by hand "
                                "(README, GPUs), then run `make gpu-check` again.")
        status = python_says(TORCH_STATUS)
        current = json.loads(status) if status else None
        if not current or not current["available"]:
            raise GpuCheckError(f"torch {pinned}+{build} is installed but sees no GPU ({current}): check that the NVIDIA "
                                "driver loads (`nvidia-smi`) and that CUDA_VISIBLE_DEVICES does not hide the GPUs.")
        result = {"torch": current["version"], "action": f"installed torch {current['version']} from {url}: {why}"}
    result["flash_attn"] = install_flash_attn(result["torch"])
    return result


def install_flash_attn(torch_version: str) -> dict:
    """flash-attn as a prebuilt wheel for this torch, or why not (its source build takes an hour and a CUDA toolkit)."""
    version = python_says(FLASH_ATTN_STATUS)
    if version:
        return {"version": version, "note": "already installed"}
    python = f"Python {platform.python_version()}"
    # torch named again so that pip keeps this build rather than resolve flash-attn's `torch` requirement elsewhere.
    if pip("install", "--quiet", "--only-binary=:all:", "flash-attn", f"torch=={torch_version}"):
        return {"version": None, "note": f"no prebuilt flash-attn wheel for torch {torch_version} and {python}: --packing runs packed_sdpa"}
    version = python_says(FLASH_ATTN_STATUS)
    if version:
        return {"version": version, "note": "installed from a prebuilt wheel"}
    pip("uninstall", "--yes", "--quiet", "flash-attn")
    return {"version": None, "note": f"the flash-attn wheel does not load with torch {torch_version} and {python}; uninstalled: "
            "--packing runs packed_sdpa"}


def describe_device(gpus: Gpus | None, allow_cpu: bool) -> dict:
    """Stage 2 (torch imported here for the first time, after stage 1 may have replaced it)."""
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    if not cuda and not allow_cpu:
        raise GpuCheckError(f"torch {torch.__version__} sees no GPU although nvidia-smi lists one: run without --skip_install "
                            "(or install the CUDA build, README, GPUs).")
    properties = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "gpus": [{"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1), "compute_capability": f"{p.major}.{p.minor}"}
                 for p in properties],
        "count": len(properties),
        "driver": gpus.driver if gpus else None,
        "driver_cuda": version_text(gpus.driver_cuda) if gpus else None,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": version_text(torch.cuda.nccl.version()) if cuda else None,
        "bf16": torch.cuda.is_bf16_supported() if cuda else None,
        "transformers": transformers.__version__, "flash_attn": python_says(FLASH_ATTN_STATUS), "python": platform.python_version(),
    }


def run_logged(cmd: list[str], log_file: Path, env: dict | None = None) -> tuple[int, str]:
    """Run `cmd` from the repository root, its output shown as it comes and kept in `log_file`: (exit code, output)."""
    log(f"gpu-check: {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)}")
    lines = []
    with open(log_file, "w", encoding="utf-8") as f, subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            sys.stderr.write(line)
            f.write(line)
            lines.append(line)
    return proc.returncode, "".join(lines)


def junit_counts(path: Path) -> dict:
    """passed, failed, errors, skipped and the failed tests' ids, from pytest's --junitxml file."""
    root = ElementTree.parse(path).getroot()
    suites = list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    skip_reasons = sorted({s.get("message", "") for s in root.iter("skipped")})
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"], "failed": total["failures"],
            "errors": total["errors"], "skipped": total["skipped"], "seconds": round(sum(float(s.get("time", 0)) for s in suites), 1),
            "failed_tests": failed, "skip_reasons": skip_reasons}


def gpu_tests(out: Path) -> dict:
    """Stage 3: `pytest -m gpu`."""
    xml = out / "pytest.xml"
    xml.unlink(missing_ok=True)  # a report left by an earlier check is not this one's
    code, _ = run_logged([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider", f"--junitxml={xml}"],
                         out / "pytest.log")
    if not xml.exists():
        raise GpuCheckError(f"pytest exited {code} without a report; see {out / 'pytest.log'}.")
    counts = junit_counts(xml)
    if counts["failed"] or counts["errors"] or not counts["passed"]:
        raise GpuCheckError(f"{counts['failed']} failed, {counts['errors']} errors, {counts['passed']} passed: "
                            f"{', '.join(counts['failed_tests']) or 'see ' + str(out / 'pytest.log')}", result=counts)
    return counts


def training_run(args, out: Path) -> dict:
    """Stage 4: the preset for --steps steps on one GPU, in bf16 with packed rows."""
    from trainer.run_summary import RunSummary

    folder = out / "run"
    cmd = [sys.executable, "-m", "trainer.train", "--config", PRESET, *(["--model", args.model] if args.model else []),
           "--data_path", args.data_path, "--output_dir", str(folder), "--max_steps", str(args.steps), "--bf16", "True",
           "--packing", "True", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "True"]
    code, output = run_logged(cmd, out / "train.log", env=ONE_GPU)
    summary = RunSummary.read(folder) if code == 0 else None
    if summary is None:
        raise GpuCheckError(f"trainer.train exited {code}: {output.strip().splitlines()[-1] if output.strip() else ''} "
                            f"(whole log: {out / 'train.log'}).")
    attention = re.search(r"packing: one row per batch, attention (\S+)", output)
    t = summary.throughput
    return {
        "command": "python -m " + " ".join(cmd[2:]), "output_dir": str(folder), "model": summary.model, "method": summary.method,
        "steps": summary.global_step, "device": summary.device, "precision": summary.precision, "batching": t.batching,
        "attention": attention[1] if attention else None, "learned_tokens_per_second": t.learned_tokens_per_second,
        "tokens_per_second": t.tokens_per_second, "seconds_per_step": t.seconds_per_step,
        "cuda_peak_allocated_mb": t.cuda_peak_allocated_mb, "peak_rss_mb": t.peak_rss_mb, "padding_fraction": t.padding_fraction,
        "learned_tokens_trained": summary.learned_tokens_trained, "eval_loss_initial": summary.eval_loss_initial,
        "eval_loss_final": summary.eval_loss_final, "wall_time_s": summary.wall_time_s,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(server: subprocess.Popen) -> None:
    """End app.py: SIGTERM; then SIGINT, on which uvicorn quits without waiting for open streams to close (a Gradio
    queue's event stream stays open ~15 s after its answer); then SIGKILL."""
    for send, seconds in ((server.terminate, 1), (lambda: server.send_signal(signal.SIGINT), 10), (server.kill, 10)):
        send()
        try:
            server.wait(timeout=seconds)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def app_server(args: list[str], env: dict, timeout: float, output: list[str]):
    """`python app.py ARGS` on a free loopback port, as a user starts it; yields (its URL, seconds until it served its
    page) and stops it on exit. `output` receives its stdout and stderr lines as they come (read by a thread, so
    that the pipe never fills). Also the ZeroGPU tests' way of starting the page."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tic = time.perf_counter()
    with subprocess.Popen([sys.executable, "app.py", *args, "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                          env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as server:
        reader = threading.Thread(target=output.extend, args=(server.stdout,), daemon=True)
        reader.start()
        try:
            while not _serves(httpx, url):
                if server.poll() is not None or time.perf_counter() - tic > timeout:
                    why = f"exited {server.returncode}" if server.returncode is not None else f"did not serve {url} within {timeout} s"
                    raise GpuCheckError(f"app.py {' '.join(args)} {why}: {''.join(output)[-2000:]}")
                time.sleep(0.3)
            yield url, time.perf_counter() - tic
        finally:
            stop(server)
            reader.join(timeout=5)  # its last lines


def _serves(httpx, url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def page(args, out: Path, model: str) -> dict:
    """Stage 5: app.py serves `model`; one question through gradio_client's /ask, as a user of the page asks it."""
    from gradio_client import Client

    app_args = ["--model", model, "--feedback_file", str(out / "ratings.jsonl")]
    log(f"gpu-check: python app.py {' '.join(app_args)}")
    lines: list[str] = []
    try:
        with app_server(app_args, {**ONE_GPU, "GRADIO_ANALYTICS_ENABLED": "False"}, args.page_timeout, lines) as (url, started):
            tic = time.perf_counter()
            client = Client(url, verbose=False)
            answer = client.predict(message=args.question, max_new_tokens=args.max_new_tokens, api_name="/ask")
            seconds = time.perf_counter() - tic
            client.close()
    finally:
        (out / "page.log").write_text("".join(lines), encoding="utf-8")
    start = next((line for line in lines if line.startswith("alpaca-medis: ")), "")
    # "alpaca-medis: MODEL (DEVICE, DTYPE, ...), chat on URL ...": what ChatModel.load chose
    settings = match[1] if (match := re.match(r"alpaca-medis: \S+ \((.*)\), chat on ", start)) else None
    return {"model": model, "settings": settings, "device": settings.split(",")[0] if settings else None,
            "start_seconds": round(started, 1), "question": args.question, "max_new_tokens": args.max_new_tokens,
            "answer": answer, "answer_words": len(str(answer).split()), "seconds": round(seconds, 2)}


# ----------------------------------------------------------------------------------------------------- report


def passed(report: dict, allow_cpu: bool) -> bool:
    """Every stage that ran passed, and the run and the page used the GPU (or the CPU, where it is allowed)."""
    on_gpu = lambda device: bool(device) and (device.startswith("cuda") or allow_cpu)  # noqa: E731
    return (all(s["ok"] for s in report["stages"].values())
            and on_gpu((report.get("run") or {}).get("device")) and on_gpu((report.get("page") or {}).get("device")))


def device_line(d: dict) -> str:
    """The device stage in one line: the GPUs, the driver, torch and what it was built with."""
    gpus = "; ".join(f"{g['name']} ({g['memory_gb']} GB, compute capability {g['compute_capability']})" for g in d["gpus"])
    return (f"{d['count']} GPU(s){': ' + gpus if gpus else ''}; driver {d['driver']} (CUDA {d['driver_cuda']}); torch {d['torch']} "
            f"(CUDA {d['torch_cuda']}, cuDNN {d['cudnn']}, NCCL {d['nccl']}), transformers {d['transformers']}, "
            f"flash-attn {d['flash_attn'] or 'not installed'}, Python {d['python']}")


def report_markdown(report: dict) -> str:
    run, pg, tests = report.get("run") or {}, report.get("page") or {}, report.get("tests") or {}
    flash_attn = ((report.get("install") or {}).get("flash_attn") or {}).get("note")
    out = [f"# gpu-check: {'passed' if report['ok'] else 'FAILED'}", "", f"    {report['command']}", "",
           f"{report['date']}, {report['seconds']:.0f} s in all.",
           f"Device: {device_line(report['device']) if report.get('device') else 'unknown (the device stage failed)'}."
           + (f" flash-attn: {flash_attn}." if flash_attn else ""), "", "## Stages", "",
           markdown_table([{"stage": name, "ok": s["ok"], "seconds": s["seconds"], "note": s.get("note") or ""}
                           for name, s in report["stages"].items()])]
    if tests:
        counts = {k: tests.get(k) for k in ("passed", "failed", "errors", "skipped", "seconds")}
        out += ["", "## Tests (`pytest -m gpu`)", "", markdown_table([counts])]
        out += [f"- failed: `{t}`" for t in tests.get("failed_tests", [])] + [f"- skipped: {r}" for r in tests.get("skip_reasons", [])]
    if run:
        out += ["", f"## Run: {run['model']}, {run['method']}, {run['steps']} steps", "", f"    {run['command']}", "",
                markdown_table([{"measure": k.replace("_", " "), "value": v} for k, v in run.items()
                                if k not in ("command", "output_dir", "model", "method")])]
    if pg:
        out += ["", f"## Page: app.py --model {pg['model']} ({pg['settings']})", "",
                f"Started in {pg['start_seconds']} s; `/ask` answered in {pg['seconds']} s ({pg['answer_words']} words, "
                f"max_new_tokens {pg['max_new_tokens']}).", "", f"> {pg['question']}", "",
                *[f"    {line}" for line in str(pg["answer"]).splitlines()]]
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench.gpu_check", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--output_dir", default="out/gpu-check", help="folder for report.json, report.md and the logs")
    parser.add_argument("--data_path", default=None, help="records of the run (required unless --install_only): make gpu-check "
                        "passes $(DATA), GenMedGPT-5k-id; data/sample.jsonl is a tiny one")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps of the run (default %(default)s)")
    parser.add_argument("--model", default=None, help="base of the run (default: the preset's, gemma3-270m)")
    parser.add_argument("--question", default=QUESTION, help="what the page is asked")
    parser.add_argument("--max_new_tokens", type=int, default=GENERATION["max_new_tokens"],
                        help="the page's answer budget (default %(default)s, the page's own)")
    parser.add_argument("--page_timeout", type=float, default=300, help="seconds app.py may take to start")
    parser.add_argument("--install_only", action="store_true", help="stage 1 only (make gpu-check runs it before `make prepare`)")
    parser.add_argument("--skip_install", action="store_true", help="leave torch and flash-attn as installed")
    parser.add_argument("--skip_tests", action="store_true", help="leave out `pytest -m gpu`")
    # For the CPU test of this module: the run and the page on the CPU, no GPU required.
    parser.add_argument("--allow_cpu", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.data_path or args.install_only):
        parser.error("--data_path is required: the records of the run, e.g. ../shared/data/GenMedGPT-5k-id.json")
    start = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        gpus = nvidia_smi()
    except GpuCheckError as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    if gpus is None and not args.allow_cpu:
        print("gpu-check: nvidia-smi lists no NVIDIA GPU here: nothing to check (run it on a GPU machine).", file=sys.stderr)
        return 2
    report = {"ok": False, "command": "python -m trainer.bench.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": 0.0, "stages": {}}

    def stage(name: str, fn, *fn_args, skip: str | None = None, ok_skipped: bool = True):
        """Run one stage; its result goes into the report under `name`, its outcome under stages. A stage skipped on
        request counts as passed, one an earlier failure left out (`ok_skipped=False`) as failed."""
        if skip:
            report["stages"][name] = {"ok": ok_skipped, "seconds": 0.0, "note": skip}
            return None
        log(f"gpu-check: --- {name}")
        tic = time.perf_counter()
        try:
            report[name] = fn(*fn_args)
            report["stages"][name] = {"ok": True, "seconds": round(time.perf_counter() - tic, 1)}
        except GpuCheckError as e:
            report[name] = e.result
            report["stages"][name] = {"ok": False, "seconds": round(time.perf_counter() - tic, 1), "note": str(e)}
            log(f"gpu-check: {name} failed: {e}")
        except Exception as e:  # an unforeseen failure is this stage's result too: the report is still written
            traceback.print_exc()
            report["stages"][name] = {"ok": False, "seconds": round(time.perf_counter() - tic, 1), "note": f"{type(e).__name__}: {e}"}
            log(f"gpu-check: {name} failed: {type(e).__name__}: {e}")
        return report.get(name)

    # `make gpu-check` installs in a run of its own (--install_only, before `make prepare`), which leaves its outcome
    # in install.json for the report of the run that follows (--skip_install).
    installed = out / "install.json"
    if args.skip_install and installed.exists():
        earlier = json.loads(installed.read_text(encoding="utf-8"))
        report["install"], report["stages"]["install"] = earlier["install"], earlier["stage"]
    else:
        stage("install", install, gpus, skip="skipped (--skip_install)" if args.skip_install else "skipped (no GPU)" if gpus is None else None)
    if args.install_only:
        installed.write_text(json.dumps({"install": report.get("install"), "stage": report["stages"]["install"]}, indent=2) + "\n",
                             encoding="utf-8")
        return 0 if report["stages"]["install"]["ok"] else 1
    installed.unlink(missing_ok=True)  # used once: a later check installs afresh or says it skipped
    on_device = stage("device", describe_device, gpus, args.allow_cpu) is not None
    if on_device:
        log(f"gpu-check: {device_line(report['device'])}")
    not_run = None if on_device else "not run: the device stage failed"
    stage("tests", gpu_tests, out, skip=not_run or ("skipped (--skip_tests)" if args.skip_tests else None), ok_skipped=not not_run)
    run = stage("run", training_run, args, out, skip=not_run, ok_skipped=False)
    stage("page", page, args, out, run["output_dir"] if run else "", skip=None if run else not_run or "not run: the run failed",
          ok_skipped=False)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = passed(report, args.allow_cpu)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
    log(f"gpu-check: {'passed' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s; report in {out / 'report.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
