"""Stage A (adapter), stage B (tuned negatives) on cached features, checkpoints carrying the label list, and the
SynOOD score."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from synood_kit.finetune import (
    AdapterConfig,
    FinetuneData,
    LabelTuneConfig,
    ResidualAdapter,
    adapter_steps,
    label_steps,
    load_finetune,
    save_finetune,
    synood_score,
    train_adapter,
    train_joint,
    tune_labels,
)
from synood_kit.scores import neglabel_score

D, C, K = 16, 3, 8


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    id_text, neg_text = torch.randn(C, D, generator=g), torch.randn(K, D, generator=g)
    id_labels = torch.arange(60) % C
    id_feats = id_text[id_labels] + 0.8 * torch.randn(60, D, generator=g)
    syn_index = torch.arange(40) % K
    syn_feats = neg_text[syn_index] + 0.8 * torch.randn(40, D, generator=g)
    return FinetuneData(id_feats, id_labels, syn_feats, syn_index, id_text, neg_text)


def test_adapter_has_the_official_parameter_count():
    assert sum(p.numel() for p in ResidualAdapter(512).parameters()) == 263_680
    out = ResidualAdapter(D)(torch.randn(4, D))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))


def test_stage_a_lowers_the_loss_and_logs_every_step(data):
    cfg = AdapterConfig(epochs=6, batch_size=32)
    adapter, logs = train_adapter(data, cfg, seed=0)
    assert [log.step for log in logs] == list(range(1, len(logs) + 1))
    assert len(logs) == 6 * 4 and {log.stage for log in logs} == {"adapter"}
    assert sum(log.loss for log in logs[-4:]) < sum(log.loss for log in logs[:4])
    assert logs[-1].lr == pytest.approx(cfg.min_lr, abs=2e-4)


def test_stage_b_tunes_float32_rows_toward_their_images(data):
    neg_text = data.neg_text
    tuned, logs = tune_labels(data, LabelTuneConfig(epochs=5, batch_size=16))
    assert tuned.dtype == torch.float32 and tuned.shape == neg_text.shape
    first, last = [log.loss for log in logs if log.epoch == 0], [log.loss for log in logs if log.epoch == 4]
    assert sum(last) / len(last) < sum(first) / len(first)
    with pytest.raises(TypeError, match="float32"):
        list(label_steps(torch.nn.Parameter(neg_text.half()), data))


def test_joint_training_moves_the_adapter_and_the_rows_together(data):
    syn_feats, syn_index, id_text, neg_text = data.syn_features, data.syn_index, data.id_text, data.neg_text
    adapter, rows, logs = train_joint(data, AdapterConfig(epochs=6, batch_size=32))
    assert {log.stage for log in logs} == {"joint"} and len(logs) == 6 * 4
    assert sum(log.loss for log in logs[-4:]) < sum(log.loss for log in logs[:4])
    assert rows.dtype == torch.float32 and rows.shape == neg_text.shape and not torch.allclose(rows, neg_text)
    # the rows are trained with the adapter's features: synthetic images land on their own label
    logits = adapter(syn_feats) @ F.normalize(torch.cat([id_text, rows]), dim=-1).T
    assert (logits.argmax(1) == syn_index + C).float().mean() > 0.9


def test_resumed_adapter_training_equals_uninterrupted(data):
    import copy

    cfg = AdapterConfig(epochs=2, batch_size=32)
    full, _ = train_adapter(data, cfg, seed=1)
    saved = {}

    def checkpoint_then_die(epoch, optimizer_state):
        saved.update(weights=copy.deepcopy(killed.state_dict()), optimizer=copy.deepcopy(optimizer_state), epoch=epoch)
        raise KeyboardInterrupt("killed after the epoch-0 checkpoint")

    torch.manual_seed(1)
    killed = ResidualAdapter(D)
    with pytest.raises(KeyboardInterrupt):
        list(adapter_steps(killed, data, cfg, on_epoch_end=checkpoint_then_die))
    resumed = ResidualAdapter(D)
    resumed.load_state_dict(saved["weights"])
    list(adapter_steps(resumed, data, cfg, start_epoch=saved["epoch"] + 1, optimizer_state=saved["optimizer"]))
    for k, v in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, msg=k)


def test_checkpoint_carries_the_label_list(data, tmp_path):
    adapter, _ = train_adapter(data, AdapterConfig(epochs=1), seed=0)
    words = [f"w{i}" for i in range(K)]
    tuned = torch.randn(3, D)
    path = save_finetune(tmp_path / "ft.safetensors", words, adapter, tuned, torch.tensor([1, 4, 6]), {"note": "x"})
    loaded = load_finetune(path, words)
    x = torch.randn(5, D)
    torch.testing.assert_close(loaded["adapter"](x), adapter(x))
    torch.testing.assert_close(loaded["tuned_neg_text"], tuned)
    assert loaded["tuned_index"].tolist() == [1, 4, 6] and loaded["extra"] == {"note": "x"}
    with pytest.raises(ValueError, match="another negative-label list"):
        load_finetune(path, words[::-1])


def test_synood_score_reduces_to_neglabel_and_substitutes_tuned_rows(data):
    id_feats, id_text, neg_text = data.id_features, data.id_text, data.neg_text
    torch.testing.assert_close(
        synood_score(id_feats, id_text, neg_text, n_groups=2), neglabel_score(id_feats, id_text, neg_text, n_groups=2)
    )
    tuned = torch.randn(2, D)
    got = synood_score(
        id_feats, id_text, neg_text, tuned_neg_text=tuned, tuned_index=torch.tensor([0, 5]), n_groups=None
    )
    negs = neg_text.clone()
    negs[[0, 5]] = F.normalize(tuned, dim=-1) * neg_text[[0, 5]].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got, neglabel_score(id_feats, id_text, negs, n_groups=None))
    only = synood_score(
        id_feats,
        id_text,
        neg_text,
        tuned_neg_text=tuned,
        tuned_index=torch.tensor([0, 5]),
        keep_untuned=False,
        n_groups=None,
    )
    torch.testing.assert_close(only, neglabel_score(id_feats, id_text, negs[[0, 5]], n_groups=None))
