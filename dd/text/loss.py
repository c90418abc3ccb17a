"""The learner's loss on a distilled text batch: cross-entropy + lambda * attention KL.

Attention labels are probabilities over keys, for the [CLS] query row only (shape
(B, layers, heads, 1, L)) or for every query row ((B, layers, heads, L, L)). The KL term is
KL(label || model attention), summed over keys and averaged over examples, layers, heads and
query rows, as in the paper's reference code.
"""

import torch
import torch.nn.functional as F

LABEL_TYPES = ("hard", "soft", "unrestricted")
ATTENTION_LABELS = ("none", "cls", "all")
TINY = 1e-12  # floor of the model's attention before the log (masked keys hold exact zeros)


def targets_of(label_type: str, labels: torch.Tensor) -> torch.Tensor:
    """What the cross-entropy is taken against: class ids, softmax(logits), or the raw vector."""
    if label_type == "soft":
        return F.softmax(labels, dim=-1)
    return labels


def task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with class ids (N,) or with target vectors (N, classes), which need not sum to 1."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    return torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()


def attention_kl(attentions: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
    """KL(labels || attentions): `attentions` per layer (B, heads, L, L); `labels` (B, layers, heads, Q, L).

    Q = 1 compares the [CLS] (first) query row only; Q = L compares every row.
    """
    attn = torch.stack(attentions, dim=1)[..., : labels.shape[-2], :]
    if attn.shape != labels.shape:
        raise ValueError(f"attention labels of shape {tuple(labels.shape)} do not fit attentions {tuple(attn.shape)}")
    kl = F.kl_div(torch.log(attn.clamp_min(TINY)), labels, reduction="none")  # labels * (log labels - log attn)
    return kl.sum(-1).mean()


def learner_loss(clf, theta, inputs_embeds, attention_mask, token_type_ids, targets, attention_labels=None,
                 attention_lambda: float = 1.0) -> torch.Tensor:
    """The loss one inner SGD step descends: CE (+ lambda * attention KL when labels are given)."""
    use_attn = attention_labels is not None and attention_lambda != 0
    logits, attns = clf(theta, inputs_embeds, attention_mask, token_type_ids, attentions=use_attn)
    loss = task_loss(logits, targets)
    if use_attn:
        loss = loss + attention_lambda * attention_kl(attns, attention_labels)
    return loss
