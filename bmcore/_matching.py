r"""The matching key: which device and which job an entry belongs to.

The spec matches on sender + deviceName (the device) and sender + deviceName + jobName (the
job). Names are compared in a canonical form so that ``"SRV01 "``, ``"srv01"`` and
``"srv\u200b01"`` are the same machine:

1. Default-ignorable code points are removed: every character of Unicode's
   Default_Ignorable_Code_Point property (:data:`DEFAULT_IGNORABLE_RANGES`), as Unicode's own
   NFKC_Casefold mapping removes them. They are invisible when shown (zero-width spaces and
   joiners, soft hyphens, bidirectional marks and controls, variation selectors, Hangul
   fillers, tags), so a name that differs from another only by them reads the same to a
   person and must be the same device.
2. Unicode canonical caseless matching: NFD, case-folded, then NFC for storage. Strings that
   differ only in case compare equal; the one exception Unicode itself documents is U+0345
   COMBINING GREEK YPOGEGRAMMENI, whose fold is a letter, so ``x`` and ``x.casefold()`` can
   differ when it stands in an unusual position.
3. Surrounding whitespace stripped, inner runs of whitespace collapsed to one space.

Removal comes first: a zero-width character between a letter and its accent would otherwise
keep them from composing. No step produces a default-ignorable character again (NFD, NFC and
case folding never do), so the canonical form holds none and canonicalising it changes nothing.

Text form, version 1 (stable across processes and releases; pinned by fixed test vectors)::

    device:v1:<len>:<sender><len>:<device name>
    job:v1:<len>:<sender><len>:<device name><len>:<job name>

where each ``<len>`` is the decimal number of Unicode code points of the canonical part that
follows. Length prefixes make the form injective: no choice of names can make two different
keys print the same text, whatever characters the names contain. The digest is the first 128
bits of SHA-256 over the UTF-8 text, as 32 lowercase hex digits: short enough for an index,
wide enough that collisions need not be considered.

Step 1 came after the first release. It changed no key of a name without default-ignorable
characters (their text and digest are exactly as before, as the fixed vectors check); a name
with them now has the key of the same name without them. Stores re-key what they stored
under the earlier rule when they upgrade (bmserver: schema migration 3).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Final

import attrs

__all__ = [
    "DEFAULT_IGNORABLE_CLASS",
    "DEFAULT_IGNORABLE_RANGES",
    "DeviceKey",
    "JobKey",
    "canonical_name",
]

_TEXT_VERSION: Final = "v1"

#: Unicode's Default_Ignorable_Code_Point property as (first, last) code point ranges, from
#: DerivedCoreProperties.txt of the Unicode Character Database:
#: https://www.unicode.org/Public/UCD/latest/ucd/DerivedCoreProperties.txt
#: Python's unicodedata does not have the property, so it is written out here. The set is the
#: same 4,174 code points from Unicode 14.0 to 17.0: it includes unassigned code points that
#: Unicode reserves as default-ignorable, so that characters assigned there later are already
#: in it. Fixed here rather than taken from a library, the matching key cannot change with one.
DEFAULT_IGNORABLE_RANGES: Final[tuple[tuple[int, int], ...]] = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG FILLER..HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ..KHMER VOWEL INHERENT AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTOR ONE..FOUR, VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE..RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # LEFT-TO-RIGHT EMBEDDING..RIGHT-TO-LEFT OVERRIDE
    (0x2060, 0x206F),  # WORD JOINER..NOMINAL DIGIT SHAPES (isolates included; 2065 reserved)
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1..VARIATION SELECTOR-16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE (byte order mark)
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT LETTER OVERLAP..SHORTHAND FORMAT UP STEP
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM..MUSICAL SYMBOL END PHRASE
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17..256, and reserved
)

#: The body of a regular-expression character class of the default-ignorable code points.
DEFAULT_IGNORABLE_CLASS: Final = "".join(
    re.escape(chr(first)) if first == last else f"{re.escape(chr(first))}-{re.escape(chr(last))}"
    for first, last in DEFAULT_IGNORABLE_RANGES
)
_IGNORABLE: Final = re.compile(f"[{DEFAULT_IGNORABLE_CLASS}]+")


def canonical_name(name: str) -> str:
    r"""The canonical form of a name, as used for matching.

    >>> canonical_name("  Nightly   FULL\tBackup ")
    'nightly full backup'
    >>> canonical_name("SRV\u200b01")
    'srv01'
    """
    if name.isascii():
        # The common case, and the same result: ASCII holds no default-ignorable character, is
        # its own NFD and NFC, and its case fold is lower().
        return " ".join(name.lower().split())
    visible = _IGNORABLE.sub("", name)
    # Unicode's canonical caseless matching (D145) folds the NFD form, so that combining marks
    # are in canonical order before folding; NFC then gives the compact form that is stored.
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFD", visible).casefold())
    return " ".join(folded.split())


def _netstring(part: str) -> str:
    return f"{len(part)}:{part}"


def _digest(text: str) -> str:
    # surrogatepass: a key built directly from unvalidated text must still have a digest.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@attrs.frozen(kw_only=True)
class DeviceKey:
    """Identifies a device: sender + deviceName, both in canonical form.

    >>> key = DeviceKey.of("script-SRV01", "SRV01")
    >>> key.text
    'device:v1:12:script-srv015:srv01'
    """

    sender: str = attrs.field(converter=canonical_name)
    device_name: str = attrs.field(converter=canonical_name)

    @classmethod
    def of(cls, sender: str, device_name: str) -> DeviceKey:
        """The key of a device; the names are canonicalised."""
        return cls(sender=sender, device_name=device_name)

    @property
    def text(self) -> str:
        """The injective, versioned text form (see the module documentation)."""
        return f"device:{_TEXT_VERSION}:{_netstring(self.sender)}{_netstring(self.device_name)}"

    @property
    def digest(self) -> str:
        """32 hex digits identifying the key, for storage indexes."""
        return _digest(self.text)


@attrs.frozen(kw_only=True)
class JobKey:
    """Identifies a job: sender + deviceName + jobName, all in canonical form.

    >>> JobKey.of("rsync", "srv01", "Nightly  Full").text
    'job:v1:5:rsync5:srv0112:nightly full'
    """

    sender: str = attrs.field(converter=canonical_name)
    device_name: str = attrs.field(converter=canonical_name)
    job_name: str = attrs.field(converter=canonical_name)

    @classmethod
    def of(cls, sender: str, device_name: str, job_name: str) -> JobKey:
        """The key of a job; the names are canonicalised."""
        return cls(sender=sender, device_name=device_name, job_name=job_name)

    @property
    def device(self) -> DeviceKey:
        """The key of the device this job runs on."""
        return DeviceKey(sender=self.sender, device_name=self.device_name)

    @property
    def text(self) -> str:
        """The injective, versioned text form (see the module documentation)."""
        parts = "".join(map(_netstring, (self.sender, self.device_name, self.job_name)))
        return f"job:{_TEXT_VERSION}:{parts}"

    @property
    def digest(self) -> str:
        """32 hex digits identifying the key, for storage indexes."""
        return _digest(self.text)
