"""ask_llm: ask a causal LM whether each document is worth training on (Sachdeva et al. 2024); the score
is P(yes) / (P(yes) + P(no)) for the answer's first token, and the highest scores are kept.

It needs a real instruction-tuned model to mean anything (the paper uses Flan-T5 and larger); here any
local Hugging Face causal LM folder works (`method.model_path`), and the tests use a tiny random one,
which checks the plumbing only.
"""

from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import MISSING
from tqdm.auto import tqdm

from dd.errors import DDError, require_positive
from dd.lm.base import METHODS, LMRunContext, Selection, top
from dd.lm.cache import cached_scores

PROMPT = ("###\n{text}\n###\nWould the text between the ### marks be useful data for training a language model? "
          "Useful text is well written, carries real knowledge about the world, and is not hateful or harmful. "
          "Answer yes or no.\nAnswer:")


@dataclass
class AskLLMConfig:
    name: str = MISSING
    model_path: str | None = None  # a local Hugging Face causal LM folder (instruction-tuned, for real use)
    prompt: str = PROMPT  # {text} is replaced by the document
    yes: str = " yes"
    no: str = " no"
    max_chars: int = 2000  # a longer document is cut to this many characters in the prompt
    batch_size: int = 8


def first_token(tok, word: str, what: str) -> int:
    ids = tok(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DDError(f"method.{what}={word!r} encodes to no token in the asked model's tokenizer")
    return ids[0]


@torch.no_grad()
def p_yes(model, tok, texts: list[str], m, device: torch.device, progress: bool) -> np.ndarray:
    yes, no = first_token(tok, m.yes, "yes"), first_token(tok, m.no, "no")
    if yes == no:
        raise DDError(f"method.yes={m.yes!r} and method.no={m.no!r} start with the same token ({yes}) in the asked "
                      "model's tokenizer; give answers whose first tokens differ")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # the answer's logits sit at the last position of every row
    model.to(device).eval()
    out = []
    for b in tqdm(range(0, len(texts), m.batch_size), desc="ask_llm", disable=not progress, mininterval=2, leave=False):
        prompts = [m.prompt.replace("{text}", t[: m.max_chars]) for t in texts[b: b + m.batch_size]]
        enc = tok(prompts, return_tensors="pt", padding=True).to(device)
        # positions count from each prompt's first real token, so a left-padded prompt reads as it would alone
        positions = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=positions).logits[:, -1].float()
        pair = torch.log_softmax(logits, -1)[:, [yes, no]]
        out.append(torch.softmax(pair, -1)[:, 0].cpu())
    return torch.cat(out).double().numpy()


@METHODS.register("ask_llm", schema=AskLLMConfig)
def select(ctx: LMRunContext) -> Selection:
    n_keep = ctx.n_keep
    m = ctx.cfg.method
    if not m.model_path:
        raise DDError("method=ask_llm needs method.model_path=<a local Hugging Face causal LM folder> "
                      "(an instruction-tuned model, for scores that mean anything)")
    if "{text}" not in m.prompt:
        raise DDError("method.prompt has no {text} placeholder for the document")
    require_positive({"max_chars": m.max_chars, "batch_size": m.batch_size})

    def compute():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(m.model_path)
            model = AutoModelForCausalLM.from_pretrained(m.model_path)
        except (OSError, ValueError) as e:
            raise DDError(f"method.model_path={m.model_path}: no causal LM there ({str(e).splitlines()[0]})") from None
        return p_yes(model, tok, ctx.corpus.docs["train"], m, ctx.device, ctx.progress)

    recipe = {"model_path": m.model_path, "prompt": m.prompt, "yes": m.yes, "no": m.no, "max_chars": m.max_chars}
    scores, path = cached_scores(ctx, "ask_llm", recipe, compute)
    return Selection(top(scores, n_keep, highest=True), scores, "P(yes)", {"score_file": str(path)})
