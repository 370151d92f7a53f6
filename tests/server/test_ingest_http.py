"""The ingest endpoints over a real socket: every status code of the contract."""

from __future__ import annotations

import gzip
import json
import logging
from typing import Any

import pytest
from _harness import START, Client, RunningServer, assert_problem, backup, notification

from bmserver import BackupQuery, NotificationQuery, Scope

BACKUP = "/api/ingest/backup"
NOTIFICATION = "/api/ingest/notification"


def stored_backups(running: RunningServer) -> int:
    """How many backups the store holds for the fixture's account."""
    key = running.call(
        running.store.find_api_key(__import__("bmcore").hash_api_key(running.client.api_key))
    )
    page = running.call(
        running.store.list_backups(key.account_id, BackupQuery(), limit=1000, cursor=None)
    )
    return len(page.items)


# --- 201, 200 and 409 ---------------------------------------------------------------------


def test_backup_is_created_with_location_and_matching(client: Client) -> None:
    """A valid backup gets 201, a Location, the new device and job, and the outcome."""
    reply = client.post(BACKUP, backup())
    assert reply.status == 201, reply.body
    body = reply.json
    assert body["kind"] == "backup"
    assert body["duplicate"] is False
    assert body["outcome"] == "Success"
    assert body["device"]["created"] is True
    assert body["job"]["created"] is True
    assert body["warnings"] == []
    assert body["ignoredFields"] == []
    assert body["receivedAt"].startswith("2024-06-04T12:00:00")
    assert reply.headers["location"] == f"/api/backups/{body['id']}"


def test_second_job_on_the_same_device_reuses_the_device(client: Client) -> None:
    """Device and job are created only the first time their matching key is seen."""
    first = client.post(BACKUP, backup()).json
    second = client.post(BACKUP, backup(jobName="Weekly", timestamp="2024-06-04T11:00:00Z")).json
    assert second["device"] == {"id": first["device"]["id"], "created": False}
    assert second["job"]["created"] is True
    assert second["job"]["id"] != first["job"]["id"]
    # The same job again, case and spacing aside: matched, not created.
    third = client.post(
        BACKUP, backup(jobName=" nightly  FULL backup", timestamp="2024-06-04T10:00:00Z")
    ).json
    assert third["job"] == {"id": first["job"]["id"], "created": False}


def test_identical_repeat_is_200_with_the_original_id(running: RunningServer) -> None:
    """Posting the same backup again (curl --retry) returns 200, the same id, stores nothing."""
    client = running.client
    first = client.post(BACKUP, backup())
    again = client.post(BACKUP, backup())
    assert (first.status, again.status) == (201, 200)
    assert again.json["id"] == first.json["id"]
    assert again.json["duplicate"] is True
    assert stored_backups(running) == 1


def test_same_job_and_timestamp_with_other_content_is_409(running: RunningServer) -> None:
    """A different status for the same job and timestamp is a conflict naming the original."""
    client = running.client
    first = client.post(BACKUP, backup()).json
    reply = client.post(BACKUP, backup(status="Error"))
    body = assert_problem(reply, 409, "conflict")
    assert body["existingId"] == first["id"]
    assert stored_backups(running) == 1


def test_notification_with_and_without_job(client: Client) -> None:
    """A notification names a job only when it has a jobName."""
    plain = client.post(NOTIFICATION, notification())
    assert plain.status == 201, plain.body
    assert "job" not in plain.json
    assert "outcome" not in plain.json
    with_job = client.post(NOTIFICATION, notification(jobName="Nightly", type="other"))
    assert with_job.status == 201
    assert with_job.json["job"]["created"] is True
    assert client.post(NOTIFICATION, notification()).json["duplicate"] is True


def test_warnings_and_ignored_fields_are_reported(client: Client) -> None:
    """Unknown status and unknown fields come back as warnings and ignoredFields."""
    reply = client.post(BACKUP, backup(status="Partial", extra=1))
    assert reply.status == 201
    assert [w["code"] for w in reply.json["warnings"]] == ["unknown_status"]
    assert reply.json["outcome"] == "Unknown"
    assert reply.json["ignoredFields"] == ["extra"]


# --- 400 ------------------------------------------------------------------------------------


def test_invalid_json_is_400_invalid_json(running: RunningServer) -> None:
    """A body that is not JSON is refused with code invalid_json, and nothing is stored."""
    reply = running.client.request("POST", BACKUP, b'{"deviceName": "srv01",')
    body = assert_problem(reply, 400, "invalid_json")
    assert body["errors"][0]["code"] == "invalid_json"
    assert stored_backups(running) == 0


def test_every_field_error_is_listed(running: RunningServer) -> None:
    """validation_failed lists every bad field with its pointer and code."""
    reply = running.client.post(
        BACKUP, backup(deviceName="", timestamp="2024-06-04T14:00:00", status=None)
    )
    body = assert_problem(reply, 400, "validation_failed")
    found = {(error["field"], error["code"]) for error in body["errors"]}
    assert found == {
        ("/deviceName", "blank"),
        ("/timestamp", "missing_utc_offset"),
        ("/status", "missing"),
    }
    assert all("message" in error for error in body["errors"])
    assert stored_backups(running) == 0


# --- 401, 403 and key handling --------------------------------------------------------------


def test_missing_key_is_401_missing_api_key(client: Client) -> None:
    """No X-Api-Key header: 401 with its own code."""
    assert_problem(client.post(BACKUP, backup(), key=None), 401, "missing_api_key")


def test_key_in_the_query_string_is_not_accepted(client: Client) -> None:
    """A key in the URL is refused (it would end up in logs), and the detail says so."""
    reply = client.post(f"{BACKUP}?api_key={client.api_key}", backup(), key=None)
    body = assert_problem(reply, 401, "missing_api_key")
    assert "URL" in body["detail"]
    assert client.api_key not in reply.body.decode()


@pytest.mark.parametrize("key", ["not-a-key", "bm_" + "A" * 43])
def test_invalid_key_is_401_invalid_api_key(client: Client, key: str) -> None:
    """A malformed or unknown key: 401 with a code distinct from a missing one."""
    reply = client.post(BACKUP, backup(), key=key)
    assert_problem(reply, 401, "invalid_api_key")
    assert key not in reply.body.decode()


def test_key_without_the_scope_is_403(running: RunningServer) -> None:
    """A read-only key may not ingest; an ingest-only key may not read."""
    reader = running.new_key(scopes={Scope.READ})
    writer = running.new_key(scopes={Scope.INGEST})
    assert_problem(running.client.post(BACKUP, backup(), key=reader), 403, "insufficient_scope")
    assert_problem(running.client.get("/api/backups", key=writer), 403, "insufficient_scope")
    assert running.client.post(BACKUP, backup(), key=writer).status == 201


def test_revoked_key_stops_working_at_once(running: RunningServer) -> None:
    """After revocation the very next request is refused."""
    key = running.new_key()
    assert running.client.post(BACKUP, backup(), key=key).status == 201
    running.call(running.store.revoke_api_key(key[:11], now=START))
    assert_problem(running.client.post(BACKUP, backup(), key=key), 401, "invalid_api_key")


def test_failed_authentication_is_rate_limited_per_address(running: RunningServer) -> None:
    """After 10 bad keys from one address even a good key is refused with 429 for a while."""
    client = running.client
    for _ in range(10):
        assert client.post(BACKUP, backup(), key="bm_" + "B" * 43).status == 401
    locked = client.post(BACKUP, backup())
    body = assert_problem(locked, 429, "rate_limited")
    assert "authentication" in body["detail"]
    assert int(locked.headers["retry-after"]) >= 1
    running.clock.advance(6)
    assert client.post(BACKUP, backup()).status == 201


# --- 413, 415 and content handling ----------------------------------------------------------


def test_body_over_64_kib_is_413(running: RunningServer) -> None:
    """A body over the cap is refused, whether its length is declared or not."""
    big = json.dumps(backup(message="x" * 70_000)).encode()
    assert_problem(running.client.request("POST", BACKUP, big), 413, "payload_too_large")

    def chunks() -> Any:
        yield big

    # An iterable body: http.client sends it chunked, with no Content-Length.
    chunked = running.client.request("POST", BACKUP, chunks())
    assert_problem(chunked, 413, "payload_too_large")
    assert stored_backups(running) == 0


def test_gzip_body_is_accepted(client: Client) -> None:
    """Content-Encoding: gzip is decompressed before decoding."""
    body = gzip.compress(json.dumps(backup()).encode())
    reply = client.request("POST", BACKUP, body, headers={"Content-Encoding": "gzip"})
    assert reply.status == 201, reply.body


def test_gzip_bomb_is_413_after_decompression(client: Client) -> None:
    """A small gzip body that inflates past the cap is refused, never inflated in full."""
    bomb = gzip.compress(b'{"message": "' + b"x" * 10_000_000 + b'"}')
    assert len(bomb) < 64 * 1024
    reply = client.request("POST", BACKUP, bomb, headers={"Content-Encoding": "gzip"})
    assert_problem(reply, 413, "payload_too_large")


def test_corrupt_gzip_is_400(client: Client) -> None:
    """A body that claims gzip but is not gzip is a clear 400."""
    reply = client.request("POST", BACKUP, b"not gzip", headers={"Content-Encoding": "gzip"})
    assert_problem(reply, 400, "invalid_json")


def test_unsupported_encoding_is_415(client: Client) -> None:
    """An encoding other than gzip is refused with 415."""
    reply = client.request("POST", BACKUP, b"{}", headers={"Content-Encoding": "br"})
    assert_problem(reply, 415, "unsupported_media_type")


@pytest.mark.parametrize("media", ["application/xml", "multipart/form-data; boundary=x"])
def test_clearly_not_json_content_type_is_415(client: Client, media: str) -> None:
    """A content type that is clearly not JSON is refused."""
    reply = client.post(BACKUP, backup(), headers={"Content-Type": media})
    assert_problem(reply, 415, "unsupported_media_type")


@pytest.mark.parametrize("media", ["", "application/x-www-form-urlencoded"])
def test_json_without_json_content_type_is_accepted_with_a_warning(
    client: Client, media: str
) -> None:
    """Curl -d without -H Content-Type still works, and the response says how to fix it."""
    reply = client.post(BACKUP, backup(), headers={"Content-Type": media})
    assert reply.status == 201, reply.body
    assert reply.json["warnings"][0]["code"] == "content_type"


# --- 404, 405, health, OpenAPI --------------------------------------------------------------


def test_unknown_path_is_404_problem(client: Client) -> None:
    """Unknown paths answer with a problem, not a bare text page."""
    assert_problem(client.get("/api/nothing"), 404, "not_found")


def test_wrong_method_is_405_problem_with_allow(client: Client) -> None:
    """GET on an ingest endpoint is 405 with an Allow header."""
    reply = client.get(BACKUP)
    assert_problem(reply, 405, "method_not_allowed")
    assert reply.headers["allow"] == "POST"


def test_healthz(client: Client) -> None:
    """GET /healthz answers 200 without a key."""
    reply = client.get("/healthz", key=None)
    assert (reply.status, reply.json) == (200, {"status": "ok"})


def test_openapi_describes_both_ingest_endpoints(client: Client) -> None:
    """/openapi.json is OpenAPI 3.1 with both endpoints, their fields, limits and responses."""
    document = client.get("/openapi.json", key=None).json
    assert document["openapi"] == "3.1.0"
    for path in (BACKUP, NOTIFICATION):
        responses = document["paths"][path]["post"]["responses"]
        assert set(responses) == {
            *("200", "201", "400", "401", "403", "408", "409", "413", "415", "429", "503")
        }
    schemas = document["components"]["schemas"]
    assert schemas["BackupEntry"]["required"] == [
        "deviceName",
        "jobName",
        "timestamp",
        "status",
        "message",
    ]
    assert schemas["BackupEntry"]["properties"]["deviceName"]["maxLength"] == 255
    assert set(schemas["Notification"]["properties"]["severity"]["enum"]) == {
        "info",
        "warning",
        "error",
        "critical",
    }


def test_notifications_are_listed_for_the_account(running: RunningServer) -> None:
    """What was accepted can be found through the store."""
    running.client.post(NOTIFICATION, notification())
    key = running.call(
        running.store.find_api_key(__import__("bmcore").hash_api_key(running.client.api_key))
    )
    page = running.call(
        running.store.list_notifications(key.account_id, NotificationQuery(), limit=10, cursor=None)
    )
    assert [item.notification.type for item in page.items] == ["disk_space_low"]


def test_access_log_names_the_key_prefix_never_the_key(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Each request is logged with path, status and key prefix; no key or body is logged."""
    caplog.set_level(logging.INFO, logger="bmserver.access")
    client.post(BACKUP, backup(message="secret-body-text"))
    client.post(f"{BACKUP}?api_key={client.api_key}", backup(), key=None)
    lines = [record.getMessage() for record in caplog.records]
    assert any(f'/api/ingest/backup" 201 key={client.api_key[:11]}' in line for line in lines)
    assert any('" 401 key=-' in line for line in lines), lines
    everything = "\n".join(lines)
    assert client.api_key not in everything
    assert "secret-body-text" not in everything
