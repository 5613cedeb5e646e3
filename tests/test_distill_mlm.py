"""Masked-LM training: masking, the tied head, loss only at masked positions, no pair-copy trap, exact resume,
and a saved model that `augment --mlm` uses."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

from augment import AugmentConfig, plan_augment
from augment.quality import candidate_recall
from augment.words import WordSplitter
from distill.config import MLMConfig
from distill.data import Collator
from distill.mlm import IGNORE, MLM_LABELS, MaskedLMObjective, MaskingCollator, freeze_below, pretrain_masked_lm
from distill.models import load_masked_lm
from distill.trainer import Trainer
from distillery.cli.main import cli
from pipelines.errors import DistilleryError
from pipelines.runner import run_step

TEXTS = ["the quick brown fox jumps over the lazy dog", "a positional system of numeration that uses octal digits",
         "an artificial reservoir for storing liquids", "habitual absence from work", "large shaggy-haired bison",
         "the particles disintegrated during the nuclear fission process", "a list advertising parts for machines"]


@pytest.fixture(scope="module")
def encoder(tiny_bert_factory):
    """A tiny BERT encoder without an MLM head (like the bundled MiniLM)."""
    return str(tiny_bert_factory(layers=2, hidden=32, heads=2, with_mlm_head=False, seed=3))


@pytest.fixture
def text_version(store, make_version):
    rows = [{"text": TEXTS[i % len(TEXTS)] + f" number {i}", "row_id": i} for i in range(48)]
    make_version(store, rows, name="text", chunk_rows=16)
    make_version(store, [{"text": t, "row_id": i} for i, t in enumerate(TEXTS)], name="held", config={"h": 1})
    return store


def rows_of(texts, collate):
    rows = [{"text": t, "row_id": i} for i, t in enumerate(texts)]
    collate.encode(rows)
    return rows


def test_masking_is_seeded_bert_style_and_never_touches_special_pieces(encoder):
    collate = MaskingCollator(encoder, 64, mask_prob=0.15, whole_word=False, seed=7)
    texts = [f"{t} and {TEXTS[(i + 3) % len(TEXTS)]}" for i, t in enumerate(TEXTS * 60)]
    a = collate(rows_of(texts, collate), epoch=0)
    b = collate(rows_of(texts, collate), epoch=0)
    c = collate(rows_of(texts, collate), epoch=1)
    plain = Collator(encoder, 64)(rows_of(texts, collate))
    assert np.array_equal(a["input_ids"], b["input_ids"]) and np.array_equal(a[MLM_LABELS], b[MLM_LABELS])
    assert not np.array_equal(a[MLM_LABELS], c[MLM_LABELS])                     # new masks each epoch
    chosen = a[MLM_LABELS] != IGNORE
    special = np.isin(plain["input_ids"], collate.tokenizer.all_special_ids)
    assert not (chosen & special).any() and (chosen.sum(1) >= 1).all()
    assert np.array_equal(a[MLM_LABELS][chosen], plain["input_ids"][chosen])    # labels are the originals
    share = chosen.sum() / (~special & (plain["attention_mask"] == 1)).sum()
    assert 0.13 < share < 0.20
    corrupted = a["input_ids"][chosen]
    masked = (corrupted == collate.tokenizer.mask_token_id).mean()
    kept = (corrupted == plain["input_ids"][chosen]).mean()
    assert 0.75 < masked < 0.85 and 0.06 < kept < 0.15                        # 80 / 10 / 10
    assert np.array_equal(a["input_ids"][~chosen], plain["input_ids"][~chosen])


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(encoder):
    collate = MaskingCollator(encoder, 64, mask_prob=0.3, whole_word=True, seed=1)
    texts = ["unbelievably disintegrated numeration of phosphorescence"] * 40
    batch = collate(rows_of(texts, collate), epoch=0)
    tokens = [collate.tokenizer.convert_ids_to_tokens(ids) for ids in Collator(encoder, 64)(
        rows_of(texts, collate))["input_ids"]]
    for row, labels in zip(tokens, batch[MLM_LABELS]):
        chosen = labels != IGNORE
        for i in range(1, len(row)):
            if row[i].startswith("##"):
                assert chosen[i] == chosen[i - 1], row                            # a word is all in or all out


def test_training_inputs_are_the_row_itself_never_a_masked_original_pair(text_version, encoder):
    """The pair-copy trap: a training input holds only the row's own sentence (one segment), so a masked word's
    original is nowhere else in the input."""
    from distill.mlm import mlm_stream
    from distill.trainer import Runtime

    stream = mlm_stream(text_version, "text", encoder, MLMConfig(model=encoder, batch_size=8), 0.15, False,
                        Runtime(torch.device("cpu")))
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    table = {r["row_id"]: r["text"] for r in text_version.read_table("text").to_pylist()}
    for batch in stream:
        for ids, labels, types, mask, row_id in zip(batch["input_ids"], batch[MLM_LABELS], batch["token_type_ids"],
                                                    batch["attention_mask"], batch["row_id"]):
            n = int(mask.sum())
            restored = torch.where(labels != IGNORE, labels, ids)[:n].tolist()
            assert restored == tokenizer(table[int(row_id)])["input_ids"]
            assert int(types.sum()) == 0 and ids[:n].tolist().count(tokenizer.sep_token_id) == 1


def test_the_head_is_added_tied_and_the_loss_is_taken_at_masked_positions_only(encoder):
    model = load_masked_lm(encoder)
    assert isinstance(model, BertForMaskedLM)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    collate = MaskingCollator(encoder, 64, mask_prob=0.15, whole_word=False, seed=0)
    batch = {k: torch.from_numpy(v) for k, v in collate(rows_of(TEXTS, collate)).items()}
    seen = []
    handle = model.cls.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].shape))
    loss, parts = MaskedLMObjective(model)(batch)
    handle.remove()
    assert seen == [torch.Size([int((batch[MLM_LABELS] != IGNORE).sum()), 32])]
    reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"], labels=batch[MLM_LABELS]).loss
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(parts["mlm"], reference)


def test_freezing_keeps_the_lower_layers_and_embeddings(encoder):
    model = load_masked_lm(encoder)
    freeze_below(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".layer.1." in n for n in trainable) and not any(".layer.0." in n for n in trainable)
    assert not any("embeddings" in n for n in trainable) and any(n.startswith("cls.") for n in trainable)
    with pytest.raises(DistilleryError, match="train_layers=3"):
        freeze_below(load_masked_lm(encoder), 3)


class Crash(Exception):
    pass


def test_exact_resume_and_a_saved_model_that_augment_uses(text_version, encoder, tmp_path, monkeypatch, glove_txt):
    cfg = MLMConfig(model=encoder, batch_size=8, max_steps=8, checkpoint_every=3, log_every=1, num_workers=0,
                    lr=1e-3, eval_ref="held", eval_every=4)
    full = pretrain_masked_lm(text_version, "text", cfg, tmp_path / "full", scorer=candidate_recall)

    def crash_after_5(self):
        if self.step == 5:
            raise Crash
    monkeypatch.setattr(Trainer, "after_step", crash_after_5)
    with pytest.raises(Crash):
        pretrain_masked_lm(text_version, "text", cfg, tmp_path / "cut", scorer=candidate_recall)
    monkeypatch.undo()
    resumed = pretrain_masked_lm(text_version, "text", cfg, tmp_path / "cut", resume=True, scorer=candidate_recall)

    def records(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records(tmp_path / "cut") == records(tmp_path / "full")
    assert len([r for r in records(tmp_path / "full") if "loss" in r]) == 8
    assert full.scores == resumed.scores and {"perplexity", "recall_at_1", "recall_at_15"} <= set(full.scores)
    assert 0 <= full.scores["recall_at_1"] <= full.scores["recall_at_15"] <= 1
    card = (full.path / "README.md").read_text()
    assert "fill-mask" in card and text_version.resolve("text")[:12] in card and "recall_at_15" in card
    assert isinstance(AutoModelForMaskedLM.from_pretrained(full.path), BertForMaskedLM)

    aug_config = AugmentConfig(mlm=str(full.path), vectors=str(glove_txt), glove_vocab_limit=20000, num_aug=2,
                               workers=0)
    manifest = run_step(text_version, plan_augment(text_version, "held", aug_config)).manifest
    assert manifest["extra"]["counts"]["mlm_words"] > 0 and not manifest["extra"]["warnings"]


def test_candidate_recall_scores_every_eligible_one_piece_word(encoder):
    model = load_masked_lm(encoder)
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    scores = candidate_recall(model, tokenizer, TEXTS, k=15)
    expected = sum(len(s.pieces[i]) == 1 for s in WordSplitter(tokenizer).split(TEXTS) for i in s.eligible)
    assert scores["scored_words"] == expected > 10
    assert 0 <= scores["recall_at_1"] <= scores["recall_at_15"] <= 1


def test_cli_trains_and_reuses_a_masked_lm(text_version, encoder, tmp_path):
    args = ["--store", str(text_version.root), "distill", "mlm", "text", "--output", str(tmp_path / "mlm"),
            "--model", encoder, "--max-steps", "2", "--batch-size", "8", "--num-workers", "0", "--eval-ref", "held"]
    first, again = (CliRunner().invoke(cli, args, catch_exceptions=False) for _ in range(2))
    assert first.exit_code == 0 and first.stdout.startswith("mlm: trained") and "recall_at_15" in first.stdout
    assert again.exit_code == 0 and again.stdout.startswith("mlm: up to date"), again.output


def test_distilbert_triple_loss_against_hand_computed_values(encoder):
    from distill.config import DistillConfig
    from distill.mlm import DistilBertObjective
    from distill.models import build_student

    teacher = load_masked_lm(encoder).eval()
    cfg = DistillConfig(teacher=encoder, student="custom", student_layers=1, student_init="teacher", seed=0)
    student = build_student(cfg, "custom", teacher, teacher.config, {}, "mlm").eval()     # no dropout
    assert isinstance(student, BertForMaskedLM) and student.config.num_hidden_layers == 1
    s, t = student.state_dict(), teacher.state_dict()
    for key in ("bert.encoder.layer.0.output.dense.weight", "cls.predictions.transform.dense.weight"):
        torch.testing.assert_close(s[key], t[key.replace("layer.0.", "layer.1.")], rtol=0, atol=0)  # g(1) = 2
    collate = MaskingCollator(encoder, 64, mask_prob=0.3, whole_word=False, seed=0)
    batch = {k: torch.from_numpy(v) for k, v in collate(rows_of(TEXTS, collate)).items()}
    objective = DistilBertObjective(student, teacher, kl=5.0, mlm=2.0, cosine=1.0, temperature=2.0)
    loss, parts = objective(batch)

    chosen = batch[MLM_LABELS] != IGNORE
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        hs, ht = student.bert(**inputs).last_hidden_state, teacher.bert(**inputs).last_hidden_state
        zs, zt = student.cls(hs)[chosen], teacher.cls(ht)[chosen]
        ps, pt = torch.softmax(zs / 2, -1), torch.softmax(zt / 2, -1)
        kl = (pt * (pt.log() - ps.log())).sum(-1).mean() * 4
        mlm = -torch.log_softmax(zs, -1).gather(1, batch[MLM_LABELS][chosen][:, None]).mean()
        keep = batch["attention_mask"].bool()
        cos = (1 - (hs[keep] * ht[keep]).sum(-1) / (hs[keep].norm(dim=-1) * ht[keep].norm(dim=-1))).mean()
    torch.testing.assert_close(parts["mlm_kl"], kl, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts["mlm"], mlm, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts["cosine"], cos, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, 5 * kl + 2 * mlm + cos, rtol=1e-4, atol=1e-5)


def test_general_distillation_with_the_distilbert_objective_makes_a_masked_lm(text_version, encoder, tmp_path):
    from distill import general_distill
    from distill.config import DistillConfig

    teacher_cfg = MLMConfig(model=encoder, batch_size=8, max_steps=2, num_workers=0)
    teacher = pretrain_masked_lm(text_version, "text", teacher_cfg, tmp_path / "teacher").path
    cfg = DistillConfig(teacher=str(teacher), student="custom", student_layers=1, student_init="teacher",
                        objective="distilbert", kl_weight=5, hard_weight=2, cosine_weight=1, temperature=2,
                        batch_size=8, max_steps=3, num_workers=0, log_every=1, eval_ref="held")
    student = general_distill(text_version, "text", cfg, tmp_path / "student")
    parts = [json.loads(line)["parts"] for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert len(parts) == 3 and set(parts[0]) == {"mlm_kl", "mlm", "cosine"}
    assert isinstance(AutoModelForMaskedLM.from_pretrained(student.path), BertForMaskedLM)
    assert "perplexity" in student.scores
    with pytest.raises(DistilleryError, match="no masked-LM head"):
        general_distill(text_version, "text", DistillConfig(teacher=encoder, objective="distilbert", kl_weight=1),
                        tmp_path / "x")
