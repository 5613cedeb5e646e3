"""Raw (pre-softmax) attention capture and student construction."""
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from distill.models import PRESETS, capture_scores, enable_raw_attention, forward_features, load_student, student_config
from pipelines.errors import DistilleryError


def _batch(tokenizer):
    return tokenizer(["a short one", "a much longer sentence with several more tokens in it"], padding=True,
                     return_tensors="pt")


def test_raw_scores_softmax_to_hf_attentions(tiny_bert_factory):
    folder = tiny_bert_factory(layers=3, hidden=32, heads=4, with_mlm_head=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = _batch(tokenizer)
    reference = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        hf = reference(**batch, output_attentions=True).attentions
    model = AutoModel.from_pretrained(folder).eval()
    enable_raw_attention(model)
    with torch.no_grad():
        features = forward_features(model, batch, hidden=True, attentions=True)
    assert len(features.attentions) == 3 and len(features.hidden) == 4
    mask = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    for raw, probs in zip(features.attentions, hf):
        assert raw.shape == probs.shape == (2, 4, raw.shape[2], raw.shape[3])
        # the scores already include the additive mask: padded keys are hugely negative
        assert (raw[0, :, :, batch["attention_mask"][0] == 0] < -1e30).all()
        torch.testing.assert_close(torch.softmax(raw, dim=-1), probs)
        # and the mask is exactly the additive one: unmasked scores + mask reproduce them
        torch.testing.assert_close(torch.softmax(raw.clamp(min=-1e4) + mask, -1), probs)
    # capture is off outside the context manager, and the outputs do not change
    with capture_scores(model) as scores:
        with torch.no_grad():
            model(**batch)
    assert len(scores) == 3
    with torch.no_grad():
        model(**batch)
    assert len(scores) == 3


def test_capture_requires_the_raw_implementation(tiny_bert_factory):
    model = AutoModel.from_pretrained(tiny_bert_factory(with_mlm_head=False))
    with pytest.raises(DistilleryError, match="enable_raw_attention"):
        with capture_scores(model):
            pass


def test_student_presets_and_custom_shapes(tiny_bert_factory):
    teacher = AutoModel.from_pretrained(tiny_bert_factory(with_mlm_head=False)).config
    config = student_config(teacher, "tinybert-4", {}, {})
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) \
        == (4, 312, 12, 1200)
    assert config.vocab_size == teacher.vocab_size
    assert PRESETS["tinybert-6"]["hidden_size"] == 768
    config = student_config(teacher, "tinybert-4", {"hidden_size": 256, "num_attention_heads": 4}, {})
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (4, 256, 4)
    with pytest.raises(DistilleryError, match="missing"):
        student_config(teacher, "custom", {"num_hidden_layers": 2}, {})
    with pytest.raises(DistilleryError, match="multiple"):
        student_config(teacher, "tinybert-4", {"hidden_size": 100}, {})
    shape = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    a = load_student("custom", teacher, shape, {"num_labels": 3}, "classifier", seed=5)
    b = load_student("custom", teacher, shape, {"num_labels": 3}, "classifier", seed=5)
    assert a.config.num_labels == 3
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)       # seeded initialisation
    with pytest.raises(DistilleryError, match="student '/nonexistent/student': no such folder .or use a preset"):
        load_student("/nonexistent/student", teacher, {}, {}, "none", 0)


def test_teacher_initialised_student_with_a_narrower_feed_forward(tiny_bert_factory):
    teacher = AutoModel.from_pretrained(tiny_bert_factory(layers=4, hidden=32, heads=4, with_mlm_head=False))
    t_layer = teacher.encoder.layer[3]
    width = t_layer.intermediate.dense.out_features
    student = load_student("custom", teacher.config, {"num_hidden_layers": 2, "intermediate_size": width // 2}, {},
                           "none", seed=0, init_from=(teacher, [2, 4]))
    assert (student.config.hidden_size, student.config.intermediate_size) == (32, width // 2)
    s_layer = student.encoder.layer[1]
    importance = t_layer.intermediate.dense.weight.norm(dim=1) * t_layer.output.dense.weight.norm(dim=0)
    keep = sorted(importance.argsort(descending=True)[:width // 2].tolist())
    torch.testing.assert_close(s_layer.intermediate.dense.weight, t_layer.intermediate.dense.weight[keep])
    torch.testing.assert_close(s_layer.intermediate.dense.bias, t_layer.intermediate.dense.bias[keep])
    torch.testing.assert_close(s_layer.output.dense.weight, t_layer.output.dense.weight[:, keep])
    torch.testing.assert_close(s_layer.attention.self.query.weight, t_layer.attention.self.query.weight)
    # keeping every neuron reproduces the teacher's layer exactly
    full = load_student("custom", teacher.config, {"num_hidden_layers": 2}, {}, "none", 0, init_from=(teacher, [2, 4]))
    torch.testing.assert_close(full.encoder.layer[1].output.dense.weight, t_layer.output.dense.weight)
    with pytest.raises(DistilleryError, match="keeps its hidden_size"):
        load_student("custom", teacher.config, {"num_hidden_layers": 2, "hidden_size": 16}, {}, "none", 0,
                     init_from=(teacher, [2, 4]))
    with pytest.raises(DistilleryError, match="only intermediate_size may be smaller"):
        load_student("custom", teacher.config, {"num_hidden_layers": 2, "intermediate_size": 2 * width}, {}, "none", 0,
                     init_from=(teacher, [2, 4]))
