#!/usr/bin/env bash
# Cluster mode's measured targets (issue 12) in one sitting, beside the single node on its local WAL:
# acquire+release pairs/s (unary and over session streams) and admin commands/s at 256 in flight, each
# change durable before it is answered, with the standbys' lag sampled through every cluster run.
#
#   one etcd 3.4 and three nodes pinned to core 0, `seatbroker bench` pinned to core 1,
#   256 in flight over 8 connections; then one node on its local WAL the same way.
#
# Usage: docs/cluster_measure.sh [OUT_DIR]     (run from anywhere; run it in a quiet sitting, then
#        /work/shared/peers/run_peers.sh for etcd's own lease+txn semaphore: the target is >= 20x it)
# Environment: SEATBROKER_BIN (default: target/release/seatbroker of this repository, built if absent),
#              ETCD (default: etcd on PATH), DURATION (default 6s), WARMUP (default 2s).
# Prints one line a run and writes the bench reports (JSON) and the lag samples to OUT_DIR.
# Everything listens on 127.0.0.1 only; every process started here is stopped by its pid (also on
# error or Ctrl-C); every bench run is bounded by `timeout`, and the whole script by about 3 minutes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$(mktemp -d /tmp/seatbroker-cluster-measure.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/seatbroker-cluster-work.XXXXXX)
BIN=${SEATBROKER_BIN:-$HERE/target/release/seatbroker}
ETCD=${ETCD:-etcd}
DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-2s}
export SEATBROKER_OPERATOR_KEY=sbop_measure_0123456789abcdef0123456789abcdef
ETCD_PORT=23790 ETCD_PEER_PORT=23800
GRPC_PORTS=(50800 50801 50802) METRICS_PORTS=(50900 50901 50902)
LOCAL_PORT=50810

if [ ! -x "$BIN" ]; then (cd "$HERE" && cargo build --release --quiet); fi
command -v "$ETCD" >/dev/null || { echo "etcd not found: apt-get install etcd-server, or set ETCD" >&2; exit 1; }

STARTED=()
stop() { # stop one process by pid: SIGTERM, then SIGKILL after 5 s
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
stop_all() {
  local pid
  for pid in "${STARTED[@]}"; do stop "$pid"; done
  STARTED=()
}
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

metric() { # metric PORT NAME: the value of gauge NAME on the /metrics at PORT, or empty
  curl -s --max-time 1 "http://127.0.0.1:$1/metrics" | awk -v name="$2" '$1 == name { print $2 }'
}

wait_for() { # wait_for SECONDS COMMAND...: until COMMAND succeeds, at most SECONDS
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || { echo "gave up waiting for: $*" >&2; return 1; }
    sleep 0.2
  done
}

bench() { # bench NAME PID ADDR ARGS...: one bounded run, its JSON report in OUT/NAME.json
  local name=$1 pid=$2 addr=$3; shift 3
  timeout 120 taskset -c 1 "$BIN" bench --addr "$addr" --in-flight 256 --connections 8 \
    --server-pid "$pid" --duration "$DURATION" --warmup "$WARMUP" --json --quiet "$@" >"$OUT/$name.json"
  python3 - "$OUT/$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = r.get("cpu_per_op", {}).get("server_us")
methods = ", ".join(f"{m} {v['count']}" for m, v in r["methods"].items())
print(f"{sys.argv[2]:28} {r['ops_per_sec']:>10.0f} ops/s  p50 {r['latency_us']['p50']:>7} us  "
      f"p99 {r['latency_us']['p99']:>7} us  server cpu/op {cpu if cpu is None else round(cpu, 1)} us  "
      f"errors {r['errors_total']}  ({methods})")
PY
}

sample_lag() { # sample_lag LEADER FILE: every 200 ms, each standby's commit groups behind the leader
  local leader=$1 file=$2 i written applied
  while true; do
    written=$(metric "${METRICS_PORTS[$leader]}" seatbroker_cluster_applied_seq)
    for i in 0 1 2; do
      [ "$i" = "$leader" ] && continue
      applied=$(metric "${METRICS_PORTS[$i]}" seatbroker_cluster_applied_seq)
      [ -n "$written" ] && [ -n "$applied" ] && echo "$i $written $applied" >>"$file"
    done
    sleep 0.2
  done
}

lag_summary() { # lag_summary FILE: p50, p99 and max of the standbys' lag
  python3 - "$1" <<'PY'
import sys
lags = sorted(max(0, int(float(w)) - int(float(a))) for _, w, a in (l.split() for l in open(sys.argv[1])))
if not lags:
    print("  standby lag: no samples"); sys.exit()
pick = lambda p: lags[round((len(lags) - 1) * p)]
print(f"  standby lag: {len(lags)} samples, p50 {pick(0.5)}, p99 {pick(0.99)}, max {lags[-1]} commit groups behind")
PY
}

cluster_bench() { # cluster_bench NAME ARGS...: a bench run on the leader with the lag sampled
  local name=$1; shift
  : >"$OUT/$name.lag"
  sample_lag "$LEADER" "$OUT/$name.lag" & local sampler=$!
  STARTED+=("$sampler")
  bench "$name" "$LEADER_PID" "http://127.0.0.1:${GRPC_PORTS[$LEADER]}" "$@"
  stop "$sampler"
  lag_summary "$OUT/$name.lag"
}

echo "seatbroker cluster measurement, $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg), $("$BIN" --version 2>/dev/null || true)"
echo "reports in $OUT"

# --- cluster: etcd and three nodes on core 0 ---
taskset -c 0 "$ETCD" --name measure --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "measure=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new >"$OUT/etcd.log" 2>&1 &
STARTED+=($!)
wait_for 30 curl -sf --max-time 1 "http://127.0.0.1:$ETCD_PORT/health"
NODE_PIDS=()
for i in 0 1 2; do
  taskset -c 0 "$BIN" serve --listen "127.0.0.1:${GRPC_PORTS[$i]}" --metrics-listen "127.0.0.1:${METRICS_PORTS[$i]}" \
    --data-dir "$WORK/n$i" --log-filter "warn,seatbroker::server=info" \
    --etcd-endpoints "http://127.0.0.1:$ETCD_PORT" --cluster-name measure --node-name "n$i" \
    --advertise-addr "127.0.0.1:${GRPC_PORTS[$i]}" >"$OUT/n$i.log" 2>&1 &
  STARTED+=($!); NODE_PIDS+=($!)
  wait_for 30 curl -sf --max-time 1 "http://127.0.0.1:${METRICS_PORTS[$i]}/metrics"
done
# The leader: the node that logged "seatbroker serving" (a standby says it only once elected).
LEADER=""
until_s=$((SECONDS + 60))
while [ -z "$LEADER" ] && [ $SECONDS -lt $until_s ]; do
  for i in 0 1 2; do
    if grep -q "seatbroker serving" "$OUT/n$i.log" 2>/dev/null; then LEADER=$i; break; fi
  done
  [ -n "$LEADER" ] || sleep 0.2
done
[ -n "$LEADER" ] || { echo "no leader within 60 s" >&2; exit 1; }
LEADER_PID=${NODE_PIDS[$LEADER]}
echo "== cluster: etcd and 3 nodes on core 0, leader n$LEADER (pid $LEADER_PID), bench on core 1"
cluster_bench cluster-unary-acquire-release --workload acquire-release
cluster_bench cluster-stream-acquire-release --protocol stream --workload acquire-release --engines 256 --streams 1 --batch 64
cluster_bench cluster-unary-admin --workload admin
echo "  etcd: $(curl -s --max-time 2 -X POST "http://127.0.0.1:$ETCD_PORT/v3/maintenance/status" -d '{}' || true)"
stop_all

# --- the single node on its local WAL, the same way ---
echo "== local WAL: one node on core 0, bench on core 1"
taskset -c 0 "$BIN" serve --listen "127.0.0.1:$LOCAL_PORT" --data-dir "$WORK/local" --log-filter warn >"$OUT/local.log" 2>&1 &
LOCAL_PID=$!; STARTED+=($LOCAL_PID)
wait_for 30 "$BIN" org list --addr "http://127.0.0.1:$LOCAL_PORT" --key "$SEATBROKER_OPERATOR_KEY"
bench local-unary-acquire-release "$LOCAL_PID" "http://127.0.0.1:$LOCAL_PORT" --workload acquire-release
bench local-stream-acquire-release "$LOCAL_PID" "http://127.0.0.1:$LOCAL_PORT" --protocol stream --workload acquire-release --engines 256 --streams 1 --batch 64
bench local-unary-admin "$LOCAL_PID" "http://127.0.0.1:$LOCAL_PORT" --workload admin
stop_all
echo "pairs/s = acquire-release ops/s / 2 (unary: two calls a pair; stream: two operations a pair)."
echo "admin commands/s = the admin run's ops/s (add-member and remove-member, each durable)."
