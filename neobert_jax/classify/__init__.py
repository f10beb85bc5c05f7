"""Sequence classification and regression fine-tuning (docs/classification.md): `train_classifier(config)`."""
