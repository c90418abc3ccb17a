"""Every random stream of a run, derived from (purpose, seed, index).

Two purposes never share a stream: an evaluation model must not start where an
expert started, and a selection round must not replay the final evaluation.
Plain arithmetic on seeds (``seed * 1000 + k``) made exactly those collide, so
each stream is drawn from numpy's SeedSequence, whose entropy is the purpose's
hash, the user's seed and the indices. Distinct inputs give independent,
well-mixed 63-bit seeds.

Purposes used across ddlab (a name is just a label; these are the ones in use):
    expert_init, expert_data          dd-buffer: expert e's weights; its order and augmentation
    eval_init, eval_data              evaluation model k of round r; its order and augmentation
    distill                           a method's own draws (MTT, DATM: initial images, expert, plan)
    coreset_select, coreset_features  random picks; the feature network of herding / k-center
    dm_net                            distribution matching: the fresh network of iteration t
    dc_init, dc_net, dc_data          gradient matching (dc, dsa): the initial images; iteration i's fresh
                                      network; iteration i's real batches, augmentation seeds, training order
    text_eval_head                    text: the head of evaluation run k of round r
    text_data, text_train_head        attention labels: real-batch order, the learner's head at step s
    finetune_head, finetune_data      full fine-tuning run k
    loss_prune_head, loss_prune_data  loss_prune: the scorer's fine-tuning run
    text_select_split                 attention labels, method.select=best_val: the held-out training examples
    text_select_head                  attention labels, method.select: learner k of the quick evaluation at step s
    robust_random                     dd-eval eval.protocol=robust: the random real subset of run k
    robust_relabel                    the soft-label protocol: random subset k's stored crops in epoch e
    teacher_init, teacher_data        dd-teacher: the teacher's weights; its order and augmentation
    relabel                           a teacher-based set's stored crops in evaluation epoch e
    sre2l                             SRe2L: batch j's initial noise and jitter/flip draws
    rded                              RDED: class c's candidate images and their crops
    holdout_split                     images, dataset.holdout_per_class: the held-out training images,
                                      always from seed 0 (not the run's): every run seed holds out the
                                      same images, so one expert buffer serves them all
    global                            torch's global generator, for code that draws from it
"""

import hashlib

import numpy as np
import torch

# Recorded in every expert buffer: experts made under another scheme are not the same experts.
SCHEME = "seedsequence-v1"


def _purpose_key(purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")


def derive(purpose: str, seed: int, *index: int) -> int:
    """A 63-bit seed for stream (purpose, seed, *index)."""
    if not purpose:
        raise ValueError("a random stream needs a purpose")
    words = [_purpose_key(purpose), int(seed) % 2**64, *(int(i) % 2**64 for i in index)]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return (int(state[0]) | (int(state[1]) << 32)) & (2**63 - 1)


def generator(purpose: str, seed: int, *index: int) -> torch.Generator:
    """A CPU torch.Generator for the stream (draws on CPU, then move the result)."""
    return torch.Generator().manual_seed(derive(purpose, seed, *index))


def seed_global(purpose: str, seed: int, *index: int) -> None:
    """Seed torch's global generator (module initialisers draw from it) for the stream."""
    torch.manual_seed(derive(purpose, seed, *index))
