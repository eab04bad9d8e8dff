"""Time `python -m data_gen translate` at scale against the stand-in server: one request at a time,
--workers N, and the Batch API end to end.

    python -m data_gen.bench_scale                         # 2,000 records, 0.5 s per answer (~4 min)
    python -m data_gen.bench_scale --limit 500 --skip sequential

The stand-in (tests/data_gen/fake_openai_server.py) runs as its own process, answering each chat
request after --delay seconds, like a remote model; the translate runs are separate processes too,
timed from start to exit, as a user would run them. Records come from --data_path (ChatDoctor's
English GenMedGPT-5k, read in place), --limit of them, --batch_size per request. Each output is checked:
every source index once, in order. The stand-in answers a batch's lines without the delay, so the
Batch API row measures our side (build, upload, poll, download, check, write), not OpenAI's queue,
which takes minutes to 24 h. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer import ROOT

STAND_IN = ROOT / "tests" / "data_gen" / "fake_openai_server.py"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chatdoctor5k.json"
MODES = ("sequential", "workers", "batch_api")


def start_stand_in(delay: float) -> tuple[subprocess.Popen, str]:
    """The stand-in on a free port; returns (process, base URL) once it listens."""
    proc = subprocess.Popen([sys.executable, str(STAND_IN), "--port", "0", "--delay", str(delay)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "fake OpenAI server on URL (Ctrl-C to stop)", printed once bound
    if " on " not in line:
        proc.kill()
        raise SystemExit(f"error: the stand-in did not start ({STAND_IN}): {line!r}")
    return proc, line.split(" on ", 1)[1].split()[0]


def translate(url: str, args: argparse.Namespace, out: Path, *extra: str) -> float:
    """One translate run; returns its wall time in seconds."""
    argv = [sys.executable, "-m", "data_gen", "translate", "--base_url", url, "--model", "fake", "--data_path",
            str(args.data_path), "--out", str(out), "--limit", str(args.n), "--batch_size", str(args.batch_size),
            "--no_progress", *extra]
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: translate exited {result.returncode}:\n{result.stderr[-2000:]}")
    indices = [json.loads(line)["source_index"] for line in out.read_text(encoding="utf-8").splitlines()]
    if indices != list(range(args.n)):
        raise SystemExit(f"error: {out} does not hold source indices 0..{args.n - 1} once each, in order")
    return seconds


def run(args: argparse.Namespace) -> list[dict]:
    extra = {"sequential": (), "workers": ("--workers", str(args.workers)),
             "batch_api": ("--batch_api", "--poll_interval", str(args.poll_interval))}
    rows = []
    proc, url = start_stand_in(args.delay)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in MODES:
                if mode in args.skip:
                    continue
                seconds = translate(url, args, Path(tmp) / f"{mode}.jsonl", *extra[mode])
                rows.append({"mode": mode, "seconds": seconds, "records_per_s": args.n / seconds})
                print(f"{mode}: {seconds:.1f} s", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    requests = -(-args.n // args.batch_size)
    label = {"sequential": "one request at a time", "workers": f"`--workers {args.workers}`",
             "batch_api": f"`--batch_api` (poll every {args.poll_interval:g} s)"}
    base = next((r["seconds"] for r in rows if r["mode"] == "sequential"), None)
    lines = [f"{args.n:,} records, {requests:,} requests of {args.batch_size}, {args.delay:g} s per answer",
             "", "| mode | seconds | records/s | speed-up |", "|---|---:|---:|---:|"]
    for r in rows:
        # The stand-in answers batch lines without the delay: a speed-up would compare unlike things.
        speed_up = f"{base / r['seconds']:.1f}x" if base and r["mode"] != "batch_api" else "-"
        lines.append(f"| {label[r['mode']]} | {r['seconds']:.1f} | {r['records_per_s']:.1f} | {speed_up} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", "--n", dest="n", metavar="LIMIT", type=int, default=2000, help="records to translate (default %(default)s)")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds per answer (default %(default)s)")
    parser.add_argument("--workers", type=int, default=16, help="--workers of the parallel run (default %(default)s)")
    parser.add_argument("--batch_size", type=int, default=5, help="records per request (default %(default)s)")
    parser.add_argument("--poll_interval", type=float, default=1.0, help="Batch API status checks, seconds "
                        "(default %(default)s)")
    parser.add_argument("--data_path", type=Path, default=DEFAULT_DATA, help="English Alpaca records "
                        "(default: ../shared/data/chatdoctor5k.json)")
    parser.add_argument("--skip", nargs="*", choices=MODES, default=[], help="modes not to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.data_path.exists():
        print(f"error: {args.data_path} not found; pass --data_path with English Alpaca records.", file=sys.stderr)
        return 2
    if args.n < 1 or args.workers < 1 or args.batch_size < 1 or args.delay < 0 or args.poll_interval <= 0:
        print("error: --limit, --workers and --batch_size must be at least 1, --delay 0 or more, --poll_interval more "
              "than 0.", file=sys.stderr)
        return 2
    print(table(run(args), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
