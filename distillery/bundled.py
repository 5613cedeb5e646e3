"""What ships inside the package (so the demo and the recipe work from an installed wheel): the bundled samples,
the step configs and the pipeline files of the demo and the recipes."""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLES_DIR = PACKAGE_DIR / "samples"
CONFIGS_DIR = PACKAGE_DIR / "configs"
SAMPLE_DIR = SAMPLES_DIR / "wordnet_supersense"     # the WordNet supersense sample (sentence classification)
NER_SAMPLE_DIR = SAMPLES_DIR / "wordnet_ner"         # the WordNet NER sample (token classification)
