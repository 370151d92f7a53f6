#!/usr/bin/env bash

API_KEY="bm_your-api-key-here"
HOSTNAME=$(hostname)
WARNING_THRESHOLD=20  # % free
ERROR_THRESHOLD=10    # % free

OS="$(uname -s)"

get_mounts() {
  case "$OS" in
    Darwin)
      # Only the root APFS volume and /System/Volumes/Data represent real user space.
      # Skip simulator volumes and other APFS containers.
      df -P | awk 'NR>1' | grep -E "^/dev/" | grep -vE "CoreSimulator|Preboot|Update|xarts|iSCPreboot|Hardware|/VM$"
      ;;
    Linux)
      df -P | awk 'NR>1' | grep -E "^/dev/"
      ;;
    *)
      df -P | awk 'NR>1' | grep -E "^/dev/"
      ;;
  esac
}

get_mounts | while read -r filesystem size used avail pct mount; do
   used_pct=${pct%%%}
   free_pct=$((100 - used_pct))

    if [ "$free_pct" -le "$ERROR_THRESHOLD" ]; then
        severity="error"
    elif [ "$free_pct" -le "$WARNING_THRESHOLD" ]; then
        severity="warning"
    else
        echo "[ok] $mount ($filesystem): ${free_pct}% free — skipping"
        continue
    fi

    curl -X POST "https://ingest.backupmonitor.io/api/ingest/notification" \
      -H "Content-Type: application/json" \
      -H "X-Api-Key: $API_KEY" \
      -d '{
        "deviceName": "'"$HOSTNAME"'",
        "timestamp": "'"$(date -u +"%Y-%m-%dT%H:%M:%S+00:00")"'",
        "message": "'"Drive $mount ($filesystem) has only ${free_pct}% free space remaining."'",
        "sender": "'"disk-monitor"'",
        "severity": "'"$severity"'",
        "type": "'"disk_space_low"'"
      }'
    echo "[$severity] $mount ($filesystem): ${free_pct}% free — notification sent"
done
