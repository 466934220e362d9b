"""deploy/ checked offline: the compose file against the compose specification, the Kubernetes
manifests against the Kubernetes schemas (KEDA's ScaledObject by hand), every command they run
against the real CLI, every mounted file, and the Grafana dashboard's PromQL.

No container runtime or cluster is needed. Each check is shown to fail on a broken copy.
The metrics of the dashboard are checked against a real worker's /metrics by
tests/test_monitoring.py (slow); here against the names the metrics modules declare.
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
PROCFILE = DEPLOY / "Procfile"
K8S = DEPLOY / "k8s"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "nearwatch.json"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
BIN = Path(sys.executable).parent
NEARWATCH_IMAGE = "nearwatch:"
SCORING_QUEUE = "scoring"  # worker/names.py SCORING_QUEUE (asserted below)
Argv = tuple[str, ...]
Doc = dict[str, Any]


def _bin(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
        path = Path(found)
    return path


def _compose(text: str | None = None) -> Doc:
    doc: Doc = yaml.safe_load(COMPOSE.read_text() if text is None else text)
    return doc


def _nearwatch_services(compose: Doc) -> dict[str, Doc]:
    return {name: svc for name, svc in compose["services"].items()
            if str(svc.get("image", "")).startswith(NEARWATCH_IMAGE)}


def _k8s_docs() -> list[tuple[Path, Doc]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    containers: list[Doc] = spec.get("containers", [])
    return containers


def _settings_variables() -> set[str]:
    """Every NEARWATCH_* variable that worker/settings.py reads."""
    text = (REPO / "worker" / "settings.py").read_text()
    return {f"NEARWATCH_{name}" for name in re.findall(r'\bget\("([A-Z0-9_]+)"', text)}


# --- (a) docker compose ----------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    checker = _bin("check-jsonschema")
    argv = [str(checker), "--builtin-schema", "vendor.compose-spec"]
    ok = subprocess.run([*argv, str(COMPOSE)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the validator rejects a broken copy (a key the specification does not have)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace(
        "\n  redis:\n", "\n  redis:\n    replicaz: 2\n", 1))
    failed = subprocess.run([*argv, str(broken)], capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0 and "replicaz" in failed.stdout + failed.stderr


def test_compose_stack_has_every_service_and_a_shared_registry() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"redis", "worker", "ingest", "alerts", "prometheus", "alertmanager",
            "grafana"} <= set(services)
    # Redis persists with AOF on a named volume
    assert services["redis"]["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert any(v.startswith("redis-data:/data") for v in services["redis"]["volumes"])
    # the registry: one named volume at NEARWATCH_MODEL_DIR of worker and ingest
    for name in ("worker", "ingest"):
        env = services[name]["environment"]
        assert f"models:{env['NEARWATCH_MODEL_DIR']}" in services[name]["volumes"], name
    assert "models" in compose["volumes"]
    # the worker scales: no fixed container name, no published port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    # beat: not built yet, exactly one commented placeholder
    assert "beat" not in services
    assert len(re.findall(r"^  # beat:$", COMPOSE.read_text(), re.MULTILINE)) == 1
    # alerts reach the Alertmanager of the stack
    assert services["alerts"]["environment"]["NEARWATCH_ALERTMANAGER_URL"] == (
        "http://alertmanager:9093")


def test_every_nearwatch_variable_set_by_deploy_is_a_setting() -> None:
    known = _settings_variables()
    assert {"NEARWATCH_BROKER_URL", "NEARWATCH_MODEL_DIR", "NEARWATCH_ALERT_KEY"} <= known
    assert "NEARWATCH_MODELS_DIR" not in known  # a typo would be caught
    used: dict[str, set[str]] = {}
    for name, svc in _nearwatch_services(_compose()).items():
        used[f"compose {name}"] = {k for k in svc.get("environment", {})
                                   if k.startswith("NEARWATCH_")}
    for path, doc in _k8s_docs():
        if doc["kind"] == "ConfigMap":
            used[path.name] = {k for k in doc["data"] if k.startswith("NEARWATCH_")}
        for container in _containers(doc):
            if not container["image"].startswith(NEARWATCH_IMAGE):
                continue
            used[f"{path.name} {container['name']}"] = {
                e["name"] for e in container.get("env", []) if e["name"].startswith("NEARWATCH_")}
    assert all(used.values())
    assert {where: sorted(names - known) for where, names in used.items() if names - known} == {}


# --- (b) Kubernetes ----------------------------------------------------------------------------


def _k8s_validate(doc: Doc) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.utils.latest_version()
    kubernetes_validate.validate(doc, version, strict=True)


def _keda_problems(scaled: Doc, docs: list[Doc]) -> list[str]:
    """What is wrong with a KEDA ScaledObject for the worker (no KEDA schema offline)."""
    problems: list[str] = []
    if scaled.get("apiVersion") != "keda.sh/v1alpha1" or scaled.get("kind") != "ScaledObject":
        problems.append("not a keda.sh/v1alpha1 ScaledObject")
    spec = scaled.get("spec", {})
    workers = [d for d in docs if d["kind"] == "Deployment"
               and any(c.get("command", [])[1:2] == ["worker"] for c in _containers(d))]
    if len(workers) != 1:
        return [*problems, f"{len(workers)} worker Deployments"]
    worker = workers[0]
    target = spec.get("scaleTargetRef", {})
    if target.get("name") != worker["metadata"]["name"]:
        problems.append(f"scaleTargetRef {target.get('name')!r} is not the worker Deployment")
    if target.get("kind", "Deployment") != "Deployment":
        problems.append("scaleTargetRef is not a Deployment")
    if not 1 <= int(spec.get("minReplicaCount", 0)) <= int(spec.get("maxReplicaCount", 100)):
        problems.append("minReplicaCount/maxReplicaCount")
    triggers = spec.get("triggers", [])
    if [t.get("type") for t in triggers] != ["redis"]:
        return [*problems, f"triggers {triggers!r}: expected one redis trigger"]
    meta = triggers[0].get("metadata", {})
    if meta.get("listName") != SCORING_QUEUE:
        problems.append(f"listName {meta.get('listName')!r} is not the queue {SCORING_QUEUE!r}")
    if not str(meta.get("listLength", "")).isdigit() or int(meta["listLength"]) < 1:
        problems.append("listLength must be a positive integer (string)")
    if not (meta.get("address") or meta.get("addressFromEnv")):
        problems.append("no Redis address")
    env = {e["name"] for c in _containers(worker) for e in c.get("env", [])}
    if meta.get("passwordFromEnv") not in env:
        problems.append(f"passwordFromEnv {meta.get('passwordFromEnv')!r}: not in the worker env")
    return problems


def test_kubernetes_manifests_validate() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = _k8s_docs()
    kinds: dict[str, int] = {}
    for path, doc in docs:
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        if doc["apiVersion"].startswith(("keda.sh/", "kustomize.config.k8s.io/")):
            continue  # no schema offline: checked by hand below
        try:
            _k8s_validate(doc)
        except kubernetes_validate.ValidationError as exc:  # pragma: no cover - the failure
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert kinds["Deployment"] == 3 and kinds["ConfigMap"] == 1 and kinds["Secret"] == 1
    assert kinds["ScaledObject"] == 1 and kinds["Service"] >= 2
    # the validator can fail: a wrong type, and (strict) a field Kubernetes does not have
    worker = next(d for _, d in docs if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "nearwatch-worker")
    wrong_type = copy.deepcopy(worker)
    wrong_type["spec"]["replicas"] = "two"
    unknown = copy.deepcopy(worker)
    unknown["spec"]["template"]["spec"]["containers"][0]["memoryRequest"] = "512Mi"
    for broken in (wrong_type, unknown):
        with pytest.raises(kubernetes_validate.ValidationError):
            _k8s_validate(broken)


def test_keda_scaledobject_scales_the_worker_on_the_scoring_queue() -> None:
    from nearwatch.worker.names import SCORING_QUEUE as queue

    assert queue == SCORING_QUEUE
    docs = [doc for _, doc in _k8s_docs()]
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert len(scaled) == 1 and _keda_problems(scaled[0], docs) == []
    broken = copy.deepcopy(scaled[0])
    broken["spec"]["triggers"][0]["metadata"]["listName"] = "celery"
    broken["spec"]["scaleTargetRef"]["name"] = "worker"
    assert len(_keda_problems(broken, docs)) == 2


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)


def test_kubernetes_containers_get_a_broker_url_with_the_secret_password() -> None:
    from nearwatch.worker.settings import Settings

    docs = [doc for _, doc in _k8s_docs()]
    secret = next(d for d in docs if d["kind"] == "Secret")
    password = secret["stringData"]["REDIS_PASSWORD"]
    nearwatch = [c for d in docs for c in _containers(d)
                 if c["image"].startswith(NEARWATCH_IMAGE)]
    assert len(nearwatch) == 3
    for container in nearwatch:
        env = container["env"]
        names = [e["name"] for e in env]
        # $(VAR) expansion needs VAR defined earlier in the list
        assert names.index("REDIS_PASSWORD") < names.index("NEARWATCH_BROKER_URL")
        ref = env[names.index("REDIS_PASSWORD")]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": "REDIS_PASSWORD"}
        url = env[names.index("NEARWATCH_BROKER_URL")]["value"]
        assert "$(REDIS_PASSWORD)" in url
        settings = Settings.from_env(
            {"NEARWATCH_BROKER_URL": url.replace("$(REDIS_PASSWORD)", password)})
        assert settings.redis_url == settings.broker_url == f"redis://:{password}@redis:6379/0"
    worker = next(d for d in docs if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "nearwatch-worker")
    resources = _containers(worker)[0]["resources"]
    assert resources["requests"]["memory"] == "512Mi" and "memory" in resources["limits"]
    # no shared filesystem: the registry is in Redis, each pod caches on its own scratch volume
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    model_env = {e["name"]: e.get("value") for e in _containers(worker)[0]["env"]}
    model_url = model_env["NEARWATCH_MODEL_DIR"].replace("$(REDIS_PASSWORD)", password)
    remote = Settings.from_env({"NEARWATCH_BROKER_URL": url.replace("$(REDIS_PASSWORD)",
                                                                      password),
                                "NEARWATCH_MODEL_DIR": model_url,
                                "NEARWATCH_MODEL_CACHE": model_env["NEARWATCH_MODEL_CACHE"]})
    assert remote.model_store == model_url and remote.model_cache is not None


# --- (c) every command is one the CLI has ------------------------------------------------------


def _dockerfile_instruction(name: str) -> list[str]:
    """The exec-form (JSON) argv of the Dockerfile's CMD or HEALTHCHECK ... CMD."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    assert len(lines) == 1, f"{name}: {lines}"
    head, _, tail = lines[0].partition("[")
    assert head.endswith("CMD "), f"{name}: exec form (CMD [...]) expected"
    argv: list[str] = json.loads("[" + tail)
    return argv


def deploy_commands() -> dict[str, Argv]:
    """Every command the deploy files run with the nearwatch image, by where it is."""
    commands: dict[str, Argv] = {}
    for name, svc in _nearwatch_services(_compose()).items():
        commands[f"compose {name}"] = tuple(svc["command"])
        test = svc.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"compose {name}: exec-form healthcheck expected"
            commands[f"compose {name} healthcheck"] = tuple(test[1:])
    for path, doc in _k8s_docs():
        for container in _containers(doc):
            if container["image"].startswith(NEARWATCH_IMAGE):
                commands[f"{path.name} {container['name']}"] = (
                    *container["command"], *container.get("args", []))
    commands["Dockerfile CMD"] = tuple(_dockerfile_instruction("CMD"))
    commands["Dockerfile HEALTHCHECK"] = tuple(_dockerfile_instruction("HEALTHCHECK"))
    for line in PROCFILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, command = line.split(":", 1)
            commands[f"Procfile {kind}"] = tuple(shlex.split(command))
    return commands


def _help_runs(argvs: list[Argv]) -> dict[Argv, subprocess.CompletedProcess[str]]:
    """`nearwatch ARGS... --help` for each, in parallel (each start imports the package)."""
    nearwatch = str(_bin("nearwatch"))
    procs = {argv: subprocess.Popen([nearwatch, *argv, "--help"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=REPO)
             for argv in argvs}
    results: dict[Argv, subprocess.CompletedProcess[str]] = {}
    for argv, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        results[argv] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_every_deploy_command_is_a_real_cli_command() -> None:
    commands = deploy_commands()
    assert {"compose worker", "compose ingest", "compose alerts", "worker.yaml worker",
            "Dockerfile CMD", "Dockerfile HEALTHCHECK", "Procfile worker"} <= set(commands)
    cli: set[Argv] = set()
    for where, argv in commands.items():
        program = Path(argv[0]).name
        if program == "nearwatch":
            cli.add(argv[1:])
        elif program == "python" and argv[1] == "-c":  # a healthcheck one-liner
            compile(argv[2], where, "exec")
            assert "/metrics" in argv[2], where
        else:
            pytest.fail(f"{where}: {argv[0]} is neither nearwatch nor a python healthcheck")
    assert {argv[0] for argv in cli} == {"worker", "ingest", "alerts"}
    # With --help appended click still parses every option given before it, so this checks
    # subcommand and options; a made-up option is refused (the check can fail).
    bogus: Argv = ("worker", "--no-such-option")
    results = _help_runs([*sorted(cli), bogus])
    failed = {" ".join(a): r.stderr[-500:] for a, r in results.items()
              if r.returncode != 0 and a != bogus}
    assert failed == {}
    assert all("Usage: nearwatch" in r.stdout for a, r in results.items() if a != bogus)
    assert results[bogus].returncode == 2 and "No such option" in results[bogus].stderr


@pytest.fixture()
def metrics_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_dockerfile_healthcheck_probes_the_metrics_endpoint(metrics_server: int) -> None:
    argv = _dockerfile_instruction("HEALTHCHECK")
    assert argv[:2] == ["python", "-c"]

    def probe(port: int) -> int:
        env = {"NEARWATCH_METRICS_PORT": str(port), "PATH": str(BIN)}
        return subprocess.run([sys.executable, "-c", argv[2]], env=env, capture_output=True,
                              timeout=30).returncode

    assert probe(metrics_server) == 0
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert probe(closed) != 0


def test_dockerfile_pins_torch_as_pyproject_and_runs_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin is not None
    assert re.findall(r"torch==([0-9][^\"\s]*)", text) == [pin.group(1)]
    assert "download.pytorch.org/whl/cpu" in text
    assert re.search(r"^RUN pip install \. ", text, re.MULTILINE)  # not editable
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0"))
    # the same pool size everywhere a worker node is started
    workers = {argv[1:] for argv in deploy_commands().values() if argv[1:2] == ("worker",)}
    assert workers == {("worker", "--concurrency", "2")}


# --- (d) mounted files -------------------------------------------------------------------------


def compose_mount_problems(compose: Doc) -> list[str]:
    """Bind mounts whose source is not in deploy/, named volumes not declared."""
    problems: list[str] = []
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                if not (DEPLOY / source).resolve().exists():
                    problems.append(f"{name}: {source} does not exist")
            elif source not in declared:
                problems.append(f"{name}: volume {source} is not declared")
    return problems


def test_every_file_compose_mounts_exists() -> None:
    compose = _compose()
    assert compose_mount_problems(compose) == []
    binds = {v.split(":")[1]: (DEPLOY / v.split(":")[0]).resolve()
             for svc in compose["services"].values() for v in svc.get("volumes", [])
             if v.startswith("./")}
    assert binds["/etc/alertmanager/alertmanager.yml"] == DEPLOY / "alertmanager" / (
        "alertmanager.yml")
    # Prometheus finds its rule files next to its config, where they are mounted
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert binds[f"/etc/prometheus/{rule_file}"] == DEPLOY / "prometheus" / rule_file
    # Grafana's dashboard provider reads the folder compose mounts
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "nearwatch.yml")
                              .read_text())["providers"][0]
    assert binds[provider["options"]["path"]] == DASHBOARD.parent
    # the check can fail
    broken = copy.deepcopy(compose)
    broken["services"]["prometheus"]["volumes"][0] = "./prometheus/missing.yml:/etc/x.yml:ro"
    broken["services"]["worker"]["volumes"] = ["modelz:/var/lib/nearwatch/models"]
    assert len(compose_mount_problems(broken)) == 2


# --- (e) Grafana -------------------------------------------------------------------------------


def declared_metrics() -> set[str]:
    """The series names worker/metrics.py and worker/alert_metrics.py create."""
    names: set[str] = set()
    for module in ("metrics.py", "alert_metrics.py"):
        text = (REPO / "worker" / module).read_text()
        for kind, name in re.findall(r'\b(Counter|Gauge|Histogram)\(\s*"(nearwatch_\w+)"', text):
            suffixes = {"Counter": ["_total"], "Gauge": [""],
                        "Histogram": ["_bucket", "_sum", "_count"]}[kind]
            names |= {name + suffix for suffix in suffixes}
    return names


def bracket_problem(expr: str) -> str | None:
    """None if (), [] and {} nest properly outside string literals, else what is wrong."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return f"unexpected {char!r}"
    return f"unclosed {stack[-1]!r}" if stack else None


def dashboard_exprs(dashboard: Doc) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _as_promql(expr: str) -> str:
    """Grafana's interval variables replaced by durations Prometheus parses."""
    return re.sub(r"\$__(rate_interval|interval|range)", "5m", expr)


def _promtool_rejects(exprs: list[str], tmp_path: Path) -> str:
    """promtool's complaint about the expressions (as recording rules), "" if none."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return ""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": _as_promql(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    return "" if result.returncode == 0 else result.stdout + result.stderr


def test_dashboard_panels_query_real_metrics_with_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10 and all(p.get("targets") for p in panels)
    assert all(not p.get("panels") for p in dashboard["panels"])  # flat: no collapsed rows
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
    exprs = dashboard_exprs(dashboard)
    assert [(e, bracket_problem(e)) for e in exprs if bracket_problem(e)] == []
    named = {m for e in exprs for m in re.findall(r"\bnearwatch_[a-z0-9_]+\b", e)}
    declared = declared_metrics()
    assert "nearwatch_score_bucket" in declared and "nearwatch_model_info" in declared
    assert sorted(named - declared) == []
    # what the issue asks the dashboard to show
    assert {"nearwatch_records_scored_total", "nearwatch_anomalies_total",
            "nearwatch_target_fpr", "nearwatch_score_bucket", "nearwatch_threshold",
            "nearwatch_fpr_bound", "nearwatch_batch_duration_seconds_bucket",
            "nearwatch_record_errors_total", "nearwatch_dead_letters_total",
            "nearwatch_model_info", "nearwatch_model_reloads_total",
            "nearwatch_alert_notifications_total", "nearwatch_alert_dead_letters_total"} <= named
    assert any("histogram_quantile" in e and "batch_duration_seconds_bucket" in e
               for e in exprs)
    assert _promtool_rejects(exprs, tmp_path) == ""


def test_dashboard_checks_can_fail(tmp_path: Path) -> None:
    broken = "sum(rate(nearwatch_records_scored_total[$__rate_interval])"
    assert bracket_problem(broken) == "unclosed '('"
    assert bracket_problem('sum by (le) (x{a="("})') is None  # brackets in strings ignored
    assert bracket_problem("x]") == "unexpected ']'"
    if shutil.which("promtool"):
        assert "dashboard:expr_0" in _promtool_rejects(["rate(nearwatch_score_bucket)"],
                                                       tmp_path)
    assert "nearwatch_scores_total" not in declared_metrics()


def test_scaling_doc_has_sizing_and_the_scale_placeholder() -> None:
    text = (REPO / "docs" / "SCALING.md").read_text()
    assert "Deployment sizing" in text
    assert len(re.findall(r"^## Reference-set scale$", text, re.MULTILINE)) == 1
