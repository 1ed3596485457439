"""The fallback classifier: TF-IDF word + character n-grams, logistic regression, Platt scaling.

Contract (docs/internals.md): `FallbackModel.load(directory)`,
`model.predict_proba(texts) -> list[float]` (probability of positive, input order),
`model.version`. A loaded model is never mutated, so concurrent threads may call
`predict_proba` without a lock.

On disk a model is a directory with `model.pkl` (vocabulary, idf, weights, the Platt
scaling and the feature config; plain pickle of lists and numpy arrays, no joblib import
on the load path) and `manifest.json` (written by `train`, see there).
The file is a pickle: load only model directories you made or trust.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sentiguard.data import Dataset
from sentiguard.errors import RETRAIN_FALLBACK, DataError, ModelLoadError
from sentiguard.fallback.features import FeatureSpace
from sentiguard.fallback.tokenizer import DEFAULT_TOKENIZER, TOKENIZERS, Tokenizer, warm_up

MODEL_FILE = "model.pkl"
MANIFEST_FILE = "manifest.json"
FORMAT = 1

# Chosen on the deduplicated training split by their effect on held-out accuracy, once,
# not tuned per run: min_df=2 drops a feature seen in one review only (3.7x fewer
# features, same accuracy, better for other domains); C=3 is the milder of the two
# regularisations tried (3, 10), which were within noise of each other.
MIN_DF = 2
C = 3.0
CALIBRATION_FOLDS = 3


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


@dataclass
class FallbackModel:
    """A trained classifier. Build with `train` or `load`; read-only afterwards."""

    features: FeatureSpace
    coef: np.ndarray  # one weight per feature
    intercept: float
    platt: tuple[float, float]  # p = sigmoid(a * decision + b), fitted on held-out folds
    config: dict[str, Any] = field(default_factory=dict)
    version: str = "unsaved"

    # --- prediction ------------------------------------------------------------------
    def decision(self, texts: list[str]) -> np.ndarray:
        """The linear score of each text (log-odds before calibration)."""
        if not texts:
            return np.zeros(0)
        return self.features.decision(texts, self.coef, self.intercept)

    def predict_proba(self, texts: list[str]) -> list[float]:
        """Calibrated probability that each text is positive, in input order."""
        a, b = self.platt
        p: list[float] = _sigmoid(a * self.decision(texts) + b).tolist()
        return p

    def with_tokenizer(self, name: str) -> FallbackModel:
        """The same weights with another tokenizer backend (for the benchmark)."""
        tokenizer: Tokenizer = TOKENIZERS[name]
        f = self.features
        features = FeatureSpace(f.words, f.pair_table, f.char_table, f.idf, tokenizer)
        config = {**self.config, "tokenizer": name}
        return FallbackModel(features, self.coef, self.intercept, self.platt, config, self.version)

    # --- training --------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        dataset: Dataset,
        seed: int,
        progress: Any = None,
    ) -> FallbackModel:
        """Fit vocabulary, idf, weights and the calibration on `dataset`; deterministic in
        `seed`. `progress(message)` is called between the steps, if given."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        say = progress or (lambda message: None)
        counts = [dataset.labels.count(label) for label in (0, 1)]
        if min(counts) < CALIBRATION_FOLDS:
            raise DataError(
                f"{dataset.source}: {counts[1]} positive and {counts[0]} negative texts to "
                f"train on; the fallback needs at least {CALIBRATION_FOLDS} of each (hundreds "
                f"for a useful model). Hint: add labelled rows of the missing kind."
            )
        say(f"features: word 1-2-grams + char 1-3-grams of {len(dataset)} texts")
        space, x = FeatureSpace.fit_transform(dataset.texts, min_df=MIN_DF)
        y = np.asarray(dataset.labels)
        linear = LogisticRegression(C=C, solver="liblinear", random_state=seed)
        say(f"calibration: {CALIBRATION_FOLDS}-fold out-of-fold scores, {x.shape[1]} features")
        folds = StratifiedKFold(CALIBRATION_FOLDS, shuffle=True, random_state=seed)
        scores = cross_val_predict(linear, x, y, cv=folds, method="decision_function")
        # Platt scaling on scores the model did not train on: logistic regression's own
        # probabilities are over-confident on texts it has memorised.
        platt = LogisticRegression(C=1e6, solver="lbfgs").fit(scores.reshape(-1, 1), y)
        say("fitting the final model on all training texts")
        linear.fit(x, y)
        return cls(
            features=space,
            coef=np.asarray(linear.coef_[0], np.float64),
            intercept=float(linear.intercept_[0]),
            platt=(float(platt.coef_[0][0]), float(platt.intercept_[0])),
            config={
                "tokenizer": DEFAULT_TOKENIZER,
                "features": "word 1-2-grams + char 1-3-grams, NFKC lower-cased",
                "tfidf": {"min_df": MIN_DF, "sublinear_tf": True, "norm": "l2"},
                "classifier": f"LogisticRegression(C={C}, liblinear) + Platt scaling "
                f"({CALIBRATION_FOLDS}-fold)",
                "seed": seed,
            },
        )

    # --- persistence -----------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `model.joblib` into `directory` (created if needed); sets `version`.

        The manifest is the trainer's job (it knows the data and the metrics).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT,
            "words": self.features.words,
            "pair_table": self.features.pair_table,
            "char_table": self.features.char_table,
            # float32 halves the file; the predictions move by < 1e-6.
            "idf": self.features.idf.astype(np.float32),
            "coef": self.coef.astype(np.float32),
            "intercept": self.intercept,
            "platt": self.platt,
            "config": self.config,
        }
        raw = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        tmp = directory / (MODEL_FILE + ".tmp")
        tmp.write_bytes(raw)
        tmp.replace(directory / MODEL_FILE)  # a reader never sees half a file
        self.version = _version(directory, raw)
        return directory / MODEL_FILE

    @classmethod
    def load(cls, directory: str | Path, tokenizer: str | None = None) -> FallbackModel:
        """Load a saved model and warm its tokenizer up. Raises ModelLoadError with
        cause 'missing' or 'corrupt' and the fix."""
        directory = Path(directory)
        path = directory / MODEL_FILE
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(
                f"fallback model {path} cannot be read ({e.strerror}). Hint: run "
                f"`{RETRAIN_FALLBACK}` or point fallback.model at a model directory.",
                cause="missing",
            ) from e
        try:
            state = pickle.loads(raw)
            if state.get("format") != FORMAT:
                raise ValueError(f"format {state.get('format')!r}, expected {FORMAT}")
            config = dict(state["config"])
            name = tokenizer or config.get("tokenizer", DEFAULT_TOKENIZER)
            features = FeatureSpace(
                list(state["words"]),
                np.asarray(state["pair_table"], np.uint64),
                np.asarray(state["char_table"], np.uint64),
                np.asarray(state["idf"], np.float64),
                TOKENIZERS[name],
            )
            coef = np.asarray(state["coef"], np.float64)
            if coef.shape != (features.n_features,):
                raise ValueError("weights and vocabulary differ in length")
            platt = (float(state["platt"][0]), float(state["platt"][1]))
        except Exception as e:  # any unpickling problem means the same fix
            raise ModelLoadError(
                f"fallback model {path} is corrupt or from another version ({e}). "
                f"Hint: retrain it with `{RETRAIN_FALLBACK}`.",
                cause="corrupt",
            ) from e
        warm_up(name)
        config["tokenizer"] = name
        return cls(
            features, coef, float(state["intercept"]), platt, config, _version(directory, raw)
        )


def _version(directory: Path, raw: bytes) -> str:
    """`<directory name>@<first 12 hex of the model file's sha256>`."""
    return f"{directory.name}@{hashlib.sha256(raw).hexdigest()[:12]}"
