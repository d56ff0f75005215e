#!/usr/bin/env bash
# Validates the monitoring assets in deploy/ (run by CI; see deploy/README.md):
#   1. promtool check rules  deploy/prometheus/alerts.yml
#   2. promtool test rules   deploy/prometheus/alerts_test.yml
#   3. every PromQL expression in alerts.yml and deploy/grafana/genesis-billing.json uses only metric names
#      (and label names) declared in crates/genesis-billing/src/metrics.rs, and the dashboard is well formed.
#
# Installs promtool (Debian/Ubuntu package `prometheus`) and PyYAML (`python3-yaml`) with apt when missing.
# Set PROMTOOL=/path/to/promtool to use another binary. Works from any directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

METRICS_RS=crates/genesis-billing/src/metrics.rs
ALERTS=deploy/prometheus/alerts.yml
ALERTS_TEST=deploy/prometheus/alerts_test.yml
DASHBOARD=deploy/grafana/genesis-billing.json

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    SUDO=(sudo)
fi

# apt_install PACKAGE...: installs without recommends, refreshing the package lists first only when apt
# does not know a package yet (a fresh container has no lists at all).
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "check.sh: apt-get not found; install $* yourself (or set PROMTOOL)" >&2
        exit 1
    fi
    local pkg
    for pkg in "$@"; do
        if ! apt-cache show "$pkg" >/dev/null 2>&1; then
            echo "--- apt-get update"
            "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
            break
        fi
    done
    echo "--- apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

PROMTOOL=${PROMTOOL:-promtool}
if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
    start=$SECONDS
    apt_install prometheus
    # The package also ships the Prometheus server; where systemd started it, stop it again: only promtool
    # is wanted here.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus.service 2>/dev/null; then
        "${SUDO[@]}" systemctl disable --now prometheus.service || true
    fi
    echo "--- promtool installed in $((SECONDS - start)) s"
    PROMTOOL=promtool
fi
if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-yaml
elif ! python3 -c 'import yaml' >/dev/null 2>&1; then
    apt_install python3-yaml
fi

echo "--- $("$PROMTOOL" --version 2>&1 | head -n 1)"

echo "--- promtool check rules $ALERTS"
"$PROMTOOL" check rules "$ALERTS"

echo "--- promtool test rules $ALERTS_TEST"
"$PROMTOOL" test rules "$ALERTS_TEST"

echo "--- metric names, labels and dashboard structure"
python3 - "$METRICS_RS" "$ALERTS" "$DASHBOARD" <<'PY'
import json
import re
import sys

import yaml

metrics_rs, alerts_path, dashboard_path = sys.argv[1:4]
errors = []

# --- The families the service exports: the `name: "..."` entries of FAMILIES in metrics.rs. ---------------
src = open(metrics_rs, encoding="utf-8").read()
block = re.search(r"const FAMILIES: &\[FamilyDef\] = &\[(.*?)\n\];", src, re.S)
if not block:
    sys.exit(f"{metrics_rs}: FAMILIES table not found")
families = re.findall(
    r'name:\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)",\s*kind:\s*Kind::(\w+),.*?labels:\s*&\[([^\]]*)\]', block.group(1), re.S
)
if len(families) != block.group(1).count("FamilyDef {"):
    sys.exit(f"{metrics_rs}: could not parse every FamilyDef entry")

TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time
series = {}  # exposed series name -> allowed label names
for name, kind, labels in families:
    names = set(re.findall(r'"([^"]+)"', labels)) | TARGET_LABELS
    if kind == "Histogram":
        series[name + "_bucket"] = names | {"le"}
        series[name + "_sum"] = names
        series[name + "_count"] = names
    else:
        series[name] = names

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "offset", "bool", "inf", "nan", "start", "end"}


def check_expr(where, expr):
    """Checks one PromQL expression; returns the label names its result may carry."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'|`[^`]*`", '""', expr)
    used = []
    for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}", e):
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if label == "__name__":
                errors.append(f"{where}: __name__ matchers are not supported by this check")
            elif name in series and label not in series[name]:
                errors.append(f"{where}: {name} has no label {label!r} (labels: {sorted(series[name])})")
    e = re.sub(r"\{[^{}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    grouping = []
    for _, labels in re.findall(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        grouping += [l.strip() for l in labels.split(",") if l.strip()]
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    for m in re.finditer(r"(?<![\w.$:])([a-zA-Z_:][a-zA-Z0-9_:]*)", e):
        ident = m.group(1)
        if e[m.end():].lstrip().startswith("(") or ident.lower() in KEYWORDS:
            continue  # function or aggregation, or a keyword
        if ident in series:
            used.append(ident)
        else:
            hint = [s for s in series if s.startswith(ident) or ident.startswith(s)]
            errors.append(f"{where}: unknown metric {ident!r}" + (f" (did you mean {hint[0]}?)" if hint else ""))
    if not used and not any(x.startswith(where + ": unknown metric") for x in errors):
        errors.append(f"{where}: expression uses no metric of the service: {expr.strip()}")
    allowed = set().union(*(series[u] for u in used)) if used else set()
    for label in grouping:
        if allowed and label not in allowed:
            errors.append(f"{where}: grouping label {label!r} is not a label of {sorted(set(used))}")
    return allowed, set(used)


# --- alerts.yml --------------------------------------------------------------------------------------------
rules_doc = yaml.safe_load(open(alerts_path, encoding="utf-8"))
alert_count = 0
for group in rules_doc.get("groups", []):
    for rule in group.get("rules", []):
        name = rule.get("alert") or rule.get("record")
        where = f"{alerts_path}: {name}"
        allowed, _ = check_expr(where, rule["expr"])
        alert_count += 1
        for text in (rule.get("annotations") or {}).values():
            for label in re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text):
                if label not in allowed and label not in (rule.get("labels") or {}):
                    errors.append(f"{where}: annotation uses $labels.{label}, which the expression does not have")

# --- genesis-billing.json ----------------------------------------------------------------------------------
dash = json.load(open(dashboard_path, encoding="utf-8"))
if dash.get("uid") != "genesis-billing":
    errors.append(f"{dashboard_path}: uid must be 'genesis-billing', got {dash.get('uid')!r}")
if not isinstance(dash.get("schemaVersion"), int):
    errors.append(f"{dashboard_path}: schemaVersion missing")
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    errors.append(f"{dashboard_path}: needs a 'datasource' template variable of type datasource, query prometheus")


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


ids, panel_count, target_count = set(), 0, 0
for p in all_panels(dash.get("panels", [])):
    title = p.get("title", "?")
    if p.get("id") in ids:
        errors.append(f"{dashboard_path}: panel id {p.get('id')} used twice")
    ids.add(p.get("id"))
    if "gridPos" not in p:
        errors.append(f"{dashboard_path}: panel {title!r} has no gridPos")
    if p.get("type") == "row":
        continue
    panel_count += 1
    if not p.get("targets"):
        errors.append(f"{dashboard_path}: panel {title!r} has no targets")
    for t in p.get("targets", []):
        target_count += 1
        where = f"{dashboard_path}: panel {title!r} target {t.get('refId')}"
        for d in (p.get("datasource"), t.get("datasource")):
            if d is not None and d.get("uid") != "${datasource}":
                errors.append(f"{where}: datasource must be ${{datasource}}, got {d!r}")
        if not t.get("expr"):
            errors.append(f"{where}: no expr")
        else:
            check_expr(where, t["expr"])

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(f"FAILED: {len(errors)} problem(s)")
print(f"  SUCCESS: {len(families)} metric families in {metrics_rs}; {alert_count} rules and "
      f"{target_count} queries in {panel_count} dashboard panels use only declared metrics and labels")
PY

echo "--- all monitoring checks passed"
