"""Next-category ranking metrics for the encoder and its two baselines.

Task (one row per held-out user): the category of the user's last event up to the
as-of day, predicted from the events before it. Each method ranks categories; a hit is
the true category among the top ``k``.

- encoder: categories by the model's next-category logits after the prefix;
- ``popularity``: global top categories among the training users' events;
- ``user_top``: the user's own most frequent categories in the prefix (ties: the more
  recent first), filled up with popular categories.

Output keys (exactly): ``hr@10``, ``ndcg@10``, ``hr@10_popularity``,
``ndcg@10_popularity``, ``hr@10_user_top``, ``ndcg@10_user_top`` (for ``k=10``), plus
``users`` (how many were evaluated).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from encoders.data import PAD


def rank_metrics(ranked: np.ndarray, targets: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Hit rate and NDCG at ``k`` of rankings ``(N, >=k)`` against one target per row."""
    if len(targets) == 0:
        return float("nan"), float("nan")
    hits = np.asarray(ranked)[:, :k] == np.asarray(targets, dtype=object)[:, None]
    found = hits.any(axis=1)
    pos = hits.argmax(axis=1)
    ndcg = np.where(found, 1.0 / np.log2(pos + 2.0), 0.0)
    return float(found.mean()), float(ndcg.mean())


def popular_categories(category_ids: np.ndarray, k: int) -> list[str]:
    """The ``k`` most frequent non-padding categories (ties broken by id, for determinism)."""
    flat = category_ids[category_ids != PAD]
    counts = Counter(flat.tolist())
    return [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def _padded(rows: list[list[str]], k: int) -> np.ndarray:
    out = np.full((len(rows), k), None, dtype=object)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:k]
    return out


def popularity_ranking(n: int, popular: list[str], k: int) -> np.ndarray:
    return _padded([popular[:k]] * n, k)


def user_top_ranking(prefix_categories: np.ndarray, popular: list[str], k: int) -> np.ndarray:
    """Per row: own categories by frequency, then recency; filled with ``popular``."""
    rows = []
    for cats in prefix_categories:
        real = [c for c in cats.tolist() if c != PAD]
        last_pos = {c: i for i, c in enumerate(real)}
        own = sorted(Counter(real).items(), key=lambda kv: (-kv[1], -last_pos[kv[0]]))
        ranked = [c for c, _ in own[:k]]
        seen = set(ranked)
        ranked += [c for c in popular if c not in seen][: k - len(ranked)]
        rows.append(ranked)
    return _padded(rows, k)


def logits_ranking(logits: np.ndarray, categories: list[str], k: int, reserved: int = 2) -> np.ndarray:
    """Top-``k`` category ids from next-category logits (padding/OOV indices excluded)."""
    scores = np.asarray(logits, dtype=np.float64)[:, reserved:]
    k_eff = min(k, scores.shape[1])
    if k_eff == 0:
        return _padded([[] for _ in range(len(scores))], k)
    top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1, kind="stable")[:, ::-1]
    top = np.take_along_axis(top, order, axis=1)
    vocab = np.asarray(categories, dtype=object)
    return _padded(vocab[top].tolist(), k)


def evaluate(
    encoder_ranked: np.ndarray,
    prefix_categories: np.ndarray,
    targets: np.ndarray,
    popular: list[str],
    k: int = 10,
) -> dict:
    """All metrics for one evaluation set (rows = users with at least two events)."""
    hr, ndcg = rank_metrics(encoder_ranked, targets, k)
    hr_pop, ndcg_pop = rank_metrics(popularity_ranking(len(targets), popular, k), targets, k)
    hr_top, ndcg_top = rank_metrics(user_top_ranking(prefix_categories, popular, k), targets, k)
    return {
        f"hr@{k}": hr,
        f"ndcg@{k}": ndcg,
        f"hr@{k}_popularity": hr_pop,
        f"ndcg@{k}_popularity": ndcg_pop,
        f"hr@{k}_user_top": hr_top,
        f"ndcg@{k}_user_top": ndcg_top,
        "users": int(len(targets)),
    }
