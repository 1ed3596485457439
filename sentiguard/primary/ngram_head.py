"""StructBERT plus a character n-gram term: one model, loaded by ModelScope's pipeline.

`SbertWithNgrams` is ModelScope's `SbertForSequenceClassification` whose positive logit
also gets g(text): a TF-IDF logistic regression over hashed 1-3-grams of the token ids
the pipeline's own tokenizer produced (its [CLS]/[SEP] included, so g sees where a text
starts and ends). The n-gram part is the fallback's family computed inside the network,
so an ensemble of the two lives in one `model.safetensors` and one forward pass:

    logit(正面) - logit(负面) = StructBERT(text) + g(text)
    g = sum_b x_b * coef_b / ||x|| + intercept,  x_b = (1 + ln count_b) * idf_b

The class registers itself in ModelScope's model registry under `MODEL_TYPE` for the
text-classification tasks when this module is imported; configuration.json names that
type, so `pipeline(Tasks.text_classification, model=DIR)` builds it once this module has
been imported (sentiguard.primary.model does so before calling pipeline()).
"""

from __future__ import annotations

from typing import Any

import torch
from modelscope.models.builder import MODELS
from modelscope.models.nlp.structbert import SbertForSequenceClassification
from modelscope.outputs import AttentionTextClassificationModelOutput
from modelscope.utils.constant import Tasks

MODEL_TYPE = "sentiguard-structbert-ngram"
ORDERS = (1, 2, 3)
BUCKETS = 1_048_573  # a prime: the n-gram code modulo it is the bucket
POSITIVE_LABEL = "正面"


def ngram_counts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int, buckets: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, bucket, count) of every distinct hashed n-gram of each row's unmasked ids.

    Training (`sentiguard.training.ngrams`) builds its features with this same function, so
    the regression it fits is exactly the one the network computes."""
    ids = input_ids.long()
    mask = attention_mask.bool()
    width = ids.shape[1]
    keys = []
    for n in ORDERS:
        if width < n:
            continue
        windows = ids.unfold(1, n, 1)  # [batch, width - n + 1, n]
        valid = mask.unfold(1, n, 1).all(-1)
        code = torch.zeros_like(windows[..., 0])
        for i in range(n):
            code = code * vocab_size + windows[..., i]
        # A salt per order keeps a unigram and a bigram with equal codes apart.
        bucket = (code + n * 104_729) % buckets
        rows = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(bucket)
        keys.append((rows * buckets + bucket)[valid])
    if not keys:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    unique, counts = torch.unique(torch.cat(keys), return_counts=True)
    return unique // buckets, unique % buckets, counts


@MODELS.register_module(Tasks.text_classification, module_name=MODEL_TYPE)
@MODELS.register_module(Tasks.sentiment_classification, module_name=MODEL_TYPE)
class SbertWithNgrams(SbertForSequenceClassification):
    """StructBERT whose positive logit adds a TF-IDF n-gram regression (see the module)."""

    def __init__(self, config: Any, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        buckets = int(getattr(config, "ngram_buckets", BUCKETS))
        self.ngram_buckets = buckets
        self.ngram_idf = torch.nn.Parameter(torch.zeros(buckets), requires_grad=False)
        self.ngram_coef = torch.nn.Parameter(torch.zeros(buckets), requires_grad=False)
        self.ngram_intercept = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.positive_id = int(config.label2id.get(POSITIVE_LABEL, 1))

    def ngram_logit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """g(text) for each row: the n-gram regression's log-odds of 正面."""
        rows, cols, counts = ngram_counts(
            input_ids, attention_mask, self.config.vocab_size, self.ngram_buckets
        )
        batch = input_ids.shape[0]
        x = (1.0 + torch.log(counts.float())) * self.ngram_idf.float()[cols]
        dot = torch.zeros(batch).index_add_(0, rows, x * self.ngram_coef.float()[cols])
        norm = torch.zeros(batch).index_add_(0, rows, x * x).sqrt().clamp_min(1e-12)
        return dot / norm + self.ngram_intercept.float()

    def add_ngram_term(self, logits: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """`logits` with g added to the positive class (a copy: autograd keeps the input)."""
        logits = logits.clone()
        logits[:, self.positive_id] = logits[:, self.positive_id] + g.to(logits.dtype)
        return logits

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ngram_offset: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> AttentionTextClassificationModelOutput:
        """As StructBERT's forward; `ngram_offset` replaces g (training feeds out-of-fold
        values, so the encoder learns what the regression misses, not what it memorised)."""
        assert input_ids is not None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            **kwargs,
        )
        g = self.ngram_logit(input_ids, attention_mask) if ngram_offset is None else ngram_offset
        logits = self.add_ngram_term(out.logits, g)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits, labels.view(-1))
        return AttentionTextClassificationModelOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
