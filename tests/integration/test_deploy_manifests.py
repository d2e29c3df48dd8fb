"""deploy/k8s: rendered in Python, every object strictly valid, RBAC exactly what the adapter uses.

The kustomization is rendered here without the kustomize binary (its
``resources`` and ``configMapGenerator``, which is all it uses); when
``kubectl`` is installed, ``kubectl kustomize`` must build the same objects.
Every object is validated with ``kubernetes-validate`` in strict mode against
the newest Kubernetes version the package ships.

RBAC: the adapter's operations run against the fake API server
(``fake_kube.py``) while it enforces the Roles and ClusterRoles bound to the
controller's (then the console's) ServiceAccount, with the options the
Deployment's environment sets. Every request must be allowed, and every verb
on every resource a rule grants must have been used by some request: least
privilege, checked both ways.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from kubernetes_validate.utils import latest_version

from core.adapters.kubernetes import KubernetesCluster, options_from_env
from core.adapters.settings_source import default_mapping, load_settings
from core.errors import PermanentError
from core.manifest import render_pod
from core.model import MpsSlice, PlacementRequest, Priority, WorkloadClass
from core.mps.device_plugin import plugin_config, render_yaml, unknown_fields
from core.settings import Settings
from tests.integration.fake_kube import Call, FakeKube, Grant, demo_fleet, grants_for

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
K8S_VERSION = latest_version()  # the newest schemas kubernetes-validate ships
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
APP_NAMESPACE = "gpu-scheduler"
FAST = {"retry_delay_s": 0.05, "poll_interval_s": 0.05, "request_timeout_s": 10.0}


# ------------------------------------------------------------------------------------------
# Rendering the kustomization
# ------------------------------------------------------------------------------------------
def render(directory: Path) -> list[dict[str, Any]]:
    """What ``kustomize build directory`` produces, for the features this repo uses."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text("utf-8"))
    supported = {"apiVersion", "kind", "resources", "generatorOptions", "configMapGenerator"}
    unsupported = set(kustomization) - supported
    if unsupported:
        raise ValueError(f"render() does not implement {sorted(unsupported)}: extend it")
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources") or ():
        path = directory / entry
        if path.is_dir():
            objects += render(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d]
    defaults = kustomization.get("generatorOptions") or {}
    for generator in kustomization.get("configMapGenerator") or ():
        options = {**defaults, **(generator.get("options") or {})}
        if not options.get("disableNameSuffixHash"):
            raise ValueError(f"{generator['name']}: name hashes are not rendered here")
        data: dict[str, str] = {}
        for source in generator.get("files") or ():
            key, _, rel = source.rpartition("=")
            data[key or Path(rel).name] = (directory / rel).read_text("utf-8")
        for literal in generator.get("literals") or ():
            key, _, value = literal.partition("=")
            data[key] = value
        meta: dict[str, Any] = {"name": generator["name"]}
        if generator.get("namespace"):
            meta["namespace"] = generator["namespace"]
        for field in ("labels", "annotations"):
            values = {**(defaults.get(field) or {}), **(options.get(field) or {})}
            if values:
                meta[field] = values
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                        "data": data})
    return objects


OBJECTS = render(K8S)


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']}/{meta.get('namespace', '-')}/{meta['name']}"


def _find(kind: str, name: str) -> dict[str, Any]:
    return next(o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name)


def _container(deployment: str) -> dict[str, Any]:
    (container,) = _find("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def _plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------
# Validity
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("obj", OBJECTS, ids=_key)
def test_every_object_validates_strictly(obj: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    namespaced = obj["kind"] not in CLUSTER_SCOPED
    assert ("namespace" in obj["metadata"]) == namespaced, "every object names its namespace"


def test_the_kustomization_holds_what_the_deployment_needs() -> None:
    kinds = sorted(_key(o) for o in OBJECTS)
    assert len(kinds) == len(set(kinds)), "no object twice"
    namespaces = {o["metadata"]["name"] for o in OBJECTS if o["kind"] == "Namespace"}
    assert {o["metadata"].get("namespace") for o in OBJECTS} - {None} <= namespaces
    assert {o["kind"] for o in OBJECTS} == {
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
        "RoleBinding", "Deployment", "Service", "ConfigMap"}
    assert not any(o["kind"] == "Secret" for o in OBJECTS), "secrets are never committed"


def test_kustomize_builds_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the Python rendering is checked alone")
    built = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
        capture_output=True, text=True, timeout=60, check=True).stdout
    theirs = sorted((d for d in yaml.safe_load_all(built) if d), key=_key)
    assert theirs == sorted(OBJECTS, key=_key)


# ------------------------------------------------------------------------------------------
# What the objects say
# ------------------------------------------------------------------------------------------
def test_the_console_is_served_on_8501_and_ready_when_streamlit_is_healthy() -> None:
    deployment = _find("Deployment", "gpu-scheduler-console")
    template = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= \
        template["metadata"]["labels"].items()
    container = _container("gpu-scheduler-console")
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8501)
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/_stcore/health", "http")
    service = _find("Service", "gpu-scheduler-console")
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (8501, "http")


def test_the_controller_runs_two_replicas_of_the_controller_process() -> None:
    deployment = _find("Deployment", "gpu-scheduler-controller")
    assert deployment["spec"]["replicas"] == 2
    assert _container("gpu-scheduler-controller")["command"] == [
        "python", "-m", "app.controller"]


@pytest.mark.parametrize("deployment", ["gpu-scheduler-console", "gpu-scheduler-controller"])
def test_pods_run_as_their_own_account_without_root_with_settings_and_secret_url(
    deployment: str, tmp_path: Path
) -> None:
    spec = _find("Deployment", deployment)["spec"]["template"]["spec"]
    accounts = {o["metadata"]["name"] for o in OBJECTS if o["kind"] == "ServiceAccount"}
    assert spec["serviceAccountName"] == deployment and deployment in accounts
    assert spec["securityContext"]["runAsNonRoot"] is True
    container = _container(deployment)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (url,) = [e for e in container["env"] if e["name"] == "DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "gpu-scheduler-database", "key": "url"}
    assert not re.search(r"://[^/\s]*:[^@/\s]+@", yaml.safe_dump(OBJECTS)), "no password"

    # GSC_SETTINGS_FILE is a key of the mounted settings ConfigMap, and it loads.
    settings_path = Path(_plain_env(container)["GSC_SETTINGS_FILE"])
    (mount,) = [m for m in container["volumeMounts"]
                if settings_path.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    config_map = _find("ConfigMap", volume["configMap"]["name"])
    text = config_map["data"][settings_path.name]
    (tmp_path / settings_path.name).write_text(text, encoding="utf-8")
    loaded = load_settings(tmp_path / settings_path.name, env={})
    assert isinstance(loaded, Settings)
    assert loaded.placement.weights == load_settings(env={}).placement.weights
    assert set(tomllib.loads(text)) <= set(default_mapping()), "only known sections"


def test_the_controllers_metrics_bind_every_interface_in_the_pod_only(tmp_path: Path
                                                                      ) -> None:
    # Loopback is the default (core/defaults.toml); the Deployment's settings say 0.0.0.0 so
    # that Prometheus can scrape the pod, on the container port the metrics server uses.
    assert load_settings(env={}).runtime.controller.metrics_host == "127.0.0.1"
    container = _container("gpu-scheduler-controller")
    settings_path = Path(_plain_env(container)["GSC_SETTINGS_FILE"])
    text = _find("ConfigMap", "gpu-scheduler-settings")["data"][settings_path.name]
    (tmp_path / settings_path.name).write_text(text, encoding="utf-8")
    ctl = load_settings(tmp_path / settings_path.name, env={}).runtime.controller
    assert ctl.metrics_host == "0.0.0.0"
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", ctl.metrics_port)


def test_the_device_plugin_configs_are_the_planners_and_current() -> None:
    script = _load_script(K8S / "generate_device_plugin_configs.py")
    assert script.main(["--check"]) == 0, "run deploy/k8s/generate_device_plugin_configs.py"
    config_map = _find("ConfigMap", "nvidia-device-plugin-configs")
    assert config_map == yaml.safe_load(script.render())
    assert config_map["metadata"]["namespace"] == "nvidia-device-plugin"
    assert set(config_map["data"]) == {"exclusive", "mps-2", "mps-3"}
    for name, text in config_map["data"].items():
        config = yaml.safe_load(text)
        assert unknown_fields(config) == [], name
        replicas = int(name.removeprefix("mps-")) if name.startswith("mps-") else 1
        assert config == plugin_config(replicas)


def test_the_prometheus_rules_config_map_is_the_tested_rule_file() -> None:
    config_map = _find("ConfigMap", "gpu-scheduler-prometheus-rules")
    assert config_map["data"] == {"gpu-scheduler.rules.yml": RULES.read_text("utf-8")}


def test_the_dockerfile_builds_a_non_root_console_image() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text("utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^RUN pip install \.$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    run_as = _find("Deployment", "gpu-scheduler-console")["spec"]["template"]["spec"][
        "securityContext"]["runAsUser"]
    assert user[-1].split(":")[0] == str(run_as)
    assert re.search(r"^EXPOSE 8501$", text, re.M)
    # Through app.serve, which refuses a non-loopback address until sign-in is configured.
    assert 'CMD ["python", "-m", "app.serve", "--host", "0.0.0.0"' in text
    for copied in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / copied).exists(), copied


# ------------------------------------------------------------------------------------------
# RBAC: exactly what the adapter uses
# ------------------------------------------------------------------------------------------
PUBLIC_OPERATIONS = {
    name for name, _ in inspect.getmembers(KubernetesCluster, inspect.isfunction)
    if not name.startswith("_") and name != "close"}
CONSOLE_OPERATIONS = {"nodes", "node_statuses", "pods"}


class _Recorder:
    """The adapter, noting which public operations a scenario used."""

    def __init__(self, adapter: KubernetesCluster) -> None:
        self.adapter = adapter
        self.used: set[str] = set()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.adapter, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.used.add(name)
            return method(*args, **kwargs)
        return call


def _adapter(fake: FakeKube, settings: Settings, *, deployment: str) -> KubernetesCluster:
    env = _plain_env(_container(deployment))
    options = dataclasses.replace(options_from_env(env), **FAST)
    return KubernetesCluster(client.Configuration(host=fake.url), catalog=settings.catalog,
                             options=options)


@pytest.fixture()
def fake() -> Iterator[FakeKube]:
    with FakeKube() as server:
        demo_fleet(server)
        yield server


def _grants(account: str) -> list[Grant]:
    return grants_for(OBJECTS, service_account=account, namespace=APP_NAMESPACE)


def _pod(namespace: str, *, node: str, model: str) -> dict[str, Any]:
    request = PlacementRequest(model_name=model, model_memory_gb=8.0, priority=Priority.LOW,
                               latency_sla_ms=500.0, namespace=namespace)
    mps_slice = MpsSlice(owner=f"{model}-0", thread_pct=50, memory_mib=request.memory_mib)
    return render_pod(request=request, node=node, gpu_index=0, mps_slice=mps_slice,
                      workload_class=WorkloadClass.MEDIUM, pod_name=f"{model}-0")


def _controller_scenario(cluster: _Recorder, fake: FakeKube, *, namespace: str) -> None:
    """Every operation of a placement and of a rolling MPS change (SPEC §3.3, §4.1)."""
    fake.add_pod("batch", "etl-5f7c-1", node="a100-7")  # another team's pod: drained too
    fake.add_pod("monitoring", "dcgm-exporter-a7", node="a100-7", owner="DaemonSet")
    assert len(cluster.nodes()) == 12
    assert cluster.node_statuses()
    cluster.bind(_pod(namespace, node="a100-7", model="mistral-7b"))
    assert cluster.pod_phase(namespace, "mistral-7b-0") in ("Pending", "Running")
    assert cluster.wait_for_pod(namespace, "mistral-7b-0", timeout_s=5).running
    assert [p.name for p in cluster.pods()] == ["mistral-7b-0"]
    assert [p.deployment for p in cluster.replica_pods()] == [f"{namespace}/mistral-7b"]
    cluster.cordon("a100-7")
    drained = cluster.drain("a100-7", timeout_s=5)
    assert drained.completed, drained.reason
    assert sorted(drained.evicted) == ["batch/etl-5f7c-1", f"{namespace}/mistral-7b-0"]
    cluster.patch_device_plugin_configs({"mps-4": render_yaml(plugin_config(4))})
    assert cluster.device_plugin_config("a100-7") == "mps-2"
    cluster.set_device_plugin_config("a100-7", "mps-4")
    assert cluster.device_plugin_config("a100-7") == "mps-4"
    restarted = cluster.restart_device_plugin("a100-7", expected_gpus=4, timeout_s=5)
    assert restarted.ready, restarted.reason
    cluster.uncordon("a100-7")
    cluster.set_schedulable("a100-6", True)
    cluster.bind(_pod(namespace, node="a100-6", model="phi-2"))
    cluster.delete_pod(namespace, "phi-2-0")
    # A placement pass's batch calls: creates at once, then one watch for all.
    assert cluster.bind_many([_pod(namespace, node="a100-6", model=m)
                              for m in ("gemma-2b", "qwen-1b")]) == [None, None]
    waited = cluster.wait_for_pods([(namespace, "gemma-2b-0"), (namespace, "qwen-1b-0")],
                                   timeout_s=5)
    assert all(w.running for w in waited.values())


def _refused(grants: list[Grant], calls: list[Call]) -> list[str]:
    return [f"{c.verb} {c.resource_path} ns={c.namespace or '-'} name={c.name or '-'}"
            for c in calls if c.code == 403 or not any(g.allows(c) for g in grants)]


def _unused(grants: list[Grant], calls: list[Call]) -> list[str]:
    """Each (rule, verb, resource) that no request needed."""
    return [f"{g.source}: {verb} {resource}"
            for g in grants for verb in sorted(g.verbs) for resource in sorted(g.resources)
            if not any(c.verb == verb and c.resource_path == resource and g.allows(c)
                       for c in calls)]


def test_rbac_bindings_refer_to_existing_roles_and_accounts() -> None:
    accounts = {o["metadata"]["name"] for o in OBJECTS if o["kind"] == "ServiceAccount"}
    for account in accounts:
        assert _grants(account), f"{account} has no rules"
    for binding in (o for o in OBJECTS if o["kind"].endswith("Binding")):
        assert binding["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
        for subject in binding["subjects"]:
            assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", APP_NAMESPACE)
            assert subject["name"] in accounts


def test_the_controller_may_make_every_call_the_adapter_makes_and_nothing_more(
    fake: FakeKube, settings: Settings
) -> None:
    grants = _grants("gpu-scheduler-controller")
    fake.enforce(grants)
    with _adapter(fake, settings, deployment="gpu-scheduler-controller") as adapter:
        recorder = _Recorder(adapter)
        _controller_scenario(recorder, fake, namespace=adapter.options.namespace)
    assert recorder.used == PUBLIC_OPERATIONS, "the scenario must use every adapter operation"
    calls = fake.calls
    assert _refused(grants, calls) == []
    assert _unused(grants, calls) == []
    made = {(c.verb, c.resource_path, c.namespace) for c in calls}
    assert ("create", "pods/eviction", "batch") in made  # why eviction is cluster-wide


def test_the_console_may_read_the_fleet_and_nothing_more(fake: FakeKube,
                                                         settings: Settings) -> None:
    grants = _grants("gpu-scheduler-console")
    fake.enforce(grants)
    with _adapter(fake, settings, deployment="gpu-scheduler-console") as adapter:
        recorder = _Recorder(adapter)
        assert len(recorder.nodes()) == 12
        assert len(recorder.node_statuses()) == 12
        assert recorder.pods() == ()
    assert recorder.used == CONSOLE_OPERATIONS
    assert _refused(grants, fake.calls) == []
    assert _unused(grants, fake.calls) == []


def test_a_rule_missing_from_the_role_is_refused_by_the_enforcing_fake(
    fake: FakeKube, settings: Settings
) -> None:
    """The RBAC check has teeth: without pods/eviction the drain is refused, by name."""
    grants = [g for g in _grants("gpu-scheduler-controller")
              if "pods/eviction" not in g.resources]
    fake.enforce(grants)
    fake.add_pod("batch", "etl-5f7c-1", node="a100-7")
    with _adapter(fake, settings, deployment="gpu-scheduler-controller") as adapter, \
            pytest.raises(PermanentError,
                          match="may not create pods/eviction in namespace batch"):
        adapter.drain("a100-7", timeout_s=2)


# ------------------------------------------------------------------------------------------
# The scrape objects (issue 16): PodMonitors for vLLM and dcgm-exporter
# ------------------------------------------------------------------------------------------
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PODMONITORS = {"vllm": PROMETHEUS_DIR / "podmonitor-vllm.yml",
               "dcgm-exporter": PROMETHEUS_DIR / "podmonitor-dcgm-exporter.yml"}

# kubernetes-validate knows no CRDs. This is the part of the Prometheus Operator's
# PodMonitor (monitoring.coreos.com/v1) these objects use, written from its API
# reference (e.g. docs.okd.io/4.14/rest_api/monitoring_apis/
# podmonitor-monitoring-coreos-com-v1.html: spec requires `selector` (and, in older
# operators, `podMetricsEndpoints`); PodMetricsEndpoint has port, path, interval,
# honorLabels, relabelings and metricRelabelings, both []RelabelConfig with
# sourceLabels, separator, targetLabel, regex, modulus, replacement, action).
# additionalProperties: false everywhere, so a misspelt field (relabelConfigs,
# metricRelabelConfigs, honor_labels) fails here rather than being pruned in silence
# by the API server.
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                                          r"(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
                                          r"(([0-9]+)ms)?)$"}
_RELABEL = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {
            "type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop",
                            "hashmod", "HashMod", "labelmap", "LabelMap", "labeldrop",
                            "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
                            "uppercase", "Uppercase", "keepequal", "KeepEqual", "dropequal",
                            "DropEqual"]},
    },
}
PODMONITOR_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object", "required": ["name", "namespace"],
            "properties": {"name": {"type": "string",
                                    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                           "namespace": {"type": "string"},
                           "labels": {"type": "object",
                                      "additionalProperties": {"type": "string"}}},
        },
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": {
                    "type": "object", "additionalProperties": False, "minProperties": 1,
                    "properties": {"matchLabels": {"type": "object",
                                                   "additionalProperties": {"type": "string"}},
                                   "matchExpressions": {"type": "array"}}},
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"},
                                   "matchNames": {"type": "array",
                                                  "items": {"type": "string"}}}},
                "podMetricsEndpoints": {
                    "type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["port"],
                        "properties": {"port": {"type": "string"},
                                       "path": {"type": "string", "pattern": "^/"},
                                       "interval": _DURATION,
                                       "honorLabels": {"type": "boolean"},
                                       "relabelings": {"type": "array", "items": _RELABEL},
                                       "metricRelabelings": {"type": "array",
                                                             "items": _RELABEL}}}},
            },
        },
    },
}
# Prometheus' pod-role discovery labels these objects read (the same names the
# operator's generated scrape configs use).
TARGET_LABELS = {"namespace": "__meta_kubernetes_namespace",
                 "pod": "__meta_kubernetes_pod_name",
                 "node": "__meta_kubernetes_pod_node_name"}
COLON_RELABEL = {"sourceLabels": ["__name__"], "regex": "vllm_(.+)",
                 "targetLabel": "__name__", "replacement": "vllm:$1"}


def _podmonitor(name: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all(PODMONITORS[name].read_text("utf-8")))
    assert len(docs) == 1
    return docs[0]


def _endpoint(name: str) -> dict[str, Any]:
    (endpoint,) = _podmonitor(name)["spec"]["podMetricsEndpoints"]
    return endpoint


def _relabel_targets(rules: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {r["targetLabel"]: r["sourceLabels"] for r in rules
            if r.get("action", "replace").lower() == "replace"}


@pytest.mark.parametrize("name", sorted(PODMONITORS))
def test_the_podmonitors_match_the_operators_schema(name: str) -> None:
    import jsonschema

    jsonschema.validate(_podmonitor(name), PODMONITOR_SCHEMA)


def test_the_podmonitor_schema_check_has_teeth() -> None:
    import jsonschema

    bad = _podmonitor("vllm")
    endpoint = bad["spec"]["podMetricsEndpoints"][0]
    endpoint["metricRelabelConfigs"] = endpoint.pop("metricRelabelings")  # a typo
    with pytest.raises(jsonschema.ValidationError, match="metricRelabelConfigs"):
        jsonschema.validate(bad, PODMONITOR_SCHEMA)


@pytest.mark.parametrize("name", sorted(PODMONITORS))
def test_namespace_pod_and_node_come_from_service_discovery(name: str) -> None:
    targets = _relabel_targets(_endpoint(name)["relabelings"])
    assert targets == {label: [meta] for label, meta in TARGET_LABELS.items()}


def test_the_vllm_podmonitor_restores_colon_names_and_scrapes_the_placed_servers() -> None:
    endpoint = _endpoint("vllm")
    assert [{k: v for k, v in r.items() if k != "action"}
            for r in endpoint["metricRelabelings"]] == [COLON_RELABEL]
    assert endpoint["metricRelabelings"][0].get("action", "replace") == "replace"
    # The selector and the port are those of the pods the controller creates.
    pod = _pod("inference", node="a100-7", model="mistral-7b")
    spec = _podmonitor("vllm")["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in ports


def test_dcgm_exporter_keeps_its_pod_mapping_as_exported_labels() -> None:
    # honorLabels false: dcgm's pod/namespace/container become exported_*, and `pod`
    # keeps meaning the scrape target (the Helm chart's and GPU Operator's default).
    endpoint = _endpoint("dcgm-exporter")
    assert endpoint["honorLabels"] is False
    assert "metricRelabelings" not in endpoint


def test_the_example_scrape_config_agrees_with_the_podmonitors() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "scrape-example.yml").read_text("utf-8"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == set(PODMONITORS)
    for name, job in jobs.items():
        assert job["honor_labels"] is _endpoint(name)["honorLabels"], name
    (relabel,) = jobs["vllm"]["metric_relabel_configs"]
    assert relabel == {"source_labels": ["__name__"], "regex": "vllm_(.+)",
                       "target_label": "__name__", "replacement": "vllm:$1"}
    # The static example sets by hand what discovery sets in a cluster.
    (target,) = jobs["vllm"]["static_configs"]
    assert set(target["labels"]) == set(TARGET_LABELS)
