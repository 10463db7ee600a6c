"""Fixtures of the student tests: a tiny generated corpus and the real WordPiece vocabulary."""

from __future__ import annotations

import random

import pytest

from students.vocab import WordPieceVocabulary


def generated_corpus(rows: int = 400, seed: int = 0) -> list[str]:
    """``rows`` sentences of 3-12 pseudo-words built from 20 syllables (about 300 distinct words)."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "do",
                 "fu", "ga", "hi", "jo", "pe", "qu", "ri", "se", "ty", "zo"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(400)})
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(rows)]


@pytest.fixture(scope="session")
def transfer_texts() -> list[str]:
    """A 400-sentence transfer set, the same on every call."""
    return generated_corpus()


@pytest.fixture(scope="session")
def wordpiece(tiny_teacher_dir) -> WordPieceVocabulary:
    """The tiny teacher's (real MiniLM) WordPiece vocabulary: 30,522 ids, pad id 0."""
    return WordPieceVocabulary.load(tiny_teacher_dir)
