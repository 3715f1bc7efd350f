"""Classifying a steered output against the unsteered baseline for the same prompt. Pure functions.

* ``normal``: the steering did not change the output (rule ``exact_match``: the new token ids, up to the first
  stop token, equal the baseline's; ids, not decoded text, since different ids can decode to the same text).
* ``garbled``: the output is degenerate. Any one of, over the new token ids (up to EOS):
  - repeated n-gram fraction > ``garbled_max_repeated_ngram_fraction``, where the fraction is
    ``1 - distinct n-grams / total n-grams`` for n = ``garbled_ngram`` (0 when fewer than n tokens);
  - distinct-token fraction (``distinct ids / ids``) < ``garbled_min_unique_token_fraction``;
  - non-printable fraction of the decoded characters (space, tab, CR and LF count as printable; U+FFFD, the
    replacement for bytes that decode to no character, does not) > ``garbled_max_nonprintable_fraction``;
  - an empty output (EOS straight away) that differs from the baseline.
* ``coherent``: changed and not garbled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .spec import ClassificationSpec

Label = Literal["normal", "garbled", "coherent"]
LABELS: tuple[Label, ...] = ("coherent", "garbled", "normal")
_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Degeneracy:
    repeated_ngram_fraction: float
    unique_token_fraction: float
    nonprintable_fraction: float


def repeated_ngram_fraction(tokens: Sequence[int], n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def unique_token_fraction(tokens: Sequence[int]) -> float:
    return len(set(tokens)) / len(tokens) if tokens else 0.0


def nonprintable_fraction(text: str) -> float:
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch == _REPLACEMENT or not (ch.isprintable() or ch in " \t\n\r"))
    return bad / len(text)


def degeneracy(tokens: Sequence[int], text: str, n: int) -> Degeneracy:
    return Degeneracy(
        repeated_ngram_fraction=repeated_ngram_fraction(tokens, n),
        unique_token_fraction=unique_token_fraction(tokens),
        nonprintable_fraction=nonprintable_fraction(text),
    )


def is_garbled(tokens: Sequence[int], text: str, rules: ClassificationSpec) -> bool:
    if not tokens:
        return True
    d = degeneracy(tokens, text, rules.garbled_ngram)
    return (
        d.repeated_ngram_fraction > rules.garbled_max_repeated_ngram_fraction
        or d.unique_token_fraction < rules.garbled_min_unique_token_fraction
        or d.nonprintable_fraction > rules.garbled_max_nonprintable_fraction
    )


def classify(
    tokens: Sequence[int], text: str, baseline_tokens: Sequence[int], rules: ClassificationSpec
) -> Label:
    if rules.normal_rule == "exact_match" and list(tokens) == list(baseline_tokens):
        return "normal"
    if is_garbled(tokens, text, rules):
        return "garbled"
    return "coherent"


def count_labels(labels: Sequence[Label]) -> dict[str, int]:
    return {label: sum(1 for x in labels if x == label) for label in LABELS}
