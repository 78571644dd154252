"""Real text for the retrieval benchmark, and its MiniLM embeddings, made on this machine.

Sentences and comment lines from the installed Python packages and the standard library:
module/class/function docstrings cut into sentences, `#` comments, and the .md/.rst/.txt
files beside them; 6-60 words, mostly letters, deduplicated (case-insensitive), in a fixed
shuffled order (so the first 100k are part of the first 1M). Nothing is downloaded.

Embeddings are computed with the daemon's embedder (models.embedder) in chunks kept under
``--cache`` (default ~/.cache/npllm-bench), so a second run, or a run interrupted part way,
reuses them.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK = 20_000
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])|\n\s*\n")
_SPACE = re.compile(r"\s+")


def _roots() -> list[Path]:
    paths = sysconfig.get_paths()
    return sorted({Path(paths["purelib"]), Path(paths["stdlib"])})


# When the Python sources run out (about 560k texts here): the system's documentation and
# manual pages (groff markup dropped), in every language they come in.
_MORE = [Path("/usr/lib/python3/dist-packages"), Path("/usr/share/doc"), Path("/usr/share/man")]
_GROFF = re.compile(r"\\f[BIRP]|\\f\(..|\\[-&e(]|\\s[-+]?\d")


def _pieces(path: Path) -> Iterator[str]:
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            text = f.read(5_000_000)
        if "/man/" in str(path):  # groff: drop requests and font escapes
            lines = [ln for ln in text.splitlines() if not ln.startswith((".", "'"))]
            text = _GROFF.sub("", "\n".join(lines))
        yield from _SPLIT.split(text)
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix != ".py":
        yield from _SPLIT.split(text)
        return
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield from _SPLIT.split(doc)
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# "):
            yield stripped[2:]


def collect(roots: list[Path] | None = None, seen: set[str] | None = None) -> list[str]:
    """Every usable sentence under `roots` (default: the Python sources) not in `seen`,
    deduplicated, in a fixed shuffled order."""
    seen = set() if seen is None else seen
    found: list[str] = []
    suffixes = (".py", ".md", ".rst", ".txt") + ((".gz",) if roots is not None else ())
    for root in roots or _roots():
        for directory, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = Path(directory) / name
                if path.suffix not in suffixes and not (
                    roots is not None and name.upper().startswith(("README", "CHANGELOG"))
                ):
                    continue
                try:
                    if path.stat().st_size > 5_000_000:
                        continue
                    pieces = list(_pieces(path))
                except OSError:
                    continue
                for piece in pieces:
                    sentence = _SPACE.sub(" ", piece).strip()
                    words = sentence.count(" ") + 1
                    if not 6 <= words <= 60:
                        continue
                    if "\x00" in sentence or sum(c.isalpha() for c in sentence) < 0.6 * len(
                        sentence
                    ):
                        continue
                    key = sentence.lower()
                    if key not in seen:
                        seen.add(key)
                        found.append(sentence)
    random.Random(0).shuffle(found)
    return found


def corpus(n: int, cache: Path) -> tuple[list[str], np.ndarray]:
    """The first `n` texts and their (n, 384) float32 unit embeddings."""
    cache.mkdir(parents=True, exist_ok=True)
    listing = cache / "texts.json"
    if listing.exists():
        texts = json.loads(listing.read_text())
    else:
        started = time.time()
        texts = collect()
        listing.write_text(json.dumps(texts))
        print(f"corpus: {len(texts)} texts in {time.time() - started:.0f} s", file=sys.stderr)
    if n > len(texts):
        more = collect(_MORE, {t.lower() for t in texts})
        texts += more
        listing.write_text(json.dumps(texts))
        print(f"corpus: {len(more)} more texts from {[str(p) for p in _MORE]}", file=sys.stderr)
    if n > len(texts):
        raise SystemExit(f"only {len(texts)} distinct texts here, {n} asked for")
    embedder = None
    parts = []
    for start in range(0, n, CHUNK):
        part = cache / f"embeddings-{start // CHUNK:04d}.npy"
        if not part.exists():
            if embedder is None:
                embedder = _embedder()
            started = time.time()
            chunk = texts[start : start + CHUNK]
            order = sorted(range(len(chunk)), key=lambda i: len(chunk[i]))  # less padding
            vectors = np.empty((len(chunk), 384), dtype=np.float32)
            vectors[order] = embedder.embed([chunk[i] for i in order])
            np.save(part, vectors.astype(np.float32))
            rate = len(vectors) / (time.time() - started)
            print(f"embedded {start + len(vectors)} texts ({rate:.0f}/s)", file=sys.stderr)
        parts.append(np.load(part))
    return texts[:n], np.concatenate(parts)[:n]


def _embedder():  # type: ignore[no-untyped-def]
    """The daemon's embedder; its ONNX session given every core here (a batch job)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import onnxruntime

    from npllm.config import load_settings
    from npllm.embeddings import load_embedder

    repo = Path(__file__).resolve().parent.parent
    cache = os.environ.get("NPLLM_MODELS__CACHE_DIR", str(repo / ".venv" / "npllm-model-cache"))
    embedder = load_embedder(load_settings(environ={"NPLLM_MODELS__CACHE_DIR": cache}))
    if embedder.onnx_file is not None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        embedder.session = onnxruntime.InferenceSession(
            str(embedder.onnx_file), options, providers=["CPUExecutionProvider"]
        )
    return embedder


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    texts, vectors = corpus(size, Path.home() / ".cache" / "npllm-bench")
    print(len(texts), vectors.shape)
