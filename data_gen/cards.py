"""The condition cards of data/conditions/ (schema: data/conditions/README.md), loaded and validated.

    python -m data_gen.cards            # validate every card, print one line per group

Torch-free: the records generator (data_gen/conditions.py) and the evaluation's scorer
(trainer/eval_conditions.py) both read the cards through `load_cards`, so a condition's names live in
one place. Every problem is collected and reported at once, naming the file, the card and the field.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from trainer import ROOT

CARD_DIR = ROOT / "data" / "conditions"
GROUPS = ("infeksi", "kronis", "ibu-anak", "kulit", "mata-tht-gigi", "jiwa-saraf", "cedera-darurat")
AGES = ("bayi", "anak", "remaja", "dewasa", "lansia")
SEXES = ("semua", "perempuan", "laki-laki")
# (min, max) items of each list field
COUNTS = {"lay_names": (1, 8), "ages": (1, 5), "symptoms": (5, 9), "clues": (0, 4), "alternatives": (0, 3),
          "do_now": (2, 4), "doctor_checks": (2, 4), "red_flags": (2, 6)}
# Public guidance the facts may come from (the card's source.url must be on one of these sites).
SOURCE_SITES = ("who.int", "kemkes.go.id", "unicef.org", "cdc.gov", "nhs.uk", "idai.or.id")
# Names too generic to count as naming a condition when an answer is scored.
GENERIC_NAMES = {"demam", "batuk", "sakit", "nyeri", "pusing", "flu berat", "infeksi", "alergi", "radang", "gatal"}
# Conservative by rule: no doses, and no prescription medicines by name (a short list of what small models
# like to invent: antibiotics, steroids, antivirals, insulin, sedatives).
DOSE_RE = re.compile(r"\b\d+([.,]\d+)?\s*(mg|mcg|µg|ml|gram|gr|iu|unit)\b|\b\d\s*[x×]\s*\d\b|\b\d+\s*(tablet|kapsul)\b",
                     re.IGNORECASE)
PRESCRIPTION_RE = re.compile(
    r"\b(amoks?isilin|amoxicillin|ampisilin|siprofloksasin|ciprofloxacin|azitromisin|azithromycin|metronidazol\w*|"
    r"doksisiklin|doxycycline|kotrimoksazol|cotrimoxazole|sefiksim|cefixime|seftriakson|ceftriaxone|kloramfenikol|"
    r"levofloksasin|tetrasiklin|rifampi\w+|isoniazid|deksametason|dexamethasone|prednison\w*|metilprednisolon|"
    r"asiklovir|acyclovir|oseltamivir|insulin\s+\w+|metformin|glibenklamid|amlodipin\w*|kaptopril|captopril|"
    r"diazepam|alprazolam|tramadol|kodein|codeine|artemisinin|klorokuin|primakuin)\b", re.IGNORECASE)


class CardError(Exception):
    """The cards do not load or break the schema; the message lists every problem."""


@dataclass(frozen=True)
class Source:
    publisher: str
    title: str
    url: str


@dataclass(frozen=True)
class Card:
    id: str
    name: str
    lay_names: tuple[str, ...]
    group: str
    ages: tuple[str, ...]
    sex: str
    who: str
    symptoms: tuple[str, ...]
    clues: tuple[str, ...]
    alternatives: tuple[str, ...]
    do_now: tuple[str, ...]
    doctor_checks: tuple[str, ...]
    see_doctor: str
    red_flags: tuple[str, ...]
    emergency: bool
    source: Source
    file: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """Every name that counts as naming this condition: the medical name, then the lay names."""
        return (self.name, *self.lay_names)

    def named_in(self, text: str) -> bool:
        """Whether `text` names this condition: its name or a lay name as whole words, case-insensitive (how the
        evaluation scores an answer, and how records written by a chat model are checked)."""
        lower = text.lower()
        return any(re.search(r"(?<!\w)" + re.escape(name.lower()) + r"(?!\w)", lower) for name in self.names)

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "file"}
        out["source"] = vars(self.source)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


FIELD_NAMES = tuple(f.name for f in fields(Card) if f.name != "file")


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def check_card(raw: object, where: str) -> tuple[Card | None, list[str]]:
    """(card, []) for a valid card, else (None, problems); each problem names `where` and the field."""
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a mapping of the card's fields, got {type(raw).__name__}"]
    where = f"{where} ({raw.get('id', '?')})"
    problems = []
    missing = [k for k in FIELD_NAMES if k not in raw]
    unknown = sorted(set(raw) - set(FIELD_NAMES))
    if missing:
        problems.append(f"{where}: missing field(s) {', '.join(missing)} (data/conditions/README.md lists them)")
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(unknown)}; the schema has {', '.join(FIELD_NAMES)}")
    if missing:
        return None, problems
    if not (isinstance(raw["id"], str) and re.fullmatch(r"[a-z][a-z0-9_]*", raw["id"])):
        problems.append(f"{where}: id must be snake_case (a-z, 0-9, _)")
    for key in ("name", "who", "see_doctor"):
        if not _text(raw[key]):
            problems.append(f"{where}: {key} must be a non-empty string")
    for key, (low, high) in COUNTS.items():
        items = raw[key]
        if not isinstance(items, list) or not all(_text(x) for x in items):
            problems.append(f"{where}: {key} must be a list of non-empty strings")
        elif not low <= len(items) <= high:
            problems.append(f"{where}: {key} has {len(items)} item(s); give {low} to {high}")
    if raw["group"] not in GROUPS:
        problems.append(f"{where}: group {raw['group']!r} is not one of {', '.join(GROUPS)}")
    if isinstance(raw["ages"], list) and not set(raw["ages"]) <= set(AGES):
        problems.append(f"{where}: ages {raw['ages']} may only hold {', '.join(AGES)}")
    if raw["sex"] not in SEXES:
        problems.append(f"{where}: sex {raw['sex']!r} is not one of {', '.join(SEXES)}")
    if not isinstance(raw["emergency"], bool):
        problems.append(f"{where}: emergency must be true or false")
    source = raw["source"]
    if not (isinstance(source, dict) and all(_text(source.get(k)) for k in ("publisher", "title", "url"))):
        problems.append(f"{where}: source needs publisher, title and url")
    elif not re.match(r"https://([\w-]+\.)*(" + "|".join(map(re.escape, SOURCE_SITES)) + r")(/|$)", source["url"]):
        problems.append(f"{where}: source url {source['url']} is not public health guidance from "
                        f"{', '.join(SOURCE_SITES)}")
    if isinstance(raw["lay_names"], list):
        generic = [n for n in raw["lay_names"] if isinstance(n, str) and n.lower().strip() in GENERIC_NAMES]
        if generic:
            problems.append(f"{where}: lay_names {generic} are too generic to tell a condition apart")
    for key in ("symptoms", "red_flags"):
        for phrase in raw[key] if isinstance(raw[key], list) else []:
            if isinstance(phrase, str) and (phrase.lower().startswith("saya ") or phrase.rstrip().endswith(".")):
                problems.append(f"{where}: {key} item {phrase!r} must be a lay noun phrase without 'saya' or a full stop")
    text = " ".join(str(v) for k, v in raw.items() if k != "source")
    for regex, what in ((DOSE_RE, "a dose"), (PRESCRIPTION_RE, "a prescription medicine")):
        hit = regex.search(text)
        if hit:
            problems.append(f"{where}: names {what} ({hit.group(0)!r}); cards give no doses and name no prescription "
                            "medicines (data/conditions/README.md)")
    if problems:
        return None, problems
    as_tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return Card(**{**as_tuples, "source": Source(**{k: source[k] for k in ("publisher", "title", "url")})},
                file=where.split(" ")[0]), []


def load_cards(folder: str | Path = CARD_DIR) -> list[Card]:
    """Every card of folder/*.yaml, validated (ids unique, alternatives known); raises CardError listing all problems."""
    folder = Path(folder)
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise CardError(f"{folder}: no *.yaml condition cards (data/conditions/README.md describes them).")
    cards, problems = [], []
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            problems.append(f"{path.name}: not valid YAML ({e})")
            continue
        if not isinstance(data, list):
            problems.append(f"{path.name}: expected a YAML list of cards")
            continue
        for i, raw in enumerate(data):
            card, found = check_card(raw, f"{path.name}#{i + 1}")
            problems += found
            if card:
                cards.append(card)
    seen: dict[str, str] = {}
    for card in cards:
        if card.id in seen:
            problems.append(f"{card.file} ({card.id}): id already used in {seen[card.id]}")
        seen.setdefault(card.id, card.file)
    for card in cards:
        unknown = [a for a in card.alternatives if a not in seen or a == card.id]
        if unknown:
            problems.append(f"{card.file} ({card.id}): alternatives {unknown} are not other cards' ids")
    if problems:
        raise CardError(f"{len(problems)} problem(s) in {folder}:\n  " + "\n  ".join(problems))
    return cards


def main(argv: list[str] | None = None) -> int:
    folder = (argv if argv is not None else sys.argv[1:]) or [str(CARD_DIR)]
    try:
        cards = load_cards(folder[0])
    except CardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for group in GROUPS:
        ids = [c.id for c in cards if c.group == group]
        print(f"{group}: {len(ids)} card(s)")
    print(f"{len(cards)} cards, {sum(c.emergency for c in cards)} emergencies, all valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
