"""A stand-in OpenAI-compatible server for data_gen's tests, demos and benchmarks.

    python tests/data_gen/fake_openai_server.py --port 8765 [--delay 0.5] [--jitter 0.2] [--rate_limit 0.05]

POST /v1/chat/completions answers in OpenAI's response shape, with `usage` (words counted as
tokens); GET /v1/models lists one model. Unscripted, it plays a model: a generate prompt ("Buatlah
20 contoh ..." / "Write 20 new examples ...") gets a numbered list of varied Indonesian
doctor-patient records built from a template bank (so the duplicate filter keeps most of them), and
a translate prompt (a JSON array of records with "index") gets its records back "translated" by a
small English-to-Indonesian word map.

Load, as a real server has it: every answer waits `delay` seconds plus up to `jitter` more (so
concurrent answers finish out of order), and a share `rate_limit` of requests is refused with 429
and `Retry-After: retry_after`.

The Batch API, as OpenAI's: POST /v1/files (multipart upload), GET /v1/files[/ID[/content]],
POST /v1/batches, GET /v1/batches[/ID], POST /v1/batches/ID/cancel. A batch goes validating ->
in_progress -> finalizing -> completed (or failed, when a line is not a valid request), answering its
lines in a thread as the model would (without the delay), and writes an output file (status 200
lines) and an error file (the rest). Tests steer it: `batch_replies[custom_id] = Reply(...)` scripts
a line, `batch_gate.clear()` holds batches in_progress until `set()`, `expire_after = n` expires a
batch after n lines (the rest get batch_expired errors), `refuse_batches = "why"` fails every new
batch's validation, `lose_response["POST /v1/batches"] = 1`
does the work but answers 500 once (a reply lost on the way: the client cannot know it happened).

Tests script chat answers: `server.push(Reply(...), ...)` queues answers (a status code, a delay, a
finish reason, raw content, or a function of the request) used before the default behaviour, and
`server.requests` holds every chat request body received, retries included; `server.arrivals`
their (time.monotonic(), status) in arrival order, `server.max_in_flight` how many were answered at
once at most; `server.uploads` and `server.batches` what the Batch API endpoints were given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTRUCTION = "Jika Anda seorang dokter, silakan menjawab pertanyaan medis berdasarkan deskripsi pasien."


@dataclass
class Reply:
    content: str | Callable[[dict], str] | None = None  # None: the default behaviour answers
    status: int = 200
    delay: float = 0.0  # seconds before answering (beyond a client's timeout: a timeout)
    finish_reason: str = "stop"
    headers: dict = field(default_factory=dict)
    usage: bool = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # 16+ clients connect at once; the default backlog of 5 would refuse some


class FakeOpenAI:
    """The server; `with FakeOpenAI() as server:` runs it in a thread on 127.0.0.1 and a free port."""

    def __init__(self, port: int = 0, delay: float = 0.0, style: str = "numbered", seed: int = 0, model: str = "fake",
                 jitter: float = 0.0, rate_limit: float = 0.0, retry_after: float = 0.05):
        self.delay, self.style, self.model = delay, style, model
        self.jitter, self.rate_limit, self.retry_after = jitter, rate_limit, retry_after
        self.rng = random.Random(seed)
        self.load_rng = random.Random(seed + 1)  # latency and 429s: not the model's RNG
        self.replies: deque[Reply] = deque()
        self.requests: list[dict] = []
        self.arrivals: list[tuple[float, int]] = []  # (time.monotonic(), status) per chat request
        self.in_flight = self.max_in_flight = 0  # chat requests being answered now / at most at once
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}  # id -> file object, plus its "content"
        self.uploads: list[str] = []  # ids of files clients uploaded, in order
        self.batches: dict[str, dict] = {}  # id -> batch object
        self.batch_requests: list[dict] = []  # every batch line answered (its request body)
        self.batch_replies: dict[str, Reply] = {}  # custom_id -> scripted answer
        self.batch_gate = threading.Event()
        self.batch_gate.set()
        self.expire_after: int | None = None
        self.refuse_batches: str | None = None  # a reason: every new batch fails validation with it
        self.lose_response: dict[str, int] = {}  # "POST /v1/batches" -> how many replies to lose
        self._ids = itertools.count(1)
        self.httpd = _Server(("127.0.0.1", port), _handler(self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def push(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def close(self) -> None:
        self.batch_gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def next_reply(self, body: dict) -> Reply:
        with self.lock:
            self.requests.append(body)
            reply = self.replies.popleft() if self.replies else self._unscripted()
            self.arrivals.append((time.monotonic(), reply.status))
        return self._resolve(reply, body)

    def _unscripted(self) -> Reply:
        delay = self.delay + (self.load_rng.uniform(0, self.jitter) if self.jitter else 0.0)
        if self.rate_limit and self.load_rng.random() < self.rate_limit:
            return Reply(status=429, headers={"retry-after": f"{self.retry_after:g}"})
        return Reply(delay=delay)

    def _resolve(self, reply: Reply, body: dict) -> Reply:
        if reply.status != 200:
            return reply
        content = reply.content
        if callable(content):
            content = content(body)
        elif content is None:
            with self.lock:  # the model's RNG is shared by the handler threads
                content = self.answer(prompt_of(body))
        return Reply(content, reply.status, reply.delay, reply.finish_reason, reply.headers, reply.usage)

    def answer(self, prompt: str) -> str:
        """What the 'model' writes for a generate or translate prompt."""
        records = json_records(prompt)
        if records and all("index" in r for r in records):
            return json.dumps([translate_record(r) for r in records], ensure_ascii=False)
        m = re.search(r"(?:Buatlah|Write) (\d+)", prompt)
        n = int(m.group(1)) if m else 5
        return format_records([make_record(self.rng) for _ in range(n)], self.style)

    def completion(self, body: dict, reply: Reply) -> dict:
        """The chat.completion object for an answered request."""
        prompt_tokens, completion_tokens = len(prompt_of(body).split()), len(reply.content.split())
        answer = {
            "id": f"chatcmpl-fake{next(self._ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                         "finish_reason": reply.finish_reason}],
        }
        if reply.usage:
            answer["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                               "total_tokens": prompt_tokens + completion_tokens}
        return answer

    # ------------------------------------------------------------------------------ Batch API

    def add_file(self, filename: str, purpose: str, content: bytes) -> dict:
        with self.lock:
            file = {"id": f"file-fake{next(self._ids)}", "object": "file", "bytes": len(content),
                    "created_at": int(time.time()), "filename": filename, "purpose": purpose, "status": "processed"}
            self.files[file["id"]] = {**file, "content": content}
        return file

    def create_batch(self, params: dict) -> tuple[int, dict]:
        file = self.files.get(params.get("input_file_id", ""))
        if file is None:
            return 404, error(f"no file {params.get('input_file_id')!r}", "invalid_request_error")
        with self.lock:
            now = int(time.time())
            batch = {"id": f"batch_fake{next(self._ids)}", "object": "batch", "endpoint": params.get("endpoint"),
                     "errors": None, "input_file_id": file["id"], "completion_window": params.get("completion_window"),
                     "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
                     "expires_at": now + 86400, "request_counts": {"total": 0, "completed": 0, "failed": 0},
                     "metadata": params.get("metadata"), "cancelling_at": None}
            self.batches[batch["id"]] = batch
        threading.Thread(target=self._run_batch, args=(batch, file["content"]), daemon=True).start()
        return 200, batch

    def _run_batch(self, batch: dict, content: bytes) -> None:
        lines, problems = _batch_lines(content, batch["endpoint"])
        if self.refuse_batches:
            problems.append({"code": "invalid_request", "line": None, "message": self.refuse_batches, "param": None})
        if problems:
            return self._set(batch, status="failed", failed_at=int(time.time()),
                             errors={"object": "list", "data": problems})
        self._set(batch, status="in_progress", in_progress_at=int(time.time()))
        batch["request_counts"]["total"] = len(lines)
        done, failed, ended = [], [], ("completed", "completed_at")
        for n, line in enumerate(lines):
            self.batch_gate.wait()
            if batch["status"] == "cancelling" or (self.expire_after is not None and n >= self.expire_after):
                ended = ("cancelled", "cancelled_at") if batch["status"] == "cancelling" else ("expired", "expired_at")
                failed += [{"id": f"batch_req_{next(self._ids)}", "custom_id": rest["custom_id"], "response": None,
                            "error": {"code": f"batch_{ended[0]}", "message": "not run before the batch ended"}}
                           for rest in lines[n:]]
                break
            ok, out = self._batch_line(line)
            (done if ok else failed).append(out)
            with self.lock:
                batch["request_counts"]["completed" if ok else "failed"] += 1
        self._set(batch, status="finalizing", finalizing_at=int(time.time()))
        self._finish_batch(batch, done, failed, ended)

    def _batch_line(self, line: dict) -> tuple[bool, dict]:
        body = line["body"]
        with self.lock:
            self.batch_requests.append(body)
            reply = self.batch_replies.get(line["custom_id"], Reply())
        reply = self._resolve(reply, body)
        out = {"id": f"batch_req_{next(self._ids)}", "custom_id": line["custom_id"], "error": None,
               "response": {"status_code": reply.status, "request_id": f"req_{next(self._ids)}",
                            "body": self.completion(body, reply) if reply.status == 200
                            else error(f"scripted {reply.status}", "server_error")}}
        return reply.status == 200, out

    def _finish_batch(self, batch: dict, done: list[dict], failed: list[dict], ended: tuple[str, str]) -> None:
        def jsonl(rows):
            return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()

        output = self.add_file(f"{batch['id']}_output.jsonl", "batch_output", jsonl(done)) if done else None
        errors = self.add_file(f"{batch['id']}_error.jsonl", "batch_output", jsonl(failed)) if failed else None
        self._set(batch, output_file_id=output and output["id"], error_file_id=errors and errors["id"],
                  status=ended[0], **{ended[1]: int(time.time())})

    def _set(self, batch: dict, **fields) -> None:
        with self.lock:
            if batch["status"] == "cancelling" and fields.get("status") in ("in_progress", "finalizing"):
                fields.pop("status")  # a cancel asked for meanwhile wins
            batch.update(fields)


def _batch_lines(content: bytes, endpoint: str) -> tuple[list[dict], list[dict]]:
    """The requests of a batch input file, and a problem per line that is not one."""
    lines, problems, seen = [], [], set()
    for number, raw in enumerate(content.decode("utf-8").splitlines(), 1):
        try:
            line = json.loads(raw)
            ok = (line.get("method") == "POST" and line.get("url") == endpoint and isinstance(line.get("body"), dict)
                  and line.get("custom_id") not in seen)
        except (json.JSONDecodeError, AttributeError):
            ok = False
        if not ok:
            problems.append({"code": "invalid_request", "line": number, "message": f"line {number} is not a valid "
                             f"request for {endpoint} (or repeats a custom_id)", "param": None})
            continue
        seen.add(line["custom_id"])
        lines.append(line)
    return lines, problems


def error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind}}


def prompt_of(body: dict) -> str:
    return "\n".join(m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user")


def json_records(prompt: str) -> list[dict]:
    start, end = prompt.find("["), prompt.rfind("]")
    if start < 0 or end < start:
        return []
    try:
        items = json.loads(prompt[start:end + 1])
    except json.JSONDecodeError:
        return []
    return [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def _handler(server: FakeOpenAI):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers: benchmarks should not time TCP handshakes

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            parts = self.path.split("?")[0].rstrip("/").split("/")[2:]  # /v1/a/b -> [a, b]
            if parts == ["models"]:
                return self._send(200, listing([{"id": server.model, "object": "model", "created": 0, "owned_by": "fake"}]))
            if parts == ["files"]:
                purpose = dict(p.split("=", 1) for p in self.path.partition("?")[2].split("&") if "=" in p).get("purpose")
                return self._send(200, listing([{k: v for k, v in f.items() if k != "content"}
                                                for f in server.files.values() if purpose in (None, f["purpose"])]))
            if len(parts) >= 2 and parts[0] == "files" and parts[1] in server.files:
                file = server.files[parts[1]]
                if parts[2:] == ["content"]:
                    return self._send_bytes(200, file["content"], "application/octet-stream")
                return self._send(200, {k: v for k, v in file.items() if k != "content"})
            if parts == ["batches"]:
                return self._send(200, listing(sorted(server.batches.values(), key=lambda b: b["created_at"], reverse=True)))
            if len(parts) == 2 and parts[0] == "batches" and parts[1] in server.batches:
                with server.lock:
                    return self._send(200, json.loads(json.dumps(server.batches[parts[1]])))
            self._send(404, error(f"no route {self.path}", "invalid_request_error"))

        def do_POST(self):
            data = self.rfile.read(int(self.headers.get("content-length") or 0))
            route = self.path.rstrip("/")
            if route.endswith("/files"):
                return self._upload(data)
            try:
                body = json.loads(data or b"{}")
            except json.JSONDecodeError:
                return self._send(400, error("invalid JSON body", "invalid_request_error"))
            if route.endswith("/chat/completions"):
                return self._chat(body)
            if route.endswith("/batches"):
                return self._lossy("POST /v1/batches", *server.create_batch(body))
            m = re.search(r"/batches/([^/]+)/cancel$", route)
            if m and m.group(1) in server.batches:
                batch = server.batches[m.group(1)]
                if batch["status"] in ("validating", "in_progress"):
                    server._set(batch, status="cancelling", cancelling_at=int(time.time()))
                return self._send(200, batch)
            self._send(404, error(f"no route {self.path}", "invalid_request_error"))

        def _chat(self, body: dict):
            reply = server.next_reply(body)
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                if reply.delay:
                    time.sleep(reply.delay)
            finally:
                with server.lock:
                    server.in_flight -= 1
            if reply.status != 200:
                kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
                return self._send(reply.status, error(f"scripted {reply.status}", kind), reply.headers)
            self._send(200, server.completion(body, reply), reply.headers)

        def _upload(self, data: bytes):
            message = BytesParser(policy=HTTP).parsebytes(
                f"Content-Type: {self.headers.get('content-type')}\r\n\r\n".encode() + data)
            fields = {}
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                fields[name] = (part.get_filename(), part.get_payload(decode=True))
            if "file" not in fields or "purpose" not in fields:
                return self._send(400, error("multipart upload needs 'file' and 'purpose'", "invalid_request_error"))
            file = server.add_file(fields["file"][0] or "upload.jsonl", fields["purpose"][1].decode(), fields["file"][1])
            server.uploads.append(file["id"])
            self._lossy("POST /v1/files", 200, file)

        def _lossy(self, route: str, status: int, payload: dict):
            with server.lock:
                lose = server.lose_response.get(route, 0)
                server.lose_response[route] = max(0, lose - 1)
            if lose and status == 200:  # done, but the client hears a failure
                return self._send(500, error("scripted: the reply was lost", "server_error"))
            self._send(status, payload)

        def _send(self, status: int, payload: dict, headers: dict | None = None):
            self._send_bytes(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json", headers)

        def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict | None = None):
            try:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

    return Handler


def listing(items: list[dict]) -> dict:
    return {"object": "list", "data": items, "has_more": False, "first_id": items[0].get("id") if items else None,
            "last_id": items[-1].get("id") if items else None}


# ------------------------------------------------------------------------------------ the "model"

def format_records(records: list[dict], style: str = "numbered") -> str:
    if style == "json":
        return "```json\n" + json.dumps(records, ensure_ascii=False, indent=1) + "\n```"
    return "".join(f"###\n{i}. Instruksi: {r['instruction']}\nMasukan: {r['input'] or '<kosong>'}\nKeluaran: {r['output']}\n"
                   for i, r in enumerate(records, 1)) + "###"


# Each condition: the patient's complaints, and the doctor's diagnosis, tests and treatment.
CONDITIONS = [
    ("demam berdarah", ["demam tinggi mendadak", "nyeri di belakang mata", "bintik merah di lengan", "gusi berdarah",
                        "badan pegal luar biasa"], "pemeriksaan trombosit dan NS1", "banyak minum dan parasetamol"),
    ("tifus", ["demam yang naik tiap sore", "lidah kotor dan pahit", "sulit buang air besar", "perut perih",
               "tidak nafsu makan"], "tes Tubex atau kultur darah", "antibiotik sesuai resep dan makanan lunak"),
    ("asma", ["sesak napas berbunyi mengi", "batuk kering malam hari", "dada terasa berat", "napas pendek saat dingin",
              "sulit tidur karena sesak"], "tes fungsi paru atau spirometri", "obat hirup pelega dan pengontrol"),
    ("gastritis", ["nyeri ulu hati", "perut kembung", "mual setelah makan pedas", "sering bersendawa",
                   "cepat kenyang"], "pemeriksaan fisik dan bila perlu endoskopi", "antasida dan makan teratur"),
    ("infeksi saluran kemih", ["perih saat buang air kecil", "anyang-anyangan", "air seni keruh", "nyeri perut bawah",
                               "demam ringan"], "pemeriksaan urine lengkap", "antibiotik dan banyak minum air putih"),
    ("migrain", ["sakit kepala berdenyut sebelah", "silau terhadap cahaya", "mual saat pusing", "melihat kilatan cahaya",
                 "pusing setelah kurang tidur"], "pemeriksaan neurologis", "obat pereda nyeri dan catatan pemicu"),
    ("vertigo", ["pusing berputar saat menoleh", "mual dan muntah", "telinga berdenging", "sulit berjalan lurus",
                 "keringat dingin"], "manuver Dix-Hallpike", "latihan reposisi dan obat antivertigo"),
    ("hipertensi", ["tengkuk terasa berat", "sakit kepala di pagi hari", "mudah lelah", "jantung berdebar",
                    "penglihatan kadang kabur"], "pengukuran tekanan darah berulang dan cek ginjal",
     "diet rendah garam dan obat antihipertensi"),
    ("diabetes", ["sering haus", "sering kencing malam", "berat badan turun", "luka lama sembuh", "kesemutan di kaki"],
     "gula darah puasa dan HbA1c", "pengaturan makan, olahraga, dan metformin"),
    ("anemia", ["cepat lelah", "wajah pucat", "pusing saat berdiri", "jantung berdebar", "kuku rapuh"],
     "hemoglobin dan ferritin", "tablet zat besi dan makanan kaya zat besi"),
    ("sinusitis", ["hidung tersumbat", "ingus kental kehijauan", "nyeri di pipi", "sakit kepala saat menunduk",
                   "penciuman berkurang"], "pemeriksaan hidung dan bila perlu CT scan sinus", "cuci hidung dan dekongestan"),
    ("konjungtivitis", ["mata merah", "mata berair", "kotoran mata kuning", "kelopak lengket saat bangun",
                        "mata terasa mengganjal"], "pemeriksaan mata", "tetes mata dan jaga kebersihan tangan"),
    ("dermatitis", ["kulit kering bersisik", "gatal di lipatan siku", "ruam kemerahan", "kulit pecah-pecah",
                    "gatal memburuk malam hari"], "pemeriksaan kulit", "pelembap dan salep kortikosteroid ringan"),
    ("batu ginjal", ["nyeri pinggang hebat", "nyeri menjalar ke selangkangan", "kencing berwarna merah", "mual",
                     "sering ingin kencing"], "USG ginjal dan urine", "banyak minum dan obat pereda nyeri"),
    ("tuberkulosis", ["batuk lebih dari tiga minggu", "keringat malam", "berat badan turun", "dahak bercampur darah",
                      "demam ringan sore hari"], "tes dahak TCM dan rontgen dada", "obat anti TB selama enam bulan"),
    ("cacar air", ["bintil berair di seluruh badan", "gatal sekali", "demam ringan", "lemas", "nafsu makan menurun"],
     "pemeriksaan fisik", "obat antivirus, bedak antigatal, dan isolasi"),
    ("radang tenggorokan", ["nyeri saat menelan", "amandel bengkak", "suara serak", "demam", "kelenjar leher nyeri"],
     "pemeriksaan tenggorokan", "obat kumur, pereda nyeri, dan antibiotik bila bakteri"),
    ("asam urat", ["jempol kaki bengkak", "sendi merah dan panas", "nyeri hebat malam hari", "sulit berjalan",
                   "nyeri setelah makan jeroan"], "kadar asam urat darah", "obat antiradang dan kurangi purin"),
    ("hipotiroid", ["mudah kedinginan", "rambut rontok", "kulit kering", "sembelit", "berat badan naik"],
     "TSH dan FT4", "levotiroksin setiap pagi"),
    ("wasir", ["benjolan di anus", "darah segar saat BAB", "gatal di dubur", "nyeri saat duduk", "BAB keras"],
     "colok dubur", "serat, banyak minum, dan salep wasir"),
    ("insomnia", ["sulit tidur", "sering terbangun dini hari", "lelah di siang hari", "sulit konsentrasi",
                  "pikiran tidak tenang"], "penilaian pola tidur", "kebersihan tidur dan terapi perilaku"),
    ("otitis media", ["nyeri telinga", "pendengaran berkurang", "keluar cairan dari telinga", "demam",
                      "telinga terasa penuh"], "pemeriksaan otoskopi", "antibiotik dan pereda nyeri"),
    ("GERD", ["dada panas seperti terbakar", "rasa asam di tenggorokan", "batuk setelah makan", "suara serak pagi hari",
              "sulit menelan"], "evaluasi gejala dan bila perlu endoskopi", "obat penekan asam dan tidak langsung berbaring"),
    ("bronkitis", ["batuk berdahak", "dada terasa sesak", "demam ringan", "napas berbunyi", "badan lemas"],
     "pemeriksaan paru dan rontgen bila perlu", "istirahat, banyak minum, dan obat pengencer dahak"),
    ("skabies", ["gatal di sela jari", "gatal parah malam hari", "bintil kecil di pergelangan",
                 "keluarga serumah ikut gatal", "luka bekas garukan"], "pemeriksaan kulit", "salep permetrin sekeluarga"),
    ("apendisitis", ["nyeri di sekitar pusar", "nyeri pindah ke perut kanan bawah", "demam", "mual muntah",
                     "nyeri saat berjalan"], "pemeriksaan darah dan USG perut", "operasi usus buntu segera"),
    ("hepatitis A", ["mata menguning", "air kencing seperti teh", "mual", "nyeri perut kanan atas", "lemas sekali"],
     "fungsi hati dan anti-HAV", "istirahat dan makanan bergizi"),
    ("carpal tunnel", ["kesemutan di jari tangan", "tangan kebas malam hari", "genggaman melemah",
                       "nyeri pergelangan tangan", "jari terasa tebal"], "tes saraf tangan", "bidai malam dan kurangi gerakan berulang"),
    ("campak", ["ruam merah dari wajah ke badan", "demam tinggi", "mata merah berair", "batuk pilek",
                "bercak putih di mulut"], "pemeriksaan fisik", "vitamin A, istirahat, dan cukup cairan"),
    ("osteoartritis", ["lutut nyeri saat naik tangga", "lutut kaku pagi hari", "bunyi krek di lutut", "lutut bengkak",
                       "nyeri setelah berjalan jauh"], "rontgen lutut", "latihan penguatan dan turunkan berat badan"),
]
OPENERS = ["Dokter,", "Dok,", "Selamat pagi, dokter.", "Permisi dok,", "Halo dokter,", "Selamat malam dok,"]
WHO = ["saya", "anak saya yang berumur {age} tahun", "ibu saya yang berusia {age} tahun", "suami saya",
       "adik saya yang masih {age} tahun", "saya yang berumur {age} tahun"]
SINCE = ["sejak dua hari lalu", "sudah seminggu ini", "kurang lebih tiga minggu", "sejak kemarin sore",
         "hampir sebulan terakhir", "sejak pulang kerja tadi", "beberapa hari belakangan"]
ASK = ["Apa penyebabnya?", "Apakah ini berbahaya?", "Saya harus bagaimana?", "Obat apa yang sebaiknya diminum?",
       "Perlu periksa ke mana?", "Apakah harus ke rumah sakit?"]
INPUTS = [
    "{opener} {who} {since} mengalami {s0} dan {s1}. Selain itu juga ada {s2}. {ask}",
    "{opener} keluhan {who} adalah {s0}, {s1}, dan {s2}, {since}. {ask}",
    "{opener} {since} {who} merasakan {s0}. Belakangan muncul {s1}, kadang disertai {s2}. {ask}",
    "{opener} mau tanya, {who} {since} sering {s0}, lalu {s1}. Tadi malam malah {s2}. {ask}",
]
QUESTIONS = ["Apa saja gejala awal {name} yang perlu diwaspadai?", "Bagaimana cara mencegah {name} di rumah?",
             "Kapan penderita {name} harus segera dibawa ke rumah sakit?", "Apakah {name} bisa sembuh total?"]
OUTPUTS = [
    "Keluhan {s0} dan {s1} seperti yang Anda ceritakan mengarah ke {name}. Untuk memastikannya perlu {tests}. "
    "Penanganan awalnya adalah {treat}. Segera ke dokter atau IGD bila keluhan memberat atau muncul gejala baru.",
    "Dari gejala {s0} disertai {s1}, kemungkinan besar Anda mengalami {name}. Saya sarankan {tests} agar diagnosisnya "
    "pasti. Pengobatan biasanya berupa {treat}. Jangan menunda pemeriksaan bila keluhan tidak membaik dalam beberapa hari.",
]
ANSWER = ("{name} perlu diwaspadai bila muncul {s0} atau {s1}. Pemeriksaan yang biasa dilakukan adalah {tests}, dan "
          "penanganannya berupa {treat}. Konsultasikan dengan dokter untuk saran yang sesuai dengan kondisi Anda.")


def make_record(rng: random.Random) -> dict:
    name, symptoms, tests, treat = rng.choice(CONDITIONS)
    s = rng.sample(symptoms, 3)
    if rng.random() < 0.15:
        question = rng.choice(QUESTIONS).format(name=name)
        return {"instruction": question[0].upper() + question[1:], "input": "",
                "output": ANSWER.format(name=name[0].upper() + name[1:], s0=s[0], s1=s[1], tests=tests, treat=treat)}
    who = rng.choice(WHO).format(age=rng.randint(3, 75))
    text = rng.choice(INPUTS).format(opener=rng.choice(OPENERS), who=who, since=rng.choice(SINCE), s0=s[0], s1=s[1],
                                     s2=s[2], ask=rng.choice(ASK))
    text = re.sub(r"([.?!] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    return {"instruction": INSTRUCTION, "input": text,
            "output": rng.choice(OUTPUTS).format(s0=s[0], s1=s[1], name=name, tests=tests, treat=treat)}


# A word map that makes English text look Indonesian to a stopword check (not a translation).
WORD_MAP = {
    "doctor": "dokter", "i": "saya", "i'm": "saya", "i've": "saya", "my": "saya", "me": "saya", "you": "anda",
    "your": "anda", "have": "punya", "has": "punya", "been": "sudah", "and": "dan", "the": "", "a": "", "an": "",
    "of": "dari", "to": "ke", "in": "di", "is": "adalah", "are": "adalah", "was": "adalah", "were": "adalah",
    "with": "dengan", "for": "untuk", "that": "yang", "this": "ini", "it": "itu", "on": "pada", "be": "",
    "as": "seperti", "at": "di", "or": "atau", "not": "tidak", "can": "bisa", "if": "jika", "what": "apa",
    "how": "bagaimana", "should": "harus", "do": "", "does": "", "from": "dari", "by": "oleh", "will": "akan",
    "would": "akan", "pain": "nyeri", "fever": "demam", "cough": "batuk", "some": "beberapa", "need": "perlu",
    "also": "juga", "experiencing": "mengalami", "symptoms": "gejala", "based": "berdasarkan", "may": "mungkin",
    "we": "kita", "it's": "itu", "don't": "tidak", "there": "ada", "very": "sangat", "about": "tentang",
}


def _map_words(text: str) -> str:
    mapped = re.sub(r"[A-Za-z']+", lambda m: WORD_MAP.get(m.group().lower(), m.group()), text)
    return re.sub(r" {2,}", " ", mapped).strip()


def translate_record(record: dict) -> dict:
    return {k: (_map_words(v) if isinstance(v, str) and k != "index" else v) for k, v in record.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this many seconds more, at random")
    parser.add_argument("--rate_limit", type=float, default=0.0, help="share of requests refused with 429")
    parser.add_argument("--retry_after", type=float, default=0.05, help="the Retry-After of those 429s, in seconds")
    parser.add_argument("--style", choices=("numbered", "json"), default="numbered", help="answer format for generate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = FakeOpenAI(args.port, args.delay, args.style, args.seed, jitter=args.jitter, rate_limit=args.rate_limit,
                        retry_after=args.retry_after)
    print(f"fake OpenAI server on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
