import hashlib
import itertools
import re
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bmcore import DeviceKey, JobKey, canonical_name
from bmcore._matching import DEFAULT_IGNORABLE_RANGES

# Whitespace that str.split() treats as a separator: ASCII, NBSP, ideographic space and more.
WHITESPACE = " \t\n\r\x0b\x0c\xa0\u1680\u2000\u2003\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
HEX32 = re.compile(r"[0-9a-f]{32}")

names = st.text()
# Any text, lone surrogates included (which st.text() leaves out by default).
any_text = st.text(st.characters(exclude_categories=[]) | st.sampled_from(["\ud800", "\udfff"]))
# Words never contain whitespace, so joining them with whitespace runs makes the inner runs.
words = st.text(min_size=1).filter(lambda word: not any(char.isspace() for char in word))
runs = st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=4)
# Few characters, several of them separators and digits: the material of separator tricks.
tricky = st.text(st.sampled_from("ab1:|"), max_size=6)


def _swap_ascii_case(text: str) -> str:
    return "".join(char.swapcase() if char.isascii() else char for char in text)


@st.composite
def spelled(draw: st.DrawFn) -> tuple[str, str]:
    """A name with single spaces, and the same name spelled differently but equivalently."""
    parts = draw(st.lists(words, min_size=1, max_size=4))
    plain = " ".join(parts)
    variant = draw(runs) + "".join(part + draw(runs) for part in parts)
    if draw(st.booleans()):
        variant = variant.lstrip()
    if draw(st.booleans()):
        variant = unicodedata.normalize("NFD", variant)
    if draw(st.booleans()):
        variant = _swap_ascii_case(variant)
    return plain, variant


# --- canonical_name: examples ---------------------------------------------------------------


def test_composed_and_decomposed_forms_are_the_same_name() -> None:
    """NFC: a precomposed é and e + combining acute give one canonical name, in composed form."""
    assert canonical_name("caf\u00e9") == canonical_name("cafe\u0301") == "caf\u00e9"


def test_surrounding_whitespace_is_stripped() -> None:
    """Leading and trailing whitespace of any kind is removed."""
    assert canonical_name(" \t\xa0\u3000srv01\n\u3000 ") == "srv01"


@pytest.mark.parametrize(
    "separator", [" ", "  ", "\t", " \t ", "\xa0", "\u3000", "\u2003", "\n", "\xa0\u3000\t "]
)
def test_inner_whitespace_runs_collapse_to_one_space(separator: str) -> None:
    """Any inner run of whitespace (spaces, tabs, NBSP, ideographic space) becomes one space."""
    assert canonical_name(f"Nightly{separator}Full{separator}Backup") == "nightly full backup"


def test_case_is_folded_not_just_lowered() -> None:
    """Case folding: Straße and STRASSE are the same name (lower() alone would not match them)."""
    assert canonical_name("Straße") == canonical_name("STRASSE") == "strasse"
    assert canonical_name("ΟΔΟΣ") == canonical_name("οδος")


def test_case_folding_result_is_renormalised() -> None:
    """Case folding can decompose (İ folds to i + U+0307); the result is NFC all the same."""
    folded = canonical_name("\u01f0 \u0130 \u1e9e")
    assert unicodedata.is_normalized("NFC", folded)
    assert folded == canonical_name("J\u030c I\u0307 SS")


# --- default-ignorable characters -----------------------------------------------------------

DEFAULT_IGNORABLE = frozenset(
    code for first, last in DEFAULT_IGNORABLE_RANGES for code in range(first, last + 1)
)
ignorables = st.one_of([st.integers(first, last) for first, last in DEFAULT_IGNORABLE_RANGES]).map(
    chr
)
# Any text, often with default-ignorable characters in it.
names_with_ignorables = st.text(st.characters() | ignorables)


def test_the_default_ignorable_table_is_sorted_and_disjoint() -> None:
    """The ranges are ordered, do not touch, and hold Unicode's 4,174 code points."""
    for first, last in DEFAULT_IGNORABLE_RANGES:
        assert first <= last
    for (_, last), (first, _) in itertools.pairwise(DEFAULT_IGNORABLE_RANGES):
        assert last + 1 < first
    assert len(DEFAULT_IGNORABLE) == 4174


# UAX #44 derives Default_Ignorable_Code_Point as Other_Default_Ignorable_Code_Point + Cf +
# Variation_Selector, minus White_Space, U+FFF9..U+FFFB, the Egyptian hieroglyph format controls
# and Prepended_Concatenation_Mark. Checked against Python's own database, which holds the
# categories and names but not the property.
_NOT_IGNORABLE_FORMAT = frozenset(
    [
        *range(0x0600, 0x0606),  # Prepended_Concatenation_Mark
        0x06DD,
        0x070F,
        0x0890,
        0x0891,
        0x08E2,
        0x110BD,
        0x110CD,
        *range(0xFFF9, 0xFFFC),  # interlinear annotation
        *range(0x13430, 0x13456),  # Egyptian hieroglyph format controls
    ]
)
_OTHER_DEFAULT_IGNORABLE = frozenset([0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0])


def test_the_table_follows_the_property_s_derivation() -> None:
    """Every format character and variation selector is in the table, bar the listed exceptions.

    And every assigned character in the table is one of those or of Unicode's short list of
    other default-ignorables; the rest of the table is reserved (unassigned) code points.
    """
    for code in range(0x110000):
        char = chr(code)
        category = unicodedata.category(char)
        selector = "VARIATION SELECTOR" in unicodedata.name(char, "")
        derived = (category == "Cf" or selector) and code not in _NOT_IGNORABLE_FORMAT
        if derived:
            assert code in DEFAULT_IGNORABLE, f"U+{code:04X}"
        elif code in DEFAULT_IGNORABLE:
            assert category == "Cn" or code in _OTHER_DEFAULT_IGNORABLE, f"U+{code:04X}"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("srv\u200b01", "srv01"),  # zero-width space
        ("\ufeffSRV01", "srv01"),  # a byte order mark in front
        ("Nightly\u00adBackup", "nightlybackup"),  # soft hyphen
        ("srv\u200d01\u2060", "srv01"),  # zero-width joiner, word joiner
        ("\u3164srv01\uffa0", "srv01"),  # Hangul fillers
        ("\u2764\ufe0f", "\u2764"),  # a variation selector
        ("srv\U000e0041\U000e007f01", "srv01"),  # tag characters
        ("\u05e9\u05e8\u05ea\u200f", "\u05e9\u05e8\u05ea"),  # right-to-left mark
        ("a \u200b b", "a b"),  # a zero-width space between spaces: one run of whitespace
        ("\u200b", ""),
    ],
)
def test_default_ignorable_characters_are_removed(name: str, canonical: str) -> None:
    """Invisible characters do not count: the canonical form is the name without them."""
    assert canonical_name(name) == canonical


def test_an_ignorable_between_a_letter_and_its_accent_does_not_keep_them_apart() -> None:
    """The characters are removed before normalisation, so the letter and accent compose."""
    assert canonical_name("CAFE\u200c\u0301") == canonical_name("caf\u00e9") == "caf\u00e9"


@given(names, st.lists(st.tuples(st.integers(min_value=0), ignorables), max_size=5))
@example("srv01", [(3, "\u200b")])
@example("e\u0301", [(1, "\u034f")])
def test_inserting_default_ignorables_changes_no_key(
    name: str, insertions: list[tuple[int, str]]
) -> None:
    """Default-ignorable characters inserted anywhere leave the name's canonical form and keys."""
    spelled = name
    for position, char in insertions:
        at = position % (len(spelled) + 1)
        spelled = spelled[:at] + char + spelled[at:]
    assert canonical_name(spelled) == canonical_name(name)
    assert DeviceKey.of(spelled, spelled).digest == DeviceKey.of(name, name).digest
    assert JobKey.of("s", spelled, spelled).text == JobKey.of("s", name, name).text


@given(names_with_ignorables)
def test_the_canonical_form_holds_no_default_ignorable(name: str) -> None:
    """No default-ignorable character survives canonicalisation."""
    assert not DEFAULT_IGNORABLE.intersection(map(ord, canonical_name(name)))


def _reference_canonical_name(name: str) -> str:
    """The documented steps, one after the other, with no fast path."""
    visible = "".join(char for char in name if ord(char) not in DEFAULT_IGNORABLE)
    nfd = unicodedata.normalize("NFD", visible)
    return " ".join(unicodedata.normalize("NFC", nfd.casefold()).split())


@given(names_with_ignorables | st.text(st.characters(max_codepoint=0x7F)))
def test_canonical_name_follows_the_documented_steps(name: str) -> None:
    """canonical_name, fast ASCII path included, gives what the documented steps give."""
    assert canonical_name(name) == _reference_canonical_name(name)


# --- canonical_name: properties -------------------------------------------------------------


@given(names_with_ignorables)
@example("a\u0345\u0301")
@example("\u0130 \u00df \u01f0")
@example("e\u200b\u0301 \u034f")
def test_canonical_name_is_idempotent(name: str) -> None:
    """Canonicalising a canonical name changes nothing."""
    once = canonical_name(name)
    assert canonical_name(once) == once


@given(names)
def test_canonical_name_is_nfc_with_single_inner_spaces(name: str) -> None:
    """The result is NFC, has no surrounding whitespace and only single spaces inside."""
    result = canonical_name(name)
    assert unicodedata.is_normalized("NFC", result)
    assert result == " ".join(result.split())


@given(spelled())
def test_equivalent_spellings_give_equal_keys(names_pair: tuple[str, str]) -> None:
    """Whitespace runs, NFC versus NFD and ASCII case do not change a name's keys."""
    plain, variant = names_pair
    assert canonical_name(variant) == canonical_name(plain)
    assert DeviceKey.of(variant, plain) == DeviceKey.of(plain, variant)
    assert DeviceKey.of(variant, variant).text == DeviceKey.of(plain, plain).text
    assert JobKey.of(variant, plain, variant) == JobKey.of(plain, variant, plain)
    assert JobKey.of(variant, variant, variant).digest == JobKey.of(plain, plain, plain).digest


@given(names, names, names)
def test_keys_hold_canonical_names(sender: str, device: str, job: str) -> None:
    """DeviceKey.of and JobKey.of store the canonical form of every part."""
    device_key = DeviceKey.of(sender, device)
    assert (device_key.sender, device_key.device_name) == (
        canonical_name(sender),
        canonical_name(device),
    )
    job_key = JobKey.of(sender, device, job)
    assert (job_key.sender, job_key.device_name, job_key.job_name) == (
        canonical_name(sender),
        canonical_name(device),
        canonical_name(job),
    )


@given(names, names, names)
def test_job_key_device_is_the_device_key(sender: str, device: str, job: str) -> None:
    """A job's device is the DeviceKey of the same sender and device name."""
    assert JobKey.of(sender, device, job).device == DeviceKey.of(sender, device)


def test_job_key_device_example() -> None:
    """JobKey.device matches a DeviceKey spelled differently."""
    job = JobKey.of("Script-SRV01", " SRV01 ", "Nightly")
    assert job.device == DeviceKey.of("script-srv01", "srv01")
    assert job.device.text == "device:v1:12:script-srv015:srv01"


# --- injectivity ----------------------------------------------------------------------------


@given(st.tuples(tricky, tricky, tricky), st.tuples(tricky, tricky, tricky))
def test_job_text_is_injective_on_separator_material(
    first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    """Names made of digits, ':' and '|' never make two different job keys print alike."""
    a, b = JobKey.of(*first), JobKey.of(*second)
    assert (a.text == b.text) == (first == second)
    assert (a.digest == b.digest) == (first == second)


@given(st.tuples(names, names, names), st.tuples(names, names, names))
def test_job_text_is_injective(first: tuple[str, str, str], second: tuple[str, str, str]) -> None:
    """Distinct canonical (sender, device, job) triples have distinct text forms."""
    a, b = JobKey.of(*first), JobKey.of(*second)
    canonical_a = (a.sender, a.device_name, a.job_name)
    canonical_b = (b.sender, b.device_name, b.job_name)
    assert (a.text == b.text) == (canonical_a == canonical_b)


@given(st.tuples(tricky, tricky), st.tuples(tricky, tricky))
def test_device_text_is_injective(first: tuple[str, str], second: tuple[str, str]) -> None:
    """Distinct (sender, device) pairs have distinct device text forms."""
    assert (DeviceKey.of(*first).text == DeviceKey.of(*second).text) == (first == second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("a|b", "c", "d"), ("a", "b|c", "d")),
        (("a", "b|c", "d"), ("a", "b", "c|d")),
        (("ab", "c", "d"), ("a", "bc", "d")),
        (("1:a", "b", "c"), ("1", "a:b", "c")),
        (("3:ab", "c", "d"), ("3", "ab", "c:d")),
        (("1", "1:1", "1"), ("1:1", "1", "1")),
        (("2:ab", "", ""), ("", "", "2:ab")),
        (("", "1:a", "b"), ("1:a", "", "b")),
        (("a", "", "b"), ("a", "b", "")),
        (("x", "1:y", ""), ("x", "", "1:y")),
    ],
)
def test_separator_tricks_do_not_collide(
    first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    """Triples that naive joining (with '', '|' or ':') would confuse have different keys."""
    assert any(joiner.join(first) == joiner.join(second) for joiner in ("", "|", ":"))
    assert JobKey.of(*first).text != JobKey.of(*second).text
    assert JobKey.of(*first).digest != JobKey.of(*second).digest


def test_device_separator_tricks_do_not_collide() -> None:
    """('1:a', 'b') and ('1', 'a1:b') are different devices with different texts."""
    assert DeviceKey.of("1:a", "b").text != DeviceKey.of("1", "a1:b").text
    assert DeviceKey.of("a|b", "c").text != DeviceKey.of("a", "b|c").text


@given(names, names, names, names, names)
def test_device_text_never_equals_job_text(
    sender: str, device: str, job_sender: str, job_device: str, job: str
) -> None:
    """A device key and a job key never share a text form or digest."""
    device_key = DeviceKey.of(sender, device)
    job_key = JobKey.of(job_sender, job_device, job)
    assert device_key.text != job_key.text
    assert device_key.digest != job_key.digest


# --- fixed vectors --------------------------------------------------------------------------
# Computed once from the documented format (SHA-256 over the UTF-8 text, first 32 hex digits)
# and frozen: if one of these changes, every stored key in every database changes with it.

VECTORS: list[tuple[DeviceKey | JobKey, str, str]] = [
    (
        DeviceKey.of("script-SRV01", "SRV01"),
        "device:v1:12:script-srv015:srv01",
        "ce80065478ef5969782619adaa7be437",
    ),
    (
        JobKey.of("rsync", "srv01", "Nightly  Full"),
        "job:v1:5:rsync5:srv0112:nightly full",
        "b7d661915c6cdd96182b781a9cceee1d",
    ),
    (
        DeviceKey.of("unknown@ingest", " NAS1\t"),
        "device:v1:14:unknown@ingest4:nas1",
        "18926acb8c487370cf45158ebdd8ae79",
    ),
    (
        JobKey.of(" B\u00fcro-2 ", "CAFE\u0301\xa0 01", "Sauvegarde\u3000\u00df"),
        "job:v1:6:b\u00fcro-27:caf\u00e9 0113:sauvegarde ss",
        "2d4491db841986af943eaab9f26c16c9",
    ),
    (
        JobKey.of("VSS", "\u03a9\u039c\u0388\u0393\u0391", "\u65e5\u672c\u3000\u8a9e"),
        "job:v1:3:vss5:\u03c9\u03bc\u03ad\u03b3\u03b14:\u65e5\u672c \u8a9e",
        "123c101eddf712ccf2cad20b2bedd55d",
    ),
    (
        DeviceKey.of("1:a", "B|C"),
        "device:v1:3:1:a3:b|c",
        "8796b2967e75a27122d38eb92c6df929",
    ),
]


# Names with default-ignorable characters: the keys of the same names without them (the first
# four vectors above), which is what a store re-keys its older rows to.
IGNORABLE_VECTORS: list[tuple[DeviceKey | JobKey, str, str]] = [
    (
        DeviceKey.of("script-SRV01", "SRV\u200b01"),
        "device:v1:12:script-srv015:srv01",
        "ce80065478ef5969782619adaa7be437",
    ),
    (
        JobKey.of("\ufeffrsync", "srv\u200d01", "Nightly\u00ad \u2060Full"),
        "job:v1:5:rsync5:srv0112:nightly full",
        "b7d661915c6cdd96182b781a9cceee1d",
    ),
    (
        DeviceKey.of("unknown@ingest\U000e0020", "\u3164NAS1\ufe0f"),
        "device:v1:14:unknown@ingest4:nas1",
        "18926acb8c487370cf45158ebdd8ae79",
    ),
    (
        JobKey.of(" B\u00fcro\u200c-2 ", "CAFE\u200b\u0301\xa0 01", "Sauvegarde\u3000\u034f\u00df"),
        "job:v1:6:b\u00fcro-27:caf\u00e9 0113:sauvegarde ss",
        "2d4491db841986af943eaab9f26c16c9",
    ),
]


@pytest.mark.parametrize(("key", "text", "digest"), IGNORABLE_VECTORS)
def test_fixed_vectors_with_default_ignorables(
    key: DeviceKey | JobKey, text: str, digest: str
) -> None:
    """A name with zero-width and other invisible characters has the key of the name without."""
    assert key.text == text
    assert key.digest == digest


@pytest.mark.parametrize(("key", "text", "digest"), VECTORS)
def test_fixed_vectors(key: DeviceKey | JobKey, text: str, digest: str) -> None:
    """The text form and digest of known keys are exactly the frozen values."""
    assert key.text == text
    assert key.digest == digest


@pytest.mark.parametrize(("key", "text", "digest"), VECTORS)
def test_digest_is_sha256_prefix_of_utf8_text(
    key: DeviceKey | JobKey, text: str, digest: str
) -> None:
    """The digest is the first 32 lowercase hex digits of SHA-256 over the UTF-8 text."""
    assert hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] == digest == key.digest


@given(any_text, any_text, any_text)
def test_digest_is_32_lowercase_hex_digits(sender: str, device: str, job: str) -> None:
    """Every digest is 32 lowercase hexadecimal digits."""
    assert HEX32.fullmatch(DeviceKey.of(sender, device).digest)
    assert HEX32.fullmatch(JobKey.of(sender, device, job).digest)


def test_lone_surrogate_still_has_a_digest() -> None:
    """A key built from text with an unpaired surrogate still has a digest, no exception."""
    device = DeviceKey.of("\ud800", "x")
    job = JobKey.of("s", "\udfff", "\ud800")
    assert HEX32.fullmatch(device.digest)
    assert HEX32.fullmatch(job.digest)
    assert device.digest != DeviceKey.of("\udfff", "x").digest
