"""Red flags in a user's message: signs that mean emergency care now, whatever the model answers.

    python -m trainer.serve.redflags "Dada saya nyeri seperti ditindih dan keringat dingin"
    python -m trainer.serve.redflags --data_path ../shared/data/GenMedGPT-5k-id.json   # false alarms on a dataset

The page's chat function shows `notice(message)` above the model's answer (app.py); the OpenAI-compatible
/v1 answers stay the model's own. Torch-free and rule-based on purpose: the check must work when the
model is wrong, on any backend, and be readable by a reviewer. The rules cover the red flags of the
condition cards (data/conditions/): heart attack and stroke signs, severe bleeding, fainting or seizures,
trouble breathing, a severe allergic reaction, a child with dehydration, a feverish young baby, danger
signs in pregnancy, severe injuries, bites and poisoning, and thoughts of suicide (with a mental-health
line). A symptom that is common and mostly harmless alone (chest pain, a headache, a fever) counts only
with the companion that makes it an emergency, so ordinary questions do not raise false alarms
(measured on GenMedGPT's 5,000 patient messages: BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass


def _any(*words: str) -> str:
    return r"(?:" + "|".join(words) + r")"


def _both(a: str, b: str, window: int = 200) -> str:
    """a and b in the same message, in either order, at most `window` characters apart."""
    return rf"(?:(?:{a})[\s\S]{{0,{window}}}?(?:{b})|(?:{b})[\s\S]{{0,{window}}}?(?:{a}))"


W = r"(?:\S+\s+)"  # one word, for "a {0,3} words b"
NOT = r"(?:tidak|tak|gak|ga|nggak|enggak|ngga|gk)"
VERY = r"(?:sekali|banget|bgt|bener|parah|berat|hebat)"
CHILD = _any(r"anak", r"bayi", r"balita", r"putra", r"putri", r"si\s+kecil", r"cucu", r"keponakan", r"bocah",
             r"\d{1,2}\s*(?:th|thn|tahun|bulan|bln)\b")
OTHER = _any(r"dia", r"ibu", r"bapak", r"ayah", r"suami", r"istri", r"kakek", r"nenek", r"adik", r"kakak", CHILD, r"mama",
             r"papa", r"teman", r"orang")
ACUTE = _any(r"tiba-tiba", r"tiba2", r"mendadak", r"barusan", r"baru\s+saja", r"tadi", r"sekarang", r"saat\s+ini",
             r"sedang", r"dari\s+tadi", r"sejak\s+tadi", r"semalam", r"(?:pagi|siang|sore|malam)\s+ini")
FEVER = _any(r"demam", r"panas\s+tinggi", r"badan(?:nya)?\s+panas", r"suhu(?:nya)?\s+(?:\S+\s+)?3[89]", r"meriang",
             r"(?:hangat|panas)\s+3[89]", r"\b3[89](?:[,.]\d)?\s*(?:derajat|°|lebih)")
CHEST = (r"(?:nyeri|sakit|berat|tertekan|ditekan|ditindih|tertindih|diremas|terhimpit|dihimpit|panas)\w*\s+(?:di\s+|pada\s+|bagian\s+)?dada"
         r"|dada(?:ku|nya)?\s+" + W + r"{0,2}(?:nyeri|sakit|berat|sesak|ditindih|tertindih|diremas|terhimpit|dihimpit|tertekan|panas|terbakar)")
PREGNANT = _any(r"hamil", r"kehamilan", r"mengandung", r"usia\s+kandungan")
FAINT = _any(r"pingsan", rf"{NOT}\s+sadar(?:kan\s+diri)?", r"hilang\s+kesadaran", r"penurunan\s+kesadaran",
             r"(?:sulit|susah)\s+(?:sekali\s+|banget\s+|bgt\s+)?dibangun\w*", rf"{NOT}\s+bisa\s+dibangun\w*",
             rf"{NOT}\s+(?:merespons|merespon|respon)", r"tergeletak")
SEIZURE = (r"(?<!otot )(?<!atau )(?<!kram dan )(?<!kram atau )(?<!kram, )(?<!pernah )(?<!riwayat )(?<!dulu )"
           r"(?:kejang|step\b)(?:-kejang)?(?!\s+(?:otot|perut|kaki|punggung|bahu|siku|di\s+(?:betis|kaki|perut)))")
# "bibir gak bengkak", "tidak demam": a negated sign is no sign
NEGATED = re.compile(r"\b(?:tidak|tak|gak|ga|nggak|enggak|tanpa|bukan)\s+(?:ada\s+)?(?:bengkak|sesak|pingsan|demam|panas|muntah|kejang|"
                     r"berdarah|biru|kaku)\w*", re.IGNORECASE)


# Chat Indonesian to the standard words the rules are written in ("sy ga bisa napas" -> "saya tidak bisa napas"):
# abbreviations, colloquial forms and reduplication written with a 2 ("tiba2", "muntah2").
SLANG = {
    **dict.fromkeys(("ga", "gak", "gk", "nggak", "ngga", "enggak", "engga", "tdk", "ndak", "gaada"), "tidak"),
    **dict.fromkeys(("sy", "gw", "gue", "gua", "aq"), "saya"), **dict.fromkeys(("udah", "udh", "dah", "sdh"), "sudah"),
    **dict.fromkeys(("skrg", "skg", "skrang"), "sekarang"), **dict.fromkeys(("bgt", "bngt", "bener"), "banget"),
    **dict.fromkeys(("kmrn", "kemaren"), "kemarin"), **dict.fromkeys(("kayak", "kaya", "kek", "kyk"), "seperti"),
    **dict.fromkeys(("pengen", "pingin", "pgn", "pengin"), "ingin"), **dict.fromkeys(("nelen", "nelan"), "menelan"),
    **dict.fromkeys(("netek", "nenen", "nyusu"), "menyusu"), **dict.fromkeys(("brenti", "berenti"), "berhenti"),
    "dr": "dari", "mlm": "malam", "sm": "sama", "yg": "yang", "dgn": "dengan", "tp": "tapi", "jd": "jadi", "blm": "belum",
    "lg": "lagi", "org": "orang", "th": "tahun", "thn": "tahun", "bln": "bulan", "mgg": "minggu", "tlg": "tolong",
    "ilang": "hilang", "kerasa": "terasa", "dalem": "dalam", "ketelen": "tertelan", "lemes": "lemas", "pucet": "pucat",
    "anget": "hangat", "item": "hitam", "sesek": "sesak", "nyesek": "sesak", "ngorok": "mengorok", "nyaut": "menjawab",
    "narik": "menarik", "ngakhirin": "mengakhiri", "nyempit": "menyempit", "sampe": "sampai", "abis": "habis",
    "diremes": "diremas", "megangin": "memegang", "nembus": "tembus", "ponakan": "keponakan", "baby": "bayi",
    "mules": "mulas", "nangis": "menangis", "kalo": "kalau", "trus": "terus", "mencret": "diare", "ambruk": "jatuh pingsan",
    "keselek": "tersedak", "kesedak": "tersedak", "digerakin": "digerakkan", "ngomong": "bicara", "napasnya": "napasnya",
    "tiba2": "tiba-tiba", "ijo": "hijau", "gede": "besar", "ketumpahan": "ketumpahan", "dibangunin": "dibangunkan",
}
_WORD = re.compile(r"[A-Za-z]+(?:2|-[A-Za-z]+)?")


def _standard(word: str) -> str:
    lower = word.lower()
    if lower in SLANG:
        return SLANG[lower]
    if lower.endswith("2") and len(lower) > 2:  # "muntah2" -> "muntah-muntah"
        base = SLANG.get(lower[:-1], lower[:-1])
        return f"{base}-{base}"
    return word


def normalize(message: str) -> str:
    """The message in standard spelling, whitespace collapsed (what the rules read)."""
    return _WORD.sub(lambda m: _standard(m.group(0)), " ".join(message.split()))


@dataclass(frozen=True)
class Rule:
    kind: str
    label: str  # what the notice names, in Indonesian
    pattern: re.Pattern


def _rule(kind: str, label: str, *patterns: str) -> Rule:
    return Rule(kind, label, re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE))


RULES = (
    _rule("suicide", "pikiran bunuh diri atau menyakiti diri",
          r"bunuh\s+diri", r"(?<!kayak )(?<!seperti )(?<!rasanya )(?<!takut )(?:ingin|pengen|pengin|mau)\s+mati(?!\s+lampu)",
          r"lebih\s+baik\s+tanpa\s+(?:saya|aku|dia|diriku|dirinya|gue)", r"surat\s+(?:\S+\s+){0,2}perpisahan",
          rf"(?:tidur|tidak|gak|nggak)\s+(?:\S+\s+){{0,3}}{NOT}\s+(?:usah|perlu|mau|ingin|pengen)\s+bangun\s+lagi", r"mengakhiri\s+(?:hidup|semuanya|semua\s+ini)",
          rf"{NOT}\s+(?:ingin|mau|pengen|sanggup|kuat)\s+(?:hidup|menjalani\s+hidup)\s+lagi",
          r"(?:ingin|mau|pengen|pernah|sering|suka|berpikir\s+untuk|kepikiran|mulai)\s+(?:menyakiti|melukai|nyakitin|menyayat|nyayat)",
          r"(?:menyayat|nyayat|menyilet|nyilet|sayat)\w*\s+(?:tangan|lengan|nadi|pergelangan)",
          r"lebih\s+baik\s+(?:saya\s+|aku\s+)?(?:mati|tiada|menghilang)", r"(?:ingin|pengen|mau)\s+menghilang\s+(?:selamanya|untuk\s+selamanya)",
          r"lebih\s+baik\s+(?:kalau|jika|bila|kalo)\s+(?:saya|sy|aku|gue|gw)\s+(?:gak|tidak|nggak|ga|tak|sudah\s+tidak)\s+ada",
          rf"tidur\s+(?:\S+\s+){{0,2}}{NOT}\s+(?:usah\s+)?bangun\s+lagi", r"gunanya\s+(?:lagi\s+)?(?:aku\s+|saya\s+|sy\s+|gue\s+)?hidup",
          r"(?:loncat|lompat|melompat|terjun)\s+(?:dari\s+)?(?:jembatan|gedung|lantai|atap|tebing)", r"capek\s+hidup", r"lelah\s+hidup", rf"hidup\s+(?:saya\s+|aku\s+|ini\s+)?{NOT}\s+ada\s+(?:artinya|gunanya)"),
    _rule("heart", "nyeri dada yang bisa berarti serangan jantung",
          rf"(?:{ACUTE})[\s\S]{{0,60}}?(?:{CHEST})[\s\S]{{0,80}}?(?:sesak|mual|muntah|pucat|lemas|keringat)",
          _both(CHEST, r"keringat\w*\s+(?:\S+\s+)?(?:banyak|dingin|bercucuran|deras)|keringat\s+dingin|keringetan|berkeringat|menjalar|ke\s+(?:lengan|rahang|leher|punggung|bahu)|"
                       r"tembus\s+ke\s+punggung|pingsan|mau\s+pingsan|lemas\s+sekali"),
          _both(CHEST, ACUTE + r"[\s\S]{0,60}?(?:sesak|mual|muntah)", 120),
          r"dada\w*\s+" + W + r"{0,3}(?:seperti|kayak|kaya)\s+(?:di|ke)?(?:tindih|remas|tekan|himpit|timpa)",
          _both(CHEST + r"|memegang\w*\s+dada", r"(?:sudah|dari)\s+(?:setengah\s+jam|\d+\s+menit|sejam|lama)|tidak\s+hilang|bawah\s+lidah|"
                r"tidak\s+mempan|(?:makin|semakin)\s+sesak", 150)),
    _rule("stroke", "tanda stroke (wajah mencong, bicara pelo, lemah sebelah)",
          r"(?:wajah|muka|mulut|bibir|senyum)(?:nya|ku)?\s+" + W + r"{0,3}(?:mencong|menceng|miring|perot|merot|peyot|tidak\s+simetris)",
          r"(?:wajah|muka|mulut|bibir)(?:nya|ku)?\s+(?:sebelah|bagian|sisi)\s+(?:kiri|kanan)\s+(?:\S+\s+)?(?:turun|jatuh|lumpuh|lemah)",
          r"(?:separuh|sebelah|satu\s+sisi)\s+(?:badan|tubuh)(?:nya)?\s+" + W + rf"{{0,2}}(?:mati\s+rasa|lemas|lemah|lumpuh|kebas|{NOT}\s+bisa\s+digerakkan)",
          rf"{ACUTE}\s+" + W + rf"{{0,3}}(?:bingung|{NOT}\s+bisa\s+menemukan\s+kata)",
          r"(?:bicara|ngomong|berbicara|omongan|bicaranya|ngomongnya|kata2)(?:nya|ku)?\s+" + W +
          rf"{{0,3}}(?:pelo|cadel|{NOT}\s+jelas|susah\s+keluar|sulit\s+keluar|ngelantur|meracau|kacau|{NOT}\s+nyambung|sulit\s+dimengerti)",
          rf"{ACUTE}\s+" + W + rf"{{0,3}}(?:{NOT}\s+bisa|sulit|susah)\s+(?:bicara|berbicara|ngomong|menggerakkan)",
          r"(?:tangan|kaki|lengan|badan|tubuh)(?:nya)?\s+" + W + r"{0,5}(?:kanan|kiri|sebelah|separuh|satu\s+sisi)\s+" + W +
          rf"{{0,4}}(?:lemas|lemah|lumpuh|mati\s+rasa|kebas|{NOT}\s+bisa\s+(?:digerakkan|diangkat)|lunglai)",
          rf"(?:lemah|lumpuh|lemas|mati\s+rasa|kebas|{NOT}\s+bisa\s+digerakkan)\s+" + W + r"{0,3}(?:sebelah|separuh|satu\s+sisi)",
          r"(?:sakit|nyeri)\s+(?:\S+\s+){0,2}paling\s+(?:parah|hebat|berat|sakit)\s+(?:seumur\s+hidup|yang\s+pernah)",
          r"kepala\w*\s+" + W + r"{0,3}seperti\s+(?:dipukul|dihantam|meledak)"),
    _rule("bleeding", "perdarahan hebat",
          r"(?:perdarahan|pendarahan)\s+(?!menstruasi|haid|saat\s+haid)" + W + r"{0,2}(?:hebat|banyak|deras|berat|terus)",
          r"darah(?:nya)?\s+" + W + rf"{{0,2}}(?:{NOT}\s+(?:mau\s+)?berhenti|terus\s+(?:keluar|mengalir|mengucur)|mengucur|muncrat|memancar|deras|banyak\s+sekali)",
          r"(?:berdarah|mimisan(?:nya)?)\s+(?:terus|banyak|deras|hebat)", r"[nm]?gucur|mengucur", _both(r"mimisan|darah\w*", r"tidak\s+berhenti|sebaskom|segayung|pucat\s+dan\s+lemas", 80), r"muntah(?:\s+\S+)?\s+darah", r"batuk\s+(?:\S+\s+)?darah\s+(?:banyak|segar|segelas)",
          r"(?:BAB|berak|pup|feses|tinja|kotoran)(?:nya)?\s+" + W + r"{0,2}(?:hitam|kehitaman|item)", r"(?:seperti|kayak|kaya)\s+aspal",
          r"darah\w*\s+(?:keluar\s+)?banyak\s+(?:banget|sekali|bgt)", r"ganti\s+pembalut\s+(?:tiap|setiap)",
          _both(r"melahirkan|nifas|persalinan", r"(?:perdarahan|pendarahan|darah\w*)\s+(?:\S+\s+)?(?:banyak|deras|hebat)", 120),
          r"(?:perdarahan|pendarahan|keluar\s+darah|berdarah|flek)\s+(?:\S+\s+){0,2}(?:selama|saat|waktu|ketika)\s+(?:masa\s+)?(?:hamil|kehamilan)",
          r"(?<!sulit )(?<!susah )(?<!untuk )(?<!kesulitan )(?:sedang\s+)?(?:hamil|mengandung)\s+(?:\S+\s+){0,6}?(?:perdarahan|pendarahan|keluar\s+darah|flek)(?!\s+(?:intermenstrual|antar|di\s+antara))"),
    _rule("dengue", "demam dengan perdarahan atau tangan dan kaki dingin (tanda bahaya demam berdarah)",
          _both(FEVER, r"gusi(?:nya)?\s+berdarah|mimisan|tangan\s+(?:dan\s+)?kaki(?:nya)?\s+(?:\S+\s+)?dingin|"
                       r"tangan\s+kaki(?:nya)?\s+(?:\S+\s+)?dingin|muntah\s+terus", 250)),
    _rule("unconscious", "pingsan, kejang atau sulit dibangunkan",
          rf"(?<!hampir )(?<!mau )(?<!pernah )(?<!sering )(?:{OTHER})\s+" + W + rf"{{0,3}}(?:jatuh\s+)?(?:{FAINT})",
          _both(rf"(?<!hampir )(?<!mau )(?<!pernah )(?<!sering )(?<!kadang )(?:{FAINT})", ACUTE, 60),
          rf"(?:{FAINT})\s+(?:lagi|sampai\s+sekarang|terus)", r"jatuh\s+pingsan", r"(?:sulit|susah)\s+(?:sekali\s+|banget\s+|bgt\s+)?dibangun\w*", r"tergeletak",
          rf"{SEIZURE}[\s\S]{{0,120}}?(?:{ACUTE}|{FEVER}|{CHILD})", rf"(?:{ACUTE}|{FEVER}|{CHILD})[\s\S]{{0,120}}?{SEIZURE}",
          r"mata(?:nya)?\s+(?:\S+\s+)?mendelik", r"kelojotan", r"(?:tangan|kaki|badan|tubuh)(?:nya)?\s+" + W + r"{0,2}kaku\s+(?:dan\s+)?(?:bergetar|gemetar|menyentak|kelojotan)",
          r"kejang\s+(?:lebih\s+dari|lama|berulang|terus)",
          r"(?<!merasa )(?<!hampir )(?:tidak\s+sadar(?:kan\s+diri)?|hilang\s+kesadaran)",
          r"(?:dicubit|digoyang|dipanggil|ditepuk|dibangunkan)\w*(?:-\w+)?\s+" + W + r"{0,2}(?:tidak|tak)\s+(?:\S+\s+)?(?:bangun|respon\w*|menjawab|sadar)",
          r"(?:tidak|tak)\s+(?:ber)?napas(?!\s+dalam)", r"nadi\w*\s+" + W + r"{0,1}(?:tidak|tak)\s+(?:terasa|teraba|ada)"),
    _rule("breathing", "sesak napas berat",
          r"(?:sesak|sesek|susah\s+napas|sulit\s+(?:bernapas|bernafas|napas|nafas))\w*\s+" + W + rf"{{0,3}}{VERY}",
          rf"(?:sesak|sesek)\w*[\s\S]{{0,60}}?{NOT}\s+bisa\s+(?:ngomong|bicara|berbicara|berbaring|tidur\s+telentang)",
          rf"{NOT}\s+bisa\s+(?:napas|nafas|bernapas|bernafas)(?!\s+dalam)(?![^.?!]{{0,40}}(?:akhir-akhir\s+ini|kadang))", r"(?:bibir|ujung\s+jari|kuku|wajah|muka)(?:nya)?\s+" + W +
          r"{0,2}(?:biru|kebiruan|membiru)", r"(?:napas|nafas)(?:nya)?\s+" + W + r"{0,2}(?:tersengal|megap|berhenti|henti)",
          r"tarikan\s+dinding\s+dada", r"(?:dada|iga)\w*\s+" + W + r"{0,3}(?:tertarik|ketarik|masuk|menarik\S*)\s+ke\s+dalam",
          r"(?:inhaler|semprot\w*|obat\s+sesak|obat\s+asma)[\s\S]{0,60}?(?:tidak\s+mempan|tidak\s+membaik|tidak\s+ngaruh)",
          r"(?:makin|semakin)\s+sesak[\s\S]{0,40}?(?:tidak\s+kuat|tidak\s+bisa)", r"cuping\s+hidung",
          r"(?:tersedak|keselek|kesedak)\s+" + W + rf"{{0,3}}{NOT}\s+bisa"),
    _rule("allergy", "reaksi alergi berat",
          _both(r"(?:bengkak|membengkak|bentol)\w*\s+" + W + r"{0,3}(?:bibir|lidah|tenggorokan|kelopak|wajah|muka|mata)|"
                r"(?:bibir|lidah|tenggorokan|wajah|muka)(?:nya)?\s+" + W + r"{0,2}(?:bengkak|membengkak)",
                r"sesak|sulit\s+bernapas|susah\s+(?:napas|nafas|bernapas)|napas\w*\s+(?:\S+\s+){0,2}(?:bunyi|berat)|serak|"
                r"(?:sulit|susah)\s+menelan|pingsan|tenggorokan\w*\s+(?:\S+\s+){0,2}(?:menyempit|sempit|tercekik)", 160),
          r"tenggorokan\w*\s+" + W + r"{0,2}(?:tercekik|menutup|tertutup|menyempit)", r"anafilak\w*",
          _both(r"disengat|sengatan|tawon|lebah|(?:setelah|habis|sesudah)\s+(?:makan|minum\s+obat|disuntik)",
                r"sesak|susah\s+(?:napas|bernapas)|sulit\s+bernapas|mau\s+pingsan|pingsan|bentol\w*(?:-\w+)?\s+(?:seluruh|semua)", 150)),
    _rule("dehydration", "anak dengan tanda kekurangan cairan",
          _both(_both(CHILD, r"diare|mencret|muntah|muntaber|BAB\s+cair|berak\s+cair|pup\s+cair", 200),
                r"mata(?:nya)?\s+" + W + r"{0,1}cekung|ubun-ubun(?:nya)?\s+" + W + r"{0,1}cekung|tanpa\s+air\s+mata|" + rf"{NOT}\s+(?:keluar\s+)?air\s+mata|"
                rf"(?:{NOT}|belum|jarang)\s+(?:pipis|kencing|BAK|buang\s+air\s+kecil)|popok(?:nya)?\s+" + W + r"{0,1}kering|"
                rf"{NOT}\s+(?:mau|bisa)\s+(?:minum|nyusu|menyusu)|muntah\s+(?:tiap|setiap)\s+(?:kali\s+)?(?:dikasih|diberi)\s+minum|"
                rf"(?:lemas|lemes)\s+{VERY}|sangat\s+lemas|mengantuk\s+terus|ngantuk\s+terus", 250)),
    _rule("baby_fever", "bayi kecil yang demam, kuning berat atau tidak mau menyusu",
          _both(r"bayi|newborn|baru\s+lahir|cucu|anak", r"(?:umur|usia|berumur|berusia|baru|\b)\s*(?:\d{1,2}|satu|dua|tiga|sebelas)\s+(?:minggu|mgg|hari)\b|"
                r"(?:umur|usia|berumur|berusia|baru|\b)\s*(?:[0-2]|satu|dua)\s+(?:bulan|bln)\b|baru\s+lahir", 60) + r"[\s\S]{0,150}?(?:" + FEVER + r"|panas)",
          r"(?:bayi|newborn)[\s\S]{0,80}?kuning\s+" + W + r"{0,2}(?:sampai|hingga)\s+(?:ke\s+)?(?:telapak|kaki|tangan)",
          r"(?:bayi)[\s\S]{0,80}?" + rf"{NOT}\s+mau\s+(?:menyusu|nyusu|minum\s+ASI)\s+sama\s+sekali"),
    _rule("pregnancy", "tanda bahaya kehamilan",
          _both(PREGNANT, r"pandangan\w*\s+" + W + r"{0,2}(?:kabur|berkunang|gelap)|penglihatan\w*\s+" + W + r"{0,2}(?:kabur|gelap)|"
                rf"sakit\s+kepala\s+(?:\S+\s+)?{VERY}|kepala\s+(?:\S+\s+)?{VERY}|ketuban(?:nya)?\s+(?:pecah|rembes|keluar)|air\s+ketuban|"
                r"(?:cairan|air)\s+(?:\S+\s+){0,3}(?:dari\s+jalan\s+lahir|merembes)|nyeri\s+ulu\s+hati|"
                r"gerak(?:an)?\s+(?:janin|bayi|dedek|si\s+kecil)(?:nya)?\s+" + W + rf"{{0,2}}(?:berkurang|{NOT}\s+terasa|jarang)|"
                rf"(?:janin|dedek|bayi)\w*\s+(?:\S+\s+){{0,3}}(?:{NOT}|jarang)\s+(?:\S+\s+)?(?:bergerak|gerak)|(?<!kram dan )(?<!kram atau )(?<!kram, )kejang(?!\s+(?:kaki|otot|punggung|bahu))|"
                r"(?:tensi|tekanan\s+darah)(?:nya)?\s+(?:\S+\s+){0,4}1[4-9]\d|"
                r"(?:muka|wajah)(?:nya)?\s+(?:dan\s+\S+\s+)?(?:\S+\s+)?bengkak", 250)),
    _rule("ectopic", "nyeri hebat atau pingsan saat telat haid (bisa hamil di luar kandungan)",
          _both(r"telat\s+(?:haid|mens\w*|datang\s+bulan|\d+\s+minggu)|terlambat\s+(?:haid|\d+\s+minggu)|hamil\s+muda",
                r"(?:sakit|nyeri)\s+(?:\S+\s+)?(?:banget|hebat|sekali)|mau\s+pingsan|pingsan", 150)),
    _rule("injury", "cedera berat",
          _both(r"kepala(?:nya)?\s+" + W + r"{0,3}(?:terbentur|terbanting|terhantam|kebentur|benjol)|(?:terbentur|kebentur|jatuh|kecelakaan)[\s\S]{0,60}?kepala",
                r"muntah|pingsan|bingung|(?:mengantuk|ngantuk)\s+terus|kejang|cairan\s+bening|keluar\s+darah\s+dari\s+(?:hidung|telinga)", 200),
          r"luka\s+bakar\s+" + W + r"{0,2}(?:luas|besar|di\s+wajah|di\s+muka|seluruh)",
          _both(r"(?:tersiram|ketumpahan|kesiram|tumpah|kena)[\s\S]{0,40}?(?:air\s+panas|air\s+mendidih|minyak\s+panas|kuah\s+panas|api)|luka\s+bakar|kebakaran",
                r"luas|seluruh|separuh|setengah|dada|perut|wajah|muka|kedua|melepuh\s+besar", 120),
          r"tulang(?:nya)?\s+" + W + r"{0,3}(?:menonjol\s+keluar|nongol|keluar\s+dari\s+kulit|menembus|nembus|tembus|mencuat)",
          _both(r"jatuh|kecelakaan|terbentur|tertimpa", r"(?:kaki|tangan)\w*\s+" + W + r"{0,2}tidak\s+bisa\s+digerakkan|tidak\s+terasa\s+apa", 120),
          _both(r"(?:air\s+panas|air\s+mendidih|minyak\s+panas|kuah\s+panas)[\s\S]{0,40}?(?:tumpah|menyiram|kena)", r"melepuh|luas|dada|perut|wajah", 120),
          r"melepuh\s+(?:\S+\s+)?(?:luas|besar-besar|semua)",
          r"(?:tertusuk|ditusuk)\s+" + W + r"{0,3}(?:dada|perut|leher)"),
    _rule("poison", "gigitan ular atau keracunan",
          r"(?:digigit|dipatuk|gigitan|patukan|kena\s+patuk|kena\s+gigit)\s+ular", r"ular\s+" + W + r"{0,3}(?:menggigit|mematuk)",
          _both(r"(?:minum|menelan|nelen|nelan|tertelan|ketelan|keminum|meminum)\s+" + W + r"{0,4}(?:obat|pil|tablet)",
                r"sekaligus|(?:satu|se)\s*(?:strip|botol|bungkus)|sebanyak-banyaknya", 60),
          r"(?:minum|menelan|nelen|nelan|tertelan|ketelan|keminum|meminum)\s+" + W + r"{0,3}(?:racun|pestisida|obat\s+nyamuk|pembersih|pemutih|"
          r"bensin|minyak\s+tanah|baygon|obat\s+serangga|racun\s+tikus|soda\s+api|cairan\s+pembersih|obat\s+\S+\s+banyak|banyak\s+obat)",
          r"(?<!tidak )overdosis", r"\bOD\b",
          _both(r"minum|menelan|tertelan|ketelan|meminum", r"\d+\s+(?:butir|tablet|pil|kaplet|strip)|sekaligus|satu\s+strip", 80), r"keracunan\s+(?:obat|pestisida|racun|gas|asap|jengkol)"),
    _rule("meningitis", "demam dengan kaku kuduk atau ruam yang tidak hilang",
          r"kaku\s+kuduk", _both(r"leher(?:nya)?\s+" + W + r"{0,2}kaku", FEVER, 120),
          r"ruam\s+" + W + r"{0,3}" + rf"{NOT}\s+(?:hilang|memudar|pudar)\s+" + W + r"{0,2}ditekan"),
    _rule("abdomen", "nyeri perut hebat",
          r"(?:nyeri|sakit)\s+perut\s+" + W + rf"{{0,4}}(?:hebat|luar\s+biasa|{NOT}\s+tertahankan|parah\s+(?:sekali|banget))",
          r"tidak\s+bisa\s+kentut", r"muntah\s+(?:\S+\s+)?hijau",
          r"perut\w*\s+" + W + rf"{{0,2}}(?:sakit|nyeri)\s+(?:\S+\s+)?(?:hebat|luar\s+biasa|{NOT}\s+tertahankan)",
          r"perut(?:nya)?\s+(?:\S+\s+)?kaku",
          r"perut(?:nya)?\s+" + W + r"{0,1}(?:keras\s+(?:seperti|kayak)\s+papan|kaku\s+dan\s+keras|keras\s+dan\s+kaku)",
          _both(r"perut\s+kanan\s+bawah", r"(?:makin|semakin|tambah)\s+(?:sakit|nyeri|parah)|muntah|kalau\s+(?:jalan|batuk)|ditekan|membungkuk|bungkuk|" + FEVER, 150)),
    _rule("heat", "sengatan panas (heat stroke)",
          _both(r"terik|siang\s+bolong|kepanasan|panas-panasan|di\s+bawah\s+matahari|berjemur|ladang|sawah",
                r"ngelantur|meracau|bingung|pingsan|jatuh|kejang|(?:tidak|gak|nggak)\s+(?:berkeringat|keringetan)|kulit(?:nya)?\s+kering", 200)),
    _rule("tetanus", "kaku rahang atau kejang otot setelah luka",
          rf"mulut(?:nya)?\s+(?:{NOT}|sulit|susah)\s+(?:bisa\s+)?dibuka", r"rahang(?:nya)?\s+" + W + r"{0,1}kaku", r"kaku\s+rahang",
          r"punggung(?:nya)?\s+" + W + r"{0,1}melengkung"),
    _rule("eye", "mata dengan tanda darurat",
          r"(?:bahan\s+kimia|cairan\s+kimia|air\s+aki|soda\s+api|pemutih)\s+" + W + r"{0,2}(?:kena|masuk|terciprat)\s+(?:ke\s+)?mata",
          r"(?:penglihatan|pandangan)(?:nya)?\s+" + W + rf"{{0,2}}(?:hilang|gelap)\s+(?:{ACUTE})",
          _both(r"mata\w*\s+" + W + r"{0,5}(?:sakit|nyeri)\s+(?:\S+\s+)?(?:hebat|banget|sekali)", r"muntah|pelangi|pandangan\w*\s+(?:\S+\s+)?kabur", 150)),
    _rule("pressure", "tekanan darah sangat tinggi",
          r"(?:tensi|tekanan\s+darah)(?:nya)?\s+" + W + r"{0,4}(?:1[89]\d|2\d\d)\s*/", r"\b\d{2,3}\s*/\s*1[2-9]\d\b"),
)

NOTICE_MARK = "🚨 **"
NOTICE = ("🚨 **Tanda bahaya: {label}.** Ini bisa keadaan darurat. Segera ke **IGD** rumah sakit terdekat atau hubungi "
          "ambulans **119** / **112** sekarang; jangan menunggu jawaban di bawah ini.")
SUICIDE_NOTICE = ("🚨 **Anda tidak sendiri.** Bila Anda berpikir untuk bunuh diri atau menyakiti diri, segera hubungi "
                  "layanan kesehatan jiwa Kementerian Kesehatan di **119 ekstensi 8**, atau **112**, atau datang ke **IGD** "
                  "terdekat. Ceritakan juga kepada orang yang Anda percaya dan minta ia menemani Anda sekarang.")


@dataclass(frozen=True)
class RedFlag:
    kind: str
    label: str
    matched: str  # the words that triggered it

    @property
    def notice(self) -> str:
        return SUICIDE_NOTICE if self.kind == "suicide" else NOTICE.format(label=self.label)


# A sign that has come and gone for weeks ("sesak napas akhir-akhir ini", "kejang sesekali") is for a doctor's
# visit, not the emergency room, unless the same sentence says it is happening now.
CHRONIC = re.compile(r"akhir-akhir\s+ini|beberapa\s+(?:minggu|bulan|tahun)|sementara\s+waktu|kadang|sering|sesekali|"
                     r"selama\s+(?:ini|berminggu|berbulan)", re.IGNORECASE)
NOW = re.compile(ACUTE, re.IGNORECASE)
MENSES = re.compile(r"menstruasi|haid|datang\s+bulan|periode", re.IGNORECASE)
PREGNANCY = re.compile(r"(?<!sulit )(?<!susah )(?<!untuk )(?<!kesulitan )(?:hamil|kehamilan|mengandung)", re.IGNORECASE)


def _sentence(text: str, start: int, end: int) -> str:
    left = max(text.rfind(c, 0, start) for c in ".?!") + 1
    rights = [i for i in (text.find(c, end) for c in ".?!") if i >= 0]
    return text[left : min(rights) + 1 if rights else len(text)]  # with its "?": questions read differently


# "Pernah dengar kalau muntah darah itu tanda ...", "dulu pernah stroke, sekarang sudah pulih": a question about
# information or the past, not a sign now (thoughts of suicide count whenever they were).
INFO = re.compile(r"pernah\s+dengar|pertolongan\s+pertama|jaga-jaga|\bkalau\s+(?:anak|bayi|orang|kita|seseorang)\b[^.?!]*\?|apa\s+(?:saja\s+)?(?:tanda|gejala|ciri)|tanda-tanda|ciri-ciri|apa(?:kah)?\s+(?:benar|betul)|"
                  r"(?:cara|bagaimana)\s+mencegah", re.IGNORECASE)
PAST = re.compile(r"\bpernah\b|\bdulu\b|tahun\s+lalu|bulan\s+lalu|minggu\s+lalu|waktu\s+kecil|riwayat|sudah\s+(?:sembuh|pulih|sehat)",
                  re.IGNORECASE)
RECOVERED = re.compile(r"tidak\s+pernah\s+lagi|sudah\s+(?:sehat|pulih|sembuh|normal|membaik|dikasih\s+obat|minum\s+obat)|sekarang\s+\d", re.IGNORECASE)
HARMLESS_BLACK_STOOL = re.compile(r"zat\s+besi|tablet\s+(?:besi|tambah\s+darah)|tambah\s+darah", re.IGNORECASE)


def _vetoed(kind: str, sentence: str) -> bool:
    past = PAST.search(sentence) and (not NOW.search(sentence) or RECOVERED.search(sentence))
    if kind != "suicide" and (INFO.search(sentence) or past):
        return True
    if kind == "bleeding" and HARMLESS_BLACK_STOOL.search(sentence):
        return True
    if kind in ("breathing", "unconscious") and CHRONIC.search(sentence) and not NOW.search(sentence):
        return True
    return kind == "bleeding" and bool(MENSES.search(sentence)) and not PREGNANCY.search(sentence)


def check(message: str) -> RedFlag | None:
    """The first red flag found in the message (rules in RULES' order), else None."""
    text = NEGATED.sub(" ", normalize(message))
    for rule in RULES:
        for hit in rule.pattern.finditer(text):
            if not _vetoed(rule.kind, _sentence(text, hit.start(), hit.end())):
                return RedFlag(rule.kind, rule.label, hit.group(0))
    return None


def notice(message: str) -> str | None:
    """The Markdown notice the page shows above the answer, or None."""
    flag = check(message)
    return flag.notice if flag else None


def with_notice(message: str, texts):
    """The page's streamed answer (each item the text so far) with the notice above it when the message has a red
    flag; the notice is shown at once, before the model's first token."""
    flag = notice(message)
    if flag is None:
        yield from texts
        return
    yield flag
    try:
        for text in texts:
            yield f"{flag}\n\n{text}"
    finally:
        close = getattr(texts, "close", None)
        if close:  # the stop button closes us: stop the model's generation too
            close()


def strip_notice(answer: str) -> str:
    """An answer as the model wrote it, without the page's notice (for the history sent back to the model)."""
    if answer.startswith(NOTICE_MARK):
        return answer.split("\n\n", 1)[1] if "\n\n" in answer else ""
    return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("message", nargs="?", help="a message to check")
    parser.add_argument("--data_path", help="Alpaca records (JSON Lines or array): count the patient messages flagged")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_path:
        from collections import Counter

        with open(args.data_path, encoding="utf-8") as f:
            text = f.read()
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
        flagged = [(r, check(r.get("input") or r["instruction"])) for r in records]
        flagged = [(r, f) for r, f in flagged if f]
        print(f"{len(flagged)} of {len(records)} messages flagged ({100 * len(flagged) / max(len(records), 1):.2f}%): "
              f"{dict(Counter(f.kind for _, f in flagged))}")
        for r, f in flagged[:30]:
            print(f"  [{f.kind}] {f.matched!r}: {(r.get('input') or r['instruction'])[:160]}")
        return 0
    if not args.message:
        parser.error("give a message or --data_path")
    flag = check(args.message)
    print(flag.notice if flag else "no red flag")
    return 0


if __name__ == "__main__":
    sys.exit(main())
