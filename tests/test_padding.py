"""Length buckets for CPU text batches (``service.padding``): an exact, optimal partition of the sorted lengths,
and the split of a tokenised batch that it allows."""

from __future__ import annotations

import itertools
import random

import pytest

from service.padding import GROUP_COST, length_groups, split_by_length


def padded_tokens(lengths: list[int], groups: list[list[int]]) -> int:
    """Tokens a forward pass of each group computes, padding included."""
    return sum(len(g) * max(lengths[i] for i in g) for g in groups if g)


def _cost(lengths: list[int], groups: list[list[int]]) -> float:
    return padded_tokens(lengths, groups) + len(groups) * GROUP_COST * len(lengths) * max(lengths)


def _best_by_brute_force(lengths: list[int]) -> float:
    """Every split of the length-sorted order into contiguous groups."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = float("inf")
    for k in range(len(order)):
        for cuts in itertools.combinations(range(1, len(order)), k):
            bounds = [0, *cuts, len(order)]
            groups = [order[a:b] for a, b in itertools.pairwise(bounds)]
            best = min(best, _cost(lengths, groups))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_groups_are_an_exact_partition_with_the_least_cost(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 77) for _ in range(rng.randint(2, 9))]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in a) <= min(lengths[i] for i in b) for a, b in itertools.pairwise(groups))
    assert _cost(lengths, groups) == pytest.approx(_best_by_brute_force(lengths))


def test_one_long_text_no_longer_pads_the_rest() -> None:
    lengths = [10] * 31 + [77]
    lengths.insert(5, lengths.pop())  # the long one anywhere in the batch
    groups = length_groups(lengths)
    assert groups == [[i for i in range(32) if i != 5], [5]]
    assert padded_tokens(lengths, groups) == 31 * 10 + 77  # against 32 * 77 = 2464 in one pass


def test_similar_lengths_stay_one_batch() -> None:
    assert [sorted(g) for g in length_groups([40, 41, 42, 40, 43, 41])] == [[0, 1, 2, 3, 4, 5]]
    assert length_groups([7] * 8) == [list(range(8))]
    assert length_groups([3]) == [[0]]
    assert length_groups([]) == []


def _features(mask: list[list[int]]) -> dict[str, object]:
    import torch

    m = torch.tensor(mask)
    return {"input_ids": m * 7, "attention_mask": m, "modality": "text"}


def test_only_a_right_padded_batch_of_real_tokens_is_split() -> None:
    short, long = [1] * 2 + [0] * 30, [1] * 32
    right = split_by_length(_features([short] * 7 + [long]))
    assert right is not None
    assert [sorted(i) for i, _ in right] == [list(range(7)), [7]]
    assert [part["input_ids"].shape for _, part in right] == [(7, 2), (1, 32)]
    assert all(part["modality"] == "text" for _, part in right)
    for mask in (
        [short[::-1]] * 7 + [long],  # left padding: trimming the right would cut real tokens
        [[1, 0, 1] + [0] * 29] * 7 + [long],  # a hole in the mask
        [[0] * 32] * 7 + [long],  # inputs of no tokens
    ):
        assert split_by_length(_features(mask)) is None
    assert split_by_length(_features([long] * 8)) is None  # nothing to gain
