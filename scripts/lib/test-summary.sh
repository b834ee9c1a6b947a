#!/usr/bin/env bash
# Prints what ran, by kind, from the output of `cargo test` runs (scripts/test.sh):
# which test binary a result belongs to is read from cargo's "Running …" lines.
# The last line is the total, as "total: N passed, N failed".
set -euo pipefail
rows=$(awk '
  BEGIN { kind = "unit" }
  /^     Running / {
    bin = ($2 == "unittests") ? $3 : $2
    if (FILENAME ~ /integration/) {
      n = bin; sub(/^tests\//, "", n); sub(/\/main\.rs$/, "", n); sub(/\.rs$/, "", n)
      kind = "integration: " n
    }
    else if (bin ~ /tests\/libvirt_|tests\/nft_isolation/) kind = "agent on real libvirt / nftables"
    else if (bin ~ /tests\/ansible_cli/) kind = "ansible-core (ansible_cli)"
    else kind = "unit"
    next
  }
  /^   Doc-tests / { kind = "doc"; next }
  /^test .* \.\.\. ok$/ {
    k = kind
    if (k == "unit" && $2 ~ /::postgres/) k = "unit: PostgreSQL store runs"
    passed[k]++; seen[k] = 1
  }
  /^test .* \.\.\. FAILED$/ { failed[kind]++; seen[kind] = 1 }
  /^test .* \.\.\. ignored/ { ignored[kind]++; seen[kind] = 1 }
  END {
    for (k in seen) printf "%-40s|%d|%d|%d\n", k, passed[k], failed[k], ignored[k]
  }
' "$@" | sort)
printf '\n%-40s %7s %7s %8s\n' kind passed failed ignored
total=0 failed=0
while IFS='|' read -r kind p f i; do
  [[ -n "$kind" ]] || continue
  printf '%-40s %7d %7d %8d\n' "$kind" "$p" "$f" "$i"
  total=$((total + p)) failed=$((failed + f))
done <<<"$rows"
echo "total: $total passed, $failed failed"
