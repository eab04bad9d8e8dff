"""A stand-in OpenAI-compatible chat server for data_gen's tests and demos.

    python tests/data_gen/fake_openai_server.py --port 8765 [--delay 0.2] [--style numbered|json]

POST /v1/chat/completions answers in OpenAI's response shape, with `usage` (words counted as
tokens); GET /v1/models lists one model. Unscripted, it plays a model: a generate prompt ("Buatlah
20 contoh ..." / "Write 20 new examples ...") gets a numbered list of varied Indonesian
doctor-patient records built from a template bank (so the duplicate filter keeps most of them), and
a translate prompt (a JSON array of records with "index") gets its records back "translated" by a
small English-to-Indonesian word map.

Tests script it: `server.push(Reply(...), ...)` queues answers (a status code, a delay, a finish
reason, raw content, or a function of the request) used before the default behaviour, and
`server.requests` holds every request body received, retries included.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
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


class FakeOpenAI:
    """The server; `with FakeOpenAI() as server:` runs it in a thread on 127.0.0.1 and a free port."""

    def __init__(self, port: int = 0, delay: float = 0.0, style: str = "numbered", seed: int = 0, model: str = "fake"):
        self.delay, self.style, self.model = delay, style, model
        self.rng = random.Random(seed)
        self.replies: deque[Reply] = deque()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.httpd.daemon_threads = True
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
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def next_reply(self, body: dict) -> Reply:
        with self.lock:
            self.requests.append(body)
            reply = self.replies.popleft() if self.replies else Reply(delay=self.delay)
            if reply.status == 200:
                content = reply.content
                if callable(content):
                    content = content(body)
                elif content is None:
                    content = self.answer(prompt_of(body))
                reply = Reply(content, reply.status, reply.delay, reply.finish_reason, reply.headers, reply.usage)
        return reply

    def answer(self, prompt: str) -> str:
        """What the 'model' writes for a generate or translate prompt."""
        records = json_records(prompt)
        if records and all("index" in r for r in records):
            return json.dumps([translate_record(r) for r in records], ensure_ascii=False)
        m = re.search(r"(?:Buatlah|Write) (\d+)", prompt)
        n = int(m.group(1)) if m else 5
        return format_records([make_record(self.rng) for _ in range(n)], self.style)


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
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model", "created": 0,
                                                             "owned_by": "fake"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                return self._send(400, {"error": {"message": "invalid JSON body", "type": "invalid_request_error"}})
            if not self.path.rstrip("/").endswith("/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            reply = server.next_reply(body)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.status != 200:
                kind = "rate_limit_exceeded" if reply.status == 429 else "server_error"
                return self._send(reply.status, {"error": {"message": f"scripted {reply.status}", "type": kind}},
                                  reply.headers)
            prompt_tokens = len(prompt_of(body).split())
            completion_tokens = len(reply.content.split())
            answer = {
                "id": f"chatcmpl-fake{len(server.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", server.model),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                             "finish_reason": reply.finish_reason}],
            }
            if reply.usage:
                answer["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}
            self._send(200, answer, reply.headers)

        def _send(self, status: int, payload: dict, headers: dict | None = None):
            data = json.dumps(payload, ensure_ascii=False).encode()
            try:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

    return Handler


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
    parser.add_argument("--style", choices=("numbered", "json"), default="numbered", help="answer format for generate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = FakeOpenAI(args.port, args.delay, args.style, args.seed)
    print(f"fake OpenAI server on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
