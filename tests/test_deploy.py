"""deploy/ checked offline: the compose file against the compose specification, the Kubernetes
manifests against the Kubernetes schemas (KEDA's ScaledObject by hand), the systemd units with
systemd-analyze, every command they run against the real CLI, every mounted file, the one and
only beat (retraining) node everywhere, the retraining schedule against the model-stale bound,
the Docker build context (.dockerignore), and the Grafana dashboard's PromQL.

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
DOCKERIGNORE = REPO / ".dockerignore"
SYSTEMD_UNITS = sorted(DEPLOY.glob("*.service"))
PROMETHEUS = DEPLOY / "prometheus"
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
    # beat (the maintenance node) adds versions to the same registry and needs Redis first
    beat = services["beat"]
    assert beat["command"] == ["nearwatch", "beat"]
    assert f"models:{beat['environment']['NEARWATCH_MODEL_DIR']}" in beat["volumes"]
    assert beat["depends_on"]["redis"]["condition"] == "service_healthy"
    assert beat["environment"]["NEARWATCH_RETRAIN_SCHEDULE"]
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
    assert kinds["Deployment"] == 4 and kinds["ConfigMap"] == 1 and kinds["Secret"] == 1
    assert kinds["ScaledObject"] == 1 and kinds["Service"] >= 3
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
    assert len(nearwatch) == 4
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
    # beat promotes into the registry the workers read, through its own scratch cache
    beat = _beat_deployments(docs)[0]
    beat_env = {e["name"]: e.get("value") for e in _containers(beat)[0]["env"]}
    assert beat_env["NEARWATCH_MODEL_DIR"] == model_env["NEARWATCH_MODEL_DIR"]
    mounts = {m["mountPath"] for m in _containers(beat)[0]["volumeMounts"]}
    assert beat_env["NEARWATCH_MODEL_CACHE"] in mounts


# --- (b2) the beat (maintenance) node: exactly one, everywhere ----------------------------------


def _beat_deployments(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] == "Deployment"
            and any(c.get("command", [])[1:2] == ["beat"] for c in _containers(d))]


def _compose_default(value: str) -> str:
    """``${VAR:-default}`` -> default (compose interpolation of an unset variable)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def beat_problems(compose: Doc, docs: list[Doc], procfile: str, prometheus: Doc) -> list[str]:
    """Where the deploy files could run more (or less) than one beat, or scrape the wrong port."""
    problems: list[str] = []
    beats = [name for name, svc in _nearwatch_services(compose).items()
             if svc.get("command", [])[1:2] == ["beat"]]
    if beats != ["beat"]:
        return [f"compose: beat services {beats}"]
    service = compose["services"]["beat"]
    if service.get("deploy", {}).get("replicas") != 1:
        problems.append("compose: beat deploy.replicas is not 1")
    if "container_name" in service or "ports" in service:
        problems.append("compose: beat publishes a port or fixes a name")
    port = int(service["environment"]["NEARWATCH_BEAT_METRICS_PORT"])
    if f":{port}/metrics" not in " ".join(service.get("healthcheck", {}).get("test", [])):
        problems.append(f"compose: the beat healthcheck does not probe port {port}")
    deployments = _beat_deployments(docs)
    if len(deployments) != 1:
        return [*problems, f"k8s: {len(deployments)} beat Deployments"]
    beat = deployments[0]
    if beat["spec"].get("replicas") != 1:
        problems.append("k8s: beat replicas is not 1")
    if beat["spec"].get("strategy", {}).get("type") != "Recreate":
        problems.append("k8s: beat strategy is not Recreate (a rollout would run two)")
    name = beat["metadata"]["name"]
    scalers = [d for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
               and d["spec"].get("scaleTargetRef", {}).get("name") == name]
    if scalers:
        problems.append("k8s: beat is autoscaled")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    annotations = beat["spec"]["template"]["metadata"].get("annotations", {})
    container_ports = {p["containerPort"] for c in _containers(beat) for p in c.get("ports", [])}
    k8s_port = int(configmap["data"].get("NEARWATCH_BEAT_METRICS_PORT", -1))
    if not (annotations.get("prometheus.io/scrape") == "true"
            and int(annotations.get("prometheus.io/port", -1)) == k8s_port
            and container_ports == {k8s_port}):
        problems.append("k8s: beat scrape annotations/containerPort/configmap port disagree")
    services = [d for d in docs if d["kind"] == "Service"
                and d["spec"].get("selector") == beat["spec"]["selector"]["matchLabels"]]
    if [p["port"] for s in services for p in s["spec"]["ports"]] != [k8s_port]:
        problems.append("k8s: no Service for the beat metrics port")
    lines = [line for line in procfile.splitlines() if line.startswith("beat:")]
    if len(lines) != 1:
        problems.append(f"Procfile: {len(lines)} beat lines")
    targets = [t for job in prometheus["scrape_configs"] if job["job_name"] == "nearwatch-beat"
               for sc in job.get("static_configs", []) for t in sc["targets"]]
    if targets != [f"beat:{port}"]:
        problems.append(f"prometheus: nearwatch-beat targets {targets}, not beat:{port}")
    return problems


def test_exactly_one_beat_node_everywhere_and_prometheus_scrapes_it() -> None:
    compose = _compose()
    docs = [doc for _, doc in _k8s_docs()]
    procfile = PROCFILE.read_text()
    prometheus = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert beat_problems(compose, docs, procfile, prometheus) == []
    assert (DEPLOY / "nearwatch-beat.service").exists()
    # the check can fail: two replicas, a rolling update, a second Procfile line, a wrong port
    broken_compose = copy.deepcopy(compose)
    broken_compose["services"]["beat"]["deploy"]["replicas"] = 2
    broken_docs = copy.deepcopy(docs)
    beat = _beat_deployments(broken_docs)[0]
    beat["spec"]["replicas"] = 2
    beat["spec"]["strategy"] = {"type": "RollingUpdate"}
    broken_prometheus = copy.deepcopy(prometheus)
    for job in broken_prometheus["scrape_configs"]:
        if job["job_name"] == "nearwatch-beat":
            job["static_configs"][0]["targets"] = ["beat:9808"]
    problems = beat_problems(broken_compose, broken_docs, procfile + "beat: nearwatch beat\n",
                             broken_prometheus)
    assert len(problems) == 5, problems


def _schedule_period_s(spec: str) -> float:
    """Mean seconds between runs of a retraining schedule (an interval or a daily/weekly cron)."""
    from celery.schedules import crontab
    from nearwatch.scheduler.schedule import parse_schedule

    when = parse_schedule(spec)
    if not isinstance(when, crontab):
        return float(when.run_every.total_seconds())
    per_day = len(when.minute) * len(when.hour)
    assert when.day_of_month == set(range(1, 32)) and when.month_of_year == set(range(1, 13)), (
        f"{spec!r}: a monthly cron schedule; adapt _schedule_period_s")
    return 7 * 86400 / (per_day * len(when.day_of_week))


def test_deploy_schedule_is_valid_and_the_model_stale_bound_is_three_periods() -> None:
    from nearwatch.scheduler.schedule import beat_schedule
    from nearwatch.worker.settings import Settings

    compose = _compose()["services"]["beat"]["environment"]["NEARWATCH_RETRAIN_SCHEDULE"]
    configmap = next(d for _, d in _k8s_docs() if d["kind"] == "ConfigMap")["data"]
    schedules = {_compose_default(compose), configmap["NEARWATCH_RETRAIN_SCHEDULE"]}
    assert len(schedules) == 1, schedules  # compose and Kubernetes retrain alike
    spec = schedules.pop()
    settings = Settings.from_env({"NEARWATCH_RETRAIN_SCHEDULE": spec})
    assert "retrain" in beat_schedule(settings.retrain)  # what `nearwatch beat` does at start
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]
    stale = [r for g in rules for r in g["rules"] if r.get("alert") == "NearwatchModelStale"]
    assert len(stale) == 1
    match = re.fullmatch(r"nearwatch_model_age_seconds > ([\d.]+) \* ([\d.]+)",
                         stale[0]["expr"].strip())
    assert match, stale[0]["expr"]
    bound = float(match.group(1)) * float(match.group(2))
    assert bound == 3 * _schedule_period_s(spec) == 3 * 86400
    # the period computation can tell schedules apart
    assert _schedule_period_s("6h") == 6 * 3600
    assert _schedule_period_s("0 */6 * * *") == 6 * 3600
    assert _schedule_period_s("30 2 * * 1") == 7 * 86400


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
    for unit in SYSTEMD_UNITS:
        starts = [line.split("=", 1)[1] for line in unit.read_text().splitlines()
                  if line.startswith("ExecStart=")]
        assert len(starts) == 1, f"{unit.name}: {starts}"
        commands[unit.name] = tuple(shlex.split(starts[0]))
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
            "Dockerfile CMD", "Dockerfile HEALTHCHECK", "Procfile worker", "compose beat",
            "compose beat healthcheck", "beat.yaml beat", "Procfile beat",
            "nearwatch-worker.service", "nearwatch-beat.service", "nearwatch-alerts.service",
            "nearwatch-ingest.service"} <= set(commands)
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
    assert {argv[0] for argv in cli} == {"worker", "ingest", "alerts", "beat"}
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


def _systemd_complaints(unit_text: str, name: str, tmp_path: Path) -> str:
    """systemd-analyze verify's complaints about a unit (its nearwatch path made real)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / name
    path.write_text(unit_text.replace("/opt/nearwatch/.venv/bin/nearwatch",
                                      str(_bin("nearwatch"))))
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                            timeout=60)
    return "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                     if name in line)


def test_systemd_units_verify(tmp_path: Path) -> None:
    assert [u.name for u in SYSTEMD_UNITS] == ["nearwatch-alerts.service",
                                               "nearwatch-beat.service",
                                               "nearwatch-ingest.service",
                                               "nearwatch-worker.service"]
    for unit in SYSTEMD_UNITS:
        assert _systemd_complaints(unit.read_text(), unit.name, tmp_path) == ""
    broken = SYSTEMD_UNITS[0].read_text().replace("KillSignal=SIGTERM", "KillSignal=SIGTERN")
    assert "SIGTERN" in _systemd_complaints(broken, SYSTEMD_UNITS[0].name, tmp_path)


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus ``**``), anchored at the context root."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1].replace("[!", "[^"), end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str, text: str) -> bool:
    """Whether ``path`` (relative to the context) is left out: the last matching pattern wins,
    a pattern matching a parent folder leaves out everything in it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = _dockerignore_regex(line.lstrip("!").strip("/"))
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def _dockerfile_copy_sources() -> list[str]:
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith(("COPY ", "ADD ")):
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            sources += words[:-1]
    return sources


def test_dockerignore_keeps_what_the_image_copies_and_leaves_out_the_rest() -> None:
    text = DOCKERIGNORE.read_text()
    sources = _dockerfile_copy_sources()
    assert sources == ["pyproject.toml", "README.md", "nearwatch", "detector", "worker",
                       "scheduler"]
    tracked = subprocess.run(["git", "ls-files", *sources], cwd=REPO, capture_output=True,
                             text=True, timeout=60, check=True).stdout.split()
    assert len(tracked) > 20
    assert [f for f in tracked if dockerignored(f, text)] == []
    # the Dockerfile itself stays in the context
    assert not dockerignored("deploy/Dockerfile", text)
    left_out = [".venv/bin/python", ".git/HEAD", "build/typecheck/nearwatch/__init__.py",
                "bench/results/adbench/summary.json", "bench/service.py", "tests/test_deploy.py",
                "worker/__pycache__/app.cpython-311.pyc", "detector/store/x.pyc",
                "nearwatch.egg-info/PKG-INFO", ".mypy_cache/3.11/x.json", ".pytest_cache/v",
                ".ruff_cache/x", "dist/nearwatch-0.1.0.whl"]
    assert [f for f in left_out if not dockerignored(f, text)] == []
    # the check can fail: a pattern that drops a shipped package, and one put back with "!"
    assert dockerignored("worker/app.py", text + "\nworker\n")
    assert not dockerignored("tests/test_deploy.py", text + "\n!tests/test_deploy.py\n")


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
    """The series names worker/metrics.py, worker/alert_metrics.py and scheduler/metrics.py
    create (the last with prometheus_client's *MetricFamily classes, read at scrape)."""
    names: set[str] = set()
    for module in ("worker/metrics.py", "worker/alert_metrics.py", "scheduler/metrics.py"):
        text = (REPO / module).read_text()
        found = re.findall(r'\b(Counter|Gauge|Histogram|Summary)(?:MetricFamily)?\(\s*'
                           r'"(nearwatch_\w+)"', text)
        for kind, name in found:
            suffixes = {"Counter": ["_total"], "Gauge": [""], "Summary": ["_sum", "_count"],
                        "Histogram": ["_bucket", "_sum", "_count"]}[kind]
            names |= {name.removesuffix("_total") + suffix for suffix in suffixes}
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
            "nearwatch_alert_notifications_total", "nearwatch_alert_dead_letters_total",
            # the retraining row
            "nearwatch_retrain_total", "nearwatch_retrain_duration_seconds_sum",
            "nearwatch_retrain_duration_seconds_count", "nearwatch_model_age_seconds",
            "nearwatch_drift_statistic", "nearwatch_drift_threshold",
            "nearwatch_drift_alarms_total", "nearwatch_reference_buffer_records",
            "nearwatch_golden_records", "nearwatch_feedback_total",
            "nearwatch_buffer_write_failures_total"} <= named
    assert any("histogram_quantile" in e and "batch_duration_seconds_bucket" in e
               for e in exprs)
    # the retraining panels sit in their own row, below every other row
    rows = [p for p in dashboard["panels"] if p["type"] == "row"]
    assert rows[-1]["title"] == "Retraining"
    below = [p for p in panels if p["gridPos"]["y"] > rows[-1]["gridPos"]["y"]]
    assert {m for p in below for t in p["targets"]
            for m in re.findall(r"\bnearwatch_(?:retrain|drift|feedback)\w*", t["expr"])} == {
        m for e in exprs for m in re.findall(r"\bnearwatch_(?:retrain|drift|feedback)\w*", e)}
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
    assert {"nearwatch_retrain_total", "nearwatch_retrain_duration_seconds_sum",
            "nearwatch_scheduler_redis_up"} <= declared_metrics()


def test_scaling_doc_has_sizing_and_the_scale_placeholder() -> None:
    text = (REPO / "docs" / "SCALING.md").read_text()
    assert "Deployment sizing" in text
    assert len(re.findall(r"^## Reference-set scale$", text, re.MULTILINE)) == 1
