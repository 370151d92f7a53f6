import hashlib
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bmcore
from bmcore import (
    DEFAULT_SENDER,
    BackupEntry,
    BackupFacts,
    DeviceKey,
    JobKey,
    Notification,
    NotificationFacts,
    Severity,
    Verdict,
    backup_facts,
    classify,
    encode_backup,
    encode_notification,
    join_instant,
    notification_facts,
    parse_timestamp,
    split_instant,
)

NOW = datetime(2024, 6, 4, 12, 5, tzinfo=UTC)
# 2024-06-04T12:00:00Z in microseconds since the epoch.
NOON_US = 1_717_502_400_000_000


# --- fixed vectors --------------------------------------------------------------------------
# Fingerprints are stored: these must never change (see bmcore._rules). Each vector pins the
# wire JSON, its SHA-256, and the identity, so that a change to any of them fails here first.


@attrs.frozen(kw_only=True)
class BackupVector:
    """A backup entry, and what its fingerprint and identity must be."""

    entry: BackupEntry
    wire: str
    fingerprint: str
    job_text: str
    job_digest: str
    instant_us: int
    offset_minutes: int


@attrs.frozen(kw_only=True)
class NotificationVector:
    """A notification, and what its fingerprint and identity must be."""

    notification: Notification
    wire: str
    fingerprint: str
    device_text: str
    job_text: str | None
    instant_us: int
    offset_minutes: int


ZURICH = BackupEntry(
    device_name="Zürich-01",
    job_name="Sicherung ☃",
    timestamp=parse_timestamp("2024-06-04T17:30:00.25+05:30"),
    status="Erfolg",
    message="fertig ✓ — 12 Dateien",
    sender="script-zürich",
)

BACKUP_VECTORS = [
    BackupVector(
        entry=BackupEntry(
            device_name="srv01",
            job_name="Nightly Full Backup",
            timestamp=parse_timestamp("2024-06-04T12:00:00Z"),
            status="Success",
            message="Backup completed. 142 GB transferred.",
        ),
        wire=(
            '{"deviceName":"srv01","jobName":"Nightly Full Backup",'
            '"timestamp":"2024-06-04T12:00:00+00:00","status":"Success",'
            '"message":"Backup completed. 142 GB transferred.","sender":"unknown@ingest"}'
        ),
        fingerprint="0a5417a7045d33af4f96a8c9cf6345ba5f9bbb0f5f802d371ce038f2a343528b",
        job_text="job:v1:14:unknown@ingest5:srv0119:nightly full backup",
        job_digest="96727d420bf63b77078ecb3a8b658c46",
        instant_us=NOON_US,
        offset_minutes=0,
    ),
    BackupVector(
        entry=ZURICH,
        wire=(
            '{"deviceName":"Zürich-01","jobName":"Sicherung ☃",'
            '"timestamp":"2024-06-04T17:30:00.250000+05:30","status":"Erfolg",'
            '"message":"fertig ✓ — 12 Dateien","sender":"script-zürich"}'
        ),
        fingerprint="82414530b304274c691e4b5a26aab862f4ce8681bfd1f50d92605a617b6f4611",
        job_text="job:v1:13:script-zürich9:zürich-0111:sicherung ☃",
        job_digest="5bce4be405615dd6a4751039d9d90d00",
        instant_us=NOON_US + 250_000,
        offset_minutes=330,
    ),
    # The same instant as the one above, sent at another offset: same identity, other content.
    BackupVector(
        entry=attrs.evolve(ZURICH, timestamp=parse_timestamp("2024-06-04T05:00:00.25-07:00")),
        wire=(
            '{"deviceName":"Zürich-01","jobName":"Sicherung ☃",'
            '"timestamp":"2024-06-04T05:00:00.250000-07:00","status":"Erfolg",'
            '"message":"fertig ✓ — 12 Dateien","sender":"script-zürich"}'
        ),
        fingerprint="993b38b826b6864d5bb4b579b514ee7ef8f78ea673b7e6d9634fead03d76325f",
        job_text="job:v1:13:script-zürich9:zürich-0111:sicherung ☃",
        job_digest="5bce4be405615dd6a4751039d9d90d00",
        instant_us=NOON_US + 250_000,
        offset_minutes=-420,
    ),
]

NOTIFICATION_VECTORS = [
    NotificationVector(
        notification=Notification(
            device_name="srv01",
            timestamp=parse_timestamp("2024-06-04T12:00:00Z"),
            severity=Severity.WARNING,
            type="disk_space_low",
        ),
        wire=(
            '{"deviceName":"srv01","timestamp":"2024-06-04T12:00:00+00:00",'
            '"severity":"warning","type":"disk_space_low","sender":"unknown@ingest"}'
        ),
        fingerprint="838dd5fe7439102e9adbe568e04efe3a9a1cd9b591c3f1b6a743a93f17ab548e",
        device_text="device:v1:14:unknown@ingest5:srv01",
        job_text=None,
        instant_us=NOON_US,
        offset_minutes=0,
    ),
    NotificationVector(
        notification=Notification(
            device_name="SRV01 ",
            timestamp=parse_timestamp("2024-06-04T08:29:59.123456-03:30"),
            severity=Severity.CRITICAL,
            type="raid_degraded",
            job_name="Nightly  Full Backup",
            message="Disk 2 ausgefallen — 磁盘故障",
            sender="nagios",
        ),
        wire=(
            '{"deviceName":"SRV01 ","timestamp":"2024-06-04T08:29:59.123456-03:30",'
            '"severity":"critical","type":"raid_degraded","jobName":"Nightly  Full Backup",'
            '"message":"Disk 2 ausgefallen — 磁盘故障","sender":"nagios"}'
        ),
        fingerprint="fe4e4c56370d62078b142d98c8b891bdc6d4007cdde43bc71b37cd94937b382b",
        device_text="device:v1:6:nagios5:srv01",
        job_text="job:v1:6:nagios5:srv0119:nightly full backup",
        instant_us=NOON_US - 876_544,
        offset_minutes=-210,
    ),
]


@pytest.mark.parametrize("vector", BACKUP_VECTORS, ids=lambda vector: vector.job_text)
def test_backup_fingerprint_and_identity_are_pinned(vector: BackupVector) -> None:
    """A backup's wire JSON, fingerprint, job key and instant are the fixed vectors."""
    facts = backup_facts(vector.entry)
    assert encode_backup(vector.entry) == vector.wire.encode()
    assert hashlib.sha256(vector.wire.encode()).hexdigest() == vector.fingerprint
    assert facts.fingerprint.hex() == vector.fingerprint
    assert (facts.job.text, facts.job.digest) == (vector.job_text, vector.job_digest)
    assert (facts.instant_us, facts.offset_minutes) == (vector.instant_us, vector.offset_minutes)
    assert facts.identity == (facts.job, vector.instant_us)
    assert facts.device == facts.job.device


@pytest.mark.parametrize("vector", NOTIFICATION_VECTORS, ids=lambda vector: vector.device_text)
def test_notification_fingerprint_and_identity_are_pinned(vector: NotificationVector) -> None:
    """A notification's wire JSON, fingerprint, keys and instant are the fixed vectors."""
    facts = notification_facts(vector.notification)
    assert encode_notification(vector.notification) == vector.wire.encode()
    assert hashlib.sha256(vector.wire.encode()).hexdigest() == vector.fingerprint
    assert facts.fingerprint.hex() == vector.fingerprint
    assert facts.identity == facts.fingerprint
    assert facts.device.text == vector.device_text
    assert (None if facts.job is None else facts.job.text) == vector.job_text
    assert (facts.instant_us, facts.offset_minutes) == (vector.instant_us, vector.offset_minutes)


def test_the_pinned_backups_at_one_instant_and_two_offsets_conflict() -> None:
    """Vectors 2 and 3: one identity, two fingerprints, so either one after the other conflicts."""
    first, second = (backup_facts(vector.entry) for vector in BACKUP_VECTORS[1:])
    assert first.identity == second.identity
    assert classify(second, first.fingerprint) is Verdict.CONFLICT
    assert classify(first, second.fingerprint) is Verdict.CONFLICT


# --- strategies -----------------------------------------------------------------------------

_NAME_CHARS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))
_NAMES = st.text(_NAME_CHARS, min_size=1, max_size=12).filter(
    lambda name: bmcore.canonical_name(name) != ""
)
_OFFSET_MINUTES = st.integers(-(24 * 60 - 1), 24 * 60 - 1)
_ZONES = _OFFSET_MINUTES.map(lambda minutes: timezone(timedelta(minutes=minutes)))
_TIMESTAMPS = st.datetimes(
    min_value=datetime(2000, 1, 2),  # noqa: DTZ001 - wall times, made aware by timezones=
    max_value=datetime(2099, 12, 30),  # noqa: DTZ001 - as min_value
    timezones=_ZONES,
)
_MESSAGES = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)
_SENDERS = st.just(DEFAULT_SENDER) | _NAMES

_BACKUPS = st.builds(
    BackupEntry,
    device_name=_NAMES,
    job_name=_NAMES,
    timestamp=_TIMESTAMPS,
    status=_NAMES,
    message=_MESSAGES,
    sender=_SENDERS,
)
_NOTIFICATIONS = st.builds(
    Notification,
    device_name=_NAMES,
    timestamp=_TIMESTAMPS,
    severity=st.sampled_from(Severity),
    type=_NAMES,
    job_name=st.none() | _NAMES,
    message=st.none() | _MESSAGES,
    sender=_SENDERS,
)

# Small pools, so that arrivals often share an identity: two spellings of one device and of
# one job, three instants, three offsets, two statuses and messages.
_FEW_INSTANTS = st.sampled_from([NOON_US, NOON_US + 1, NOON_US + 3_600_000_000])
_FEW_OFFSETS = st.sampled_from([0, 120, -330])
_FEW_TIMESTAMPS = st.builds(join_instant, _FEW_INSTANTS, _FEW_OFFSETS)
_FEW_DEVICES = st.sampled_from(["srv01", "SRV01", "Zürich-01"])
_FEW_JOBS = st.sampled_from(["Nightly", "nightly ", "Weekly"])
_FEW_MESSAGES = st.sampled_from(["ok", "fertig ✓"])

_FEW_BACKUPS = st.builds(
    BackupEntry,
    device_name=_FEW_DEVICES,
    job_name=_FEW_JOBS,
    timestamp=_FEW_TIMESTAMPS,
    status=st.sampled_from(["Success", "Error"]),
    message=_FEW_MESSAGES,
)
_FEW_NOTIFICATIONS = st.builds(
    Notification,
    device_name=_FEW_DEVICES,
    timestamp=_FEW_TIMESTAMPS,
    severity=st.sampled_from([Severity.INFO, Severity.ERROR]),
    type=st.just("disk_space_low"),
    job_name=st.none() | _FEW_JOBS,
    message=st.none() | _FEW_MESSAGES,
)


def _swap_ascii_case(text: str) -> str:
    return "".join(char.swapcase() if char.isascii() else char for char in text)


@st.composite
def _same_identity(draw: st.DrawFn) -> tuple[BackupEntry, BackupEntry]:
    """A backup, and another of the same job and instant that may differ in anything else."""
    entry = draw(_BACKUPS)
    other = entry
    if draw(st.booleans()):
        other = attrs.evolve(other, timestamp=other.timestamp.astimezone(draw(_ZONES)))
    if draw(st.booleans()):
        other = attrs.evolve(other, status=draw(_NAMES), message=draw(_MESSAGES))
    if draw(st.booleans()):  # another spelling of the same device: same key, other content
        other = attrs.evolve(other, device_name=f" {_swap_ascii_case(other.device_name)}\t")
    return entry, other


# --- the facts ------------------------------------------------------------------------------


@given(_BACKUPS)
def test_backup_facts_hold_the_entry_keys_and_the_hash_of_its_wire_json(
    entry: BackupEntry,
) -> None:
    """The job and device keys are the entry's; the fingerprint is SHA-256 of encode_backup."""
    facts = backup_facts(entry)
    assert facts.job == JobKey.of(entry.sender, entry.device_name, entry.job_name)
    assert facts.device == DeviceKey.of(entry.sender, entry.device_name)
    assert facts.fingerprint == hashlib.sha256(encode_backup(entry)).digest()
    assert join_instant(facts.instant_us, facts.offset_minutes).isoformat() == (
        entry.timestamp.isoformat()
    )


@given(_NOTIFICATIONS)
def test_notification_facts_hold_its_keys_and_the_hash_of_its_wire_json(
    notification: Notification,
) -> None:
    """The device key is the notification's, the job key too when it names a job."""
    facts = notification_facts(notification)
    sender, device_name = notification.sender, notification.device_name
    assert facts.device == DeviceKey.of(sender, device_name)
    job_name = notification.job_name
    assert facts.job == (None if job_name is None else JobKey.of(sender, device_name, job_name))
    assert facts.fingerprint == hashlib.sha256(encode_notification(notification)).digest()


def test_the_zone_object_does_not_matter_only_the_offset() -> None:
    """Two tzinfo objects of one offset (named or not) give the same facts."""
    plain = ZURICH.timestamp.astimezone(timezone(timedelta(hours=2)))
    named = ZURICH.timestamp.astimezone(timezone(timedelta(hours=2), "CEST"))
    assert backup_facts(attrs.evolve(ZURICH, timestamp=plain)) == backup_facts(
        attrs.evolve(ZURICH, timestamp=named)
    )


@pytest.mark.parametrize("suffix", ["Z", "z", "+00:00", "-00:00", "+0000", "+00"])
def test_every_spelling_of_utc_is_one_fingerprint(suffix: str) -> None:
    """A backup sent with Z, +00:00 or -00:00 is one content: resending in another is a repeat."""
    body = (
        '{"deviceName": "srv01", "jobName": "Nightly", "status": "Success", "message": "ok",'
        f' "timestamp": "2024-06-04T12:00:00{suffix}"}}'
    )
    facts = backup_facts(bmcore.decode_backup(body.encode(), now=NOW).value)
    assert facts.fingerprint.hex() == (
        "a8492125efc41e5fafc4202645655943fb1ff05680c3cbd76d4edd222328134d"
    )


def test_a_naive_timestamp_has_no_facts() -> None:
    """backup_facts refuses an entry built by hand with a naive timestamp, as split_instant does."""
    naive = attrs.evolve(ZURICH, timestamp=datetime(2024, 6, 4, 12))  # noqa: DTZ001 - the point
    with pytest.raises(ValueError, match="aware"):
        backup_facts(naive)


# --- classification -------------------------------------------------------------------------


def test_the_verdicts_hint_201_200_409() -> None:
    """An adapter answers 201 to NEW, 200 to REPEAT and 409 to CONFLICT."""
    assert {verdict: verdict.status_hint for verdict in Verdict} == {
        Verdict.NEW: 201,
        Verdict.REPEAT: 200,
        Verdict.CONFLICT: 409,
    }


@given(_BACKUPS | _NOTIFICATIONS)
def test_nothing_stored_is_new(entry: BackupEntry | Notification) -> None:
    """With nothing stored under its identity, any entry is NEW."""
    facts = backup_facts(entry) if isinstance(entry, BackupEntry) else notification_facts(entry)
    assert classify(facts, None) is Verdict.NEW


@given(_same_identity())
def test_a_backup_is_a_repeat_iff_its_fingerprint_is_the_stored_one(
    pair: tuple[BackupEntry, BackupEntry],
) -> None:
    """Of one identity, REPEAT iff the wire JSON is identical, and CONFLICT otherwise."""
    stored, incoming = map(backup_facts, pair)
    assert stored.identity == incoming.identity
    identical = encode_backup(pair[0]) == encode_backup(pair[1])
    assert (stored.fingerprint == incoming.fingerprint) is identical
    expected = Verdict.REPEAT if identical else Verdict.CONFLICT
    assert classify(incoming, stored.fingerprint) is expected


@given(_same_identity())
def test_the_verdict_on_two_backups_does_not_depend_on_which_came_first(
    pair: tuple[BackupEntry, BackupEntry],
) -> None:
    """classify(b against a) is classify(a against b)."""
    first, second = map(backup_facts, pair)
    assert classify(second, first.fingerprint) is classify(first, second.fingerprint)


@given(_BACKUPS, _ZONES)
def test_the_same_instant_at_another_offset_is_a_conflict(
    entry: BackupEntry, zone: timezone
) -> None:
    """Re-sent at another UTC offset, a backup has its identity but is a CONFLICT."""
    moved = attrs.evolve(entry, timestamp=entry.timestamp.astimezone(zone))
    original, again = backup_facts(entry), backup_facts(moved)
    assert again.identity == original.identity
    expected = (
        Verdict.REPEAT
        if zone.utcoffset(None) == entry.timestamp.utcoffset()
        else (Verdict.CONFLICT)
    )
    assert classify(again, original.fingerprint) is expected


def test_a_respelled_name_at_the_same_instant_is_a_conflict() -> None:
    """SRV01 and srv01 are one device and one job, but different content: a CONFLICT."""
    respelled = attrs.evolve(ZURICH, device_name="ZÜRICH-01 ")
    original, again = backup_facts(ZURICH), backup_facts(respelled)
    assert again.identity == original.identity
    assert classify(again, original.fingerprint) is Verdict.CONFLICT


@given(_NOTIFICATIONS)
def test_an_identical_notification_is_a_repeat(notification: Notification) -> None:
    """A notification sent again, identical, is a REPEAT: its identity holds its fingerprint."""
    first, again = notification_facts(notification), notification_facts(notification)
    assert again.identity == first.identity
    assert classify(again, first.fingerprint) is Verdict.REPEAT


@given(_NOTIFICATIONS, _NOTIFICATIONS)
def test_notifications_share_an_identity_iff_their_wire_json_is_identical(
    one: Notification, other: Notification
) -> None:
    """A notification's identity is its content: so it is never a conflict."""
    same = encode_notification(one) == encode_notification(other)
    assert (notification_facts(one).identity == notification_facts(other).identity) is same


def test_a_foreign_fingerprint_for_a_notification_is_a_value_error() -> None:
    """A stored fingerprint that is not the notification's own was looked up wrongly: refused."""
    facts = notification_facts(NOTIFICATION_VECTORS[0].notification)
    with pytest.raises(ValueError, match="never conflicts"):
        classify(facts, bytes(32))


# --- arrival order --------------------------------------------------------------------------


T = TypeVar("T")


def _arrivals(entries: st.SearchStrategy[T]) -> st.SearchStrategy[tuple[list[T], list[T]]]:
    """Arrivals drawn from a few entries (so that some come again), and a reordering of them."""
    return (
        st.lists(entries, min_size=1, max_size=4)
        .flatmap(lambda pool: st.lists(st.sampled_from(pool), max_size=12))
        .flatmap(lambda arrivals: st.tuples(st.just(arrivals), st.permutations(arrivals)))
    )


def _arrive(
    arrivals: Sequence[BackupFacts | NotificationFacts],
) -> tuple[dict[object, bytes], list[tuple[object, Verdict]]]:
    """Feed arrivals to a dict-backed store; its contents and each (identity, verdict)."""
    stored: dict[object, bytes] = {}
    verdicts: list[tuple[object, Verdict]] = []
    for facts in arrivals:
        verdict = classify(facts, stored.get(facts.identity))
        if verdict is Verdict.NEW:
            stored[facts.identity] = facts.fingerprint
        verdicts.append((facts.identity, verdict))
    return stored, verdicts


def _check_order_independence(
    arrivals: list[BackupFacts | NotificationFacts],
    reordered: list[BackupFacts | NotificationFacts],
) -> None:
    """What two orders of the same arrivals have in common, fed to a dict-backed store.

    In every order the store (first writer wins):

    1. holds exactly the identities that arrived, each with its first arrival's content, and
       answered NEW once per identity;
    2. answered every later arrival of an identity REPEAT or CONFLICT, and some CONFLICT iff
       the identity arrived with two or more different contents (then it is "conflicted");
    3. for an identity that is not conflicted (every notification's, and a backup's that
       always came with one content), holds the same content and gave the same verdicts
       (NEW once, REPEAT for the rest) whatever the order.

    Only for a conflicted identity does the order matter: which content is kept, and how
    its later arrivals split between REPEAT and CONFLICT.
    """
    contents: dict[object, list[bytes]] = {}  # identity -> the fingerprints it arrives with
    for facts in arrivals:
        contents.setdefault(facts.identity, []).append(facts.fingerprint)
    conflicted = {identity for identity, seen in contents.items() if len(set(seen)) > 1}
    runs = [_arrive(arrivals), _arrive(reordered)]
    for order, (stored, verdicts) in zip([arrivals, reordered], runs, strict=True):
        first: dict[object, bytes] = {}
        for facts in order:
            first.setdefault(facts.identity, facts.fingerprint)
        assert stored == first  # 1
        count = Counter(verdicts)
        for identity, seen in contents.items():
            assert count[identity, Verdict.NEW] == 1  # 1
            later = count[identity, Verdict.REPEAT] + count[identity, Verdict.CONFLICT]
            assert later == len(seen) - 1  # 2
            assert (count[identity, Verdict.CONFLICT] > 0) is (identity in conflicted)  # 2
    (stored, verdicts), (stored_again, verdicts_again) = runs
    assert stored.keys() == stored_again.keys() == contents.keys()
    for identity in contents.keys() - conflicted:  # 3
        assert stored[identity] == stored_again[identity]
        mine = Counter(verdict for key, verdict in verdicts if key == identity)
        assert mine == Counter(verdict for key, verdict in verdicts_again if key == identity)
        assert mine == Counter({Verdict.NEW: 1, Verdict.REPEAT: len(contents[identity]) - 1})


@given(_arrivals(_FEW_BACKUPS))
def test_backup_arrivals_in_any_order_store_the_same_identities(
    lists: tuple[list[BackupEntry], list[BackupEntry]],
) -> None:
    """Backups in any order: the same identities, conflicts and unconflicted content and verdicts.

    Precisely the three points of _check_order_independence: only which content a conflicted
    identity keeps (its first arrival's) and its REPEAT/CONFLICT split depend on the order.
    """
    arrivals, reordered = lists
    _check_order_independence(
        [backup_facts(entry) for entry in arrivals],
        [backup_facts(entry) for entry in reordered],
    )


@given(_arrivals(_FEW_NOTIFICATIONS))
def test_notification_arrivals_in_any_order_end_the_same(
    lists: tuple[list[Notification], list[Notification]],
) -> None:
    """Notifications never conflict: in any order, the same store and the same verdicts."""
    arrivals, reordered = lists
    _check_order_independence(
        [notification_facts(entry) for entry in arrivals],
        [notification_facts(entry) for entry in reordered],
    )


def test_with_a_conflict_the_first_arrival_is_kept() -> None:
    """Why order matters only with conflicts: a, b, a and b, a, a keep different content."""
    a, b = (backup_facts(vector.entry) for vector in BACKUP_VECTORS[1:])
    stored, verdicts = _arrive([a, b, a])
    assert stored == {a.identity: a.fingerprint}
    assert [verdict for _, verdict in verdicts] == [Verdict.NEW, Verdict.CONFLICT, Verdict.REPEAT]
    stored, verdicts = _arrive([b, a, a])
    assert stored == {a.identity: b.fingerprint}
    assert [verdict for _, verdict in verdicts] == [Verdict.NEW, Verdict.CONFLICT, Verdict.CONFLICT]


# --- instants -------------------------------------------------------------------------------

_ANY_TIMESTAMPS = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001 - a day of margin for any offset
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001 - as min_value
    timezones=_ZONES,
)


@given(_ANY_TIMESTAMPS)
def test_join_inverts_split_with_the_offset(moment: datetime) -> None:
    """join_instant(*split_instant(dt)) is dt, at dt's own offset, in a fixed timezone."""
    joined = join_instant(*split_instant(moment))
    assert joined == moment
    assert joined.utcoffset() == moment.utcoffset()
    assert joined.replace(tzinfo=None) == moment.replace(tzinfo=None)
    assert type(joined.tzinfo) is timezone


@given(_ANY_TIMESTAMPS.map(split_instant))
def test_split_inverts_join(parts: tuple[int, int]) -> None:
    """split_instant(join_instant(us, offset)) is (us, offset)."""
    assert split_instant(join_instant(*parts)) == parts


@given(_ANY_TIMESTAMPS, _ANY_TIMESTAMPS)
def test_microseconds_sort_as_the_instants_do(one: datetime, other: datetime) -> None:
    """Comparing the integers compares the instants, whatever the offsets."""
    assert (split_instant(one)[0] < split_instant(other)[0]) is (one < other)


def test_split_gives_utc_microseconds_and_offset_minutes() -> None:
    """An instant before the epoch is negative; the offset is in minutes, west negative."""
    moment = datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-5)))
    assert split_instant(moment) == (5 * 3_600_000_000 - 1, -300)


def test_split_refuses_a_naive_datetime() -> None:
    """A naive datetime names no instant: ValueError that says to attach an offset."""
    with pytest.raises(ValueError, match="expected an aware datetime"):
        split_instant(datetime(2024, 6, 4, 12))  # noqa: DTZ001 - the point


def test_split_refuses_an_offset_with_seconds() -> None:
    """An offset that is not whole minutes cannot be stored in minutes: ValueError."""
    with pytest.raises(ValueError, match="not a whole number of minutes"):
        split_instant(datetime(2024, 6, 4, 12, tzinfo=timezone(timedelta(seconds=30))))
