"""Tokenisers of the pruning runs: byte-level BPE trained on the training split, raw bytes, or a HF model's own.

Every tokeniser here maps a document to a list of ids and ends documents with one separator id
(`eot`), so the language model sees where one document stops and the next starts.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from dd.errors import DDError
from dd.fsutil import write_file

EOT = "<|endoftext|>"


@dataclass
class Tokenizer:
    kind: str  # bpe | bytes | hf
    vocab_size: int
    eot: int
    backend: object = None  # tokenizers.Tokenizer or a transformers tokenizer
    id: str = ""  # what the tokeniser is (kind, vocabulary, training corpus): part of every cache key

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.kind == "bytes":
            return [list(t.encode("utf-8")) for t in texts]
        if self.kind == "bpe":
            return [e.ids for e in self.backend.encode_batch(texts)]
        return self.backend(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        if self.kind == "bytes":
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return self.backend.decode(ids)


def build_tokenizer(model_cfg, train_docs: list[str], corpus_fingerprint: str, cache_dir: Path) -> Tokenizer:
    """The tokeniser model_cfg names; a BPE one is trained on `train_docs` once and cached by corpus and size."""
    if model_cfg.name_or_path:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(model_cfg.name_or_path)
        except (OSError, ValueError) as e:
            raise DDError(f"model.name_or_path={model_cfg.name_or_path}: no tokenizer there ({str(e).splitlines()[0]})") from None
        eot = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
        if eot is None:
            raise DDError(f"model.name_or_path={model_cfg.name_or_path}: its tokenizer has no eos or pad token to end documents")
        return Tokenizer("hf", len(tok), eot, tok, f"hf:{model_cfg.name_or_path}")
    if model_cfg.tokenizer == "bytes":
        return Tokenizer("bytes", 257, 256, None, "bytes")
    if model_cfg.tokenizer != "bpe":
        raise DDError(f"model.tokenizer={model_cfg.tokenizer} is unknown; choose bpe or bytes")
    if model_cfg.vocab_size < 258:
        raise DDError(f"model.vocab_size={model_cfg.vocab_size} is too small for byte-level BPE; it must be at least 258")
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    key = hashlib.sha256(f"bpe-v1:{model_cfg.vocab_size}:{corpus_fingerprint}".encode()).hexdigest()[:16]
    path = cache_dir / "tokenizers" / f"bpe_{key}.json"
    if not path.exists():
        tok = HFTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=model_cfg.vocab_size, min_frequency=2, special_tokens=[EOT],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(train_docs, trainer)
        write_file(path, lambda p: p.write_text(tok.to_str()))
    tok = HFTok.from_str(path.read_text())
    return Tokenizer("bpe", tok.get_vocab_size(), tok.token_to_id(EOT), tok, f"bpe:{key}")
