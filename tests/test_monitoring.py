"""The shipped monitoring stack, checked with the real tools (promtool, amtool) and against
the metrics a real worker node, a real `nearwatch alerts` and a real `nearwatch beat` export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.service_fixtures import (
    CLI,
    REPO,
    Proc,
    WorkerNode,
    free_port,
    http_get,
    scoring_client,
    service_env,
    stream_records_for_test,
    wait_for,
)

pytestmark = pytest.mark.slow
DEPLOY = REPO / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "nearwatch.json"
RETRAINING_ALERTS = {"NearwatchSchedulerDown", "NearwatchSchedulerRedisDown",
                     "NearwatchRetrainingFailing", "NearwatchModelStale",
                     "NearwatchDriftDetected", "NearwatchBufferWriteFailing",
                     "NearwatchReferenceBufferEmpty"}


def _tool(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.skip(f"{name} is not installed (make services)")
    return binary


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_config_and_rules_and_every_alert_is_unit_tested(tmp_path: Path
                                                                          ) -> None:
    promtool = _tool("promtool")
    for argv in (["check", "config", str(PROMETHEUS / "prometheus.yml")],
                 ["check", "config", str(PROMETHEUS / "prometheus-host.yml")],
                 ["check", "rules", str(PROMETHEUS / "rules.yml")],
                 ["test", "rules", str(PROMETHEUS / "tests.yml")]):
        result = _run([promtool, *argv])
        assert result.returncode == 0, result.stdout + result.stderr
    jobs = [[job["job_name"] for job in yaml.safe_load((PROMETHEUS / name).read_text())[
        "scrape_configs"]] for name in ("prometheus.yml", "prometheus-host.yml")]
    assert jobs[0] == jobs[1]  # the rules select on the job names
    rules = (PROMETHEUS / "rules.yml").read_text()
    tests = (PROMETHEUS / "tests.yml").read_text()
    alerts = re.findall(r"- alert: (\w+)", rules)
    assert len(alerts) >= 8 and set(alerts) >= RETRAINING_ALERTS
    assert len(alerts) == len(set(alerts))
    for group in yaml.safe_load(rules)["groups"]:  # summary and description everywhere
        for rule in group["rules"]:
            if "alert" in rule:
                assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
                assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
    cases = [case for test in yaml.safe_load(tests)["tests"] for case in test["alert_rule_test"]]
    for alert in alerts:  # each alert is expected to fire somewhere and to stay silent somewhere
        expected = [case.get("exp_alerts") or [] for case in cases if case["alertname"] == alert]
        assert [] in expected, f"{alert}: no silent case"
        assert any(expected), f"{alert}: no firing case"
    runbook = (REPO / "docs" / "RUNBOOK.md").read_text()
    assert [a for a in alerts if f"## {a}" not in runbook] == []
    # the unit tests can fail: a flag-rate rule that never fires breaks them
    (tmp_path / "rules.yml").write_text(rules.replace("> 3.09", "> 1000"))
    shutil.copy(PROMETHEUS / "tests.yml", tmp_path / "tests.yml")
    broken = _run([promtool, "test", "rules", str(tmp_path / "tests.yml")])
    assert broken.returncode != 0 and "NearwatchAnomalyRateAboveTarget" in broken.stderr


def test_amtool_accepts_the_alertmanager_config(tmp_path: Path) -> None:
    amtool = _tool("amtool")
    result = _run([amtool, "check-config", str(ALERTMANAGER)])
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(ALERTMANAGER.read_text().replace("receiver: nearwatch-critical",
                                                       "receiver: nobody"))
    failed = _run([amtool, "check-config", str(broken)])
    assert failed.returncode != 0 and "nobody" in failed.stdout + failed.stderr
    # every alert name an inhibition matches is one the rules (or `nearwatch alerts`) raise
    assert inhibited_unknown_alerts(yaml.safe_load(ALERTMANAGER.read_text())) == []
    # the scheduler being down inhibits the retraining alerts it causes
    assert inhibits(ALERTMANAGER, "NearwatchSchedulerDown", "NearwatchRetrainingFailing")
    assert inhibits(ALERTMANAGER, "NearwatchSchedulerRedisDown", "NearwatchModelStale")
    assert inhibits(ALERTMANAGER, "NearwatchBufferWriteFailing", "NearwatchReferenceBufferEmpty")
    assert not inhibits(ALERTMANAGER, "NearwatchModelStale", "NearwatchSchedulerDown")
    # anomaly notifications keep their per-key groups at either severity (a critical one
    # matched the critical route first and every key collapsed into one group)
    for severity in ("warning", "critical"):
        routed = _run([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                       "alertname=NearwatchAnomalousRecords", f"severity={severity}"])
        assert routed.stdout.strip() == f"nearwatch-{severity}", routed.stdout + routed.stderr
    first = yaml.safe_load(ALERTMANAGER.read_text())["route"]["routes"][0]
    assert first["matchers"] == ['alertname="NearwatchAnomalousRecords"']
    assert first["group_by"] == ["..."]
    typo = yaml.safe_load(ALERTMANAGER.read_text().replace("NearwatchModelStale",
                                                           "NearwatchModelStail"))
    assert inhibited_unknown_alerts(typo) == ["NearwatchModelStail"]


def _alertnames(matchers: list[str]) -> list[str] | None:
    """The alert names an Alertmanager matcher list selects (None: not by alertname)."""
    for matcher in matchers:
        match = re.fullmatch(r'alertname(=~|=)"([^"]*)"', matcher.replace(" ", ""))
        if match:
            return match.group(2).split("|") if match.group(1) == "=~" else [match.group(2)]
    return None


def inhibited_unknown_alerts(config: dict[str, Any]) -> list[str]:
    rules = (PROMETHEUS / "rules.yml").read_text()
    known = set(re.findall(r"- alert: (\w+)", rules)) | {"NearwatchAnomalousRecords"}
    named = [name for rule in config.get("inhibit_rules", [])
             for key in ("source_matchers", "target_matchers")
             for name in _alertnames(rule.get(key, [])) or []]
    return sorted(set(named) - known)


def inhibits(path: Path, source: str, target: str) -> bool:
    """Whether a firing ``source`` inhibits ``target`` by alert name (no ``equal`` labels)."""
    for rule in yaml.safe_load(path.read_text()).get("inhibit_rules", []):
        sources = _alertnames(rule.get("source_matchers", [])) or []
        targets = _alertnames(rule.get("target_matchers", [])) or []
        if source in sources and target in targets:
            return True
    return False


def named_metrics() -> set[str]:
    """Every nearwatch_* series name used by a rule or a dashboard panel."""
    groups = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    texts = [rule["expr"] for group in groups for rule in group["rules"]]
    if DASHBOARD.exists():
        panels = json.loads(DASHBOARD.read_text())["panels"]
        texts += [t["expr"] for p in panels for t in p.get("targets", [])]
    return {m for text in texts for m in re.findall(r"\bnearwatch_[a-z0-9_]+\b", text)}


@pytest.fixture()
def alerts_consumer(node: WorkerNode, tmp_path: Path) -> Iterator[tuple[Proc, int]]:
    port = free_port()
    env = service_env(node.settings.model_dir, NEARWATCH_ALERT_METRICS_PORT=str(port),
                      NEARWATCH_ALERT_JSONL=str(tmp_path / "alerts.jsonl"))
    proc = Proc([*CLI, "alerts", "--consumer", "metrics-check"], env, tmp_path / "alerts.log")
    try:
        wait_for(lambda: "nearwatch_queue_messages{" in (http_get(
            f"http://127.0.0.1:{port}/metrics") or ""), 30, f"alerts /metrics ({proc.log_path})")
        yield proc, port
    finally:
        assert proc.stop() == 0, proc.log()[-2000:]


@pytest.fixture()
def beat_node(node: WorkerNode, tmp_path: Path) -> Iterator[tuple[Proc, int]]:
    """A real `nearwatch beat` beside the worker node, after the loop has state to export:
    records scored (the workers fill the reference buffer) and one retraining by hand
    (skipped: too few buffer records), so that every series of the beat is present."""
    scored = list(scoring_client(node).score(stream_records_for_test(60, prefix="beat-m")))
    assert len(scored) == 60
    env = service_env(node.settings.model_dir)
    retrain = subprocess.run([*CLI, "retrain"], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert retrain.returncode == 0 and json.loads(retrain.stdout)["outcome"] == "skipped", (
        retrain.stdout + retrain.stderr)
    port = free_port()
    proc = Proc([*CLI, "beat"], {**env, "NEARWATCH_BEAT_METRICS_PORT": str(port)},
                tmp_path / "beat.log")
    try:
        wait_for(lambda: "nearwatch_scheduler_redis_up 1.0" in (http_get(
            f"http://127.0.0.1:{port}/metrics") or ""), 60, f"beat /metrics ({proc.log_path})")
        # Celery up (its SIGTERM handler installed): the stop below is a warm shutdown
        wait_for(lambda: re.search(r"nearwatch-beat-\d+@\S+ ready\.", proc.log()), 60,
                 f"the beat node to be ready ({proc.log_path})")
        yield proc, port
    finally:
        assert proc.stop() == 0, proc.log()[-2000:]


def test_every_metric_named_by_rules_and_dashboard_is_exported_and_lint_clean(
        node: WorkerNode, alerts_consumer: tuple[Proc, int], beat_node: tuple[Proc, int],
        tmp_path: Path) -> None:
    promtool = _tool("promtool")
    worker = http_get(node.metrics_url) or ""
    consumer = http_get(f"http://127.0.0.1:{alerts_consumer[1]}/metrics") or ""
    beat = http_get(f"http://127.0.0.1:{beat_node[1]}/metrics") or ""
    exported = {line.split("{")[0].split(" ")[0]
                for line in (worker + consumer + beat).splitlines()
                if line.startswith("nearwatch_")}
    named = named_metrics()
    assert {"nearwatch_target_fpr", "nearwatch_records_scored_total",
            "nearwatch_alert_notifications_total", "nearwatch_retrain_total",
            "nearwatch_model_age_seconds", "nearwatch_reference_buffer_records",
            "nearwatch_buffer_write_failures_total", "nearwatch_scheduler_redis_up"} <= named
    assert sorted(named - exported) == []
    for text in (worker, consumer, beat):
        lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=60)
        assert lint.returncode == 0 and lint.stdout + lint.stderr == "", lint.stdout + lint.stderr
    # and the check can fail: a name no process exports is reported
    assert "nearwatch_not_a_metric" not in exported


def test_alerts_command_refuses_to_start_without_a_sink(node: WorkerNode, tmp_path: Path
                                                         ) -> None:
    env: dict[str, Any] = service_env(node.settings.model_dir)
    result = subprocess.run([*CLI, "alerts", "--stop-when-idle"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no alert sink configured" in result.stderr


def _relabel(config: dict[str, Any], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' keep/replace relabelling (anchored regexes, ; separator), enough to check
    which job and address a discovered pod gets."""
    labels = dict(labels)
    for rule in config["relabel_configs"]:
        value = ";".join(labels.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if match is None:
                return None
        elif match is not None:
            labels[rule["target_label"]] = match.expand(
                re.sub(r"\$(\d+)", r"\\\1", rule.get("replacement", "$1")))
    return labels


def test_the_kubernetes_scrape_config_names_the_jobs_the_rules_select() -> None:
    """Debian's promtool has no Kubernetes discovery, so the relabelling is checked here:
    annotation scraping named every pod's job `kubernetes-pods`, and the down/absent rules
    on up{job="nearwatch"} fired for ever."""
    config = yaml.safe_load((PROMETHEUS / "prometheus-k8s.yml").read_text())
    [job] = config["scrape_configs"]
    expected = {"nearwatch-worker": ("nearwatch", "9808"), "nearwatch-alerts": (
        "nearwatch-alerts", "9809"), "nearwatch-beat": ("nearwatch-beat", "9810")}
    for app, (name, port) in expected.items():
        pod = {"__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
               "__meta_kubernetes_pod_label_app": app, "__address__": "10.0.0.7:8080",
               "__meta_kubernetes_pod_ip": "10.0.0.7", "__meta_kubernetes_pod_phase": "Running",
               "__meta_kubernetes_pod_annotation_prometheus_io_port": port,
               "__meta_kubernetes_pod_name": f"{app}-0"}
        labels = _relabel(job, pod)
        assert labels is not None and labels["job"] == name
        assert labels["__address__"] == f"10.0.0.7:{port}"
        six = _relabel(job, {**pod, "__meta_kubernetes_pod_ip": "fd00::7",
                             "__address__": "[fd00::7]:15090"})
        assert six is not None and six["__address__"] == f"[fd00::7]:{port}"
        assert _relabel(job, {**pod, "__meta_kubernetes_pod_phase": "Succeeded"}) is None
    other = {"__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
             "__meta_kubernetes_pod_phase": "Running",
             "__meta_kubernetes_pod_label_app": "nearwatch-redis", "__address__": "10.0.0.8"}
    assert _relabel(job, other) is None
    assert job["kubernetes_sd_configs"][0]["namespaces"] == {"own_namespace": True}
    rules = (PROMETHEUS / "rules.yml").read_text()
    assert all(f'job="{name}"' in rules for name, _ in expected.values())
    for manifest, (app, (_, port)) in zip(("worker", "alerts", "beat"), expected.items(),
                                         strict=True):
        text = (DEPLOY / "k8s" / f"{manifest}.yaml").read_text()
        assert f"app: {app}" in text and f'prometheus.io/port: "{port}"' in text
