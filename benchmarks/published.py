"""Published reference numbers the frontend comparison is shown beside (``--published``).

Source: Y. Yamamoto, "Toward Leveraging Pre-Trained Self-Supervised Frontends for Automatic Singing
Voice Understanding Tasks: Three Case Studies", APSIPA ASC 2023 (arXiv 2306.12714), Tables I, II and
IV, as copied into the project's ``REFERENCES.md`` (section 1). Values are the paper's percentages,
typed in as printed (one decimal); they were measured on the full datasets with the paper's protocol
(frozen frontend + learned layer weights + linear head, then a fine-tuning stage), so they compare with
measured rows only in shape, never on the demo corpus.

Each row: ``(model as printed, registry name of the same checkpoint or None, {column: value in %})``.
Columns are the table columns of :mod:`benchmarks.frontend_table` (``F1 (macro)``, ``Top-2``...).
"""
from __future__ import annotations

CITATION = "Yamamoto, APSIPA ASC 2023 (arXiv 2306.12714)"

#: task -> (table name in the paper, dataset and protocol in a few words)
TABLES = {
    "singer": ("Table I", "Artist20, Demucs vocals, 5 s chunks, album split 4/1/1, scored per chunk"),
    "transcription": ("Table II", "MIR-ST500 test set, F1 per song averaged over songs"),
    "technique": ("Table IV", "VocalSet, 10 techniques, singer split 15/5, 3 s chunks"),
}

#: task -> (scored split, selection split) as far as the paper states them.
SPLITS = {
    "singer": ("test (1 album per artist)", "valid (1 album per artist)"),
    "transcription": ("test (songs 401-500)", "not stated"),
    "technique": ("test (5 singers)", "not stated"),
}

PUBLISHED: dict[str, list[tuple[str, str | None, dict[str, float]]]] = {
    "singer": [
        ("Wav2Vec2.0", "wav2vec2-base-960h", {"F1 (macro)": 60.0, "Top-2": 70.7, "Top-3": 76.3}),
        ("WavLM", "wavlm-base-plus", {"F1 (macro)": 61.9, "Top-2": 70.2, "Top-3": 76.4}),
        ("MERT", "mert-v0-public", {"F1 (macro)": 56.8, "Top-2": 68.4, "Top-3": 75.6}),
        ("MapMusic2Vec", "music2vec-v1", {"F1 (macro)": 59.6, "Top-2": 71.5, "Top-3": 77.0}),
        ("CRNN baseline", None, {"F1 (macro)": 49.5, "Top-2": 63.4, "Top-3": 71.3}),
    ],
    "transcription": [
        ("Wav2vec2.0", "wav2vec2-base-960h", {"COnPOff": 44.8, "COnP": 67.0, "COn": 76.3}),
        ("WavLM", "wavlm-base-plus", {"COnPOff": 44.4, "COnP": 67.3, "COn": 76.9}),
        ("MERT", "mert-v0-public", {"COnPOff": 46.7, "COnP": 71.6, "COn": 78.2}),
        ("MapMusic2Vec", "music2vec-v1", {"COnPOff": 50.7, "COnP": 70.0, "COn": 77.9}),
        ("EfficientNet-b0 (CQT)", None, {"COnPOff": 45.8, "COnP": 66.6, "COn": 75.4}),
        ("JDCnote", None, {"COnPOff": 42.2, "COnP": 69.7, "COn": 76.2}),
        ("Wav2Vec2-Large, last layer, fine-tuned", None, {"COnPOff": 52.4, "COnP": 70.7, "COn": 78.3}),
    ],
    "technique": [
        ("Wav2Vec2.0", "wav2vec2-base-960h",
         {"F1 (macro)": 56.1, "Acc": 58.3, "Balanced acc": 60.1, "Top-2": 74.8, "Top-3": 82.1}),
        ("WavLM", "wavlm-base-plus",
         {"F1 (macro)": 55.6, "Acc": 60.8, "Balanced acc": 57.9, "Top-2": 75.3, "Top-3": 83.8}),
        ("MERT", "mert-v0-public",
         {"F1 (macro)": 54.1, "Acc": 58.5, "Balanced acc": 58.5, "Top-2": 76.1, "Top-3": 85.3}),
        ("MapMusic2Vec", "music2vec-v1",
         {"F1 (macro)": 60.8, "Acc": 66.0, "Balanced acc": 62.1, "Top-2": 79.0, "Top-3": 86.9}),
        ("D-CNN-cRT baseline", None,
         {"F1 (macro)": 62.0, "Acc": 65.6, "Balanced acc": 65.5, "Top-2": 81.5, "Top-3": 88.7}),
    ],
}

#: The four self-supervised checkpoints of the paper, as registry names (the non-demo default).
PAPER_BACKBONES = ("wav2vec2-base-960h", "wavlm-base-plus", "mert-v0-public", "music2vec-v1")
