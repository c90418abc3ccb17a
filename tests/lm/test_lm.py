"""Language-model data pruning (dd.lm): corpora and their split, the causal LM's scoring against a direct
computation, each selector's rule against a closed form or a brute-force reference, cached scores and
their provenance, and dd-distill / dd-table on a small corpus as a user runs them."""

import json
import math
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from omegaconf import OmegaConf

from dd.errors import DDError
from dd.lm import corpus as lmcorpus
from dd.lm.model import build_model, doc_nll, perplexities, windows

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega river stone cloud bread light music paper glass north field").split()


def toy_records(n: int = 240, seed: int = 0) -> list[dict]:
    """Two domains: `prose` (random word strings) and `boiler` (one template, nearly the same every time)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append({"text": f"notice {i}: all rights reserved, all rights reserved, all rights reserved.", "domain": "boiler"})
        else:
            out.append({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))), "domain": "prose"})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def corpus_cfg(**kw):
    base = {"name": "toy", "kind": "lm", "source": "files", "train_file": None, "test_file": None, "text_column": "text",
            "domain_column": "domain", "hf_path": None, "hf_subset": None, "hf_split": "train", "root": None,
            "domains": [], "min_chars": 1, "max_docs": None, "test_fraction": 0.2, "val_fraction": 0.1, "split_seed": 0}
    return OmegaConf.create({**base, **kw})


TINY_MODEL = OmegaConf.create({"name": "gpt2_tiny", "kind": "lm", "name_or_path": None, "n_layer": 1, "n_embd": 16,
                               "n_head": 2, "context": 8, "dropout": 0.0, "tokenizer": "bytes", "vocab_size": 300})


# ---- corpora ------------------------------------------------------------------------------------------------

def test_split_is_by_document_and_keeps_repeats_together(tmp_path):
    rows = toy_records() + toy_records()[:30]  # 30 repeated texts
    c = lmcorpus.load_corpus(corpus_cfg(train_file=str(write_jsonl(tmp_path / "a.jsonl", rows))))
    sides = {s: set(c.docs[s]) for s in lmcorpus.SPLITS}
    assert not sides["train"] & sides["test"] and not sides["train"] & sides["val"]
    assert sum(len(c.docs[s]) for s in lmcorpus.SPLITS) == len(rows)
    assert 0.1 < len(c.docs["test"]) / len(rows) < 0.3
    again = lmcorpus.load_corpus(corpus_cfg(train_file=str(tmp_path / "a.jsonl")))
    assert again.docs == c.docs and again.fingerprint == c.fingerprint
    other = lmcorpus.load_corpus(corpus_cfg(train_file=str(tmp_path / "a.jsonl"), split_seed=1))
    assert other.docs["test"] != c.docs["test"] and other.fingerprint != c.fingerprint


@pytest.mark.parametrize("suffix", ["csv", "parquet", "txt"])
def test_formats_read_the_same_documents(tmp_path, suffix):
    import pandas as pd

    rows = toy_records(60)
    frame = pd.DataFrame(rows)
    path = tmp_path / f"c.{suffix}"
    if suffix == "csv":
        frame.to_csv(path, index=False)
    elif suffix == "parquet":
        frame.to_parquet(path)
    else:
        path.write_text("\n".join(frame.text) + "\n\n")
    c = lmcorpus.load_corpus(corpus_cfg(train_file=str(path), domain_column=None if suffix == "txt" else "domain"))
    assert sorted(sum(c.docs.values(), [])) == sorted(r["text"] for r in rows)


def test_given_test_file_is_the_test_split(tmp_path):
    train = write_jsonl(tmp_path / "tr.jsonl", toy_records(100))
    test = write_jsonl(tmp_path / "te.jsonl", toy_records(20, seed=9))
    c = lmcorpus.load_corpus(corpus_cfg(train_file=str(train), test_file=str(test)))
    assert c.docs["test"] == [r["text"] for r in toy_records(20, seed=9)]
    assert len(c.docs["train"]) + len(c.docs["val"]) == 100


def test_bad_corpora_are_refused_by_name(tmp_path):
    good = write_jsonl(tmp_path / "a.jsonl", toy_records(30))
    with pytest.raises(DDError, match="text_column=body"):
        lmcorpus.load_corpus(corpus_cfg(train_file=str(good), text_column="body"))
    with pytest.raises(DDError, match="no documents"):
        lmcorpus.load_corpus(corpus_cfg(train_file=str(write_jsonl(tmp_path / "e.jsonl", []))))
    with pytest.raises(DDError, match="nope.jsonl does not exist"):
        lmcorpus.load_corpus(corpus_cfg(train_file=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DDError, match="test_fraction=1.5"):
        lmcorpus.load_corpus(corpus_cfg(train_file=str(good), test_fraction=1.5))


# ---- the model's arithmetic ---------------------------------------------------------------------------------

def test_doc_nll_equals_a_direct_computation():
    model = build_model(TINY_MODEL, 257, seed=0).eval()
    eot, ctx = 256, TINY_MODEL.context
    docs = [list(b"hi"), list(b"a longer document that spans windows")]
    nll, count = doc_nll(model, docs, eot, ctx, batch_size=3, device=torch.device("cpu"))
    for d, ids in enumerate(docs):
        seq, total, n = [eot, *ids, eot], 0.0, 0
        for s in range(0, len(seq) - 1, ctx):  # independent windows of ctx inputs, one at a time, unpadded
            chunk = torch.tensor(seq[s: s + ctx + 1])
            with torch.no_grad():
                logits = model(input_ids=chunk[None, :-1]).logits[0]
            total += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
            n += len(chunk) - 1
        assert count[d] == n == len(ids) + 1
        assert nll[d].item() == pytest.approx(total, rel=1e-5)
    found = perplexities(nll, count, ["a", "b"])
    assert found["perplexity"] == pytest.approx(math.exp(nll.sum().item() / count.sum().item()))
    assert found["per_domain"]["b"] == pytest.approx(math.exp(nll[1].item() / count[1].item()))
    assert found["worst_domain"] == {max(found["per_domain"], key=found["per_domain"].get): max(found["per_domain"].values())}


def test_windows_read_every_document_once_per_pass():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    stream = windows(docs, 0, rows=2, context=3, gen=torch.Generator().manual_seed(0))
    xs, ys = zip(*(next(stream) for _ in range(6)), strict=True)
    flat = torch.cat([torch.cat([x.flatten()[:1], y.flatten()]) if i == 0 else y.flatten() for i, (x, y) in
                      enumerate(zip(xs, ys, strict=True))]).tolist()
    assert all((x[:, 1:] == y[:, :-1]).all() for x, y in zip(xs, ys, strict=True))  # targets are inputs shifted
    first = flat[: 12]  # one pass: every document then the separator, each exactly once
    assert sorted(first) == sorted([1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 0])


# ---- selectors' rules ---------------------------------------------------------------------------------------

def test_iwf_surprisal_closed_form():
    from dd.lm.methods.nll import iwf_surprisal

    s = iwf_surprisal(["a a b", "c", ""])  # counts a2 b1 c1, total 4
    assert s[0] == pytest.approx((2 * math.log(2) + math.log(4)) / 3)
    assert s[1] == pytest.approx(math.log(4)) and s[2] == 0


def test_perplexity_bands():
    from dd.lm.methods.perplexity_band import band_of

    ppl = np.array([5.0, 1.0, 3.0, 4.0, 2.0, 6.0])
    assert band_of(ppl, 2, "low") == [1, 4]
    assert band_of(ppl, 2, "high") == [5, 0]
    assert sorted(band_of(ppl, 2, "middle")) == [2, 3]


def test_zip_prefers_what_is_not_already_selected():
    from dd.lm.methods.zip import added_size, greedy_order

    rng = random.Random(0)
    fresh = [" ".join(rng.choice(WORDS) for _ in range(40)).encode() for _ in range(6)]
    texts = [fresh[0], fresh[0], fresh[0], *fresh[1:]]  # one text three times
    rank = greedy_order(texts, k1=4, k2=3, k3=2, level=9)
    assert sorted(rank.tolist()) == list(range(len(texts)))
    dup_ranks = sorted(rank[:3].tolist())
    assert dup_ranks[1] > max(rank[3:].tolist())  # the copies come after every distinct text
    state = zlib.compressobj(9)
    state.compress(fresh[0])
    state.flush(zlib.Z_SYNC_FLUSH)
    assert 3 * added_size(state, fresh[0]) < added_size(state, fresh[1])  # a repeat adds little
    # zlib's own size for the pair, less its size for the first (headers and block ends differ by a few dozen bytes)
    pair = len(zlib.compress(fresh[0] + fresh[1], 9)) - len(zlib.compress(fresh[0], 9))
    assert abs(added_size(state, fresh[1]) - pair) < 0.4 * pair


def test_kernel_density_and_inverse_propensity():
    from dd.lm.methods.density import inverse_propensity_sample, kernel_density

    emb = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.98, -0.05], [0.0, 1.0]])
    found = kernel_density(emb, 0.5)
    unit = emb / emb.norm(dim=1, keepdim=True)
    d2 = ((unit[:, None] - unit[None]) ** 2).sum(-1).double()
    assert np.allclose(found, torch.exp(-d2 / 0.5).mean(1).numpy())  # 2 * 0.5^2 = 0.5
    picks = [inverse_propensity_sample(found, 1, torch.Generator().manual_seed(s))[0] for s in range(400)]
    share = picks.count(3) / len(picks)  # the lone point vs each of the crowded three
    w = 1 / found
    assert share == pytest.approx(w[3] / w.sum(), abs=0.07) and share > 0.4


def test_doremi_token_shares_water_fill():
    from dd.lm.methods.doremi import token_shares

    got = token_shares(np.array([0.6, 0.3, 0.1]), np.array([10.0, 100.0, 100.0]), 60.0)
    assert got[0] == pytest.approx(10.0)  # capped at its size; the other 50 split 3:1
    assert got[1] == pytest.approx(37.5) and got[2] == pytest.approx(12.5)
    assert token_shares(np.array([0.5, 0.5]), np.array([5.0, 5.0]), 100.0).tolist() == [5.0, 5.0]


# ---- cached scores and provenance ---------------------------------------------------------------------------

def small_ctx(tmp_path, records, model=None, n_keep=0, **prune):
    from dd.lm.base import LMRunContext
    from dd.lm.tokenizer import build_tokenizer
    from dd.tracking import Tracker

    model = {**OmegaConf.to_container(TINY_MODEL), **(model or {})}
    cfg = OmegaConf.create({"seed": 0, "model": model, "method": {"name": "nll", "iwf": False,
                            "iwf_weight": 1.0}, "prune": {"probe_tokens": 16000, "probe_seed": 0, "batch_size": 4, "lr": 3e-3,
                            "warmup": 0.1, "min_lr_ratio": 0.1, "weight_decay": 0.0, "grad_clip": 1.0, "eval_batch_size": 16,
                            "scores_file": None, **prune}})
    c = lmcorpus.load_corpus(corpus_cfg(train_file=str(write_jsonl(tmp_path / f"c{len(records)}.jsonl", records))))
    tok = build_tokenizer(cfg.model, c.docs["train"], c.fingerprint, tmp_path / "cache")
    ids = {s: tok.encode(d) for s, d in c.docs.items()}
    return LMRunContext(cfg=cfg, data=c, device=torch.device("cpu"), out_dir=tmp_path, tracker=Tracker(), progress=False,
                        tokenizer=tok, ids=ids, cache_dir=tmp_path / "cache", n_keep=n_keep)


def test_scores_are_cached_and_foreign_score_files_refused(tmp_path):
    from dd.lm.cache import cached_scores

    ctx = small_ctx(tmp_path, toy_records(60))
    calls = []
    first, path = cached_scores(ctx, "nll", {"r": 1}, lambda: calls.append(1) or np.arange(len(ctx.ids["train"])))
    again, same = cached_scores(ctx, "nll", {"r": 1}, lambda: calls.append(1) or np.zeros(1))
    assert calls == [1] and same == path and np.array_equal(first, again)
    other = small_ctx(tmp_path, toy_records(90, seed=3), scores_file=str(path))
    with pytest.raises(DDError, match="scores another corpus"):
        cached_scores(other, "nll", {"r": 1}, lambda: np.zeros(1))
    ctx.cfg.prune.scores_file = str(path)
    with pytest.raises(DDError, match="recipe"):
        cached_scores(ctx, "nll", {"r": 2}, lambda: np.zeros(1))
    short = tmp_path / "short.json"
    short.write_text(json.dumps({**json.loads(path.read_text()), "scores": [1.0, 2.0]}))
    ctx.cfg.prune.scores_file = str(short)
    with pytest.raises(DDError, match="holds 2 scores"):
        cached_scores(ctx, "nll", {"r": 1}, lambda: np.zeros(1))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    ctx.cfg.prune.scores_file = str(bad)
    with pytest.raises(DDError, match="not a ddlab score file"):
        cached_scores(ctx, "nll", {"r": 1}, lambda: np.zeros(1))


def test_nll_probe_ranks_boilerplate_as_least_informative(tmp_path):
    from dd.lm.methods.nll import select

    ctx = small_ctx(tmp_path, toy_records(150), model={"n_embd": 32, "context": 32}, n_keep=20, probe_tokens=40000)
    sel = select(ctx)
    domains = ctx.corpus.domains["train"]
    boiler = np.array([d == "boiler" for d in domains])
    assert sel.scores[boiler].mean() < sel.scores[~boiler].mean()  # the probe learnt the template
    assert all(domains[i] == "prose" for i in sel.kept)  # so pruning lowest-NLL first drops it


def test_ask_llm_batched_left_padding_equals_one_prompt_at_a_time(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from dd.lm.methods.ask_llm import PROMPT, p_yes
    from dd.lm.tokenizer import build_tokenizer

    docs = [r["text"] for r in toy_records(40)]
    tok = build_tokenizer(OmegaConf.create({"name_or_path": None, "tokenizer": "bpe", "vocab_size": 300}), docs, "t",
                          tmp_path)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token="<|endoftext|>")
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=512, n_embd=16, n_layer=1, n_head=2)).eval()
    m = OmegaConf.create({"prompt": PROMPT, "yes": " yes", "no": " no", "max_chars": 200, "batch_size": 4})
    batched = p_yes(model, hf_tok, docs[:5], m, torch.device("cpu"), progress=False)
    m.batch_size = 1
    alone = p_yes(model, hf_tok, docs[:5], m, torch.device("cpu"), progress=False)
    assert np.allclose(batched, alone, atol=1e-5) and ((alone > 0) & (alone < 1)).all()


# ---- dd-distill and dd-table, as a user runs them ----------------------------------------------------------

LM_TINY = ["dataset=lm_files", "model=gpt2_tiny", "model.n_layer=1", "model.n_embd=32", "model.context=32",
           "model.vocab_size=300", "prune.tokens=6000", "prune.probe_tokens=6000", "prune.batch_size=8",
           "dataset.domain_column=domain", "progress=false"]


def run_lm(args, tmp_path, prog="dd-distill", in_process=False):
    """A dd-* command with its own cache (tmp_path/cache: the runs of one test share their scores)."""
    return run_cli(prog, *args, env={"DD_CACHE": tmp_path / "cache"}, in_process=in_process)


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("lmdata") / "corpus.jsonl", toy_records(300))


def test_cli_runs_a_curve_point_and_the_table(tmp_path, toy_file):
    """The first run is a real process, the others (and dd-table, a real process in test_cli) run here."""
    base = [*LM_TINY, f"dataset.train_file={toy_file}"]
    for i, (method, keep) in enumerate((("random", "1.0"), ("random", "0.5"), ("nll", "0.5"), ("doremi", "0.5"))):
        out = tmp_path / f"{method}_{keep}"
        r = run_lm([*base, f"method={method}", f"prune.keep={keep}", f"hydra.run.dir={out}"], tmp_path, in_process=i > 0)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads((out / "results.json").read_text())
        assert res["kind"] == "lm" and res["method"] == method
        assert res["metric"]["mean"] > 1 and set(res["per_domain"]) == {"boiler", "prose"}
        assert res["tokens"]["trained"] == math.ceil(6000 / (8 * 32)) * 8 * 32  # the same at every keep
        kept = [json.loads(line) for line in (out / "kept" / "kept.jsonl").read_text().splitlines()]
        assert len(kept) == res["kept_documents"]
        if method != "doremi":
            assert res["kept_documents"] == round(float(keep) * res["corpus"]["train"]["docs"])
        assert "test perplexity" in r.stdout
    nll = json.loads((tmp_path / "nll_0.5" / "results.json").read_text())
    scores = json.loads(Path(nll["scores_file"]).read_text())["scores"]
    kept = {json.loads(line)["doc_index"] for line in (tmp_path / "nll_0.5" / "kept" / "kept.jsonl").read_text().splitlines()}
    assert min(scores[i] for i in kept) >= max(s for i, s in enumerate(scores) if i not in kept)  # lowest NLL pruned
    doremi = json.loads((tmp_path / "doremi_0.5" / "results.json").read_text())
    assert sum(doremi["kept_by"]["domain_weights"].values()) == pytest.approx(1)
    t = run_lm([str(tmp_path), "--plot", str(tmp_path / "c.png"), "--json", str(tmp_path / "c.json")], tmp_path, "dd-table",
               in_process=True)
    assert t.returncode == 0, t.stderr
    assert "full data" in t.stdout and "| nll |" in t.stdout and (tmp_path / "c.png").stat().st_size > 1000
    curve = json.loads((tmp_path / "c.json").read_text())["lm_files"]
    assert curve["nll"]["0.5"]["mean"] == pytest.approx(nll["metric"]["mean"])


BAD_LM = {  # name -> (overrides, text the one-line error must contain)
    "keep_0": (["prune.keep=0"], "prune.keep=0"),
    "keep_big": (["prune.keep=1.5"], "prune.keep=1.5"),
    "column": (["dataset.text_column=body"], "dataset.text_column=body"),
    "budget": (["prune.budget=100000"], "prune.budget=100000"),
    "one_domain": (["method=doremi", "dataset.domain_column=null"], "at least 2 domains"),
    "model_path": (["model.name_or_path=/nonexistent/lm"], "/nonexistent/lm"),
    "image_model": (["model=convnet"], "model 'convnet' is an image model"),
    "image_method": (["method=mtt"], "method 'mtt'"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, toy_file):
    """Every bad invocation (each fails early), in this process (conftest.run_cli; test_cli checks that a fresh
    process of every command starts without a word on stderr)."""
    tmp = tmp_path_factory.mktemp("lmbad")

    def go(name):
        args, _ = BAD_LM[name]
        out = tmp / name
        base = [a for a in LM_TINY if not (a.startswith("model.") and any(b.startswith("model=") for b in args))]
        cmd = [*base, f"dataset.train_file={toy_file}", "method=random", *args, f"hydra.run.dir={out}"]
        return name, (run_lm(cmd, tmp, in_process=True), out)

    return dict(go(name) for name in BAD_LM)


@pytest.mark.parametrize("name", sorted(BAD_LM))
def test_cli_refuses_bad_input_in_one_line(bad_runs, name):
    (r, out), needle = bad_runs[name], BAD_LM[name][1]
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-1500:])
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (out / "results.json").exists() and not (out / "kept").exists()


def test_random_and_full_mean_the_same_on_every_kind_and_old_names_are_refused():
    from dd.registry import KINDS, registry

    for kind in KINDS:  # random real examples, and the full-data reference, on images, text and corpora
        methods = registry(kind)
        assert methods.get("random").kind == kind and methods.get("full").kind == kind
    with pytest.raises(DDError, match="method 'nll' is an lm method; image runs"):
        registry("image").get("nll")
    for old, new in (("random_text", "random"), ("herding_text", "herding"), ("full_finetune", "full")):
        with pytest.raises(DDError, match=f"method '{old}' is now method={new}"):
            registry("text").get(old)


def test_cli_trains_a_hugging_face_model_folder_with_its_tokenizer(tmp_path, toy_file):
    """model.name_or_path: a local HF causal LM is trained on the kept documents, read by its own tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from dd.lm.tokenizer import build_tokenizer

    docs = [json.loads(line)["text"] for line in toy_file.read_text().splitlines()]
    tok = build_tokenizer(OmegaConf.create({"name_or_path": None, "tokenizer": "bpe", "vocab_size": 280}), docs, "t", tmp_path)
    folder = tmp_path / "hf_lm"
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token="<|endoftext|>")
    hf_tok.save_pretrained(folder)
    GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(folder)
    out = tmp_path / "run"
    r = run_lm([*LM_TINY, f"dataset.train_file={toy_file}", "method=random", "prune.keep=0.5", "prune.tokens=2000",
                 f"model.name_or_path={folder}", f"hydra.run.dir={out}"], tmp_path, in_process=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    c = lmcorpus.load_corpus(corpus_cfg(train_file=str(toy_file), test_fraction=0.1, val_fraction=0.05))
    assert res["tokens"]["test"] == sum(len(hf_tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in c.docs["test"])
    assert 1 < res["metric"]["mean"] < 10 * tok.vocab_size


def test_lm_training_and_scoring_are_device_clean_on_cuda(fake_cuda):
    """The LM's training loop and document scoring "on CUDA" (tests/fake_cuda.py): no device mixes, and the
    host waits only where the loss curve is fetched (every 50 steps) and where scores come back."""
    cfg = OmegaConf.create({"lr": 3e-3, "warmup": 0.1, "min_lr_ratio": 0.1, "weight_decay": 0.0, "grad_clip": 1.0})
    cuda = torch.device("cuda")
    model = build_model(TINY_MODEL, 257, seed=0).to(cuda)  # the one-time weight copy is not the loop's
    docs = [list(r["text"].encode()) for r in toy_records(30)]
    stream = windows(docs, 256, rows=2, context=TINY_MODEL.context, gen=torch.Generator().manual_seed(0))
    before = fake_cuda.syncs
    from dd.lm.model import train

    curve = train(model, stream, 100, cfg, cuda, progress=False)
    assert len(curve) == 100 and fake_cuda.syncs - before == 2, fake_cuda.report()  # the 2 fetches of the curve
    nll, count = doc_nll(model, docs[:5], 256, TINY_MODEL.context, 4, cuda)
    assert nll.device.type == "cpu" and (count > 0).all()
