"""How good a masked LM is as the augmentation's candidate source: when one eligible one-piece word of a
held-out sentence is masked, is the original piece the first candidate (recall@1) or among the K candidates
(recall@K), with the candidates built exactly as the augmentation builds them (top-K pieces, ``##`` pieces
dropped)? The input is the single sentence, so the original cannot be copied from another segment."""
from __future__ import annotations

from typing import Any

from augment.mlm import HARD_MAX_LENGTH, MaskedLM, build_requests
from augment.words import WordSplitter
from pipelines.resources import position_limit


def candidate_recall(model: Any, tokenizer: Any, texts: list[str], k: int = 15, batch_size: int = 256
                     ) -> dict[str, Any]:
    """recall@1 and recall@k of the original piece over every eligible one-piece word of ``texts``."""
    was_training = model.training
    model.eval()
    device = str(next(model.parameters()).device)
    limit = min(HARD_MAX_LENGTH, position_limit(model.config) or HARD_MAX_LENGTH)
    mlm = MaskedLM(model, tokenizer, device, "fp32", {}, limit)
    spec = mlm.input_spec("single", 1, None)
    requests, originals = [], []
    for sentence in WordSplitter(tokenizer).split(texts):
        one_piece = [i for i in sentence.eligible if len(sentence.pieces[i]) == 1]
        for request in build_requests(sentence, one_piece, spec):
            requests.append(request)
            originals.append([sentence.pieces[w][0] for w in request.words])
    first = within = scored = 0
    for top, pieces in zip(mlm.top_k(requests, k, batch_size), originals):
        for ids, original in zip(top, pieces):
            candidates = mlm.tokens(ids)
            word = tokenizer.convert_ids_to_tokens(original)
            first += bool(candidates) and candidates[0] == word
            within += word in candidates
            scored += 1
    model.train(was_training)
    if not scored:
        return {"recall_at_1": 0.0, f"recall_at_{k}": 0.0, "scored_words": 0}
    return {"recall_at_1": first / scored, f"recall_at_{k}": within / scored, "scored_words": scored}
