"""Config schemas of language-model data pruning: the corpus, the causal LM, the pruning run.

They reach Hydra through dd.config.register_configs, as the image and text schemas do; each
method's own schema sits beside it in dd/lm/methods/.
"""

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class LMCorpusConfig:
    """Plain-text documents (one per record), an optional domain each, split by document."""

    name: str = MISSING
    kind: str = "lm"  # a language-model corpus: dd.pipeline runs it with dd.lm.kind
    source: str = "files"  # files | fortunes | debian | hf
    # source=files: jsonl / csv / tsv / parquet (records) or txt (one document per non-empty line)
    train_file: str | None = None
    test_file: str | None = None  # null: the test split is cut from train_file by document
    text_column: str = "text"
    domain_column: str | None = None  # null: one domain, "all"
    # source=hf: a Hugging Face dataset from the local cache
    hf_path: str | None = None
    hf_subset: str | None = None
    hf_split: str = "train"
    # source=fortunes: every fortune file is a domain (Debian's `fortunes` package); source=debian:
    # package descriptions of the apt lists, the archive section is the domain
    root: str | None = None
    domains: list[str] = field(default_factory=list)  # keep only these domains; empty = all
    min_chars: int = 1  # drop documents shorter than this
    max_docs: int | None = None  # keep the first N documents (quick runs)
    # the split: a document goes to test / validation by a hash of its text, so a repeated text
    # never sits on both sides and the split does not move when documents are added
    test_fraction: float = 0.1
    val_fraction: float = 0.05
    split_seed: int = 0


@dataclass
class LMModelConfig:
    """A causal LM: GPT-2's architecture trained from scratch, or any Hugging Face causal LM path."""

    name: str = MISSING
    kind: str = "lm"
    name_or_path: str | None = None  # a local HF causal LM folder (its own tokenizer); null = from scratch
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    context: int = 128  # tokens per training window
    dropout: float = 0.0
    tokenizer: str = "bpe"  # bpe (byte-level BPE trained on the training split) | bytes (256 byte ids)
    vocab_size: int = 2048  # bpe: merges + 256 bytes + <|endoftext|>


@dataclass
class PruneConfig:
    """What is kept, and how the language model is trained on it and scored."""

    keep: float = 1.0  # fraction of the training documents kept, in (0, 1]
    budget: int | None = None  # or: keep this many documents (overrides keep)
    runs: int = 1  # models trained on the kept documents (seeds derived from `seed`)
    # the same number of training tokens at every keep (the pruning papers' comparison) ...
    tokens: int = 400_000
    epochs: float | None = None  # ... or this many passes over the kept documents instead
    batch_size: int = 8  # windows per step: 8 x 128 tokens (16 left a third of the seeds on a plateau; README)
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * this
    warmup: float = 0.05  # fraction of the steps
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_batch_size: int = 64
    # probe / reference / proxy models of the scorers (cached under cache_dir, keyed by corpus and recipe)
    probe_tokens: int = 400_000
    probe_seed: int = 0
    cache_dir: str = "${oc.env:DD_CACHE,'~/.cache/ddlab'}"
    scores_file: str | None = None  # reuse a score file; one from another corpus or probe is refused
    init_from: str | None = None  # start the trained model from this HF causal LM folder (fine-tuning; with
    # model.name_or_path set to the same folder, its own tokenizer reads the corpus)
    export: bool = True  # write the kept documents (jsonl + parquet) with their scores
