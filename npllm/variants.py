"""What one taught question brings with it to the night: its paraphrases and its neighbours.

A correction is an edit (DESIGN.md, "Learning precisely"): it must answer the questions
that mean the same (generalisation) and leave the neighbouring ones alone (locality). A
small base LLM cannot rewrite a question reliably (SmolLM2-135M, asked to paraphrase,
answers the question or invents one), so both come from rules written for the questions
developers ask, never from the benchmark's own paraphrases:

- :func:`paraphrases` — the same question in other surface forms: the keywords alone,
  the trailing phrase fronted ("For the Hexwing broker, which channel ...?"), another
  question word, lower case without punctuation, and a few
  framings a person types around a question. Trained with the taught answer, and kept as
  the adapter's routing keys (npllm/modulator.py: the adapter's scope).
- :func:`neighbours` — questions about the same subject with another relation ("Who
  maintains the Quibblix gateway?"), the same relation for a well-known subject ("What
  port does Redis listen on?"), the public default behind a team-specific question ("...
  by default?"), and the general questions of its topic (`PROBES` nearest to it). The
  night asks the bare base each of them and trains its answer as a keep-target; the gate
  checks they still answer the same.

Both are deterministic for a question (same question, same variants), so a resumed night
trains on the same examples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Words that carry no subject or relation (a question's keywords are the others).
_STOP_WORDS = (
    "a an the of to in on at for from with by about into onto our your my their his her its "
    "we us you i me it this that these those is are was were be been being do does did "
    "done have has had can could should would will shall may might must please tell "
    "know what which who whom whose when where why how there here any some"
)
STOP = frozenset(_STOP_WORDS.split())
_TEAM = re.compile(r"\b(our|ours|we|us|here|my team|in our setup|at our company)\b", re.I)
# "What port ..." ↔ "Which port ..." (not "What is", "What's", "What does": no noun follows).
_WH = re.compile(r"^(what|which)\b(?!'s|\s+(?:is|are|was|were|does|do|did|can|should)\b)", re.I)
# A trailing phrase that names the subject: "... for the Hexwing broker?"
_TRAILING = re.compile(
    r"^(?P<head>.+?)\s+(?P<prep>for|of|in|on|at|from|with|behind|inside)\s+"
    r"(?P<tail>(?:the|our|a|an)\s+[^?]+?|[A-Z][^?]*?)\?$"
)
# Nouns that end a named thing ("the Quibblix gateway", "the Moravel billing service").
_HEAD_WORDS = (
    "gateway broker service proxy api server cluster pipeline job database db queue app "
    "application frontend backend cli library lib project repo repository team worker "
    "daemon cache indexer scheduler warehouse store bucket bot tool plugin module sdk "
    "portal dashboard site website platform engine agent router mailer tracer vault "
    "ledger system monitor collector exporter controller operator runner build relay shipper"
)
_HEADS = frozenset(_HEAD_WORDS.split())
# Well-known subjects a question's relation is asked about instead ("same relation, another
# subject"); their answers are public knowledge the base may hold and must keep.
KNOWN = ("PostgreSQL", "Redis", "nginx", "Kafka", "Docker", "MySQL", "RabbitMQ", "Jenkins")
# Other relations about the same subject: the first are kept apart by routing (the
# adapter's neighbour keys), the last only checked by the gate — so that the gate tests
# relations the keys never saw.
RELATIONS = (
    "Who maintains {s}?",
    "What is {s} used for?",
    "What language is {s} written in?",
    "How do I restart {s}?",
    "Where are the logs of {s}?",
    "What does {s} depend on?",
    "Who is on call for {s}?",
    "How do I deploy {s}?",
    "What version of {s} do we run?",
    "Where is the config of {s}?",
    "How do I monitor {s}?",
    "What database does {s} use?",
    "What port does {s} listen on?",
    "Who owns {s}?",
)
_CHECKED = (
    "How do I install {s}?",
    "What are the known problems with {s}?",
    "How do I test changes to {s}?",
)
# General programming questions, the topic-level neighbours of any correction: the ones
# nearest a taught question are asked before and after the night. Written for npllm (not
# taken from any benchmark).
PROBES = (
    "How do I list the files in a directory in Python?",
    "What is the difference between a process and a thread?",
    "How do I check which process is using a port on Linux?",
    "What does the HTTP status code 404 mean?",
    "How do I create a new branch in git?",
    "How do I set an environment variable in bash?",
    "What is a foreign key in SQL?",
    "How do I install a Python package with pip?",
    "What is the default port for HTTP?",
    "How do I see the logs of a Docker container?",
    "What is a unit test?",
    "How do I format a date as a string in Python?",
    "What does a load balancer do?",
    "How do I restart a systemd service?",
    "What is the difference between TCP and UDP?",
    "How do I write a for loop in JavaScript?",
    "What is a message queue used for?",
    "How do I connect to a PostgreSQL database from the command line?",
    "What is continuous integration?",
    "How do I read a JSON file in Python?",
    "What is a cron expression?",
    "How do I find text in files recursively with grep?",
    "What is the purpose of a config file?",
    "How do I run a shell command from Python?",
    "What does DNS do?",
    "How do I merge two dictionaries in Python?",
    "What is semantic versioning?",
    "How do I kill a process by name on Linux?",
    "What is an API key?",
    "How do I create an index in SQL?",
    "What is a feature flag?",
    "How do I check the disk usage of a folder on Linux?",
)


def _words(question: str) -> list[str]:
    return re.findall(r"[\w.:/#@$`'-]+", question)


def keywords(question: str) -> list[str]:
    """The question's words that name its subject and relation, in order."""
    out = []
    for word in _words(question):
        bare = word.strip("`'.,:;?!").removesuffix("'s")
        if bare and bare.lower() not in STOP:
            out.append(bare)
    return out


def subject(question: str) -> str | None:
    """The named thing a question is about: a run of capitalised words (not the first word)
    and the noun that ends it ("Quibblix gateway"), or a `quoted` name; None if there is
    none."""
    quoted = re.search(r"`([^`]+)`", question)
    if quoted:
        return quoted.group(1)
    words = _words(question)
    best: list[str] = []
    k = 1
    while k < len(words):
        if words[k][:1].isupper():
            run = [words[k].rstrip("?.,")]
            k += 1
            while k < len(words) and words[k][:1].isupper():
                run.append(words[k].rstrip("?.,"))
                k += 1
            # the noun that ends the name, up to two words on ("Moravel billing service")
            ahead = [w.strip("?.,").removesuffix("'s") for w in words[k : k + 3]]
            for end in range(len(ahead), 0, -1):
                tail = ahead[:end]
                if tail[-1].lower() in _HEADS and all(w.islower() and w not in STOP for w in tail):
                    run += tail
                    k += end
                    break
            run[-1] = run[-1].removesuffix("'s")
            if len(" ".join(run)) > len(" ".join(best)):
                best = run
        else:
            k += 1
    return " ".join(best) if best else None


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:] if text else text


def paraphrases(question: str, limit: int = 6) -> list[str]:
    """Other surface forms of `question` (see the module docstring), distinct from it and
    from each other, at most `limit`."""
    q = " ".join(question.strip().split())
    core = q.rstrip("?!. ")
    lower = core[:1].lower() + core[1:]
    found: list[str] = []
    words = keywords(q)
    if len(words) >= 2:
        found.append(" ".join(w.lower() for w in words) + "?")
    trailing = _TRAILING.match(q if q.endswith("?") else q + "?")
    if trailing:
        tail = trailing["tail"].strip()
        head = trailing["head"]
        found.append(f"{_sentence(trailing['prep'] + ' ' + tail)}, {head[:1].lower()}{head[1:]}?")
    wh = _WH.match(q)
    if wh:
        other = "Which" if wh.group(1).lower() == "what" else "What"
        found.append(other + q[len(wh.group(1)) :])
    found.append(re.sub(r"[^\w\s'-]", "", lower).lower())
    found.append(f"Quick question: {q if q.endswith('?') else q + '?'}")
    found.append(f"Can you tell me {lower}?")
    found.append(f"{q if q.endswith('?') else q + '?'} Just the answer, please.")
    seen = {q.lower()}
    out = []
    for text in found:
        key = text.lower().strip()
        if text.strip() and key not in seen:
            seen.add(key)
            out.append(text.strip())
    return out[:limit]


def neighbours(question: str, limit: int = 6) -> list[str]:
    """Questions near `question` that must keep the answer they have (see the module
    docstring), most telling first, at most `limit`: the adapter's neighbour keys."""
    return _around(question, RELATIONS, KNOWN[:1], public=True)[:limit]


def checks(question: str) -> list[str]:
    """Other neighbours of `question` — relations and a well-known subject the keys never
    use — whose answers the gate compares before and after the night."""
    return _around(question, _CHECKED, KNOWN[1:2], public=False)


def _around(
    question: str, relations: Sequence[str], known: Sequence[str], public: bool
) -> list[str]:
    q = " ".join(question.strip().split())
    found: list[str] = []
    name = subject(q)
    if public:  # the default behind a setting (a team's own, when it says "our", "we")
        text = _TEAM.sub("", q).replace("  ", " ").rstrip("?! ").strip()
        text = re.sub(r"\b(do|does)\s+(merge|use|run|keep|deploy)\b", r"\1 people \2", text)
        if "default" not in text.lower():
            found.append(_sentence(text) + " by default?")
    if name:
        pattern = re.compile(r"\b(?:the\s+|our\s+)?" + re.escape(name) + r"(?:'s)?", re.I)
        for other in known:
            if other.lower() not in q.lower():
                found.append(_sentence(pattern.sub(other, q, count=1)))
        own = name if name[:1].isupper() and " " not in name else f"the {name}"
        found += [template.format(s=own) for template in relations]
    seen = {q.lower()}
    out = []
    for text in found:
        if text.lower() not in seen and not _same_relation(q, text, name):
            seen.add(text.lower())
            out.append(text)
    return out


def _same_relation(question: str, other: str, name: str | None) -> bool:
    """Is `other` (about the same subject) asking the same thing as `question` — the same
    keywords once the subject is set aside? Then it is a paraphrase, not a neighbour."""
    named = set() if name is None else {w.lower() for w in keywords(name)}
    mine = {w.lower() for w in keywords(question)} - named
    theirs = {w.lower() for w in keywords(other)} - named
    return bool(theirs) and theirs <= mine


def nearest_probes(
    question_vector: Sequence[float], probe_vectors: Sequence[Sequence[float]], k: int
) -> list[str]:
    """The `k` general questions of `PROBES` nearest a question (vectors normalised, in the
    order of PROBES)."""
    import numpy as np

    scores = np.asarray(probe_vectors) @ np.asarray(question_vector)
    return [PROBES[i] for i in np.argsort(-scores)[:k]]
