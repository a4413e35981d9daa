"""Preprocessing shared by inference and training: image transforms, audio decoding/resampling/
CLAP features, tokenization, metadata encodings (the reference's exact formulas live here, once)."""
