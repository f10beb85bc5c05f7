"""Sequence classification, regression and token classification (tagging) fine-tuning
(docs/classification.md): `train_classifier(config)`."""
