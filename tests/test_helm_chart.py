"""The Helm chart in deploy/helm/ich-expansion: ``helm lint`` and ``helm template`` (the real helm binary, put in
.tools/bin by scripts/install_helm.sh), every rendered manifest validated against the Kubernetes 1.30 JSON
schemas (``kubernetes-validate``, strict: unknown fields fail), and what the deployment promises checked in the
manifests: GPU, probes, non-root, read-only root filesystem, an emptyDir for uploads, a proxy with header and
body timeouts in front, scaling on ``ich_predictions_in_flight``, a PodDisruptionBudget, the store URL, API keys
from a Secret, an Ingress with TLS. The proxy configuration of the chart is checked by ``haproxy -c``.

Budget: about 3 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from system_components import require_executable, running_in_ci

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "ich-expansion"
K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def helm() -> Path:
    found = shutil.which("helm") or (str(ROOT / ".tools/bin/helm") if (ROOT / ".tools/bin/helm").is_file() else None)
    if found is None:
        message = "helm not found: run scripts/install_helm.sh"
        if running_in_ci():
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return Path(found)


def _render(helm: Path, *values: str) -> dict[tuple[str, str], dict]:
    sets = [arg for v in values for arg in ("--set", v)]
    out = subprocess.run([str(helm), "template", "rel", str(CHART), "--kube-version", K8S_VERSION, *sets],
                         check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _validate(manifests: dict[tuple[str, str], dict]) -> None:
    import kubernetes_validate

    for doc in manifests.values():
        if doc["apiVersion"].startswith("keda.sh/"):  # a CRD: no schema among the Kubernetes ones
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError with the path


def test_validator_rejects_an_unknown_field(helm: Path) -> None:
    import kubernetes_validate

    pdb = _render(helm)[("PodDisruptionBudget", "rel-ich-expansion")]
    pdb["spec"]["minAvailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, K8S_VERSION, strict=True)


def test_chart_lints(helm: Path) -> None:
    result = subprocess.run([str(helm), "lint", str(CHART), "--strict"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_values_render_valid_manifests(helm: Path) -> None:
    m = _render(helm, "apiKeys.keys={sha256:" + "ab" * 32 + "}")
    _validate(m)
    assert {k for k, _ in m} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret",
                                 "Ingress", "ConfigMap"}
    pod = m[("Deployment", "rel-ich-expansion")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    app, proxy = pod["containers"]
    for c in (app, proxy):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert app["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert app["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert app["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    env = {e["name"]: e for e in app["env"]}
    assert env["ICH_HOST"]["value"] == "127.0.0.1"  # reachable only through the proxy
    assert env["ICH_STORE_URL"]["value"] == "redis://rel-ich-expansion-redis:6379/0"
    assert env["ICH_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "rel-ich-expansion-api-keys", "key": "api-keys"}
    assert env["ICH_UPLOAD_DIR"]["value"].startswith("/tmp/")
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp and {"name": "tmp", "mountPath": "/tmp"} in app["volumeMounts"]
    service = m[("Service", "rel-ich-expansion")]["spec"]
    assert service["ports"][0]["targetPort"] == "proxy"
    hpa = m[("HorizontalPodAutoscaler", "rel-ich-expansion")]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "ich_predictions_in_flight"
    assert m[("PodDisruptionBudget", "rel-ich-expansion")]["spec"]["minAvailable"] == 1
    ingress = m[("Ingress", "rel-ich-expansion")]["spec"]
    assert ingress["tls"][0]["secretName"] == "ich-expansion-tls" and ingress["tls"][0]["hosts"] == ["ich.example.org"]
    redis = m[("Deployment", "rel-ich-expansion-redis")]["spec"]["template"]["spec"]
    assert redis["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_keda_external_store_and_existing_secret(helm: Path) -> None:
    m = _render(helm, "keda.enabled=true", "redis.enabled=false", "redis.existingSecret=store-url",
                "apiKeys.existingSecret=site-keys", "gpu.count=0", "settings.ICH_DEVICE=cpu", "ingress.enabled=false")
    _validate(m)
    kinds = {k for k, _ in m}
    assert "HorizontalPodAutoscaler" not in kinds and "Secret" not in kinds and "Ingress" not in kinds
    scaled = m[("ScaledObject", "rel-ich-expansion")]["spec"]
    assert "ich_predictions_in_flight" in scaled["triggers"][0]["metadata"]["query"]
    app = m[("Deployment", "rel-ich-expansion")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in app["env"]}
    assert env["ICH_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "store-url", "key": "url"}
    assert env["ICH_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "site-keys"
    assert "nvidia.com/gpu" not in app["resources"]["limits"]
    assert not any(k == "Deployment" and n.endswith("-redis") for k, n in m)


def test_no_store_is_refused(helm: Path) -> None:
    result = subprocess.run([str(helm), "template", "rel", str(CHART), "--set", "redis.enabled=false"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "need a shared store" in result.stderr


def test_proxy_config_has_timeouts_and_is_valid(helm: Path, tmp_path: Path) -> None:
    config = _render(helm)[("ConfigMap", "rel-ich-expansion-proxy")]["data"]
    text = config["haproxy.cfg"]
    assert "timeout http-request 10s" in text and "timeout client 30s" in text
    assert config["503.http"].startswith("HTTP/1.1 503 ") and "Retry-After: " in config["503.http"]
    haproxy = require_executable("haproxy", "haproxy", "/usr/sbin/haproxy")
    (tmp_path / "503.http").write_text(config["503.http"], newline="")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text.replace("/usr/local/etc/haproxy/", f"{tmp_path}/"))
    check = subprocess.run([str(haproxy), "-c", "-f", str(cfg)], capture_output=True, text=True,
                           env={**os.environ})
    assert check.returncode == 0, check.stdout + check.stderr
