"""npllm core: the brain map of DESIGN.md, one module per part.

config, db + migrations (hippocampus storage), weights (where models come from),
llm (frozen base LLM), embeddings, errors. Later parts (memory, feedback, replay,
adapters, modulator, cerebellum) join them here; nothing in this package imports
`consolidation` or `services`.
"""

import os
import warnings

# Nothing may download weights at run time: make every Hugging Face library offline
# before any of them is imported. A user can still opt in by exporting these as 0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Per-tensor progress bars fill daemon logs; npllm logs one line per load instead.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# transformers draws some bars with tqdm directly, outside its own disable_progress_bar()
# (dequantising a GGUF: "Converting and de-quantizing GGUF tensors..."); tqdm reads its
# TQDM_* defaults when it is imported, so before any Hugging Face library is.
os.environ.setdefault("TQDM_DISABLE", "1")

# torch's wheel and llama.cpp's ggml share one OpenMP runtime (the first libgomp.so.1
# loaded). Once torch has made its own thread team (a training step, an embedding), libgomp
# counts more threads than cores and makes every team wait "throttled": ggml's barriers
# sleep instead of spinning and decoding runs at a third of its speed (37 vs 110 tokens/s
# measured here: the sleep worker's served checks after training). ACTIVE with a bounded
# spin keeps the spin libgomp uses in a process with one team (its default 300000), throttled
# or not. Read when libgomp loads, so before torch or xllamacpp is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "300000")

# peft (0.21.2, the newest) reads transformers' deprecated `is_gradient_checkpointing` each
# time it wraps a model (peft/peft_model.py: `getattr(model, "is_gradient_checkpointing",
# True)`), so `adapter train` and the sleep worker's log printed a FutureWarning that is
# peft's to fix, not the user's. Only that message is hidden; npllm's own calls use the
# current names (tests turn FutureWarnings from npllm into errors).
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

__version__ = "0.1.0"
