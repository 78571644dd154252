"""``python -m npllm.engines.reference ADAPTER_DIR``: write peft's reference answer to the
parity probe (npllm/engines/gguf_export.py) for an adapter that has none.

Run as a child of the daemon when it serves with llama.cpp: this process loads the fp32
copy of the base (models.base and models.cache_dir from NPLLM_* variables), the daemon
never does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from peft import PeftModel

    from npllm.config import load_settings
    from npllm.engines.gguf_export import REFERENCE_FILE, reference
    from npllm.llm import load_base_llm

    if len(argv) != 1:
        print("usage: python -m npllm.engines.reference ADAPTER_DIR", file=sys.stderr)
        return 2
    adapter = Path(argv[0])
    llm = load_base_llm(load_settings())
    model = PeftModel.from_pretrained(llm.model, str(adapter))
    model.eval()
    ref = reference(model, llm.tokenizer)
    tmp = adapter / f".{REFERENCE_FILE}.tmp"
    tmp.write_text(json.dumps(ref))
    tmp.replace(adapter / REFERENCE_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
