"""deploy/: the Dockerfile lints clean, the manifests validate, the unit verifies, the alert
rules pass promtool, and every one agrees with the settings and the gateway's metrics.

The numbers that must agree (ports, memory limits, stop timeouts) are read from each file
and compared with what `sentiguard.settings` and `sentiguard.doctor` compute, so a change on
one side fails here instead of in production.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sentiguard import settings as settings_mod
from sentiguard.doctor.resources import GATEWAY_MB, SUPPORT_MB, worker_limit_mb
from sentiguard.errors import ExitCode
from sentiguard.settings import ROOT
from sentiguard.watchdog.limits import AUTO_CRITICAL_FACTOR

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(shutil.which("hadolint", path=str(ROOT / ".venv" / "bin")) or "hadolint")
# The oldest Kubernetes still commonly run, and the newest schema kubernetes-validate bundles.
K8S_VERSIONS = ("1.29.0", "1.37.0")


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install it with `apt-get install -y {package}`")
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def budget_mb(env: dict[str, str]) -> int:
    """Memory limit for one instance: every worker at the watchdog's limit, the gateway and
    supervisord/watchdog, plus one worker overshooting to the critical level before the
    watchdog's samples catch it (sentiguard.doctor's numbers)."""
    # check=False: the API key comes from a Secret at run time, not from this env.
    s = settings_mod.load(environ=env, check=False)
    workers = s.primary.workers
    limit, _ = worker_limit_mb(s)  # the number, or doctor's estimate of "auto"
    critical = s.watchdog.memory_critical_mb
    overshoot = (critical if isinstance(critical, int) else limit * AUTO_CRITICAL_FACTOR) - limit
    gateways = s.gateway.processes * GATEWAY_MB
    return int(workers * limit + gateways + SUPPORT_MB + overshoot)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 2**-10, "Mi": 1, "Gi": 2**10, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", quantity)
    assert match, f"not a Kubernetes quantity: {quantity}"
    return float(match[1]) * units[match[2]]


# --- Dockerfile -------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    # Like Docker: comment lines go first (also inside a continued instruction), then
    # continuations are joined.
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    pairs = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_dockerfile_lints_clean_with_hadolint() -> None:
    result = run(
        BIN,
        "--failure-threshold",
        "style",
        "--disable-ignore-pragma",
        "--no-color",
        DEPLOY / "Dockerfile",
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    # The lint test above means something only if hadolint reports what it should.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\nCMD python app.py\n")
    result = run(BIN, "--no-color", bad)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_dockerfile_runs_sentiguard_up_as_non_root_with_a_health_check() -> None:
    steps = dockerfile()
    words = [w for w, _ in steps]
    args = dict(steps)  # the last of each instruction
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert json.loads(args["CMD"]) == ["sentiguard", "up"]
    user = args["USER"].split(":")[0]
    assert user not in ("0", "root")
    assert words.index("USER") < words.index("CMD")
    assert "/health" in args["HEALTHCHECK"]
    # CPU torch: the default index would pull the CUDA build.
    assert "download.pytorch.org/whl/cpu" in " ".join(a for w, a in steps if w == "RUN")
    assert any(w == "COPY" and a.startswith("models/") for w, a in steps)
    assert args["EXPOSE"] == str(settings_mod.BY_NAME["gateway.port"].default)


def test_dockerfile_env_is_valid_settings_and_bakes_in_no_api_key() -> None:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", rest))
    sentiguard_env = {k: v for k, v in env.items() if k.startswith("SENTIGUARD_")}
    # Raises on an unknown name or bad value; the key is given at `docker run`, so the
    # cross-setting rules (public bind needs a key) are checked there, not here.
    s = settings_mod.load(environ=sentiguard_env, check=False)
    assert s.gateway.host == "0.0.0.0"
    assert "SENTIGUARD_GATEWAY_API_KEY" not in env
    assert "SENTIGUARD_GATEWAY_ALLOW_PUBLIC_WITHOUT_KEY" not in env


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for word, rest in dockerfile():
        if word == "COPY":
            *sources, _dest = rest.split()
            for source in sources:
                assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
                assert (ROOT / source).exists()


# --- Kubernetes -------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strictly(version: str) -> None:
    docs = manifests()
    assert set(docs) >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for kind, doc in docs.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind} does not validate against Kubernetes {version}: {e.message}")


def test_validation_rejects_a_misspelled_field() -> None:
    doc = manifests()["Deployment"]
    doc["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def container() -> dict[str, Any]:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return dict(c)


def plain_env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def test_probes_ports_and_api_key_follow_the_settings() -> None:
    c = container()
    env = plain_env(c)
    s = settings_mod.load(environ=env, check=False)  # the key comes from a Secret
    (port,) = c["ports"]
    assert port["containerPort"] == s.gateway.port
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["startupProbe"]["httpGet"]["path"] in ("/ready", "/health")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    assert s.gateway.host == "0.0.0.0"
    (key,) = [e for e in c["env"] if e["name"] == "SENTIGUARD_GATEWAY_API_KEY"]
    assert "secretKeyRef" in key["valueFrom"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_memory_limit_is_the_watchdog_budget() -> None:
    c = container()
    limit = mebibytes(c["resources"]["limits"]["memory"])
    request = mebibytes(c["resources"]["requests"]["memory"])
    assert limit == budget_mb(plain_env(c))
    assert request <= limit


def test_termination_grace_covers_prestop_and_graceful_shutdown() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    env = plain_env(container())
    graceful = settings_mod.load(environ=env, check=False).service.graceful_timeout_s
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    sleep_s = int(pre_stop[-1]) if pre_stop[0] == "sleep" else 0
    assert pod["terminationGracePeriodSeconds"] > sleep_s + graceful


def test_service_pdb_and_hpa_point_at_the_deployment() -> None:
    docs = manifests()
    deployment = docs["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = docs[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= pod_labels.items(), kind
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == container()["ports"][0]["name"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    # With maxUnavailable 1, a drain never takes the last pod.
    assert hpa["minReplicas"] >= 2
    assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] < hpa["minReplicas"]
    # The HPA scales on CPU utilisation, which needs a CPU request.
    assert "cpu" in container()["resources"]["requests"]


# --- systemd ----------------------------------------------------------------------------


def unit(name: str = "sentiguard.service") -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / name)
    return parser


UNITS = ("sentiguard.service", "sentiguard.socket")


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    # The units name /opt/sentiguard; point them at this checkout so ExecStart exists. The
    # service Requires= the socket, so both go in the directory verify reads.
    copies = []
    for name in UNITS:
        copy = tmp_path / name
        copy.write_text((DEPLOY / name).read_text().replace("/opt/sentiguard", str(ROOT)))
        copies.append(copy)
    result = run(analyze, "verify", *copies, cwd=tmp_path)
    # verify exits 0 on many problems and only prints them: any output is a finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_systemd_unit_stops_within_the_graceful_timeout() -> None:
    service = unit()["Service"]
    assert service["ExecStart"].endswith("sentiguard up")
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    graceful = settings_mod.BY_NAME["service.graceful_timeout_s"].default
    assert int(service["TimeoutStopSec"]) > graceful
    assert "78" in service["RestartPreventExitStatus"].split()  # ExitCode.CONFIG_ERROR
    # `up` escalating a FATAL gateway or watchdog must get the whole service restarted.
    assert str(int(ExitCode.PROGRAM_FATAL)) not in service["RestartPreventExitStatus"].split()
    # systemd's M is 1024-based.
    assert int(service["MemoryMax"].removesuffix("M")) >= budget_mb({})


def test_systemd_socket_is_the_gateway_address_and_the_service_needs_it() -> None:
    # `up` adopts the socket only on gateway.host:gateway.port (runtime.listener.adopt).
    socket_unit = unit("sentiguard.socket")["Socket"]
    s = settings_mod.load(environ={}, check=False)
    assert socket_unit["ListenStream"] == f"{s.gateway.host}:{s.gateway.port}"
    assert socket_unit["Accept"] == "no"  # one `up` gets the listening socket itself
    assert int(socket_unit["Backlog"]) >= 1024
    assert socket_unit.get("Service", "sentiguard.service") == "sentiguard.service"
    assert unit("sentiguard.socket")["Install"]["WantedBy"] == "sockets.target"
    service = unit()["Unit"]
    assert "sentiguard.socket" in service["Requires"].split()
    assert "sentiguard.socket" in service["After"].split()


# --- Prometheus and Grafana ---------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus-rules.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = tool("promtool", "prometheus")
    check = run(promtool, "check", "rules", "prometheus-rules.yaml", cwd=DEPLOY)
    assert check.returncode == 0, check.stdout + check.stderr
    test = run(promtool, "test", "rules", "prometheus-rules.test.yaml", cwd=DEPLOY)
    assert test.returncode == 0, test.stdout + test.stderr
    alerts = {r["alert"] for r in rules()}
    tested = set(
        re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus-rules.test.yaml").read_text())
    )
    assert alerts == tested, f"alerts without a promtool test: {alerts - tested}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = tool("promtool", "prometheus")
    exprs = dashboard_exprs()
    assert exprs
    as_rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    # Grafana's $instance variable becomes a regex that matches anything.
                    {"record": f"dashboard:query_{i}", "expr": e.replace("$instance", ".*")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(as_rules))
    result = run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def gateway_metric_names() -> set[str]:
    """Every family the real gateway app exposes on /metrics (in-process, fake fallback)."""
    from prometheus_client.parser import text_string_to_metric_families

    from sentiguard.gateway.app import create_app

    class Fallback:
        version = "test"

        def predict_proba(self, texts: list[str]) -> list[float]:
            return [0.9] * len(texts)

    app = create_app(settings_mod.load(environ={}), fallback=Fallback(), start_poller=False)
    body = app.test_client().get("/metrics").get_data(as_text=True)
    names = set()
    for family in text_string_to_metric_families(body):
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def test_rules_and_dashboard_use_only_metrics_the_gateway_exposes() -> None:
    exposed = gateway_metric_names()
    used = {
        name
        for expr in [r["expr"] for r in rules()] + dashboard_exprs()
        for name in re.findall(r"\bsentiguard_[a-z_]+\b", expr)
    }
    assert used, "no sentiguard metric in the rules or the dashboard"
    assert used <= exposed, f"not on /metrics: {sorted(used - exposed)}"


def test_memory_alert_threshold_matches_the_watchdog_limit() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "SentiguardWorkerMemoryNearLimit"]
    # The pod pins a number (its memory limit is fixed, so "auto" cannot size it), and the
    # alert fires near that number.
    limit_mb = int(plain_env(container())["SENTIGUARD_WATCHDOG_MEMORY_LIMIT_MB"])
    assert f"* {limit_mb} * 1024 * 1024" in rule["expr"]


def test_dashboard_panels_are_laid_out_and_filtered_by_instance() -> None:
    board = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"{p['title']} overlaps another panel"
        cells |= area
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]
            for t in p["targets"]:
                assert '$instance"' in t["expr"], f"{p['title']}: not filtered by $instance"
