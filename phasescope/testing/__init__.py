"""phasescope.testing: runs and checkpoints with known content, for tests, benchmarks and screenshots.

``synthetic`` builds runs in the store layout whose spectra are exact power laws (known RankMe and
α-ReQ); ``toy_checkpoints`` trains a tiny GPT-2 on the demo corpus and saves Hugging Face checkpoints
to analyse offline. Nothing in the library's data path imports this package; the dashboard uses a tiny
synthetic run to warm up its figure builders.
"""
