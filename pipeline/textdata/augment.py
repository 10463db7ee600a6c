"""Transfer-set augmentation of Tang et al. (2019, section 3.2), run as a Ray Data map.

Each labeled sentence yields ``copies`` candidates. In a candidate, every word independently
is, with probability ``p_mask``, replaced by the mask token; else with probability ``p_pos``
replaced by a word of the same part of speech, drawn by unigram frequency from a POS
lexicon. Then, with probability ``p_ngram``, the candidate is cut to a random n-gram
(n uniform in 1..``max_ngram``). Candidates equal to their source or to any other row are
dropped, so the transfer set grows by at most ``copies`` times the labeled split. The
candidates carry no hard label: the teacher's soft labels are their only target. In a
sentence-pair task both sentences of a candidate are perturbed, each on its own, and a
candidate is a duplicate only when both sentences match.

The POS lexicon (:mod:`pipeline.textdata.lexicon`) is the packaged one, built from CoNLL-2003's
train split, unless ``pos_lexicon`` names another.
"""

from __future__ import annotations

import numpy as np
import ray

from pipeline.config.sections import AugmentConfig
from pipeline.textdata.lexicon import PosLexicon


def augment_sentence(text: str, rng: np.random.Generator, cfg: AugmentConfig, lexicon: PosLexicon) -> str:
    """One augmented candidate of ``text`` (whitespace-tokenized); see the module docstring."""
    words = text.split()
    out = []
    for word in words:
        if rng.random() < cfg.p_mask:
            out.append(cfg.mask_token)
        elif rng.random() < cfg.p_pos and word.lower() in lexicon.tag_of:
            candidates, probabilities = lexicon.words_of[lexicon.tag_of[word.lower()]]
            out.append(candidates[rng.choice(len(candidates), p=probabilities)])
        else:
            out.append(word)
    if rng.random() < cfg.p_ngram and len(out) > 1:
        n = int(rng.integers(1, min(cfg.max_ngram, len(out)) + 1))
        start = int(rng.integers(0, len(out) - n + 1))
        out = out[start:start + n]
    return " ".join(out)


class Augmenter:
    """Ray Data callable: ``{id [B] int64, sentence_0 [B] str, ...}`` -> ``{sentence_0 [B * copies] str, ...}``.

    ``sentence_0`` is the text and, for pair tasks, ``sentence_1`` the second sentence; each
    candidate perturbs every sentence of its row. Each row's candidates come from a generator
    seeded by ``(seed, id)``, so the result does not depend on how Ray splits the rows into blocks.
    """

    def __init__(self, cfg: AugmentConfig, lexicon: PosLexicon, seed: int):
        self.cfg, self.lexicon, self.seed = cfg, lexicon, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = sorted(name for name in batch if name.startswith("sentence_"))
        out: dict[str, list[str]] = {name: [] for name in names}
        for row, row_id in enumerate(batch["id"]):
            rng = np.random.default_rng([self.seed, int(row_id)])
            for _ in range(self.cfg.copies):
                for name in names:
                    out[name].append(augment_sentence(str(batch[name][row]), rng, self.cfg, self.lexicon))
        return {name: np.asarray(texts, dtype=object) for name, texts in out.items()}


def augment(ids: list[int], rows: list[tuple[str, ...]], cfg: AugmentConfig, lexicon: PosLexicon, seed: int,
            exclude: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Augmented rows for the labeled rows, deduplicated, in a deterministic order.

    Args:
        ids: row ids of the labeled split (seed each row's generator).
        rows: the labeled rows' sentences, ``(text,)`` or, for pair tasks, ``(text, text_pair)``.
        cfg: the augmentation section.
        lexicon: see :func:`pipeline.textdata.lexicon.read_pos_lexicon`.
        seed: the run seed.
        exclude: rows already in the transfer set, in the form of ``rows``; never returned.

    Returns:
        New rows in the form of ``rows``, at most ``cfg.copies * len(rows)``.
    """
    items = [{"id": i, **{f"sentence_{k}": text for k, text in enumerate(row)}} for i, row in zip(ids, rows)]
    dataset = ray.data.from_items(items)
    dataset.context.enable_progress_bars = False
    candidates = dataset.map_batches(Augmenter, fn_constructor_args=(cfg, lexicon, seed), batch_size=256,
                                     compute=ray.data.ActorPoolStrategy(size=cfg.num_actors))
    width = len(rows[0])  # 1, or 2 for pairs
    seen = set(exclude)
    out = []
    for row in sorted(tuple(item[f"sentence_{k}"] for k in range(width)) for item in candidates.iter_rows()):
        if row not in seen:
            seen.add(row)
            out.append(row)
    return out
