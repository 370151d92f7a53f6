"""The read side over a real socket: filters, newest first, cursors, account isolation."""

from __future__ import annotations

import base64

from _harness import Client, RunningServer, assert_problem, backup, notification

BACKUP = "/api/ingest/backup"
NOTIFICATION = "/api/ingest/notification"


def seed(client: Client) -> None:
    """Five backups of two jobs on two devices, and two notifications."""
    for hour, (device, job, status) in enumerate(
        [
            ("srv01", "Nightly", "Success"),
            ("srv01", "Nightly", "Error"),
            ("srv02", "Weekly", "Warning"),
            ("srv01", "Nightly", "success"),
            ("srv02", "Weekly", "Partial"),
        ]
    ):
        reply = client.post(
            BACKUP,
            backup(
                deviceName=device,
                jobName=job,
                status=status,
                timestamp=f"2024-06-04T0{hour}:00:00Z",
                sender="s",
            ),
        )
        assert reply.status == 201, reply.body
    client.post(NOTIFICATION, notification(severity="info", type="a"))
    client.post(NOTIFICATION, notification(severity="critical", type="b", jobName="Nightly"))


def test_backups_newest_first(client: Client) -> None:
    """Backups are listed by timestamp, newest first, with their outcome."""
    seed(client)
    items = client.get("/api/backups").json["items"]
    assert [item["timestamp"] for item in items] == [
        f"2024-06-04T0{hour}:00:00+00:00" for hour in (4, 3, 2, 1, 0)
    ]
    assert [item["outcome"] for item in items] == [
        "Unknown",
        "Success",
        "Warning",
        "Error",
        "Success",
    ]


def test_backup_filters(client: Client) -> None:
    """deviceName, jobName, outcome (any case), status, since and until narrow the list."""
    seed(client)

    def ids(query: str) -> list[str]:
        reply = client.get(f"/api/backups?{query}")
        assert reply.status == 200, reply.body
        return [item["timestamp"][11:13] for item in reply.json["items"]]

    assert ids("deviceName=srv02") == ["04", "02"]
    assert ids("jobName=Nightly&outcome=success") == ["03", "00"]
    assert ids("status=Error") == ["01"]
    assert ids("since=2024-06-04T01:00:00Z&until=2024-06-04T03:00:00Z") == ["02", "01"]


def test_cursor_pagination_walks_every_entry_once(client: Client) -> None:
    """With limit=2 the cursors lead through all entries, each once, then nextCursor is null."""
    seed(client)
    seen: list[str] = []
    path = "/api/backups?limit=2"
    while True:
        page = client.get(path).json
        assert len(page["items"]) <= 2
        seen.extend(item["id"] for item in page["items"])
        if page["nextCursor"] is None:
            break
        path = f"/api/backups?limit=2&cursor={page['nextCursor']}"
    assert len(seen) == len(set(seen)) == 5


def test_jobs_devices_and_notifications(client: Client) -> None:
    """Jobs carry their latest entry; devices and notifications are listed with filters."""
    seed(client)
    jobs = {job["jobName"]: job for job in client.get("/api/jobs").json["items"]}
    assert set(jobs) == {"Nightly", "Weekly"}
    assert jobs["Nightly"]["latest"]["outcome"] == "Success"
    assert jobs["Weekly"]["latest"]["status"] == "Partial"
    devices = client.get("/api/devices").json["items"]
    assert {device["deviceName"] for device in devices} == {"srv01", "srv02"}
    critical = client.get("/api/notifications?severity=CRITICAL").json["items"]
    assert [item["type"] for item in critical] == ["b"]


def test_accounts_are_isolated(running: RunningServer) -> None:
    """A key of another account sees none of this account's data, with any filter."""
    seed(running.client)
    stranger = running.new_key("stranger")
    for path in (
        "/api/backups",
        "/api/backups?deviceName=srv01",
        "/api/notifications",
        "/api/jobs",
        "/api/devices",
    ):
        reply = running.client.get(path, key=stranger)
        assert reply.status == 200
        assert reply.json == {"items": [], "nextCursor": None}


def test_invalid_query_lists_every_problem(client: Client) -> None:
    """Bad limit, bad timestamp, bad outcome and unknown parameters: one 400 naming each."""
    reply = client.get("/api/backups?limit=0&since=yesterday&outcome=fine&colour=red")
    body = assert_problem(reply, 400, "invalid_query")
    assert {error["field"] for error in body["errors"]} == {"limit", "since", "outcome", "colour"}


def test_foreign_cursor_is_400(client: Client) -> None:
    """A cursor the server did not hand out is a 400, not a 500."""
    assert_problem(client.get("/api/backups?cursor=bm9wZQ"), 400, "invalid_query")


def test_first_format_cursor_is_400(client: Client) -> None:
    """A cursor as the server handed them out before version 2, (time, seq), is a 400, not a 500.

    Such cursors held a sequence shared by every account; a client may still hold one when a
    new version starts. It is refused with "start again without a cursor", in every list.
    """
    seed(client)
    for kind in ("backups", "notifications", "devices", "jobs"):
        assert client.get(f"/api/{kind}?limit=1").json["nextCursor"] is not None
        raw = f"{kind}:1717459200000000:3".encode("ascii")
        old = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        assert_problem(client.get(f"/api/{kind}?cursor={old}"), 400, "invalid_query")


def test_reading_needs_a_key(client: Client) -> None:
    """The read side is not public."""
    assert_problem(client.get("/api/backups", key=None), 401, "missing_api_key")


def test_location_of_a_created_entry_can_be_read(running: RunningServer) -> None:
    """The Location of a 201 answers GET with that entry; other accounts get 404."""
    client = running.client
    for path, payload in ((BACKUP, backup()), (NOTIFICATION, notification())):
        created = client.post(path, payload)
        location = created.headers["location"]
        reply = client.get(location)
        assert reply.status == 200, reply.body
        assert reply.json["id"] == created.json["id"]
        assert reply.json["deviceName"] == "srv01"
        stranger = running.new_key("stranger")
        assert_problem(client.get(location, key=stranger), 404, "not_found")
    assert_problem(client.get("/api/backups/bk_nope"), 404, "not_found")
