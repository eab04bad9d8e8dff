"""Alpaca records from the condition cards (data/conditions/): patients asking, answers that name the
condition, say what to do and when to see a doctor or go to the emergency room now.

    python -m data_gen conditions --out out/conditions.jsonl                 # offline, from templates
    python -m data_gen conditions --out out/conditions.jsonl --base_url URL --model M   # any OpenAI-compatible model

Offline, every record is composed from its card: a patient (self, a parent for a child or a baby, a
relative for an old parent, with age and sex from the card) describes a subset of the card's lay
symptoms in a random order, sometimes with a clue (travel, pregnancy, a flood) and sometimes with one of
its red flags; short and long forms. The answer names the condition (its name and a lay name), a close
alternative where the card gives one, what to do now, what a doctor checks, when to see one, and the
red flags that mean IGD / 119 / 112 now; a red-flag message (or an emergency card) is answered with the
emergency first. With --base_url, each card goes to the model instead, which writes --per_card records
as JSON; records that do not name the card's condition are dropped.

Both prompt shapes: half the records carry GenMedGPT's fixed instruction with the message as input,
half are in the demo's empty-input shape (the message as the instruction). Deterministic for a --seed
(each record's randomness is seeded by the card and its index, so adding a card changes no other card's
records). Near-duplicates (ROUGE-L >= --rouge_threshold between messages, stanford_alpaca's filter) are
dropped, and so is any record whose message comes near an evaluation question (data/eval/), so the
evaluation stays unseen. The counts are printed and written to OUT.stats.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

from data_gen.cards import CARD_DIR, Card, CardError, load_cards
from data_gen.output import write_atomic
from data_gen.rouge import RougeDedup
from trainer import ROOT
from trainer.prompts import SHAPES as PROMPT_SHAPES
from trainer.records import DOCTOR_INSTRUCTION

EVAL_DIR = ROOT / "data" / "eval"
LEAK_THRESHOLD = 0.5  # ROUGE-L F of a message against an evaluation question at or above which it is dropped
SHAPES = tuple(PROMPT_SHAPES)  # GenMedGPT's fixed instruction with the words as input / the demo's words alone
EMERGENCY = "IGD rumah sakit terdekat atau hubungi ambulans 119 / 112"

# ------------------------------------------------------------------------------------- the patient

SELF_ASKS = ["Kenapa ya, dok?", "Saya sakit apa ya?", "Apa penyebabnya dan apa yang harus saya lakukan?",
             "Ini kenapa ya?", "Apakah ini berbahaya?", "Saya harus bagaimana?", "Kira-kira penyakit apa, dok?"]
OTHER_ASKS = ["Kenapa ya, dok?", "Dia sakit apa?", "Apa yang harus kami lakukan?", "Apakah ini berbahaya?",
              "Kira-kira penyakit apa, dok?", "Harus dibawa ke mana?"]
OPENERS = ["", "Dok, ", "Halo dokter, ", "Permisi dok, ", "Selamat malam dok, ", "Dokter, "]
WHEN = ["", "", "belakangan ini ", "akhir-akhir ini ", "beberapa hari ini "]
CLUE_LEADS = ["Oh ya, {clue}.", "Sebagai info, {clue}.", "Kebetulan {clue}."]
RED_FLAG_LEADS = ["Sekarang mulai ada {flag}.", "Barusan juga ada {flag}.", "Yang bikin khawatir, sekarang ada {flag}."]


def _years(rng: random.Random, age: str) -> str:
    low, high = {"anak": (2, 11), "remaja": (13, 18), "dewasa": (20, 55), "lansia": (60, 82)}[age]
    return f"{rng.randint(low, high)} tahun"


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " dan " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def patient(card: Card, rng: random.Random) -> tuple[str, str, str]:
    """(who is asking, who is ill as the answer calls them, the age group)."""
    age = rng.choice(card.ages)
    female = {"perempuan": True, "laki-laki": False}.get(card.sex, rng.random() < 0.5)
    if age == "bayi":
        months = rng.randint(1, 11) if "anak" not in card.ages else rng.randint(2, 23)
        return "parent", f"bayi saya umur {months} bulan", "bayi Anda"
    if age == "anak":
        child = rng.choice(["anak saya", "anak perempuan saya" if female else "anak laki-laki saya"])
        return "parent", f"{child} umur {_years(rng, age)}", "anak Anda"
    if age == "lansia" and rng.random() < 0.5:
        relative = "ibu saya" if female else rng.choice(["bapak saya", "ayah saya"])
        return "relative", f"{relative} umur {_years(rng, age)}", relative.replace("saya", "Anda")
    sex = "perempuan" if female else "laki-laki"
    return "self", rng.choice([f"saya {sex}, {_years(rng, age)}", f"saya ({_years(rng, age)})", "saya"]), "Anda"


def message(card: Card, rng: random.Random, red_flag: str | None) -> tuple[str, str, str]:
    """(the patient's message, how the answer addresses the ill person, the voice)."""
    voice, person, subject = patient(card, rng)
    symptoms = rng.sample(card.symptoms, rng.choice([2, 3, 3, 4]) if len(card.symptoms) >= 4 else 2)
    clue = rng.choice(card.clues) if card.clues and rng.random() < 0.5 else None
    short = rng.random() < 0.3
    ask = rng.choice(SELF_ASKS if voice == "self" else OTHER_ASKS)
    if short:  # a child or a parent is still named, so the answer knows whom it is about
        said = _listing(symptoms[:2]) if voice == "self" else f"{person} {_listing(symptoms[:2])}"
        text = f"{_cap(said)}{', ' + clue if clue else ''}, {ask[0].lower() + ask[1:]}"
    else:
        opener = rng.choice(OPENERS)
        body = f"{opener}{person} {rng.choice(WHEN)}mengalami {_listing(symptoms)}."
        text = " ".join(x for x in [_cap(body) if not opener else body,
                                    rng.choice(CLUE_LEADS).format(clue=clue) if clue else "", ask] if x)
    if red_flag:
        text = f"{text} {rng.choice(RED_FLAG_LEADS).format(flag=red_flag)}"
    return " ".join(text.split()), subject, voice


# ------------------------------------------------------------------------------------- the answer

NAMINGS = ["Dari keluhan tersebut, kemungkinan besar {subj} mengalami {name} ({lay}).",
           "Gejala seperti ini paling cocok dengan {name}, yang sering disebut {lay}.",
           "Keluhan ini mengarah ke {name} ({lay}).",
           "Kemungkinan besar ini adalah {name}, atau yang biasa disebut {lay}."]
EMERGENCY_NAMINGS = ["Keluhan ini bisa merupakan tanda {name} ({lay}), keadaan darurat.",
                     "Ini bisa jadi {name} ({lay}) dan perlu ditangani secepatnya."]
URGENT = ["Ini tanda bahaya: segera {bring}ke {emergency} sekarang, jangan menunggu.",
          "{flag} adalah tanda bahaya. Segera ke {emergency} sekarang juga."]
ALTERNATIVES = ["Kemungkinan lain yang perlu dipikirkan dokter adalah {alt}.", "Bisa juga {alt}, jadi perlu diperiksa."]
CHECKS = ["Pemeriksaan yang biasanya dilakukan dokter: {checks}.", "Yang akan diperiksa dokter: {checks}.",
          "Untuk memastikan, dokter biasanya melakukan {checks}."]
FLAGS = ["Segera ke {emergency} bila muncul {flags}.", "Tanda bahaya yang berarti harus segera ke IGD (119 / 112): {flags}."]


def _subject_text(text: str, subject: str) -> str:
    """Card sentences speak to the patient ("Anda"); for a child or a parent the answer names them."""
    return text if subject == "Anda" else text.replace(" Anda ", f" {subject} ")


def answer(card: Card, by_id: dict[str, Card], rng: random.Random, subject: str, red_flag: str | None, short: bool) -> str:
    said = lambda text: _subject_text(text, subject)  # noqa: E731
    lay = rng.choice([n for n in card.lay_names if n.lower() != card.name.lower()] or [card.name])
    urgent = bool(red_flag) or card.emergency
    parts = []
    if red_flag:
        parts.append(rng.choice(URGENT).format(bring="" if subject == "Anda" else f"bawa {subject} ",
                                                emergency=EMERGENCY, flag=_cap(red_flag)))
    naming = rng.choice(EMERGENCY_NAMINGS if card.emergency else NAMINGS)
    if lay == card.name:  # no lay name of its own: name it once
        naming = naming.split(" ({lay})")[0].split(", yang")[0].split(", atau")[0].rstrip(".") + "."
    parts.append(naming.format(subj=subject, name=card.name, lay=lay))
    if card.emergency and not red_flag:  # the emergency room comes straight after the name
        parts.append(said(" ".join(card.do_now[: 1 if short else 2])))
    if card.alternatives and not short and rng.random() < 0.6:
        alt = by_id.get(rng.choice(card.alternatives))  # None when only some cards are generated
        if alt:
            parts.append(rng.choice(ALTERNATIVES).format(alt=alt.name))
    if not short and rng.random() < 0.3:
        parts.append(said(card.who))
    if not urgent:  # with a red flag, home care would only delay the emergency room
        do_now = said(" ".join(card.do_now[: 1 if short else 2]))
        parts.append("Yang bisa dilakukan sekarang: " + do_now[:1].lower() + do_now[1:])
    if not short or urgent:
        checks = _listing(rng.sample(card.doctor_checks, min(2, len(card.doctor_checks))))
        parts.append(rng.choice(CHECKS).format(checks=checks))
    if not urgent:
        parts.append(said(card.see_doctor))
        flags = _listing(rng.sample(card.red_flags, min(3 if not short else 2, len(card.red_flags))))
        parts.append(rng.choice(FLAGS).format(emergency=EMERGENCY, flags=flags))
    return " ".join(parts)


def compose(card: Card, by_id: dict[str, Card], seed: int, index: int) -> dict:
    """Record `index` of a card: the same for the same seed, whatever the other cards are."""
    rng = random.Random(f"{seed}:{card.id}:{index}")
    red_flag = rng.choice(card.red_flags) if rng.random() < 0.25 else None
    text, subject, voice = message(card, rng, red_flag)
    out = answer(card, by_id, rng, subject, red_flag, short=rng.random() < 0.4)
    return in_shape(text, out, SHAPES[index % 2], condition=card.id, red_flag=bool(red_flag) or card.emergency, voice=voice)


def in_shape(message: str, out: str, shape: str, **fields) -> dict:
    """A patient's message and its answer as an Alpaca record in one of SHAPES, with the generator's own fields."""
    instruction, given = (DOCTOR_INSTRUCTION["id"], message) if shape == "input" else (message, "")
    return {"instruction": instruction, "input": given, "output": out, **fields, "shape": shape}


# ------------------------------------------------------------------------------- with a chat model

PROMPT = """Anda menulis data latih untuk asisten kesehatan berbahasa Indonesia. Dari kartu kondisi berikut, buatlah {n} contoh
percakapan yang berbeda-beda: pesan pasien dengan kata-kata sehari-hari (gejala dari kartu dalam urutan dan
pilihan berbeda, umur dan jenis kelamin berbeda, kadang orang tua bertanya untuk anaknya, pendek dan panjang;
{red} contoh menyebut salah satu tanda bahaya), dan jawaban dokter yang menyebut nama kondisi ("{name}" atau
nama awamnya), apa yang bisa dilakukan sekarang, dan kapan harus ke dokter. Bila ada tanda bahaya atau kondisinya
darurat, jawaban dimulai dengan: segera ke IGD terdekat atau hubungi 119 / 112 sekarang. Jangan menyebut dosis
atau obat resep. Jawab hanya dengan array JSON berisi objek {{"pesan": ..., "jawaban": ...}}.

Kartu:
{card}"""


def from_model(card: Card, client, n: int) -> tuple[list[dict], Counter]:
    """Records a chat model writes from one card, checked: each must name the card's condition."""
    from data_gen.generate import parse_json_objects

    reply = client.complete(PROMPT.format(n=n, red=max(1, n // 4), name=card.name,
                                          card=json.dumps(card.as_dict(), ensure_ascii=False, indent=1)))
    rejected: Counter = Counter()
    records = []
    # parse_json_objects reads "jawaban" (and "answer", "response") as "output"
    for i, obj in enumerate(parse_json_objects(reply.text, keys=("pesan", "output"))):
        text, out = obj.get("pesan") or obj.get("instruction") or obj.get("input"), obj.get("output")
        if not (isinstance(text, str) and isinstance(out, str) and text.strip() and out.strip()):
            rejected["missing_field"] += 1
            continue
        if not card.named_in(out):
            rejected["does_not_name_condition"] += 1
            continue
        records.append(in_shape(" ".join(text.split()), out.strip(), SHAPES[i % 2], condition=card.id, red_flag=None, voice=None))
    if not records and not rejected:
        rejected["no_json_records"] += 1
    return records, rejected


# ------------------------------------------------------------------------------------------- run


def eval_questions(folder: Path = EVAL_DIR) -> list[str]:
    """Every evaluation question (data/eval/*.jsonl, field `question`): what records must never come near."""
    questions = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                questions.append(json.loads(line)["question"])
    return questions


def patient_text(record: dict) -> str:
    return record["input"] or record["instruction"]


def build(cards: list[Card], per_card: int, seed: int, rouge_threshold: float, questions: list[str], client=None,
          progress: bool = True) -> tuple[list[dict], dict]:
    """(records, counts): per card up to `per_card` records that pass the duplicate and leakage filters."""
    from tqdm.auto import tqdm

    by_id = {c.id: c for c in cards}
    dedup, leak = RougeDedup(rouge_threshold), RougeDedup(LEAK_THRESHOLD)
    for q in questions:
        leak.add(q)
    records, counts = [], Counter()
    per = {}
    for card in tqdm(cards, desc="cards", unit="card", disable=not progress or None):
        kept = 0
        if client is None:
            candidates = (compose(card, by_id, seed, i) for i in range(per_card * 4))
        else:
            candidates, rejected = from_model(card, client, per_card)
            counts.update(rejected)
        for record in candidates:
            if kept == per_card:
                break
            counts["candidates"] += 1
            text = patient_text(record)
            if leak.best(text)[0] >= LEAK_THRESHOLD:
                counts["near_eval_question"] += 1
                continue
            if not dedup.add(text):
                counts["near_duplicate"] += 1
                continue
            records.append(record)
            kept += 1
        per[card.id] = kept
        if kept < per_card:
            counts["cards_short"] += 1
    counts["records"] = len(records)
    stats = {"cards": len(cards), "per_card": per_card, "seed": seed, "rouge_threshold": rouge_threshold,
             "leak_threshold": LEAK_THRESHOLD, "eval_questions": len(questions), **dict(counts),
             "red_flag_records": sum(bool(r["red_flag"]) for r in records),
             "shapes": dict(Counter(r["shape"] for r in records)), "voices": dict(Counter(r["voice"] for r in records if r["voice"])),
             "per_card_min": min(per.values(), default=0), "source": "model" if client else "templates"}
    return records, stats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_gen conditions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON Lines file to write (replaced), with OUT.stats.json beside it")
    parser.add_argument("--cards", default=str(CARD_DIR), help="folder of condition cards (default data/conditions)")
    parser.add_argument("--eval_dir", default=str(EVAL_DIR), help="evaluation questions records must never come near "
                        "(default data/eval)")
    parser.add_argument("--per_card", type=int, default=21, help="records per card (default %(default)s: v2's training set)")
    parser.add_argument("--seed", type=int, default=42, help="seed (default %(default)s)")
    parser.add_argument("--rouge_threshold", type=float, default=0.7, help="drop a record whose message has ROUGE-L F "
                        ">= this against a kept one (default %(default)s, stanford_alpaca's)")
    parser.add_argument("--base_url", default=None, help="an OpenAI-compatible server to write the records from the "
                        "cards (default: offline templates); with --model")
    parser.add_argument("--model", default=None, help="the model name on --base_url")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--max_new_tokens", "--max_tokens", dest="max_tokens", metavar="MAX_NEW_TOKENS", type=int, default=4096,
                        help="answer budget per request on --base_url (default %(default)s)")
    parser.add_argument("--no_progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = []
    if args.per_card < 1:
        problems.append("--per_card must be at least 1.")
    if not 0 < args.rouge_threshold <= 1:
        problems.append("--rouge_threshold must be in (0, 1]; 0.7 is stanford_alpaca's.")
    if bool(args.base_url) != bool(args.model):
        problems.append("--base_url and --model go together (the server and the model name on it).")
    if problems:
        print("error: " + "\n  ".join(problems), file=sys.stderr)
        return 2
    try:
        cards = load_cards(args.cards)
        questions = eval_questions(Path(args.eval_dir))
    except (CardError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    client = None
    if args.base_url:
        from data_gen.client import ChatClient, ClientError

        client = ChatClient(base_url=args.base_url, model=args.model, temperature=args.temperature, max_tokens=args.max_tokens)
    try:
        records, stats = build(cards, args.per_card, args.seed, args.rouge_threshold, questions, client,
                               progress=not args.no_progress)
    except Exception as e:  # a server that fails for good: say so, no traceback
        if client is not None and isinstance(e, ClientError):
            print(f"error: {e}. Nothing was written to {args.out}.", file=sys.stderr)
            return 1
        raise
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_atomic(out.with_name(out.name + ".stats.json"), json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
    print(f"{stats['records']} records from {stats['cards']} cards to {out} ({stats['red_flag_records']} with a red flag or "
          f"an emergency; shapes {stats['shapes']}); dropped: {stats.get('near_duplicate', 0)} near-duplicates, "
          f"{stats.get('near_eval_question', 0)} near an evaluation question; {stats.get('cards_short', 0)} card(s) "
          f"short of {args.per_card}")
    if client is not None:
        print(client.usage.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
