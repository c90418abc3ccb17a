"""Attention-label distillation numerics on a tiny BERT: meta-gradients, engines, the KL term, exact resets."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dd.data.text import TextDatasetConfig, load_text_dataset
from dd.inner import meta_gradient
from dd.models.bert import TextClassifier, TextModelConfig, load_backbone
from dd.text.evaluate import evaluate_text_set
from dd.text.loss import attention_kl
from dd.text.methods.attention_labels import AttentionLabelsConfig, Distilled

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread is faster


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(OmegaConf.structured(TextModelConfig(name="tiny_bert", hidden_size=16, num_heads=2,
                                                              num_layers=2, intermediate_size=32)))


@pytest.fixture(scope="module")
def data(backbone):
    cfg = OmegaConf.structured(TextDatasetConfig(name="synthetic_topics", max_length=8, num_train=48, num_test=24))
    return load_text_dataset(cfg, backbone.tokenizer)


def method(**kw):
    """The method config with the paper's N(0,1) starts unless told otherwise (the lrs tied to lr_inputs_embeds
    resolve against `method`, as in a composed run config)."""
    kw = {"init": "random", "attention_init": "random", **kw}
    return OmegaConf.create({"method": OmegaConf.structured(AttentionLabelsConfig(**kw))}).method


def meta_problem(clf, data, m, ipc=2, dtype=torch.float32):
    syn = Distilled(clf, data, m, ipc, torch.Generator().manual_seed(0), torch.device("cpu"))
    ids, mask, types, labels = data.train.input_ids[:12], data.train.attention_mask[:12], data.train.token_type_ids[:12], data.train.labels[:12]
    with torch.no_grad():  # a non-uniform lr per step, so each step's lr gradient is distinct
        syn.lr_raw.copy_(torch.linspace(-2.0, -1.0, m.inner_steps, dtype=dtype))

    def outer(theta):
        logits, _ = clf(theta, clf.embed(ids), mask, types)
        return F.cross_entropy(logits, labels)

    def step_loss(theta, learn, i):
        return syn.step_loss(clf, learn, theta, i)

    theta0 = clf.new_theta(torch.Generator().manual_seed(1))
    lr = syn.lr().detach().requires_grad_(True)
    return syn, step_loss, outer, theta0, lr


def test_meta_gradient_reaches_every_distilled_tensor_and_every_lr(backbone, data):
    clf = TextClassifier(backbone, data.num_classes)
    m = method(inner_steps=3, label_type="unrestricted", attention_labels="cls", init="real")
    syn, step_loss, outer, theta0, lr = meta_problem(clf, data, m, ipc=3)
    res = meta_gradient("reverse", step_loss, outer, theta0, syn.learnables(), lr, 3)
    names = ["inputs_embeds", "labels", "attention_labels"]
    assert len(res.grads) == 3
    for name, g in zip(names, res.grads):
        assert torch.isfinite(g).all(), name
        assert g.abs().sum() > 0, f"no meta-gradient reaches {name}"
    assert res.lr_grad.shape == (3,) and torch.isfinite(res.lr_grad).all() and (res.lr_grad != 0).all()


@pytest.mark.parametrize("label_type,attn", [("soft", "all"), ("hard", "cls")])
def test_reverse_equals_unroll_in_float64(backbone, data, label_type, attn):
    backbone.body.double()
    try:
        clf = TextClassifier(backbone, data.num_classes)
        m = method(inner_steps=3, label_type=label_type, attention_labels=attn)
        syn, step_loss, outer, theta0, lr = meta_problem(clf, data, m, ipc=2, dtype=torch.float64)
        assert theta0.dtype == torch.float64 and syn.inputs_embeds.dtype == torch.float64
        ref = meta_gradient("unroll", step_loss, outer, theta0, syn.learnables(), lr, 3)
        got = meta_gradient("reverse", step_loss, outer, theta0, syn.learnables(), lr, 3)
        assert torch.allclose(ref.loss, got.loss, rtol=1e-12, atol=0)
        for a, b in zip(ref.grads, got.grads):
            assert a.abs().max() > 0
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-13)
        torch.testing.assert_close(got.lr_grad, ref.lr_grad, rtol=1e-9, atol=1e-13)
        # TESLA drops the Hessian terms: a different number, so the comparison above is not vacuous
        approx = meta_gradient("tesla", step_loss, outer, theta0, syn.learnables(), lr, 3)
        assert not torch.allclose(approx.grads[0], ref.grads[0], rtol=1e-6, atol=0)
    finally:
        backbone.body.float()


def test_attention_kl_uses_the_right_query_rows():
    gen = torch.Generator().manual_seed(0)
    attn = [F.softmax(torch.randn(2, 3, 5, 5, generator=gen), dim=-1) for _ in range(2)]  # 2 layers
    stacked = torch.stack(attn, dim=1)  # (B, layers, heads, L, L)
    other = F.softmax(torch.randn(2, 2, 3, 5, 5, generator=gen), dim=-1)
    # all rows: zero only when every row matches
    assert float(attention_kl(attn, stacked)) == pytest.approx(0.0, abs=1e-7)
    assert float(attention_kl(attn, other)) > 0.01
    # cls: only the first query row counts; the other rows may differ freely
    cls_label = stacked[..., :1, :].clone()
    mixed = other.clone()
    mixed[..., :1, :] = cls_label
    assert float(attention_kl(attn, cls_label)) == pytest.approx(0.0, abs=1e-7)
    assert float(attention_kl(attn, mixed)) > 0.01  # as an all-rows label it is wrong
    last_row = stacked[..., -1:, :].clone()  # the last row is not the [CLS] row
    assert float(attention_kl(attn, last_row)) > 0.01
    # KL(p||q) itself: summed over keys, averaged over the rest
    p, q = other[..., :1, :], stacked[..., :1, :]
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    assert float(attention_kl(attn, p)) == pytest.approx(float(expected), rel=1e-5)


def test_attention_kl_zero_at_the_models_own_attention(backbone, data):
    clf = TextClassifier(backbone, data.num_classes)
    theta = clf.new_theta(torch.Generator().manual_seed(0))
    x = torch.randn(2, 8, clf.hidden_size)
    mask = torch.ones(2, 8, dtype=torch.long)
    _, attns = clf(theta, x, mask, attentions=True)
    own = torch.stack(attns, dim=1).detach()
    assert own.shape == (2, clf.num_layers, clf.num_heads, 8, 8)
    assert float(attention_kl(attns, own)) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_kl(attns, own[..., :1, :])) == pytest.approx(0.0, abs=1e-6)
    peaked = F.softmax(3 * torch.randn(own.shape, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert float(attention_kl(attns, peaked)) > 0.1


def test_evaluation_resets_the_pretrained_weights_exactly(backbone, data, monkeypatch):
    import dd.text.evaluate as ev

    clf = TextClassifier(backbone, data.num_classes)
    pretrained = {k: v.clone() for k, v in backbone.body.state_dict().items()}
    m = method(inner_steps=2, label_type="soft", attention_labels="cls", lr_init=0.5)
    syn = Distilled(clf, data, m, 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    starts, ends = [], []
    real_train = ev.train_steps

    def recording(clf_, theta, tset):
        starts.append(theta.clone())
        out = real_train(clf_, theta, tset)
        ends.append(out.clone())
        return out

    monkeypatch.setattr(ev, "train_steps", recording)
    result = evaluate_text_set(clf, syn.text_set(), data, 3, seed=0, progress=False)
    assert len(starts) == 3 and len(result.per_model) == 3
    for start, end in zip(starts, ends):
        params = clf.unflatten(start)
        for name, value in pretrained.items():
            key = f"body.{name}"
            if key in params:  # every trained body tensor starts bit-exactly at its pretrained value
                assert torch.equal(params[key], value), key
        # training moved the body, so an aliased reset would have shown in the next start
        assert not torch.equal(clf.body_part(end), clf.body_part(start))
    assert not torch.equal(starts[0][-clf.head_numel:], starts[1][-clf.head_numel:])  # a new head per run
    for name, value in backbone.body.state_dict().items():  # the module itself is never written
        assert torch.equal(value, pretrained[name]), name


def test_attention_labels_initialised_from_the_model_start_at_zero_kl(backbone, data):
    clf = TextClassifier(backbone, data.num_classes)
    theta = clf.new_theta(torch.Generator().manual_seed(0))
    for kind in ("cls", "all"):
        syn = Distilled(clf, data, method(attention_labels=kind, attention_init="model", init="real"), 2,
                        torch.Generator().manual_seed(0), torch.device("cpu"))
        labels = F.softmax(syn.attention.detach(), dim=-1)
        length = syn.inputs_embeds.shape[1]
        assert labels.shape[-2:] == (1 if kind == "cls" else length, length)
        _, attns = clf(theta, syn.inputs_embeds.detach(), syn.attention_mask, syn.token_type_ids, attentions=True)
        assert float(attention_kl(attns, labels)) == pytest.approx(0.0, abs=1e-5)
        random = Distilled(clf, data, method(attention_labels=kind, init="real"), 2, torch.Generator().manual_seed(0),
                           torch.device("cpu"))
        assert float(attention_kl(attns, F.softmax(random.attention.detach(), dim=-1))) > 0.1


def test_real_starts_are_cut_to_the_longest_initial_example(backbone):
    """init=real keeps every token of the picked examples and drops the padding past the longest one."""
    cfg = OmegaConf.structured(TextDatasetConfig(name="synthetic_topics", max_length=32, num_train=48, num_test=24))
    data = load_text_dataset(cfg, backbone.tokenizer)
    clf = TextClassifier(backbone, data.num_classes)
    syn = Distilled(clf, data, method(init="real"), 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    rows = torch.stack([torch.all(clf.embed(data.train.input_ids)[:, :syn.inputs_embeds.shape[1]] == e, dim=(1, 2))
                        for e in syn.inputs_embeds.detach()])
    picked = rows.float().argmax(1)
    assert rows.any(1).all()  # every start is a real example's embeddings, cut
    longest = int(data.train.attention_mask[picked].sum(1).max())
    assert syn.inputs_embeds.shape[1] == longest < 32
    assert Distilled(clf, data, method(init="real", length=20), 2, torch.Generator().manual_seed(0),
                     torch.device("cpu")).inputs_embeds.shape[1] == 20
    assert Distilled(clf, data, method(), 2, torch.Generator().manual_seed(0),
                     torch.device("cpu")).inputs_embeds.shape[1] == 32  # N(0,1) starts: dataset.max_length


def test_balanced_real_batches_give_every_class_its_share_and_cycle_each_class():
    from dd.text.methods.attention_labels import real_batch

    labels = torch.tensor([0] * 40 + [1] * 7 + [2] * 3)  # imbalanced 40 / 7 / 3
    pool = torch.arange(100, 150)
    seen = {c: [] for c in range(3)}
    for step in range(14):
        idx = real_batch(pool, step, 8, seed=0, labels=labels)
        assert len(idx) == 9  # ceil(8 / 3) = 3 per class, interleaved
        got = labels[idx - 100]
        assert got.tolist() == [0, 1, 2] * 3
        assert torch.equal(idx, real_batch(pool, step, 8, seed=0, labels=labels))  # a pure function of (seed, step)
        for c in range(3):
            seen[c] += idx[got == c].tolist()
    # each class walks through whole permutations of its members: 3 examples of class 2 appear once per 3 draws
    for c, n in ((0, 40), (1, 7), (2, 3)):
        members = set(pool[labels == c].tolist())
        for e in range(len(seen[c]) // n):
            assert set(seen[c][e * n : (e + 1) * n]) == members
    # proportional batches keep the training shares (no class forced in)
    prop = torch.cat([real_batch(pool, s, 10, seed=0) for s in range(5)])
    assert sorted(prop.tolist()) == pool.tolist()
