"""dd.selection's rules against brute-force references written here, and its class-balanced picks."""

import itertools

import numpy as np
import pytest
import torch

from dd.selection import herding, kcenter_greedy, per_class, random_per_class


def brute_herding(f: np.ndarray, k: int) -> list[int]:
    """Greedy: add the candidate minimising ||mu - mean(selected + candidate)||."""
    mu = f.mean(0)
    chosen: list[int] = []
    for _ in range(k):
        best, best_d = None, np.inf
        for c in range(len(f)):
            if c in chosen:
                continue
            d = np.linalg.norm(mu - f[chosen + [c]].mean(0))
            if d < best_d:
                best, best_d = c, d
        chosen.append(best)
    return chosen


def min_dist_to(f: np.ndarray, i: int, chosen: list[int]) -> float:
    return min(np.linalg.norm(f[i] - f[j]) for j in chosen)


# --- class-balanced picks -------------------------------------------------------------------


def test_per_class_hands_each_class_its_positions_in_order():
    labels = torch.tensor([2, 0, 1, 0, 2, 2])
    assert [p.tolist() for p in per_class(labels, range(3), lambda members: members)] == [[1, 3], [2], [0, 4, 5]]


def test_random_per_class_draws_like_a_loop_of_randperms_over_the_classes():
    labels = torch.randint(3, (60,), generator=torch.Generator().manual_seed(0))
    got = random_per_class(labels, 3, 4, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    want = []
    for c in range(3):
        members = torch.nonzero(labels == c).flatten()
        want.append(members[torch.randperm(len(members), generator=gen)[:4]])
    assert [p.tolist() for p in got] == [w.tolist() for w in want]
    assert all((labels[p] == c).all() and len(set(p.tolist())) == 4 for c, p in enumerate(got))


# --- herding -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(40, 2)) * [3.0, 1.0] + [5.0, -2.0]
    got = herding(torch.tensor(f, dtype=torch.float64), 15).tolist()
    assert got == brute_herding(f, 15)
    assert len(set(got)) == 15


def test_herding_first_pick_nearest_mean():
    rng = np.random.default_rng(7)
    f = rng.normal(size=(30, 5))
    got = herding(torch.tensor(f, dtype=torch.float32), 1).tolist()
    assert got == [int(np.linalg.norm(f - f.mean(0), axis=1).argmin())]


def test_herding_running_mean_beats_random():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 2)) * [2.0, 0.5]
    mu = f.mean(0)
    chosen = herding(torch.tensor(f), 10).tolist()
    for k in range(1, 11):
        herd = np.linalg.norm(mu - f[chosen[:k]].mean(0))
        rand = np.mean([np.linalg.norm(mu - f[rng.choice(200, k, replace=False)].mean(0)) for _ in range(300)])
        assert herd < rand, (k, herd, rand)
    # over the whole run the gap is large, not marginal
    herd_all = np.mean([np.linalg.norm(mu - f[chosen[:k]].mean(0)) for k in range(1, 11)])
    assert herd_all < 0.2 * np.mean([np.linalg.norm(mu - f[rng.choice(200, 5, replace=False)].mean(0))
                                     for _ in range(300)])


def test_herding_all_points_is_permutation():
    f = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    assert sorted(herding(f, 12).tolist()) == list(range(12))


# --- k-center greedy ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_kcenter_brute_force(seed):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(50, 2)) * [4.0, 1.0]
    chosen = kcenter_greedy(torch.tensor(f), 12).tolist()
    assert len(set(chosen)) == 12
    assert chosen[0] == int(np.linalg.norm(f - f.mean(0), axis=1).argmin())
    for t in range(1, 12):
        prev = chosen[:t]
        best = max(min_dist_to(f, i, prev) for i in range(len(f)))
        assert min_dist_to(f, chosen[t], prev) == pytest.approx(best, rel=1e-9)


def test_kcenter_one_per_cluster():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0], [50.0, 250.0]])
    sizes = [7, 13, 5, 20, 9]
    f = np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centers, sizes)])
    cluster = np.repeat(np.arange(5), sizes)
    chosen = kcenter_greedy(torch.tensor(f, dtype=torch.float32), 5).tolist()
    assert sorted(cluster[chosen].tolist()) == [0, 1, 2, 3, 4]


def test_kcenter_covering_radius_near_optimal():
    """Greedy k-center is a 2-approximation: its radius is at most twice the brute-force optimum."""
    rng = np.random.default_rng(3)
    f = rng.uniform(size=(14, 2))
    k = 3

    def radius(centers):
        return max(min(np.linalg.norm(f[i] - f[j]) for j in centers) for i in range(len(f)))

    opt = min(radius(list(c)) for c in itertools.combinations(range(len(f)), k))
    assert radius(kcenter_greedy(torch.tensor(f), k).tolist()) <= 2 * opt + 1e-12
