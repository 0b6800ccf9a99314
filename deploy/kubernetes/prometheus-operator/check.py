"""Checks the prometheus-operator resources, which kubernetes-validate has no schema for.

    python3 deploy/kubernetes/prometheus-operator/check.py RULES_OUT

- prometheusrule.yaml: a PrometheusRule whose spec is exactly dashboards/alerts.rules.yml
  (compared as data); its spec is written to RULES_OUT for `promtool check rules`.
- podmonitor.yaml: a PodMonitor whose selector matches the pod template of every Spillway
  workload in deploy/kubernetes/, whose port names a container port of the spillway container
  there, whose jobLabel is a label of those pods with the value "spillway" (the alert rules
  expect job="spillway"), with honorLabels (the Redis series keep instance="rls", ...).
Run from the repository root (deploy/test.sh does).
"""

import glob
import sys

import yaml

HERE = "deploy/kubernetes/prometheus-operator"


def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]


def main(rules_out):
    (rule,) = load(f"{HERE}/prometheusrule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule"), rule
    assert rule["metadata"]["name"] and rule["metadata"]["namespace"], rule["metadata"]
    assert rule["spec"] == yaml.safe_load(open("dashboards/alerts.rules.yml")), \
        "prometheusrule.yaml's spec differs from dashboards/alerts.rules.yml: regenerate it"
    yaml.safe_dump(rule["spec"], open(rules_out, "w"), sort_keys=False)

    (mon,) = load(f"{HERE}/podmonitor.yaml")
    assert (mon["apiVersion"], mon["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor"), mon
    spec = mon["spec"]
    assert set(spec) <= {"jobLabel", "selector", "podMetricsEndpoints", "namespaceSelector"}, spec
    want = spec["selector"]["matchLabels"]
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint.get("honorLabels") is True, endpoint
    assert endpoint.get("path", "/metrics") == "/metrics", endpoint
    workloads = []
    for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
        for doc in load(path):
            if doc["kind"] not in ("Deployment", "StatefulSet"):
                continue
            pod = doc["spec"]["template"]
            labels = pod["metadata"]["labels"]
            containers = {c["name"]: c for c in pod["spec"]["containers"]}
            if "spillway" not in containers:
                continue
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            assert doc["metadata"]["namespace"] == mon["metadata"]["namespace"], name
            assert all(labels.get(k) == v for k, v in want.items()), f"{name}: labels {labels} miss {want}"
            assert labels.get(spec["jobLabel"]) == "spillway", f"{name}: job label"
            ports = {p["name"]: p["containerPort"] for p in containers["spillway"]["ports"]}
            assert endpoint["port"] in ports, f"{name}: no container port named {endpoint['port']}"
            ann = pod["metadata"].get("annotations", {})
            assert ann.get("prometheus.io/port") == str(ports[endpoint["port"]]), f"{name}: annotations"
            workloads.append(name)
    assert len(workloads) == 2, workloads
    print(f"PrometheusRule: {sum(len(g['rules']) for g in rule['spec']['groups'])} rules, the same as "
          f"dashboards/alerts.rules.yml; PodMonitor selects {', '.join(workloads)} on port "
          f"{endpoint['port']}, job label {spec['jobLabel']}=spillway")


if __name__ == "__main__":
    main(sys.argv[1])
