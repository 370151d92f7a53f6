#!/usr/bin/env bash
# Verbatim from the spec's "Report a Backup Job Result".
API_KEY="bm_your-api-key-here"
DEVICE=$(hostname)
JOBNAME="Nightly Full Backup"
JOBSTATUS="Success"
TIMESTAMP=$(date -u +"%Y-%m-%dT%H:%M:%S+00:00")
MESSAGE="Backup completed. 142 GB transferred."

curl -i -X POST "https://ingest.backupmonitor.io/api/ingest/backup" \
  -H "Content-Type: application/json" \
  -H "X-Api-Key: $API_KEY" \
  -d '{
    "deviceName": "'"$DEVICE"'",
    "jobName": "'"$JOBNAME"'",
    "timestamp": "'"$TIMESTAMP"'",
    "status": "'"$JOBSTATUS"'",
    "message": "'"$MESSAGE"'",
    "sender": "'"script-$DEVICE"'"
  }'
