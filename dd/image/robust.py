"""DD-Ranking's robust scores (dd-eval eval.protocol=robust): how much of a set's accuracy its images
earn, once what soft labels and augmentation would give any images is taken out.

Eight conditions, each trained with the run's one recipe (eval.epochs, eval.schedule, the set's
learned lr or eval.lr, eval.num_models runs; the last epoch's test accuracy, nothing picked on the
test split, where DD-Ranking's code picks the lr and the epoch by test accuracy):

    syn_hard    the set, hard labels (a soft set's argmax)           DSA as eval.dsa
    syn_own     the set, its own labels (soft if it has them)        DSA as eval.dsa
    syn_aug     the set, its own labels                              DSA on
    syn_noaug   the set, its own labels                              DSA off
    rand_own    a random real subset, the set's recipe               DSA as eval.dsa
    rand_aug    the random subset, the set's recipe                  DSA on
    rand_noaug  the random subset, the set's recipe                  DSA off
    rand_hard   the random subset, hard labels                       DSA as eval.dsa
    full        the whole training set, hard labels                  DSA as eval.dsa
                  (eval.robust_full_epochs epochs if set: full data takes many steps per epoch)

The random subset holds as many real images of each class as the set does (class-balanced for a
balanced set). Run k draws its own subset from the stream ("robust_random", seed, k): redrawn for
every run, the same on every rerun. "The set's recipe" means hard labels for a hard-labelled set;
for a soft-labelled set, soft labels from a teacher, as DD-Ranking does: here run k's teacher is
full-data model k (trained in the `full` condition), its softmax at temperature 1 on subset k.

Run k of every condition starts from the same weights and draws its order and augmentation from the
same stream as model k of the standard evaluation (("eval_init" | "eval_data", seed, 0, k)), so
syn_own is exactly dd-eval's standard figure and run k of the set is paired with random draw k.

A set evaluated with a teacher label source (eval.labels=stored or teacher: SRe2L, RDED) is scored
under DD-Ranking's soft-label protocol: syn_own trains on the set with its source (stored crops and
soft labels, or the teacher online), rand_own on random subset k relabelled by the same teacher the
same way (dd.image.relabel), and the hard-label LRS (from syn_hard and rand_hard) is reported beside
the soft-label one. Its augmentation is the source's crops, not DSA, so ARS is not defined for it and
its four augmentation conditions are not trained.

Scores, per run k, then mean and (population) std over the runs:
    HLR = full - syn_hard            IOR = syn_own - rand_own
    alpha = w * IOR - (1 - w) * HLR  (w = 0.5)         LRS = (e^alpha - e^-1) / (e - e^-1)
    beta = g * (syn_aug - rand_aug) + (1 - g) * (syn_noaug - rand_noaug)  (g = 0.5), ARS likewise.
Accuracies enter as FRACTIONS, so alpha and beta lie in [-1, 1] and LRS, ARS in [0, 1], as
DD-Ranking's documentation states. DD-Ranking's code passes percentages instead, so its published
scores can fall outside [0, 1] and are not comparable with these.

Conditions that coincide are trained once and say so (`same_run_as`): without soft labels
syn_own = syn_hard; with eval.dsa on, syn_aug = syn_own and rand_aug = rand_own (off: the noaug ones).
"""

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf

from dd import seeds
from dd.data import ImageDataset
from dd.errors import DDError
from dd.image.evaluate import EvalResult, evaluate_set
from dd.stats import summary

log = logging.getLogger(__name__)

CONDITIONS = ("syn_hard", "syn_own", "syn_aug", "syn_noaug", "rand_own", "rand_aug", "rand_noaug", "rand_hard", "full")
AUG_CONDITIONS = ("syn_aug", "syn_noaug", "rand_aug", "rand_noaug")
LABEL_WEIGHT = 0.5  # w: IOR against HLR in alpha (DD-Ranking's default)
AUG_WEIGHT = 0.5  # g: with against without augmentation in beta
RANDOM_STREAM = "robust_random"


def normalise(x):
    """(e^x - e^-1) / (e - e^-1): maps [-1, 1] onto [0, 1], increasing; 0 goes to 0.269."""
    return (np.exp(x) - np.exp(-1.0)) / (np.e - np.exp(-1.0))


def label_robust_score(full, syn_hard, syn_own, rand_own, w: float = LABEL_WEIGHT) -> dict:
    """{hlr, ior, alpha, lrs} from accuracies as fractions (floats or per-run arrays)."""
    full, syn_hard, syn_own, rand_own = (np.asarray(a, dtype=float) for a in (full, syn_hard, syn_own, rand_own))
    hlr = full - syn_hard  # hard-label recovery: what full data would still add
    ior = syn_own - rand_own  # improvement over random real images under the same recipe
    alpha = w * ior - (1 - w) * hlr
    return {"hlr": hlr, "ior": ior, "alpha": alpha, "lrs": normalise(alpha)}


def augmentation_robust_score(syn_aug, rand_aug, syn_noaug, rand_noaug, g: float = AUG_WEIGHT) -> dict:
    """{beta, ars} from accuracies as fractions (floats or per-run arrays)."""
    syn_aug, rand_aug, syn_noaug, rand_noaug = (np.asarray(a, dtype=float)
                                                for a in (syn_aug, rand_aug, syn_noaug, rand_noaug))
    beta = g * (syn_aug - rand_aug) + (1 - g) * (syn_noaug - rand_noaug)
    return {"beta": beta, "ars": normalise(beta)}


def random_subset(data: ImageDataset, per_class, seed: int, run: int) -> torch.Tensor:
    """Indices into data's train split: per_class[c] distinct random images of class c, drawn from
    the stream (robust_random, seed, run)."""
    gen = seeds.generator(RANDOM_STREAM, seed, run)
    chosen = []
    for c in range(data.num_classes):
        idx = data.indices_of_class(c)
        n = int(per_class[c])
        if n > len(idx):
            raise DDError(f"the set has {n} images of class '{data.class_names[c]}' but {data.name} holds only "
                          f"{len(idx)}; a random subset of the same size cannot be drawn")
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return torch.cat(chosen)


@dataclass(frozen=True)
class Condition:
    data: str  # set | random | full
    labels: str  # hard | own (the set's recipe)
    dsa: bool

    def training(self, soft: bool) -> tuple[str, str, bool]:
        """What is trained: conditions with the same (data, labels, dsa) are one training."""
        return self.data, "soft" if soft and self.labels == "own" and self.data != "full" else "hard", self.dsa


def conditions(eval_dsa: bool) -> dict[str, Condition]:
    return {
        "syn_hard": Condition("set", "hard", eval_dsa),
        "syn_own": Condition("set", "own", eval_dsa),
        "syn_aug": Condition("set", "own", True),
        "syn_noaug": Condition("set", "own", False),
        "rand_own": Condition("random", "own", eval_dsa),
        "rand_aug": Condition("random", "own", True),
        "rand_noaug": Condition("random", "own", False),
        "rand_hard": Condition("random", "hard", eval_dsa),
        "full": Condition("full", "hard", eval_dsa),
    }


@dataclass
class RobustResult:
    conditions: dict[str, EvalResult]  # every name of CONDITIONS (a teacher-sourced set: none of AUG_CONDITIONS)
    plan: dict[str, Condition]
    same_run_as: dict[str, str]  # condition -> the earlier condition whose training it shares
    soft: bool  # the set has soft labels
    per_class: list[int]  # random real images per class
    lr: float
    source: str | None = None  # the set's teacher label source (stored | teacher), else None

    def scores(self) -> dict[str, np.ndarray]:
        """Per run: hlr, ior, alpha, lrs, the hard-label ior_hard, alpha_hard, lrs_hard, and beta, ars where
        the augmentation conditions were trained."""
        acc = {name: np.asarray(r.per_model) for name, r in self.conditions.items()}
        out = label_robust_score(acc["full"], acc["syn_hard"], acc["syn_own"], acc["rand_own"])
        hard = label_robust_score(acc["full"], acc["syn_hard"], acc["syn_hard"], acc["rand_hard"])
        out |= {f"{k}_hard": hard[k] for k in ("ior", "alpha", "lrs")}
        if all(c in acc for c in AUG_CONDITIONS):
            out |= augmentation_robust_score(acc["syn_aug"], acc["rand_aug"], acc["syn_noaug"], acc["rand_noaug"])
        return out

    def notes(self) -> list[str]:
        if self.source is not None:
            return [f"soft-label protocol: the set trains on its {self.source} teacher labels and random subset k "
                    "is relabelled by the same teacher the same way; lrs_hard beside lrs uses hard labels for both",
                    "ARS is not defined here: the students' augmentation is the label source's crops, not DSA"]
        if self.soft:
            return ["the set has soft labels: random subset k is labelled by full-data model k (softmax, T = 1)"]
        return ["the set has no soft labels: syn_own = syn_hard, and the random subsets train on hard labels"]

    def labels_of(self, name: str) -> str:
        c = self.plan[name]
        if c.training(self.soft)[1] == "hard":
            return "hard"
        if self.source is not None:
            return f"soft ({self.source}, the set's teacher)"
        return "soft (teacher: full-data model k)" if c.data == "random" else "soft"

    def as_dict(self) -> dict:
        scores = self.scores()
        names = ("lrs", "ars", "hlr", "ior", "alpha", "beta", "lrs_hard", "ior_hard", "alpha_hard")
        out = {name: summary(scores[name]) for name in names if name in scores}
        out |= {"weights": {"w": LABEL_WEIGHT, "g": AUG_WEIGHT}, "accuracies_as": "fractions",
                "soft_labels": self.soft, "notes": self.notes(),
                "random_subset": {"per_class": self.per_class, "stream": RANDOM_STREAM, "redrawn": "per run"}}
        out["conditions"] = {
            name: {**summary(r.per_model), "data": self.plan[name].data, "labels": self.labels_of(name),
                   # a teacher label source replaces DSA with its crops
                   "dsa": self.plan[name].dsa and not (self.source and self.labels_of(name) != "hard"),
                   "epochs": r.epochs, "seconds": r.seconds,
                   **({"same_run_as": self.same_run_as[name]} if name in self.same_run_as else {})}
            for name, r in self.conditions.items()
        }
        return out


def evaluate_robust(
    images: torch.Tensor,
    labels: torch.Tensor,
    data: ImageDataset,
    model_cfg,
    eval_cfg,
    *,
    lr: float | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    labels_from=None,
    relabel=None,
) -> RobustResult:
    """Train the conditions (the coinciding ones once) and return their accuracies.

    labels: (N,) hard or (N, classes) soft; lr: the set's learned lr, or None for eval_cfg.lr.
    labels_from: the set's teacher label source (dd.image.relabel), with `relabel`: (images, run k) -> the
    same kind of source for random subset k, labelled by the same teacher (the soft-label protocol)."""
    if (labels_from is None) != (relabel is None):
        raise ValueError("labels_from and relabel come together: the set's source, and one for the random subsets")
    full_epochs = eval_cfg.get("robust_full_epochs") or eval_cfg.epochs
    if eval_cfg.get("robust_full_epochs") is not None and eval_cfg.robust_full_epochs <= 0:
        raise DDError(f"eval.robust_full_epochs={eval_cfg.robust_full_epochs} is not allowed; give a positive "
                      "number of epochs, or null for eval.epochs")
    soft = labels.dim() == 2 or labels_from is not None
    hard = labels.argmax(1) if labels.dim() == 2 else labels
    lr = float(eval_cfg.lr if lr is None else lr)
    k = int(eval_cfg.num_models)
    per_class = torch.bincount(hard.cpu(), minlength=data.num_classes).tolist()
    draws = [random_subset(data, per_class, seed, run) for run in range(k)]
    rand_x = [data.train_x[d] for d in draws]
    rand_hard = [data.train_y[d] for d in draws]
    plan = conditions(bool(eval_cfg.dsa))
    trained: dict[tuple, tuple[str, EvalResult]] = {}
    teacher: list[torch.Tensor] | None = None

    def train(name: str, cond: Condition) -> EvalResult:
        nonlocal teacher
        key = cond.training(soft)
        if key in trained:
            return trained[key][1]
        cfg = OmegaConf.merge(eval_cfg, {"dsa": cond.dsa, **({"epochs": full_epochs} if cond.data == "full" else {})})
        predict, source = None, None
        if cond.data == "set":
            x, y = images, labels if key[1] == "soft" else hard
            source = labels_from if key[1] == "soft" else None
        elif cond.data == "full":
            x, y = data.train_x, data.train_y
            predict = rand_x if soft and labels_from is None else None  # full-data model k labels random subset k
        elif key[1] == "soft" and relabel is not None:
            x, y, source = rand_x, rand_hard, [relabel(x, run) for run, x in enumerate(rand_x)]
        else:
            x, y = rand_x, (teacher if key[1] == "soft" else rand_hard)
        t0 = time.perf_counter()
        result = evaluate_set(x, y, data, model_cfg, cfg, lr=lr, seed=seed, device=device, progress=progress,
                              desc=f"robust {name}", predict=predict, labels_from=source)
        if predict is not None:
            teacher = result.predictions
            result.predictions = None
        log.info("robust %s (%.0f s): %s", name, time.perf_counter() - t0, result)
        trained[key] = (name, result)
        return result

    # full first: for a soft-labelled set its models are the random subsets' teachers
    order = ["full"] + [n for n in CONDITIONS if n != "full"]
    if labels_from is not None:  # its augmentation is the source's crops: no ARS conditions
        order = [n for n in order if n not in AUG_CONDITIONS]
    results, same_run_as = {}, {}
    for name in order:
        key = plan[name].training(soft)
        if key in trained:
            same_run_as[name] = trained[key][0]
        results[name] = train(name, plan[name])
    source = None if labels_from is None else labels_from.name
    return RobustResult({n: results[n] for n in CONDITIONS if n in results}, plan, same_run_as, soft, per_class, lr,
                        source)


def format_robust(robust: dict) -> str:
    """The conditions table and the two scores, as text (a results.json `robust` block)."""
    lines = [f"{'condition':<11} {'data':<7} {'labels':<34} {'DSA':<4} {'accuracy (%)':<16} note"]
    for name, c in robust["conditions"].items():
        note = f"same run as {c['same_run_as']}" if "same_run_as" in c else ""
        lines.append(f"{name:<11} {c['data']:<7} {c['labels']:<34} {'on' if c['dsa'] else 'off':<4} "
                     f"{100 * c['mean']:6.2f} ± {100 * c['std']:<6.2f} {note}".rstrip())
    pct = lambda s: f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}%"  # noqa: E731
    score = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}"  # noqa: E731
    ars = f"ARS {score(robust['ars'])}" if "ars" in robust else "ARS not defined"
    lines.append(f"HLR {pct(robust['hlr'])}, IOR {pct(robust['ior'])} -> LRS {score(robust['lrs'])}; "
                 f"{ars} (accuracies as fractions; scores in [0, 1])")
    if "lrs_hard" in robust:
        lines.append(f"hard labels for both: IOR {pct(robust['ior_hard'])} -> LRS {score(robust['lrs_hard'])}")
    lines += [f"note: {n}" for n in robust["notes"]]
    return "\n".join(lines)
