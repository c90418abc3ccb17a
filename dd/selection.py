"""Choosing rows of a set, for the real-data baselines of every kind (the image coresets, the text baselines).

- random_per_class: k rows of each class, drawn without replacement.
- herding: greedily add the row that keeps the running mean of the chosen features closest to the mean of
  all of them (Welling 2009).
- kcenter_greedy: start at the row nearest the mean, then repeatedly add the row farthest from every row
  chosen so far.

The features are the caller's (an image network's embedding, a text backbone's [CLS] state); herding and
k-center greedy see one class's rows at a time through `per_class`.
"""

from collections.abc import Callable, Iterable

import torch


def per_class(labels: torch.Tensor, classes: Iterable[int],
              choose: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """choose(members) for each class c of `classes` in order, members being the positions in `labels` of
    class c (ascending); choose returns the positions it keeps."""
    return [choose(torch.nonzero(labels == c).flatten()) for c in classes]


def random_per_class(labels: torch.Tensor, num_classes: int, k: int, generator: torch.Generator) -> list[torch.Tensor]:
    """k positions of each class, drawn without replacement, class after class from the one generator."""
    return per_class(labels, range(num_classes),
                     lambda members: members[torch.randperm(len(members), generator=generator)[:k]])


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Positions (into `features`) of k rows chosen by herding."""
    mu = features.mean(0)
    total = torch.zeros_like(mu)
    available = torch.ones(len(features), dtype=torch.bool)
    chosen = []
    for t in range(k):
        dist = torch.linalg.vector_norm(mu - (total + features) / (t + 1), dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(chosen, dtype=torch.long)


def kcenter_greedy(features: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of k rows chosen by k-center greedy, seeded at the row nearest the mean."""
    first = int(torch.linalg.vector_norm(features - features.mean(0), dim=1).argmin())
    chosen = [first]
    nearest = torch.linalg.vector_norm(features - features[first], dim=1)
    for _ in range(k - 1):
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(features - features[i], dim=1))
    return torch.tensor(chosen, dtype=torch.long)
