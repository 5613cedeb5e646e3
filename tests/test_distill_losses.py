"""Distillation losses against hand-computed values; layer mapping; matches as data."""
import math

import pytest
import torch

from distill import losses
from distill.matches import Match, MatchSet, default_matches
from distill.models import Features, layer_mapping
from pipelines.errors import DistilleryError


def test_attention_mse_zeroes_masked_scores_like_tinybert():
    # one batch, one head, 2 queries x 2 keys; the second key is padding (score + finfo.min)
    neg = torch.finfo(torch.float32).min
    student = torch.tensor([[[[1.0, neg], [3.0, neg]]]])
    teacher = torch.tensor([[[[2.0, neg], [1.0, -5e3]]]])
    # masked entries become 0 on both sides: diffs (1-2)^2 + 0 + (3-1)^2 + 0 over 4 entries
    assert losses.attention_mse(student, teacher).item() == pytest.approx((1 + 4) / 4)
    # a score of -50 is not masked (threshold is -100)
    student[0, 0, 0, 1] = -50.0
    assert losses.attention_mse(student, teacher).item() == pytest.approx((1 + 2500 + 4) / 4)


def test_attention_mse_head_mismatch_averages_heads():
    student = torch.tensor([[[[1.0]], [[3.0]]]])       # 2 heads, mean 2
    teacher = torch.tensor([[[[5.0]], [[1.0]], [[3.0]]]])  # 3 heads, mean 3
    assert losses.attention_mse(student, teacher).item() == pytest.approx(1.0)


def test_hidden_mse_and_cosine():
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    t = torch.tensor([[[0.0, 0.0], [0.0, 4.0]]])
    assert losses.hidden_mse(s, t).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    t = torch.tensor([[[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])                  # third position is padding: ignored
    # cos = 0 and 1 -> mean(1 - cos) = (1 + 0) / 2
    assert losses.hidden_cosine(s, t, mask).item() == pytest.approx(0.5)


def test_soft_cross_entropy_with_temperature():
    s = torch.tensor([[0.0, 2.0]])
    t = torch.tensor([[2.0, 0.0]])
    temp = 2.0
    p = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]        # softmax(t / 2)
    log_q = [0 - math.log(1 + math.e), 1 - math.log(1 + math.e)]        # log_softmax(s / 2)
    expected = -(p[0] * log_q[0] + p[1] * log_q[1])
    assert losses.soft_cross_entropy(s, t, temp).item() == pytest.approx(expected, rel=1e-6)


def test_kl_divergence_scaled_by_t_squared():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [1.0, 0.0]])
    temp = 1.0
    # row 1: p = (3/4, 1/4), q = (1/2, 1/2); row 2 identical -> 0
    kl_row = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert losses.kl_divergence(s, t, temp).item() == pytest.approx(kl_row / 2, rel=1e-6)
    # at T=2 the logits halve; the result is scaled by T^2 = 4
    p = [math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)]
    kl_t2 = p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5)
    assert losses.kl_divergence(s, t, 2.0).item() == pytest.approx(4 * kl_t2 / 2, rel=1e-6)


def test_hard_loss_classification_and_regression():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, -100])                  # unknown label ignored
    assert losses.hard_loss(logits, labels, False).item() == pytest.approx(-math.log(0.75))
    preds = torch.tensor([[1.0], [2.0], [0.0]])
    gold = torch.tensor([2.0, 2.0, float("nan")])
    assert losses.hard_loss(preds, gold, True).item() == pytest.approx(0.5)
    assert losses.logits_mse(preds[:2], gold[:2, None]).item() == pytest.approx(0.5)


@pytest.mark.parametrize("strategy,expected", [("uniform", [3, 6, 9, 12]), ("top", [9, 10, 11, 12]),
                                               ("bottom", [1, 2, 3, 4])])
def test_layer_mapping_12_to_4(strategy, expected):
    assert layer_mapping(4, 12, strategy) == expected


def test_layer_mapping_uniform_uneven_and_explicit():
    assert layer_mapping(4, 6) == [1, 3, 4, 6]     # floor(m * 6 / 4)
    assert layer_mapping(2, 6, "explicit", [2, 5]) == [2, 5]
    with pytest.raises(DistilleryError, match="needs 2"):
        layer_mapping(2, 6, "explicit", [2])
    with pytest.raises(DistilleryError, match="outside"):
        layer_mapping(2, 6, "explicit", [2, 7])
    with pytest.raises(DistilleryError, match="more layers"):
        layer_mapping(8, 6)


def test_default_matches_tinybert_recipe():
    matches = default_matches([2, 4], embedding=1.0, hidden=1.0, attention=2.0)
    assert [m.name for m in matches] == ["emb", "att1", "hid1", "att2", "hid2"]
    assert {m.projection for m in matches if m.feature != "attention"} == {"fit_dense"}
    assert [m.teacher_layer for m in matches if m.feature == "attention"] == [2, 4]
    assert default_matches([1], prediction=1.0, regression=True)[0].loss == "logits_mse"


def test_match_from_dict_validates():
    assert Match.from_dict({"feature": "hidden", "loss": "cosine", "student_layer": 2, "teacher_layer": 6}).name \
        == "hid2_cosine"
    with pytest.raises(DistilleryError, match="loss for attention"):
        Match.from_dict({"feature": "attention", "loss": "mse"})
    with pytest.raises(DistilleryError, match="unknown key"):
        Match.from_dict({"feature": "hidden", "loss": "mse", "layer": 1})


def test_matchset_total_is_weighted_sum_with_shared_projection():
    torch.manual_seed(0)
    matches = [Match("embedding", "mse", 0.5, 0, 0, "fit"), Match("hidden", "mse", 2.0, 2, 1, "fit"),
               Match("attention", "attention_mse", 3.0, 2, 1), Match("logits", "soft_ce", 1.0, temperature=2.0)]
    ms = MatchSet(matches, student_width=4, teacher_width=6)
    assert list(ms.projections) == ["fit"]
    s = Features(hidden=(torch.randn(2, 3, 4), torch.randn(2, 3, 4)), attentions=[torch.randn(2, 2, 3, 3)],
                 logits=torch.randn(2, 5))
    t = Features(hidden=tuple(torch.randn(2, 3, 6) for _ in range(3)),
                 attentions=[torch.randn(2, 2, 3, 3) for _ in range(2)], logits=torch.randn(2, 5))
    total, parts = ms(s, t, {"attention_mask": torch.ones(2, 3)})
    proj = ms.projections["fit"]
    expected = {"emb": losses.hidden_mse(proj(s.hidden[0]), t.hidden[0]),
                "hid1": losses.hidden_mse(proj(s.hidden[1]), t.hidden[2]),
                "att1": losses.attention_mse(s.attentions[0], t.attentions[1]),
                "logits_soft_ce": losses.soft_cross_entropy(s.logits, t.logits, 2.0)}
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value.item())
    weighted = 0.5 * expected["emb"] + 2.0 * expected["hid1"] + 3.0 * expected["att1"] + expected["logits_soft_ce"]
    assert total.item() == pytest.approx(weighted.item())
    total.backward()
    assert proj.weight.grad is not None


def test_matchset_uses_cached_teacher_logits_and_rejects_duplicates():
    ms = MatchSet([Match("logits", "kl", temperature=1.0)], 4, 4)
    s = Features(None, None, torch.tensor([[0.0, 0.0]]))
    total, _ = ms(s, None, {"teacher_logits": torch.tensor([[math.log(3.0), 0.0]])})
    assert total.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    with pytest.raises(DistilleryError, match="same student feature"):
        MatchSet([Match("hidden", "mse", 1, 1, 1), Match("hidden", "mse", 1, 2, 1)], 4, 4)
    with pytest.raises(DistilleryError, match="nothing to distil"):
        MatchSet([], 4, 4)
