"""The functional benchmark's synthetic world: a character tokenizer, word skills, pretraining text and
instruction data split across sites by skill (bench/llm_functional.py).

Words are random pronounceable letter strings; the held-out words never appear in any training text.
Eight skills map a word to an answer (upper case, reversed, first letter ...). The *pretraining text*
states them in prose ("planet backwards is tenalp"); the *instruction task* asks for them in a chat
("reverse: planet" -> "tenalp") that the base never saw: its chat markers, the instruction names and
the answer-then-stop format are new, so the base scores no exact match, and tuning has to connect
instructions to skills the base half-knows. Site i holds skill i only (non-IID by task type); the
held-out test set asks every skill on held-out words.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOS, EOS, PAD, UNK = "<s>", "<|eot|>", "<pad>", "<unk>"
ROLE_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHARS = list(string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,:-?'")
# No newline in the template: the pre-tokenizer splits characters with a regex whose `.` skips it.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|eot|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def _no_vowels(word: str) -> str:
    return "".join(c for c in word if c not in VOWELS) or word[0]


@dataclass(frozen=True)
class Skill:
    name: str  # the instruction's verb ("reverse: planet")
    prose: str  # how pretraining text states it, "{w}" and "{a}" filled in
    apply: Callable[[str], str]


SKILLS = [
    Skill("upper", "{w} in capitals is {a}", str.upper),
    Skill("reverse", "{w} backwards is {a}", lambda w: w[::-1]),
    Skill("repeat", "{w} twice is {a}", lambda w: f"{w} {w}"),
    Skill("first", "{w} starts with {a}", lambda w: w[0]),
    Skill("last", "{w} ends with {a}", lambda w: w[-1]),
    Skill("spell", "{w} spelled out is {a}", lambda w: "-".join(w)),
    Skill("capital", "{w} as a name is {a}", str.capitalize),
    Skill("consonants", "{w} without vowels is {a}", _no_vowels),
]


def random_word(rng: random.Random) -> str:
    """A pronounceable word of 3 to 6 letters (consonant-vowel syllables)."""
    length = rng.randint(3, 6)
    return "".join(rng.choice(CONSONANTS if i % 2 == 0 else VOWELS) for i in range(length))


@dataclass(frozen=True)
class Words:
    train: list[str]
    held_out: list[str]


def make_words(seed: int, n_train: int, n_held_out: int) -> Words:
    rng = random.Random(seed)
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < n_train + n_held_out:
        word = random_word(rng)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return Words(train=words[:n_train], held_out=words[n_train:])


def make_tokenizer() -> Any:
    """A character-level fast tokenizer: one token per character, chat markers as special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, BOS, EOS, *ROLE_MARKERS]
    vocab = {tok: i for i, tok in enumerate(specials + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def pretraining_texts(words: list[str], n: int, seed: int, max_chars: int = 64) -> list[str]:
    """`n` documents of skill sentences about training words, joined by ' . ', each under `max_chars`."""
    rng = random.Random(seed)
    docs: list[str] = []
    for _ in range(n):
        parts: list[str] = []
        while True:
            skill, word = rng.choice(SKILLS), rng.choice(words)
            sentence = skill.prose.format(w=word, a=skill.apply(word))
            if parts and len(" . ".join([*parts, sentence])) > max_chars:
                break
            parts.append(sentence)
        docs.append(" . ".join(parts) + " .")
    return docs


def example(skill: Skill, word: str) -> dict[str, Any]:
    return {"prompt": f"{skill.name}: {word}", "response": skill.apply(word)}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@dataclass(frozen=True)
class InstructionData:
    sites: list[str]  # site i holds SKILLS[i]
    sites_root: Path  # <sites_root>/<site>/{train,eval}.jsonl
    test_file: Path  # every skill on held-out words
    pooled_train: Path  # every site's train rows (the centralized baseline)


def write_instruction_data(
    root: Path, words: Words, *, per_site: int, eval_per_site: int, test_per_skill: int, seed: int
) -> InstructionData:
    """Site i: `per_site` examples of skill i on training words, `eval_per_site` on held-out words;
    the test file: `test_per_skill` held-out words per skill (disjoint from the sites' eval words)."""
    rng = random.Random(seed)
    sites, pooled = [], []
    held = list(words.held_out)
    rng.shuffle(held)
    test_words, eval_words = held[:test_per_skill], held[test_per_skill:]
    for i, skill in enumerate(SKILLS):
        site = f"site-{i + 1}-{skill.name}"
        sites.append(site)
        train = [example(skill, rng.choice(words.train)) for _ in range(per_site)]
        pooled += train
        write_jsonl(root / "sites" / site / "train.jsonl", train)
        evals = [example(skill, w) for w in rng.sample(eval_words, eval_per_site)]
        write_jsonl(root / "sites" / site / "eval.jsonl", evals)
    test = [example(skill, w) for w in test_words for skill in SKILLS]
    write_jsonl(root / "test.jsonl", test)
    rng.shuffle(pooled)
    write_jsonl(root / "pooled-train.jsonl", pooled)
    return InstructionData(sites, root / "sites", root / "test.jsonl", root / "pooled-train.jsonl")
