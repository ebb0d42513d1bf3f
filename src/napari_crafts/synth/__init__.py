"""Synthetic datasets at scale (``napari-crafts synth``): plan, make, resume and describe them; no Qt.

``plan`` decides what to make (and refuses bad input before any model loads), ``run`` makes it one image at a
time through ``generation.region.generate_region`` (resumable), ``card`` writes ``metadata.jsonl`` and
``dataset.json``.
"""

from .plan import Item, SynthError, SynthPlan, plan_classes, plan_pairs
from .run import ItemDone, SynthResult, check_dataset_output, dataset_state, start_dataset, synthesize

__all__ = [
    "Item",
    "ItemDone",
    "SynthError",
    "SynthPlan",
    "SynthResult",
    "check_dataset_output",
    "dataset_state",
    "plan_classes",
    "plan_pairs",
    "start_dataset",
    "synthesize",
]
