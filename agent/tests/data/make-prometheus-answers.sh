#!/usr/bin/env bash
# Regenerates prometheus-vector.json and prometheus-matrix.json: a real Prometheus's
# answers (an instant query over two connection series, a range query over an
# agent's presence), the report's decoder tests and the report_answer fuzz seeds.
# Run from this directory: ./make-prometheus-answers.sh  (needs prometheus, promtool,
# curl, python3; listens on 127.0.0.1:19149).
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
work=$(mktemp -d)
trap 'kill "$(cat "$work/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
now=$(( $(date +%s) / 60 * 60 ))
python3 - "$now" > om.txt <<'PY'
import sys
now = int(sys.argv[1])
lab = ('reporter="destination",source_workload="web",source_workload_namespace="shop",'
       'destination_workload="checkout",destination_workload_namespace="pay",destination_port="8443",'
       'connection_security_policy="%s",expected_security_policy="mutual_tls",verdict="%s",'
       'instance="node-1:9477",job="mtls-auditor"')
print("# TYPE mtls_auditor_connections counter")
for t in range(now - 1800, now - 60, 60):
    print('mtls_auditor_connections_total{%s} %d %d' % (lab % ("mutual_tls", "compliant"), (t - now + 1800) // 120, t))
for t in range(now - 900, now - 60, 60):
    print('mtls_auditor_connections_total{%s} 1 %d' % (lab % ("none", "rejected"), t))
print("# TYPE mtls_auditor_build_info gauge")
for t in range(now - 1800, now - 60, 60):
    print('mtls_auditor_build_info{version="0.1.0",rustc="1.99.1",instance="node-1:9477",job="mtls-auditor"} 1 %d' % t)
print("# EOF")
PY
promtool tsdb create-blocks-from openmetrics --quiet om.txt data
printf 'global:\n  scrape_interval: 15s\n' > p.yml
prometheus --config.file=p.yml --storage.tsdb.path=data --web.listen-address=127.0.0.1:19149 >/dev/null 2>&1 &
echo $! > pid
for _ in $(seq 100); do curl -sf 127.0.0.1:19149/-/ready >/dev/null && break; sleep 0.1; done
curl -sS 127.0.0.1:19149/api/v1/query --data-urlencode 'query=last_over_time(mtls_auditor_connections_total[30m])' \
    --data-urlencode "time=$now" > "$here/prometheus-vector.json"
curl -sS 127.0.0.1:19149/api/v1/query_range --data-urlencode 'query=count by (instance) (count_over_time(mtls_auditor_build_info[5m]))' \
    --data-urlencode "start=$((now - 600))" --data-urlencode "end=$now" --data-urlencode "step=120s" > "$here/prometheus-matrix.json"
