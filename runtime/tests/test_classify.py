from __future__ import annotations

import pytest

from phasegate_runtime.classify import (
    classify,
    count_labels,
    nonprintable_fraction,
    repeated_ngram_fraction,
    unique_token_fraction,
)
from phasegate_runtime.spec import ClassificationSpec

RULES = ClassificationSpec(
    normal_rule="exact_match",
    garbled_max_repeated_ngram_fraction=0.6,
    garbled_ngram=3,
    garbled_min_unique_token_fraction=0.2,
    garbled_max_nonprintable_fraction=0.1,
)


def test_repeated_ngram_fraction_exact() -> None:
    # trigrams of 1 2 3 1 2 3 1: (123)(231)(312)(123)(231) -> 3 distinct of 5
    assert repeated_ngram_fraction([1, 2, 3, 1, 2, 3, 1], 3) == pytest.approx(1 - 3 / 5)
    assert repeated_ngram_fraction([1, 2], 3) == 0.0


def test_unique_and_nonprintable_fractions() -> None:
    assert unique_token_fraction([5, 5, 5, 6]) == 0.5
    assert nonprintable_fraction("ab\x00\x01") == 0.5
    assert nonprintable_fraction("a b\n\tc") == 0.0


def test_exact_match_is_normal_even_if_degenerate() -> None:
    assert classify([7, 7, 7, 7, 7], "aaaaa", [7, 7, 7, 7, 7], RULES) == "normal"


def test_normal_compares_token_ids_not_text() -> None:
    # Different ids can decode to the same text (e.g. a merged token vs its pieces): changed, so not normal.
    assert classify([104, 105], "hi", [26402], RULES) == "coherent"


def test_the_replacement_character_is_not_printable() -> None:
    assert nonprintable_fraction("ab\ufffd\ufffd") == 0.5


def test_changed_and_fluent_is_coherent() -> None:
    assert classify(list(range(10)), "a different answer", [1, 2], RULES) == "coherent"


@pytest.mark.parametrize(
    ("tokens", "text"),
    [
        ([1, 2, 3] * 5, "abcabcabcabcabc"),  # repeated trigrams: 1 - 3/13 > 0.6
        ([1, 2, 3, 4, 5], "ab\x00\x01\x02"),  # non-printable 3/5
        ([], ""),  # EOS at once while the baseline said something
    ],
)
def test_degenerate_outputs_are_garbled(tokens: list[int], text: str) -> None:
    assert classify(tokens, text, [1, 2], RULES) == "garbled"


def test_some_repetition_below_thresholds_is_coherent() -> None:
    tokens = [1] * 4 + [2] * 4 + [3] * 4 + [4, 5, 6, 7]
    # 14 trigrams, 11 distinct -> repeated 3/14 (< 0.6); unique 7/16 (> 0.2)
    assert repeated_ngram_fraction(tokens, 3) == pytest.approx(3 / 14)
    assert classify(tokens, "aaaabbbbccccdefg", [1, 2], RULES) == "coherent"


def test_threshold_boundaries_are_strict() -> None:
    rules = ClassificationSpec("exact_match", 0.5, 2, 0.5, 0.1)
    # bigrams of 1 2 1 2 1: (12)(21)(12)(21) -> repeated 0.5, not > 0.5; unique 2/5 < 0.5 -> garbled
    assert classify([1, 2, 1, 2, 1], "xyxyx", [9], rules) == "garbled"
    # 1 2 3 1: bigram repeated 0/3; unique 3/4 -> coherent
    assert classify([1, 2, 3, 1], "abca", [9], rules) == "coherent"


def test_count_labels() -> None:
    assert count_labels(["normal", "garbled", "garbled"]) == {"coherent": 0, "garbled": 2, "normal": 1}
