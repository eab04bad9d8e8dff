"""ROUGE-L near-duplicate filter, exact and fast: what stanford_alpaca's rescoring loop decides, without
scoring every pair.

    from data_gen.rouge import RougeDedup
    dedup = RougeDedup(threshold=0.7)
    kept = [t for t in texts if dedup.add(t)]

    python -m data_gen.bench_rouge --n 50000      # timings against a brute-force scan

stanford_alpaca computes rouge_score's ROUGE-L F against every kept instruction for every candidate:
O(N) longest-common-subsequence (LCS) computations per candidate, hours at 50,000. Here exact upper
bounds rule out almost every pair, and the LCS is computed only for the few that survive:

* F = 2*LCS/(len_a+len_b) (beta=1), and the LCS is at most the multiset token overlap, so a pair
  whose overlap gives F below the threshold cannot be a duplicate.
* Probe-side prefix filter over an inverted index (token -> kept ids): a kept text sharing none of
  the candidate's scanned tokens overlaps it in at most `rest` tokens (the candidate's unscanned
  occurrences), so it scores at most 2*rest/(len_a+rest). The candidate's tokens are scanned
  rarest first (by posting-list length) until that bound falls below the threshold: the most
  common tokens (GenMedGPT's constant instruction, "saya", "dan") are never scanned, yet nothing
  that could reach the threshold is missed.
* Kept texts the scan reached are bounded by 2*min(shared + rest, len_a, len_b)/(len_a+len_b)
  (numpy, all at once), then by their distinct-token overlap (a set intersection); survivors get
  a bit-parallel LCS (Allison-Dix / Hyyro: one big-int add per token).

Bounds use the score's own formula with a larger integer numerator, so they are >= the score in
floating point too. Every decision equals a brute-force scan's: tests/data_gen/test_rouge.py checks
it on real texts. A text is rejected when a score is >= threshold (stanford_alpaca rejects > 0.7;
the two differ only on exact ties).

Texts without any token score 0.0 against everything (as in rouge_score), so they are never
duplicates: `add` keeps them and `best` returns (0.0, None).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase Unicode word tokens (`\\w+`): works for Indonesian as for English.

    rouge_score's default tokenizer keeps only [a-z0-9] runs, so the two agree on ASCII text without
    underscores; on non-ASCII letters this one keeps words whole where rouge_score would split them.
    """
    return _WORD.findall(text.lower())


def _match_masks(a: list[str]) -> dict[str, int]:
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def _lcs(masks: dict[str, int], len_a: int, b: list[str]) -> int:
    """LCS length of `a` (given as its match masks) and `b`, bit-parallel: the zero bits of V count it."""
    full = (1 << len_a) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len_a - v.bit_count()


def lcs_length(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    if len(b) > len(a):  # fewer, wider steps: iterate over the shorter sequence
        a, b = b, a
    return _lcs(_match_masks(a), len(a), b)


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F-measure with beta=1 (rouge_score's `fmeasure`): 2*LCS/(len(a)+len(b)); 0.0 if either is empty.

    Written as one division of exact integers, so it equals rouge_score's 2PR/(P+R) up to rounding
    of the last bit, and every bound below (same formula, larger numerator) is exactly >= it.
    """
    if not a or not b:
        return 0.0
    return 2 * lcs_length(a, b) / (len(a) + len(b))


class RougeDedup:
    """Keeps texts whose ROUGE-L F against every kept text is below `threshold`.

    `add(t)` is True (kept) unless some kept text scores >= threshold. `best(t)` is the exact highest
    score against the kept texts and the index (order of keeping) of the first kept text reaching it;
    (0.0, None) when no kept text shares a token with `t`.
    """

    def __init__(self, threshold: float = 0.7):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold {threshold}: give a ROUGE-L F in (0, 1]; to disable near-dedup, don't filter.")
        self.threshold = float(threshold)
        self._tokens: list[list[str]] = []
        self._sets: list[frozenset] = []  # distinct tokens of each kept text
        self._lengths = np.zeros(1024, dtype=np.int64)  # token counts of kept texts (grown by doubling)
        # token -> [ids of kept texts containing it (ascending, grown by doubling), how many are used]
        self._postings: dict[str, list] = {}
        self.lcs_computations = 0  # LCSs actually computed
        self.pairs = 0  # pairs a brute-force scan would have scored (one per kept text per query)

    def __len__(self) -> int:
        return len(self._tokens)

    def best(self, text: str) -> tuple[float, int | None]:
        return self._search(tokenize(text), need=0.0, first=False)

    def add(self, text: str) -> bool:
        tokens = tokenize(text)
        score, _ = self._search(tokens, need=self.threshold, first=True)
        if score >= self.threshold:
            return False
        self._keep(tokens)
        return True

    def _keep(self, tokens: list[str]) -> None:
        i = len(self._tokens)
        self._tokens.append(tokens)
        distinct = frozenset(tokens)
        self._sets.append(distinct)
        if i == len(self._lengths):
            self._lengths = np.concatenate([self._lengths, np.zeros_like(self._lengths)])
        self._lengths[i] = len(tokens)
        for tok in distinct:
            entry = self._postings.get(tok)
            if entry is None:
                self._postings[tok] = [np.full(4, i, dtype=np.int32), 1]
                continue
            ids, used = entry
            if used == len(ids):
                ids = entry[0] = np.concatenate([ids, np.empty_like(ids)])
            ids[used] = i
            entry[1] = used + 1

    def _search(self, a: list[str], need: float, first: bool) -> tuple[float, int | None]:
        """(max score, lowest index reaching it), exact whenever the max is >= `need` (`best` passes 0);
        otherwise some score below `need`. With `first`, return at the first score >= `need`.

        The candidate's tokens are scanned rarest first (by posting-list length), summing for each
        kept text the tokens it shares (with the candidate's multiplicity). A kept text sharing none
        of the scanned tokens overlaps the candidate in at most `rest` (the unscanned token
        occurrences), so it scores at most 2*rest/(len_a+rest): scanning stops once that is below
        the floor (the threshold, or the best score found). Kept texts the scan reached get the bound
        2*min(shared + rest, len_a, len_b)/(len_a+len_b), then a distinct-token overlap bound, and
        only then an LCS, best bound first. A pass that ends below the best found so far is the
        answer; otherwise (only `best` needs this) the next pass scans on with that best as the floor.
        """
        n = len(self._tokens)
        self.pairs += n
        len_a = len(a)
        if not len_a or not n:
            return 0.0, None
        counts = Counter(a)
        a_set = frozenset(counts)
        repeats_a = len_a - len(a_set)
        postings = self._postings
        order = sorted(counts, key=lambda t: postings[t][1] if t in postings else 0)
        lengths = self._lengths[:n]
        rest = len_a
        pos = 0
        acc = np.zeros(n, dtype=np.int64)
        decided = np.zeros(n, dtype=bool)
        masks = None
        best, best_i = 0.0, None
        floor = need if need > 0 else self.threshold  # the first pass stops at the threshold
        while True:
            parts, weights = [], []
            while pos < len(order) and 2 * rest / (len_a + rest) >= floor:
                tok = order[pos]
                pos += 1
                rest -= counts[tok]
                if tok in postings:
                    ids, used = postings[tok]
                    parts.append(ids[:used])
                    weights.append(counts[tok])
            if parts:
                ids = np.concatenate(parts)
                if max(weights) > 1:
                    w = np.repeat(np.array(weights, dtype=np.int64), [len(p) for p in parts])
                    acc += np.bincount(ids, weights=w, minlength=n).astype(np.int64)
                else:
                    acc += np.bincount(ids, minlength=n)
            touched = np.flatnonzero((acc > 0) & ~decided)
            decided[touched] = True  # later passes only raise the floor: these are settled
            lb = lengths[touched]
            # The score's own formula with an integer >= the LCS: exactly >= the score, in floats too.
            bound = 2 * np.minimum(np.minimum(acc[touched] + rest, lb), len_a) / (len_a + lb)
            keep = bound >= max(need, best)
            touched, bound = touched[keep], bound[keep]
            for k in np.lexsort((touched, -bound)).tolist():  # highest bound first, then lowest index
                j, ub = int(touched[k]), float(bound[k])
                floor = max(need, best)
                if ub < floor or (ub == best and best_i is not None and j > best_i):
                    break  # sorted: no later candidate can do better
                b = self._tokens[j]
                b_set = self._sets[j]
                denom = len_a + len(b)
                # Shared occurrences <= shared distinct tokens + the repeats either text has beyond them.
                if 2 * (len(a_set & b_set) + min(repeats_a, len(b) - len(b_set))) / denom < floor:
                    continue
                if masks is None:
                    masks = _match_masks(a)
                self.lcs_computations += 1
                score = 2 * _lcs(masks, len_a, b) / denom
                if score > best or (score == best and score > 0 and (best_i is None or j < best_i)):
                    best, best_i = score, j
                    if first and best >= need:
                        return best, best_i
            if pos == len(order) or 2 * rest / (len_a + rest) < max(need, best):
                return best, best_i
            floor = max(need, best)
