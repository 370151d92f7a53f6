"""The matching key: which device and which job an entry belongs to.

The spec matches on sender + deviceName (the device) and sender + deviceName + jobName (the
job). Names are compared in a canonical form so that ``"SRV01 "`` and ``"srv01"`` are the same
machine: Unicode canonical caseless matching (NFD, case-folded, then NFC for storage),
surrounding whitespace stripped, inner runs of whitespace collapsed to one space. Strings that
differ only in case compare equal; the one exception Unicode itself documents is U+0345
COMBINING GREEK YPOGEGRAMMENI, whose fold is a letter, so ``x`` and ``x.casefold()`` can differ
when it stands in an unusual position.

Text form, version 1 (stable across processes and releases; pinned by fixed test vectors)::

    device:v1:<len>:<sender><len>:<device name>
    job:v1:<len>:<sender><len>:<device name><len>:<job name>

where each ``<len>`` is the decimal number of Unicode code points of the canonical part that
follows. Length prefixes make the form injective: no choice of names can make two different
keys print the same text, whatever characters the names contain. The digest is the first 128
bits of SHA-256 over the UTF-8 text, as 32 lowercase hex digits: short enough for an index,
wide enough that collisions need not be considered.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Final

import attrs

__all__ = ["DeviceKey", "JobKey", "canonical_name"]

_TEXT_VERSION: Final = "v1"


def canonical_name(name: str) -> str:
    r"""The canonical form of a name, as used for matching.

    >>> canonical_name("  Nightly   FULL\tBackup ")
    'nightly full backup'
    """
    # Unicode's canonical caseless matching (D145) folds the NFD form, so that combining marks
    # are in canonical order before folding; NFC then gives the compact form that is stored.
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())
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
