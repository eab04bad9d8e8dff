"""Is a text Indonesian? A cheap stopword check: the one home of it, for data_gen's filters (generate,
translate) and for trainer.evaluate's share of answers in Indonesian. Pure Python, no torch.
"""

from __future__ import annotations

from data_gen.rouge import tokenize

# Language check: the share of words that are common function words of each language. Measured on
# GenMedGPT-5k-id and chatdoctor5k (fields of 5+ words): Indonesian inputs have 24-45% Indonesian
# stopwords and no English ones; English texts have no Indonesian ones. A field passes for "id" when
# at least 5% of its words are Indonesian stopwords and more of them are Indonesian than English.
STOPWORDS = {
    "id": frozenset("""yang dan di ke dari ini itu dengan untuk tidak saya anda ada pada atau juga akan bisa sudah
        karena dalam seperti jika bila agar perlu lebih sangat telah masih sejak apakah apa bagaimana kapan
        segera dapat harus sering setelah sebelum saat oleh bahwa kami kita mereka dia ia belum tetapi tapi namun
        serta hanya sampai lalu maka jadi kalau mungkin banyak beberapa setiap semua aku kau dok dokter ya
        berdasarkan sepertinya tampaknya memiliki mengalami menderita punya adalah merupakan""".split()),
    "en": frozenset("""the and of to a in is you your that it for with on are be this have has was were as at or
        not can if what how should i my me do does an from by will would been""".split()),
}
MIN_LANGUAGE_RATIO = 0.05
MIN_WORDS_TO_JUDGE = 5  # shorter fields (a drug name, "Ya.") are not judged


def looks_like(text: str, language: str, min_words: int = MIN_WORDS_TO_JUDGE) -> bool:
    """A cheap language check by stopword shares (see STOPWORDS); texts shorter than `min_words` pass
    (trainer.evaluate judges every answer that has a word: `min_words=1`)."""
    words = tokenize(text)
    if len(words) < min_words:
        return True
    shares = {lang: sum(w in stop for w in words) / len(words) for lang, stop in STOPWORDS.items()}
    other = max((s for lang, s in shares.items() if lang != language), default=0.0)
    return shares[language] >= MIN_LANGUAGE_RATIO and shares[language] > other
