"""The functional benchmark's synthetic world: a word-level tokenizer, facts, pretraining text and
instruction data split across sites by task type (bench/llm_functional.py).

Forty nouns each have eight attributes (color, size, home ...), every value drawn from five words by a
fixed seed. The *pretraining text* states every fact in prose, each document ending in EOS ("cat color
is red . owl home is nest ."): the base knows them. The *instruction task* asks for them in a chat the
base never saw (user "cat color", assistant "red"); the chat markers, answering right after the assistant
marker and stopping there are new, so the base scores (next to) no exact match. Site i holds attribute i
only (non-IID by task type), on the nouns instruction tuning may use; the held-out test set asks every
attribute of nouns no instruction example mentions, so a tuned model must carry the chat format over to
knowledge it was never tuned on, and to attributes its own site never asked about.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BOS, EOS, PAD, UNK = "<s>", "<|eot|>", "<pad>", "<unk>"
ROLE_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>"]
NOUNS = (
    "cat dog sun moon tree rock fish bird star lake hill road ship rain snow wind fire leaf seed bone "
    "milk salt gold iron wool silk corn rice bean pear plum lime nut egg owl fox bee ant elk yak"
).split()
# Eight attributes, each with five values; every noun gets one value per attribute (a fixed, seeded table).
ATTRIBUTES = {
    "color": "red blue green black white",
    "size": "tiny small big huge long",
    "home": "sea cave nest farm field",
    "taste": "sweet sour bitter salty plain",
    "sound": "loud quiet soft sharp deep",
    "shape": "round flat square thin tall",
    "mood": "happy sad calm angry shy",
    "speed": "fast slow quick lazy steady",
}
TABLE_SEED = 1234
# Words separated by spaces, markers as words too: the word-level pre-tokenizer splits on whitespace.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}{{ ' <|' + m['role'] + '|> ' + m['content'] + ' <|eot|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ ' <|assistant|> ' }}{% endif %}"
)


@dataclass(frozen=True)
class Skill:
    name: str
    ask: str  # the skill's phrase: the prose says "{item} {ask} is {answer}", a user asks "{item} {ask}"
    apply: Callable[[list[str]], list[str]]

    def prose(self, item: list[str]) -> str:
        return f"{' '.join(item)} {self.ask} is {' '.join(self.apply(item))}"

    def prompt(self, item: list[str]) -> str:
        return f"{' '.join(item)} {self.ask}"


def _look_up(table: dict[str, str], item: list[str]) -> list[str]:
    return [table[item[0]]]


def _attribute_skills() -> list[Skill]:
    rng = random.Random(TABLE_SEED)
    skills = []
    for attribute, values in ATTRIBUTES.items():
        table = {noun: rng.choice(values.split()) for noun in NOUNS}
        skills.append(Skill(attribute, attribute, functools.partial(_look_up, table)))
    return skills


SKILLS = _attribute_skills()
VOCABULARY = sorted({*NOUNS, *ATTRIBUTES, *" ".join(ATTRIBUTES.values()).split(), "is", "."})


def skill_of(prompt: str) -> Skill:
    """The skill a prompt asks for (the longest phrase that ends it)."""
    return max((s for s in SKILLS if prompt.endswith(" " + s.ask)), key=lambda s: len(s.ask))


@dataclass(frozen=True)
class Words:
    """Items (one-noun lists): those instruction tuning uses, and held-out ones it never shows.
    Pretraining states every fact about every noun: the base knows them all in prose."""

    train: list[list[str]]
    held_out: list[list[str]]

    @property
    def all(self) -> list[list[str]]:
        return self.train + self.held_out


def make_words(seed: int, n_held_out: int) -> Words:
    nouns = list(NOUNS)
    random.Random(seed).shuffle(nouns)
    return Words(train=[[n] for n in nouns[n_held_out:]], held_out=[[n] for n in nouns[:n_held_out]])


def make_tokenizer() -> Any:
    """A word-level fast tokenizer over VOCABULARY, chat markers as special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, BOS, EOS, *ROLE_MARKERS]
    vocab = {tok: i for i, tok in enumerate(specials + VOCABULARY)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def pretraining_texts(words: list[list[str]], n: int, seed: int, max_chars: int = 120) -> list[str]:
    """`n` documents of skill sentences about training items, joined by ' . ', each under `max_chars`."""
    rng = random.Random(seed)
    docs: list[str] = []
    for _ in range(n):
        parts: list[str] = []
        while True:
            skill, word = rng.choice(SKILLS), rng.choice(words)
            sentence = skill.prose(word)
            if parts and len(" . ".join([*parts, sentence])) > max_chars:
                break
            parts.append(sentence)
        docs.append(" . ".join(parts) + " .")
    return docs


def example(skill: Skill, word: list[str]) -> dict[str, Any]:
    return {"prompt": skill.prompt(word), "response": " ".join(skill.apply(word))}


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
    if len(eval_words) < eval_per_site:
        raise ValueError(
            f"{len(held)} held-out items cannot give {test_per_skill} test + {eval_per_site} eval"
        )
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
