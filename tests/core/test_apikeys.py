import base64
import hmac
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmcore import (
    API_KEY_PREFIX,
    ApiKeyFormatError,
    BmError,
    check_api_key_format,
    display_prefix,
    generate_api_key,
    hash_api_key,
    verify_api_key,
)

URL_SAFE = string.ascii_letters + string.digits + "-_"
GENERATED = re.compile(r"bm_[A-Za-z0-9_-]{43}")
SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
HMAC_SHA256 = re.compile(r"hmac-sha256:[0-9a-f]{64}")

KEY = "bm_" + "A" * 43
OTHER_KEY = "bm_" + "B" * 43

random_32 = st.binary(min_size=32, max_size=32)
keys = random_32.map(lambda raw: generate_api_key(lambda _: raw))
secrets_ = st.none() | st.binary(max_size=64)
# Any text, lone surrogates included (which st.text() leaves out by default).
any_text = st.text(st.characters(exclude_categories=[]) | st.sampled_from(["\ud800", "\udfff"]))


# --- generate_api_key -----------------------------------------------------------------------


def test_generated_key_has_the_format() -> None:
    """A generated key is bm_ and 43 URL-safe characters, and passes the format check."""
    key = generate_api_key()
    assert GENERATED.fullmatch(key)
    assert check_api_key_format(key) == key


def test_generated_keys_are_distinct() -> None:
    """The default source is random: keys do not repeat."""
    generated = {generate_api_key() for _ in range(50)}
    assert len(generated) == 50


def test_generate_uses_the_injected_random_source() -> None:
    """The key is the URL-safe base64 of the 32 bytes the given source returns."""
    requested: list[int] = []

    def fake(size: int) -> bytes:
        requested.append(size)
        return bytes(range(size))

    assert generate_api_key(fake) == "bm_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
    assert generate_api_key(fake) == "bm_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
    assert requested == [32, 32]


def test_generated_key_uses_the_url_safe_alphabet() -> None:
    """Bytes that standard base64 would print as '/' and '+' give '_' and '-', and no padding."""
    assert generate_api_key(lambda n: b"\xff" * n) == "bm_" + "_" * 42 + "8"
    assert (
        generate_api_key(lambda n: b"\xfb\xef\xbe" * (n // 3) + b"\xfb\xef")
        == "bm_" + "-" * 42 + "8"
    )


@pytest.mark.parametrize("size", [0, 1, 31])
def test_generate_rejects_a_short_random_source(size: int) -> None:
    """A random source returning fewer than 32 bytes is refused, not used for a weak key."""
    with pytest.raises(ValueError, match="random_bytes"):
        generate_api_key(lambda _: bytes(size))


@given(random_32)
def test_generated_key_encodes_the_random_bytes(raw: bytes) -> None:
    """Any 32 bytes give a well-formed key from which the bytes can be read back."""
    key = generate_api_key(lambda _: raw)
    assert GENERATED.fullmatch(key)
    assert check_api_key_format(key) == key
    assert base64.urlsafe_b64decode(key.removeprefix(API_KEY_PREFIX) + "=") == raw


# --- check_api_key_format -------------------------------------------------------------------


def _reason(text: str) -> str:
    with pytest.raises(ApiKeyFormatError) as caught:
        check_api_key_format(text)
    return caught.value.reason


@pytest.mark.parametrize(
    "text", ["", "AAAA" * 11, "BM_" + "A" * 43, "bm-" + "A" * 43, "bm" + "A" * 44]
)
def test_missing_prefix(text: str) -> None:
    """A key not starting with bm_ is refused with a reason naming the prefix."""
    assert "does not start with 'bm_'" in _reason(text)


@pytest.mark.parametrize("text", [" " + KEY, "\t" + KEY, "\n" + KEY + "\n", " " + KEY + " "])
def test_leading_whitespace(text: str) -> None:
    """Whitespace in front of the key says to send the key alone."""
    assert _reason(text) == "it has leading or trailing whitespace; send the key alone"


@pytest.mark.parametrize("text", [KEY + "\n", KEY + " ", KEY + "\r\n", KEY + "\t"])
def test_trailing_whitespace(text: str) -> None:
    """Whitespace after the key (a copied newline) is refused with a reason about whitespace."""
    reason = _reason(text)
    assert "whitespace" in reason
    assert KEY not in reason


@pytest.mark.parametrize(
    ("text", "shown", "position"),
    [
        ("bm_" + "A" * 20 + "+" + "A" * 22, "the character '+'", 23),
        ("bm_" + "A" * 42 + "/", "the character '/'", 45),
        ("bm_" + "A" * 10 + "=" + "A" * 32, "the character '='", 13),
        ("bm_" + "é" + "A" * 42, "the character 'é'", 3),
        ("bm_" + "A" * 21 + " " + "A" * 21, "whitespace", 24),
    ],
)
def test_bad_character(text: str, shown: str, position: int) -> None:
    """A character outside the URL-safe alphabet is named with its position, not with the key."""
    reason = _reason(text)
    assert f"contains {shown} at position {position}" in reason
    assert "letters, digits, '-' and '_'" in reason
    body = text.removeprefix(API_KEY_PREFIX)
    assert "A" * 10 not in reason
    assert body not in reason
    assert text not in reason


def test_error_message_does_not_repeat_the_key() -> None:
    """Neither the reason nor the error's message contains the (nearly valid) key."""
    text = "bm_SecretSecretSecretSecretSecret!xyz"
    with pytest.raises(ApiKeyFormatError) as caught:
        check_api_key_format(text)
    assert "Secret" not in str(caught.value)
    assert "Secret" not in caught.value.reason


@pytest.mark.parametrize("length", [0, 1, 31])
def test_too_short(length: int) -> None:
    """Fewer than 32 characters after bm_ is refused, saying how many there are and are needed."""
    assert _reason("bm_" + "a" * length) == (
        f"it has {length} characters after bm_, at least 32 are needed"
    )


@pytest.mark.parametrize("length", [257, 1000])
def test_too_long(length: int) -> None:
    """More than 256 characters after bm_ is refused."""
    assert _reason("bm_" + "a" * length) == (
        f"it has {length} characters after bm_, at most 256 are allowed"
    )


@pytest.mark.parametrize("length", [32, 43, 256])
def test_lengths_at_the_limits_are_accepted(length: int) -> None:
    """32 to 256 URL-safe characters after bm_ are a valid key, returned unchanged."""
    text = "bm_" + ("x9-_Q" * 60)[:length]
    assert check_api_key_format(text) == text


@given(st.text(st.sampled_from(URL_SAFE), min_size=32, max_size=256))
def test_any_url_safe_body_of_valid_length_is_accepted(body: str) -> None:
    """Every bm_ + 32..256 URL-safe characters passes the format check."""
    assert check_api_key_format("bm_" + body) == "bm_" + body


@given(
    st.text(st.sampled_from(URL_SAFE), min_size=32, max_size=100),
    st.characters().filter(lambda char: char not in URL_SAFE),
    st.data(),
)
def test_any_foreign_character_is_refused(body: str, char: str, data: st.DataObject) -> None:
    """One character outside the alphabet anywhere in the body makes the key invalid."""
    index = data.draw(st.integers(0, len(body)))
    text = "bm_" + body[:index] + char + body[index:]
    reason = _reason(text)
    if text != text.strip():  # whitespace at the end is named as such, with no position
        assert "leading or trailing whitespace" in reason
    else:
        assert f"at position {index + 3}" in reason
    assert body not in reason


def test_format_error_is_a_value_error_and_a_bm_error_with_status_401() -> None:
    """ApiKeyFormatError can be caught as ValueError or BmError and maps to HTTP 401."""
    with pytest.raises(ApiKeyFormatError) as caught:
        check_api_key_format("nope")
    error = caught.value
    assert isinstance(error, ValueError)
    assert isinstance(error, BmError)
    assert error.status_hint == 401
    assert ApiKeyFormatError.status_hint == 401
    assert str(error) == "not a valid API key: it does not start with 'bm_'"


# --- hash_api_key and verify_api_key --------------------------------------------------------


def test_hash_without_secret_is_plain_sha256() -> None:
    """Without a secret the stored form is sha256: and the hex SHA-256 of the key."""
    assert hash_api_key(KEY) == (
        "sha256:20c0bf772eaffee5c7384bb4a04031bf4b697b9302b1470cd8b3ce28bd4decf0"
    )


def test_hash_with_secret_is_hmac_sha256() -> None:
    """With a secret the stored form is hmac-sha256: and the hex HMAC-SHA256 of the key."""
    assert hash_api_key(KEY, secret=b"server-secret") == (
        "hmac-sha256:c6e6ff38e403bef6d247a9ed648f2a760a740d1f332a43b0d46ba2ab51254284"
    )


def test_hash_is_deterministic_and_separates_keys_and_secrets() -> None:
    """The same key and secret hash alike; another key or another secret hashes differently."""
    assert hash_api_key(KEY) == hash_api_key(KEY)
    assert hash_api_key(KEY, secret=b"s") == hash_api_key(KEY, secret=b"s")
    assert hash_api_key(KEY) != hash_api_key(OTHER_KEY)
    assert hash_api_key(KEY, secret=b"s") != hash_api_key(OTHER_KEY, secret=b"s")
    assert hash_api_key(KEY, secret=b"s") != hash_api_key(KEY, secret=b"t")
    assert hash_api_key(KEY, secret=b"") != hash_api_key(KEY)
    assert SHA256.fullmatch(hash_api_key(KEY))
    assert HMAC_SHA256.fullmatch(hash_api_key(KEY, secret=b""))


def test_verify_accepts_the_right_key() -> None:
    """A key verifies against its own hash, with or without a secret."""
    assert verify_api_key(KEY, hash_api_key(KEY))
    assert verify_api_key(KEY, hash_api_key(KEY, secret=b"s"), secret=b"s")


def test_verify_rejects_another_key() -> None:
    """Another key does not verify against the hash."""
    assert not verify_api_key(OTHER_KEY, hash_api_key(KEY))
    assert not verify_api_key(OTHER_KEY, hash_api_key(KEY, secret=b"s"), secret=b"s")
    assert not verify_api_key(KEY[:-1], hash_api_key(KEY))


def test_verify_rejects_a_wrong_or_missing_secret() -> None:
    """A hash verifies only with the secret it was made with, or without one if made without."""
    with_secret = hash_api_key(KEY, secret=b"s")
    assert not verify_api_key(KEY, with_secret, secret=b"t")
    assert not verify_api_key(KEY, with_secret)
    assert not verify_api_key(KEY, hash_api_key(KEY), secret=b"s")
    assert not verify_api_key(KEY, hash_api_key(KEY), secret=b"")
    assert not verify_api_key(KEY, hash_api_key(KEY, secret=b""))


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "garbage",
        "sha256:",
        "sha256:" + "0" * 64,
        "hmac-sha256:" + "0" * 64,
        "sha256:20C0BF772EAFFEE5C7384BB4A04031BF4B697B9302B1470CD8B3CE28BD4DECF0",
        "sha256:ünïcödé",
        "sha256:20c0bf772eaffee5c7384bb4a04031bf4b697b9302b1470cd8b3ce28bd4decf\u00e9",
        "\ud800",
        "\x00" * 71,
        " sha256:20c0bf772eaffee5c7384bb4a04031bf4b697b9302b1470cd8b3ce28bd4decf0",
    ],
)
def test_verify_returns_false_for_a_garbage_hash(stored: str) -> None:
    """A malformed stored hash (non-ASCII, surrogates, wrong case) is a mismatch, not an error."""
    assert verify_api_key(KEY, stored) is False
    assert verify_api_key(KEY, stored, secret=b"s") is False


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison goes through hmac.compare_digest (timing cannot be asserted in a test)."""
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    stored = hash_api_key(KEY)
    assert verify_api_key(KEY, stored)
    assert not verify_api_key(OTHER_KEY, stored)
    assert len(compared) == 2


@given(keys, secrets_)
def test_every_key_verifies_against_its_hash(key: str, secret: bytes | None) -> None:
    """For any generated key and any secret (or none), verify(key, hash(key)) holds."""
    stored = hash_api_key(key, secret=secret)
    assert verify_api_key(key, stored, secret=secret)
    assert (SHA256 if secret is None else HMAC_SHA256).fullmatch(stored)


@given(keys, keys, secrets_)
def test_a_key_never_verifies_against_another_keys_hash(
    key: str, other: str, secret: bytes | None
) -> None:
    """Two different keys never verify against each other's hash."""
    if key != other:
        assert not verify_api_key(other, hash_api_key(key, secret=secret), secret=secret)


@given(keys, any_text)
def test_verify_never_raises_on_arbitrary_stored_text(key: str, stored: str) -> None:
    """Any stored text, including lone surrogates, gives a bool and no exception."""
    assert verify_api_key(key, stored) is (stored == hash_api_key(key))


# --- display_prefix -------------------------------------------------------------------------


def test_display_prefix_example() -> None:
    """The display prefix is bm_ and the next 8 characters."""
    assert display_prefix("bm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_xyz") == "bm_AbCdEfGh"


@given(keys)
def test_display_prefix_is_a_short_prefix_of_the_key(key: str) -> None:
    """For any key the display prefix is bm_ + 8 characters and a prefix of the key."""
    shown = display_prefix(key)
    assert len(shown) == 11
    assert shown.startswith(API_KEY_PREFIX)
    assert key.startswith(shown)
    assert shown != key
