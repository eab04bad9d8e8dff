"""data_gen/rouge.py: ROUGE-L values, and the fast filter deciding exactly what a brute-force scan decides."""

import random

import pytest

from conftest import REAL_DATA, sample_records
from data_gen.rouge import RougeDedup, lcs_length, rouge_l, tokenize
from trainer.records import load_records

CHATDOCTOR = REAL_DATA.parent / "chatdoctor5k.json"
needs_real = pytest.mark.skipif(not REAL_DATA.exists(), reason="shared/data not beside the repo")


def lcs_dp(a, b):
    """Textbook O(len_a * len_b) dynamic programme, the reference for the bit-parallel LCS."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def brute_force(texts, threshold):
    """stanford_alpaca's loop: score every text against every kept one. Yields (best, index, kept)."""
    kept = []
    for text in texts:
        tokens = tokenize(text)
        scores = [rouge_l(tokens, k) for k in kept]
        best = max(scores, default=0.0)
        index = scores.index(best) if best > 0 else None
        keep = best < threshold
        if keep:
            kept.append(tokens)
        yield best, index, keep


def real_texts(n: int, seed: int = 0) -> list[str]:
    """A mix that stresses the filter: GenMedGPT keys sharing one instruction (many near duplicates),
    bare inputs, long outputs (LCS beyond 64 tokens) and English ChatDoctor texts."""
    records = load_records(str(REAL_DATA)).records
    english = load_records(str(CHATDOCTOR)).records
    rng = random.Random(seed)
    texts = [r["instruction"] + "\n" + r["input"] for r in rng.sample(records, n // 4)]
    texts += [r["input"] for r in rng.sample(records, n // 4)]
    texts += [r["output"] for r in rng.sample(records, n // 4)]
    texts += [r[rng.choice(["input", "output"])] for r in rng.sample(english, n - 3 * (n // 4))]
    texts += texts[: n // 20]  # exact repeats
    rng.shuffle(texts)
    return texts


def test_tokenize_lowercases_unicode_words():
    assert tokenize("Dokter, saya DEMAM 3 hari—sejak Senin!") == ["dokter", "saya", "demam", "3", "hari", "sejak", "senin"]
    assert tokenize("Café naïve") == ["café", "naïve"]
    assert tokenize("  ...!? ") == []


def test_known_values():
    a = "demam tinggi dan ruam merah".split()
    assert rouge_l(a, a) == 1.0
    assert rouge_l(a, "batuk pilek".split()) == 0.0
    # LCS of a b c d e / a c e f is "a c e" (3): F = 2*3 / (5+4)
    assert lcs_length("a b c d e".split(), "a c e f".split()) == 3
    assert rouge_l("a b c d e".split(), "a c e f".split()) == pytest.approx(6 / 9)
    # order matters, unlike a bag of words: the LCS of a reversed sequence is 1
    assert rouge_l(["x", "y", "z"], ["z", "y", "x"]) == pytest.approx(2 / 6)
    assert rouge_l([], a) == rouge_l(a, []) == rouge_l([], []) == 0.0


def test_bit_parallel_lcs_matches_dynamic_programme():
    rng = random.Random(1)
    words = [r[k] for r in sample_records() for k in ("input", "output")]
    for _ in range(200):
        a, b = tokenize(rng.choice(words)), tokenize(rng.choice(words))
        a, b = a[: rng.randint(0, len(a))], b[: rng.randint(0, len(b))]
        assert lcs_length(a, b) == lcs_dp(a, b)
        assert lcs_length(a, b) == lcs_length(b, a)
    # long sequences over a tiny alphabet: many matches, carries across machine words
    for _ in range(50):
        a = [rng.choice("abc") for _ in range(rng.randint(60, 200))]
        b = [rng.choice("abcd") for _ in range(rng.randint(1, 200))]
        assert lcs_length(a, b) == lcs_dp(a, b)


@needs_real
@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_dedup_equals_brute_force_on_real_texts(threshold):
    texts = real_texts(400, seed=int(threshold * 10))
    dedup = RougeDedup(threshold)
    kept = 0
    for text, (best, index, keep) in zip(texts, brute_force(texts, threshold)):
        assert dedup.best(text) == (best, index), text
        assert dedup.add(text) is keep, text
        kept += keep
    assert len(dedup) == kept
    assert 0 < kept < len(texts)  # both decisions occurred
    assert dedup.lcs_computations < dedup.pairs / 4  # the bounds did prune


def test_threshold_is_inclusive():
    # LCS 3 of 4 and 4 tokens: F = 0.75 exactly
    for threshold, kept in ((0.75, False), (0.76, True), (0.7, False)):
        dedup = RougeDedup(threshold)
        assert dedup.add("a b c d")
        assert dedup.best("a b c e") == (0.75, 0)
        assert dedup.add("a b c e") is kept
        assert len(dedup) == 1 + kept


def test_duplicates_ignore_case_and_punctuation_and_best_names_the_first():
    dedup = RougeDedup(0.7)
    assert dedup.add("Saya demam tinggi sejak kemarin.")
    assert dedup.add("Perut saya sakit setelah makan pedas.")
    assert not dedup.add("saya DEMAM tinggi, sejak kemarin!")
    assert dedup.best("saya demam tinggi sejak kemarin") == (1.0, 0)
    assert dedup.best("makan pedas") == (pytest.approx(2 * 2 / (2 + 6)), 1)
    assert dedup.best("batuk berdahak") == (0.0, None)
    assert len(dedup) == 2


def test_ties_go_to_the_lowest_index():
    dedup = RougeDedup(0.9)
    assert dedup.add("a b x y")
    assert dedup.add("a b z w")
    assert dedup.best("a b") == (pytest.approx(2 * 2 / 6), 0)


def test_texts_without_tokens_are_never_duplicates():
    dedup = RougeDedup(0.7)
    assert RougeDedup(0.7).best("anything") == (0.0, None)  # nothing kept yet
    assert dedup.add("")
    assert dedup.add("?!")  # no \w token: same as empty, and not a duplicate of it
    assert dedup.best("") == (0.0, None)
    assert dedup.add("demam")
    assert dedup.add("")
    assert dedup.best("demam") == (1.0, 2)
    assert len(dedup) == 4


def test_threshold_must_be_a_score():
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="threshold"):
            RougeDedup(bad)


@needs_real
def test_rouge_l_agrees_with_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    from rouge_score import tokenize as rs_tokenize

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    english = load_records(str(CHATDOCTOR)).records
    rng = random.Random(2)
    texts = [t for r in english[:400] for t in (r["input"], r["output"]) if t.isascii() and "_" not in t]
    assert len(texts) > 500
    compared = 0
    for _ in range(300):
        a, b = rng.choice(texts), rng.choice(texts)
        if rng.random() < 0.3:  # near copies too, not only unrelated pairs
            words = a.split()
            b = " ".join(words[: len(words) // 2] + ["however"] + words[len(words) // 2 :])
        assert tokenize(a) == rs_tokenize.tokenize(a, None)
        expected = scorer.score(a, b)["rougeL"].fmeasure
        assert rouge_l(tokenize(a), tokenize(b)) == pytest.approx(expected, abs=1e-12)
        compared += expected > 0.5
    assert compared > 30


@needs_real
def test_benchmark_runs_and_agrees_with_its_brute_force(capsys):
    from data_gen import bench_rouge

    texts = bench_rouge.build_texts([str(REAL_DATA), str(CHATDOCTOR)], 600, seed=3)
    assert len(texts) == 600 and len(set(texts)) > 500
    fast, brute = bench_rouge.run_fast(texts, 0.7), bench_rouge.run_brute(texts, 0.7, "bit-parallel")
    assert fast["kept"] == brute["kept"] and fast["pairs"] == brute["pairs"]
    assert fast["lcs"] < brute["lcs"] / 10
    assert bench_rouge.main(["--n", "300", "--brute_n", "100"]) == 0
    out = capsys.readouterr().out
    assert "| RougeDedup (index + bounds) | 300 |" in out and "brute force with bit-parallel LCS" in out
