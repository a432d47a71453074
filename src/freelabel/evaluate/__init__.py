"""Evaluation protocols on a backbone's frozen or fine-tuned features."""
