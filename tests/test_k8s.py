"""deploy/k8s: every manifest, and each overlay as kustomize renders it, valid against the Kubernetes schemas
(kubernetes-validate, strict: an unknown field fails), wired to itself and to the settings the service reads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from mvmic.service.settings import Settings

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
KUBERNETES = "1.33.0"  # a version every supported cluster release line still serves these APIs in
OVERLAYS = sorted(folder.name for folder in K8S.iterdir() if (folder / "kustomization.yaml").is_file())


def render(folder: Path) -> list[dict]:
    """The objects `kubectl apply -k folder` applies: its resources (files, or folders rendered in turn), the
    Secrets of its secretGenerator (from each env file's committed .example: the real one is the user's), then
    its RFC 6902 patches on the objects their targets name (kind and name), as kustomize does."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        path = folder / resource
        objects += render(path) if path.is_dir() else [yaml.safe_load(path.read_text())]
    for generator in kustomization.get("secretGenerator", []):
        assert generator["options"]["disableNameSuffixHash"], "the Deployment names the Secret without a hash"
        values = {}
        for env in generator["envs"]:
            lines = (folder / f"{env}.example").read_text().splitlines()
            values |= dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": generator["name"]},
                        "type": "Opaque", "stringData": values})
    for patch in kustomization.get("patches", []):
        operations = jsonpatch.JsonPatch(yaml.safe_load((folder / patch["path"]).read_text()))
        target = patch["target"]
        matching = [index for index, item in enumerate(objects)
                    if item["kind"] == target["kind"] and item["metadata"]["name"] == target["name"]]
        assert matching, f"{folder.name}: the patch {patch['path']} matches no object"
        for index in matching:
            objects[index] = operations.apply(objects[index])
    return objects


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> list[dict]:
    return render(K8S / request.param)


def by_kind(objects: list[dict], kind: str) -> dict:
    [found] = [item for item in objects if item["kind"] == kind]
    return found


def test_every_file_is_a_resource_or_a_patch_of_an_overlay() -> None:
    listed = set()
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())
        listed |= {K8S / overlay / name for name in kustomization["resources"] if not (K8S / overlay / name).is_dir()}
        listed |= {K8S / overlay / patch["path"] for patch in kustomization.get("patches", [])}
        listed |= {K8S / overlay / f"{env}.example" for generator in kustomization.get("secretGenerator", [])
                   for env in generator["envs"]}
    on_disk = {path for path in K8S.rglob("*")
               if path.is_file() and path.name != "kustomization.yaml" and path.suffix != ".env"}  # .env: the user's
    assert on_disk == listed
    secrets = [f"{path.relative_to(K8S.parent.parent).as_posix()}" for path in listed if path.suffix == ".example"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *(name.removesuffix(".example") for name in secrets)],
                             check=False, cwd=K8S.parent.parent, capture_output=True, text=True).stdout.split()
    assert secrets and len(ignored) == len(secrets), "a secrets file the user writes could be committed"
    assert {"base", "gpu", "queue-depth"} <= set(OVERLAYS)


def test_every_object_validates_against_the_kubernetes_schemas(rendered: list[dict]) -> None:
    for item in rendered:
        kubernetes_validate.validate(item, KUBERNETES, strict=True)  # raises ValidationError


def test_a_schema_violation_is_caught() -> None:
    deployment = by_kind(render(K8S / "base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requets"] = {"cpu": "1"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_selectors_probes_and_scaling_name_what_exists(rendered: list[dict]) -> None:
    deployment, service = by_kind(rendered, "Deployment"), by_kind(rendered, "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"],
                     by_kind(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    target = by_kind(rendered, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert service["spec"]["ports"][0]["targetPort"] in {port["name"] for port in container["ports"]}


def test_the_settings_named_are_the_ones_the_service_reads(rendered: list[dict], monkeypatch) -> None:
    deployment = by_kind(rendered, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    sources = {item["metadata"]["name"]: item for item in rendered if item["kind"] in ("ConfigMap", "Secret")}
    assert {source[next(iter(source))]["name"] for source in container["envFrom"]} == sources.keys()
    named = {name for item in sources.values() for name in {**item.get("data", {}), **item.get("stringData", {})}}
    named |= {variable["name"] for variable in container.get("env", [])}
    read = {f"MVMIC_{field.upper()}" for field in Settings.model_fields}
    assert named <= read, f"settings the service does not read: {sorted(named - read)}"
    secret = by_kind(rendered, "Secret")["stringData"]
    assert {"MVMIC_API_TOKENS", "MVMIC_PACS_USER", "MVMIC_PACS_PASSWORD"} <= secret.keys()
    settings = {**by_kind(rendered, "ConfigMap")["data"], **secret,
                **{variable["name"]: variable["value"] for variable in container.get("env", [])}}
    for name, value in settings.items():  # as the replica's environment: Settings parses it as the service does
        monkeypatch.setenv(name, str(value))
    parsed = Settings()
    assert parsed.storage_bound == 0 and parsed.pacs_url  # the gateway stores lossless, in front of a PACS
    assert parsed.workers == int(float(container["resources"]["requests"]["cpu"]))
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_the_gpu_overlay_asks_for_a_gpu_and_puts_the_heads_on_it() -> None:
    deployment = by_kind(render(K8S / "gpu"), "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "MVMIC_DEVICE", "value": "auto"} in container["env"]
    assert container["image"].endswith(":cuda")
