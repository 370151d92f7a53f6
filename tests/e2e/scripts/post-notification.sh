#!/usr/bin/env bash
# Verbatim from the spec's "Post a Notification".
API_KEY="bm_your-api-key-here"
DEVICE=$(hostname)
JOBNAME="Job"
TIMESTAMP=$(date -u +"%Y-%m-%dT%H:%M:%S+00:00")
MESSAGE="This is a test."
SEVERITY="info"
TYPE="some_alert"

curl -i -X POST "https://ingest.backupmonitor.io/api/ingest/notification" \
  -H "Content-Type: application/json" \
  -H "X-Api-Key: $API_KEY" \
  -d '{
    "deviceName": "'"$DEVICE"'",
    "jobName": "'"$JOBNAME"'",
    "timestamp": "'"$TIMESTAMP"'",
    "message": "'"$MESSAGE"'",
    "sender": "'"script-$DEVICE"'",
    "severity": "'"$SEVERITY"'",
    "type": "'"$TYPE"'"
  }'
