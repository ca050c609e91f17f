"""DomainMatcher (dicts, Aho-Corasick, an RE2 set) against ReferenceDomainMatcher (every pattern
in turn, dae's semantics written plainly) on random rule sets and random names: the same bits."""
from __future__ import annotations

import random

import pytest

from dae_py.contract.domains import DomainMatcher, ReferenceDomainMatcher
from dae_py.contract.ir import DomainSet
from dae_py.contract.userregex import SET_MAX_TEXT

ALPHABET = "abcx-1."
REGEXES = ("^a", "b$", "a.*b", "[0-9]+", "(x|ab)c", r"^[a-z]+\.x$", "1{2,}", "^$", r"\.", "é", "b.a")


def word(rng: random.Random, lo: int = 1, hi: int = 6) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(lo, hi))).strip(".") or "a"


def random_sets(rng: random.Random) -> tuple[DomainSet, ...]:
    sets = []
    for bit in range(rng.randint(1, 12)):
        sets.append(DomainSet(
            bit=bit,
            full=tuple(word(rng) for _ in range(rng.randint(0, 5))),
            suffix=tuple(word(rng) for _ in range(rng.randint(0, 5))),
            keyword=tuple(rng.choice(["", word(rng, 1, 3)]) if rng.random() < 0.05 else word(rng, 1, 3)
                          for _ in range(rng.randint(0, 4))),
            regex=tuple(rng.sample(REGEXES, rng.randint(0, 3))),
        ))
    return tuple(sets)


def random_name(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.05:
        return ""
    if kind < 0.1:
        return word(rng, SET_MAX_TEXT, SET_MAX_TEXT + 50)  # past the RE2 set's text bound
    name = ".".join(word(rng) for _ in range(rng.randint(1, 5)))
    if rng.random() < 0.2:
        name = name.upper()
    if rng.random() < 0.1:
        name += "." * rng.randint(1, 2)
    if rng.random() < 0.05:
        name = "é" + name
    return name


@pytest.mark.parametrize("seed", range(40))
def test_fast_matcher_agrees_with_the_reference_on_random_names(seed: int) -> None:
    rng = random.Random(seed)
    sets = random_sets(rng)
    fast, ref = DomainMatcher.from_sets(sets), ReferenceDomainMatcher.from_sets(sets)
    matched = 0
    for _ in range(400):
        name = random_name(rng)
        got, want = fast.bits(name), ref.bits(name)
        assert got == want, f"seed {seed}: {name!r}: {got:#x} != {want:#x}\n{sets}"
        matched += bool(want)
    assert matched > 0  # the generator makes names that match something


def test_each_kind_and_the_long_name_fallback() -> None:
    sets = (DomainSet(bit=0, full=("a.test",)), DomainSet(bit=1, suffix=("b.test",)),
            DomainSet(bit=2, keyword=("kw",)), DomainSet(bit=3, regex=("^r[0-9]+\\.",)),
            DomainSet(bit=4, keyword=("",)))
    m = DomainMatcher.from_sets(sets)
    assert m.regexes.uses_set
    assert m.bits("A.Test.") == 0b10001
    assert m.bits("x.b.test") == m.bits("b.test") == 0b10010 and m.bits("xb.test") == 0b10000
    assert m.bits("akwz.other") == 0b10100
    assert m.bits("r12.x") == 0b11000 and m.bits("xr12.x") == 0b10000
    long = "r1." + "k" * SET_MAX_TEXT + "w.b.test"
    assert m.bits(long) == ReferenceDomainMatcher.from_sets(sets).bits(long) == 0b11110
