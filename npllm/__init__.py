"""npllm core: the brain map of DESIGN.md, one module per part.

config, db + migrations (hippocampus storage), weights (where models come from),
llm (frozen base LLM), embeddings, errors. Later parts (memory, feedback, replay,
adapters, modulator, cerebellum) join them here; nothing in this package imports
`consolidation` or `services`.
"""

import os

# Nothing may download weights at run time: make every Hugging Face library offline
# before any of them is imported. A user can still opt in by exporting these as 0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Per-tensor progress bars fill daemon logs; npllm logs one line per load instead.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

__version__ = "0.1.0"
