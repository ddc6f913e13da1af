"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests agree with the setup the tests run
(tests/e2e/test_scale.py: workers behind deploy/haproxy.cfg, sessions in a real Redis) and with the config
defaults: ports, health paths, environment variable names, the HAProxy configs and their variables, drain
and grace timings.

No Docker engine or cluster runs where the tests run, so nothing here builds an image or starts a container:
the files are parsed, validated against their own schemas (the Compose Specification's; Kubernetes', strict),
the configuration each worker would get is loaded as the server loads it, and HAProxy checks its configs.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from server.config import Config, ServerOptions, SessionDefaults, load_config
from server.resume_tokens import resume_secret
from server.state import StateOptions
from tests.services import require_binary
from vocab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"  # a release still in support; the manifests use nothing newer
SECRET = "s" * 32
PORT = ServerOptions().port
REDIS_URL_ENV = StateOptions().url_env
SECRET_ENV = SessionDefaults().resume_secret_env
SESSION_HEADER = "X-Voxpipe-Session"  # server/app.py names each upgrade's session in it; HAProxy sticks on it


def drain_worst_case_s(config: Config) -> float:
    """How long SIGTERM may take to stop a worker (server/app.py ``RunningServer.drain``): turns in flight
    (drain_timeout_s), going_away flushed (close), every close bounded (close + 1 s), the handlers' end
    awaited (close), and once more after the abort (close)."""
    close_s = config.server.close_timeout_s or 5.0
    return config.server.drain_timeout_s + 4 * close_s + 1.0


def worker_config(env: Mapping[str, str], config_file: str = "config.yaml") -> Config:
    """The config a worker started with ``env`` loads: the file of the image (copied from the checkout)
    with the VOXPIPE_SECTION__KEY overrides, validated as ``voxpipe serve`` does."""
    assert (ROOT / config_file).is_file(), config_file
    return load_config(ROOT / config_file, environ=dict(env))


def check_env_names(env: Mapping[str, str]) -> None:
    """Every VOXPIPE_ variable is a config key (VOXPIPE_SECTION__KEY, checked by loading) or one the config
    names for a secret or URL."""
    loose = {name for name in env if name.startswith("VOXPIPE_") and "__" not in name}
    assert loose <= {REDIS_URL_ENV, SECRET_ENV}, loose


def haproxy_variables(text: str) -> set[str]:
    """The ${NAME} a HAProxy config expands (comments aside)."""
    return set(re.findall(r"\$\{(\w+)\}", "\n".join(config_lines(text))))


def haproxy_check(config: Path, env: Mapping[str, str]) -> str:
    """``haproxy -c`` with the environment the deployment gives HAProxy; its output."""
    binary = require_binary("haproxy")
    proc = subprocess.run(
        [binary, "-c", "-f", str(config)], capture_output=True, text=True, check=False, env={**os.environ, **env}
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def config_lines(text: str) -> list[str]:
    """HAProxy config lines without comments and blank lines."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].rstrip()
        if line.strip():
            out.append(line)
    return out


def duration_s(text: str) -> float:
    value, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text).groups()  # type: ignore[union-attr]
    return float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[unit]


# ------------------------------------------------------------ Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages_of(instructions: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in instructions:
        if word == "FROM":
            current = stages.setdefault(rest.split()[-1], [])
        current.append((word, rest))
    return stages


def makefile_value(name: str) -> str:
    found = re.search(rf"^{name}\s*\?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, name
    return found.group(1).strip()


def test_the_dockerfile_builds_the_wheels_once_and_runs_them_slim() -> None:
    steps = dockerfile()
    stages = stages_of(steps)
    assert list(stages) == ["builder", "runtime"]
    arg_defaults = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    runtime_base = stages["runtime"][0][1].split()[0]
    assert runtime_base == "${PYTHON_IMAGE}"
    assert "slim" in arg_defaults["PYTHON_IMAGE"]
    assert arg_defaults["PYTHON_IMAGE"].startswith("python:3.11")  # the Python the tests run on
    assert stages["builder"][0][1].startswith("python:3.11")
    # llama-cpp-python compiles once, in the builder, with exactly the Makefile's options
    assert arg_defaults["LLAMA_CMAKE_ARGS"].strip('"') == makefile_value("LLAMA_CMAKE_ARGS")
    # the same Smart Turn weights as `make install`, installed without pipecat's dependencies
    assert arg_defaults["SMART_TURN_WHEEL"].strip('"') == makefile_value("SMART_TURN_WHEEL")
    builds = [rest for word, rest in stages["builder"] if word == "RUN" and "pip wheel" in rest]
    assert len(builds) == 1
    assert 'CMAKE_ARGS="$LLAMA_CMAKE_ARGS" pip wheel --wheel-dir /wheels' in builds[0]
    installs = [rest for word, rest in stages["runtime"] if word == "RUN" and "pip install" in rest]
    assert len(installs) == 1
    assert "--no-index --find-links /wheels" in installs[0]  # the runtime builds and downloads nothing
    extras = re.findall(r"\[([a-z,]+)\]", builds[0] + installs[0])
    assert extras == ["embedded,redis", "embedded,redis"]  # state.backend: redis needs the redis extra
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert all(f"\n{extra} = [" in pyproject for extra in extras[0].split(","))


def test_the_dockerfile_copies_what_exists_and_serves_on_the_config_port() -> None:
    steps = dockerfile()
    for word, rest in steps:
        if word == "COPY" and "--from" not in rest:
            *sources, _ = shlex.split(rest)
            assert all((ROOT / s).exists() for s in sources), rest  # the build context is the repository root
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    copied = {shlex.split(rest)[0].rstrip("/") for word, rest in steps if word == "COPY" and "--from" not in rest}
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied <= kept, copied - kept  # .dockerignore lets in every file a COPY takes
    env = dict(item.split("=", 1) for word, rest in steps if word == "ENV" for item in shlex.split(rest))
    assert int(env["VOXPIPE_SERVER__PORT"]) == PORT
    assert [rest for word, rest in steps if word == "EXPOSE"] == [str(PORT)]
    # the demo page: WORKDIR /app + COPY clients/web ./clients/web is where server.web_root points
    assert ("WORKDIR", "/app") in steps
    assert env["VOXPIPE_SERVER__WEB_ROOT"] == "/app/clients/web"
    assert ("COPY", "clients/web ./clients/web") in steps
    check_env_names(env)
    config = worker_config({k: v for k, v in env.items() if k.startswith("VOXPIPE_")})
    assert (config.server.host, config.server.port) == ("0.0.0.0", PORT)
    health = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert "/ready" in health
    assert f"'VOXPIPE_SERVER__PORT', '{PORT}'" in health
    assert json.loads(next(rest for word, rest in steps if word == "ENTRYPOINT")) == ["voxpipe"]
    command = json.loads(next(rest for word, rest in steps if word == "CMD"))
    assert command[:2] == ["serve", "--config"]
    assert (ROOT / command[2]).is_file()
    assert ("COPY", f"{command[2]} ./") in steps
    assert ("STOPSIGNAL", "SIGTERM") in steps  # the drain
    user = [rest for word, rest in steps if word == "USER"]
    assert user == ["voxpipe"]


# ------------------------------------------------------------ docker-compose.yml


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} in every string of ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def compose(env: Mapping[str, str]) -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return interpolate(data, env)  # type: ignore[no-any-return]


def test_the_compose_file_is_valid_compose() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(data)
    with pytest.raises(KeyError, match=SECRET_ENV):  # no shared secret: compose refuses to start
        compose({})


def test_compose_runs_the_tested_topology(tmp_path: Path) -> None:
    services = compose({SECRET_ENV: SECRET})["services"]
    assert {"haproxy", "worker1", "worker2", "worker3", "redis"} <= set(services)
    proxy = services["haproxy"]
    assert proxy["image"].startswith("haproxy:2.6")  # the version tests/e2e/test_scale.py runs (Debian 12)
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]  # the tested file, as it is
    cfg = DEPLOY / "haproxy.cfg"
    assert haproxy_variables(cfg.read_text()) <= set(proxy["environment"])
    listen_port = int(proxy["environment"]["VOXPIPE_LISTEN"].rsplit(":", 1)[1])
    assert f"{listen_port}:{listen_port}" in proxy["ports"]
    for i in (1, 2, 3):
        assert proxy["environment"][f"VOXPIPE_W{i}"] == f"worker{i}:{PORT}"
    haproxy_check(cfg, proxy["environment"])
    subnet = ipaddress.ip_network(
        yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["networks"]["voxpipe"]["ipam"]["config"][0][
            "subnet"
        ]
    )
    proxy_ip = proxy["networks"]["voxpipe"]["ipv4_address"]
    assert ipaddress.ip_address(proxy_ip) in subnet

    for i in (1, 2, 3):
        worker = services[f"worker{i}"]
        assert worker["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
        assert "profiles" not in worker
        env = worker["environment"]
        check_env_names(env)
        assert env[SECRET_ENV] == SECRET
        config = worker_config(env, worker["command"][2])
        assert worker["command"] == ["serve", "--config", "config.yaml"]
        assert (config.server.host, config.server.port) == ("0.0.0.0", PORT)
        assert config.state.backend == "redis"
        redis_url = urlsplit(env[config.state.url_env])
        assert (redis_url.hostname, redis_url.port) == ("redis", 6379)
        assert config.limits.client_ip_header == "X-Forwarded-For"
        assert config.limits.trusted_proxies == [proxy_ip]  # the header is trusted from HAProxy only
        grace_s = duration_s(worker["stop_grace_period"])
        assert grace_s >= drain_worst_case_s(config) + 5, (grace_s, drain_worst_case_s(config))
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_the_compose_model_service_profile_serves_the_llm_the_workers_call() -> None:
    services = compose({SECRET_ENV: SECRET, "VOXPIPE_CONFIG": "deploy/llm-service.yaml"})["services"]
    llm, files = services["llm"], services["model-files"]
    assert llm["profiles"] == files["profiles"] == ["openai"]
    assert llm["depends_on"]["model-files"]["condition"] == "service_completed_successfully"
    model_path = llm["command"][llm["command"].index("-m") + 1]
    assert f"'{model_path}'" in files["command"][0]  # model-files copies the GGUF where llama-server reads it
    llm_port = int(llm["command"][llm["command"].index("--port") + 1])
    worker = services["worker1"]
    assert worker["command"] == ["serve", "--config", "deploy/llm-service.yaml"]
    config = worker_config(worker["environment"], worker["command"][2])
    (stage,) = [s for s in config.pipeline if s["name"] == "llm"]
    assert stage["engine"] == "openai"  # the OpenAI-compatible backend
    url = urlsplit(stage["url"])
    assert (url.hostname, url.port) == ("llm", llm_port)
    slots = int(llm["command"][llm["command"].index("--parallel") + 1])
    assert stage["max_concurrency"] <= slots


def test_the_model_service_config_is_the_shipped_one_with_only_the_llm_swapped() -> None:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "llm-service.yaml").read_text())
    assert {k: v for k, v in service.items() if k != "pipeline"} == {
        k: v for k, v in shipped.items() if k != "pipeline"
    }
    swapped = [i for i, (a, b) in enumerate(zip(shipped["pipeline"], service["pipeline"], strict=True)) if a != b]
    assert swapped == [2]
    assert (shipped["pipeline"][2]["engine"], service["pipeline"][2]["engine"]) == ("llama", "openai")
    assert service["pipeline"][2]["max_tokens"] == shipped["pipeline"][2]["max_tokens"]  # the same answers


# ------------------------------------------------------------ Kubernetes


def k8s_documents(*names: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in names:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                yield name, doc


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())  # type: ignore[no-any-return]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> resource, of every file kustomization.yaml lists and the optional llm.yaml."""
    files = [*kustomization()["resources"], "llm.yaml"]
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in k8s_documents(*files)}


def container(resource: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in resource["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert isinstance(found, dict)
    return found


def literal_env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def port_named(c: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return int(port)


def test_every_manifest_is_valid_kubernetes() -> None:
    listed = [*kustomization()["resources"], "llm.yaml"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk  # no manifest is forgotten
    for name, doc in k8s_documents(*listed):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # unknown fields fail too
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}") from None
    generated = kustomization()["configMapGenerator"]
    assert generated == [{"name": "voxpipe-haproxy", "files": ["haproxy.cfg"]}]


def test_the_worker_deployment_probes_drains_and_shares_the_secret() -> None:
    found = manifests()
    deployment = found[("Deployment", "voxpipe-worker")]
    pod = deployment["spec"]["template"]["spec"]
    worker = container(deployment, "voxpipe")
    assert port_named(worker, "ws") == PORT
    env = literal_env(worker)
    assert int(env["VOXPIPE_SERVER__PORT"]) == PORT
    assert worker["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "ws"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ws"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "ws"}  # models load before it
    # the secret: from the Secret every worker mounts, under the name session.resume_secret_env reads
    (ref,) = [e["valueFrom"]["secretKeyRef"] for e in worker["env"] if e["name"] == SECRET_ENV]
    secret = found[("Secret", ref["name"])]
    placeholder = secret["stringData"][ref["key"]]
    with pytest.raises(ConfigError, match=SECRET_ENV):  # the shipped placeholder stops a worker at start
        resume_secret(SECRET_ENV, {SECRET_ENV: placeholder})
    check_env_names({**env, SECRET_ENV: SECRET})
    config = worker_config(env)
    assert (config.server.host, config.server.port, config.state.backend) == ("0.0.0.0", PORT, "redis")
    assert config.limits.max_sessions_per_ip is None  # every connection comes from HAProxy's pod
    redis_url = urlsplit(env[config.state.url_env])
    redis_service = found[("Service", redis_url.hostname or "")]
    assert redis_url.port == redis_service["spec"]["ports"][0]["port"] == 6379
    redis = found[("Deployment", "voxpipe-redis")]
    assert redis_service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]
    # the drain: the preStop hook sends the SIGTERM voxpipe drains on, and waits for it to end
    hook = " ".join(worker["lifecycle"]["preStop"]["exec"]["command"])
    assert "kill -TERM 1" in hook
    assert "while kill -0 1" in hook
    assert pod["terminationGracePeriodSeconds"] >= drain_worst_case_s(config) + 5
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    headless = found[("Service", "voxpipe-workers")]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # HAProxy's own /ready check decides
    assert headless["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["ports"][0]["port"] == PORT


def test_the_k8s_haproxy_config_is_the_tested_one_with_workers_found_by_dns() -> None:
    shared = config_lines((DEPLOY / "haproxy.cfg").read_text())
    k8s = config_lines((K8S / "haproxy.cfg").read_text())
    servers = [line for line in shared if line.strip().startswith("server ")]
    assert len(servers) == 3
    templates = [line for line in k8s if line.strip().startswith("server-template ")]
    assert templates == [f'    server-template w 1-10 "${{VOXPIPE_WORKERS_DNS}}:{PORT}" check']
    assert [line for line in shared if line not in servers] == [line for line in k8s if line not in templates]

    found = manifests()
    proxy_deployment = found[("Deployment", "voxpipe-haproxy")]
    proxy = container(proxy_deployment, "haproxy")
    assert proxy["image"].startswith("haproxy:2.6")
    env = literal_env(proxy)
    assert haproxy_variables((K8S / "haproxy.cfg").read_text()) <= set(env)
    namespace = kustomization()["namespace"]
    assert env["VOXPIPE_WORKERS_DNS"] == f"voxpipe-workers.{namespace}.svc.cluster.local"
    assert int(env["VOXPIPE_LISTEN"].rsplit(":", 1)[1]) == port_named(proxy, "ws")
    assert int(env["VOXPIPE_STATS"].rsplit(":", 1)[1]) == port_named(proxy, "stats")
    assert {"name": "config", "mountPath": "/usr/local/etc/haproxy", "readOnly": True} in proxy["volumeMounts"]
    volumes = proxy_deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": "voxpipe-haproxy"}} in volumes
    front = found[("Service", "voxpipe")]
    assert front["spec"]["selector"] == proxy_deployment["spec"]["template"]["metadata"]["labels"]
    haproxy_check(K8S / "haproxy.cfg", env)


def test_the_k8s_model_service_serves_the_llm_the_workers_would_call() -> None:
    found = manifests()
    deployment = found[("Deployment", "voxpipe-llm")]
    server = container(deployment, "llama-server")
    args = server["args"]
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert f"'{args[args.index('-m') + 1]}'" in init["args"][0]  # the init container copies the GGUF there
    service = found[("Service", "voxpipe-llm")]
    assert service["spec"]["ports"][0]["port"] == int(args[args.index("--port") + 1]) == port_named(server, "http")
    # the workers' line for it (commented out in workers.yaml): the URL points at this Service
    assert 'VOXPIPE_PIPELINE__2__URL, value: "http://voxpipe-llm:8080"' in (K8S / "workers.yaml").read_text()
    config = worker_config({"VOXPIPE_PIPELINE__2__URL": "http://voxpipe-llm:8080"}, "deploy/llm-service.yaml")
    assert config.pipeline[2]["name"] == "llm"
    assert config.pipeline[2]["url"] == "http://voxpipe-llm:8080"


# ------------------------------------------------------------ HAProxy timings vs the server


def test_haproxy_stops_new_sessions_before_the_drain_ends_and_keeps_long_sockets() -> None:
    text = (DEPLOY / "haproxy.cfg").read_text()
    lines = config_lines(text)
    assert "    option httpchk GET /ready" in lines
    assert "    http-check expect status 200" in lines
    assert "    balance leastconn" in lines  # new sessions
    assert "    stick match urlp(session)" in lines  # resumes: ?session=<id> on the URL
    assert f"    stick store-response res.hdr({SESSION_HEADER})" in lines
    assert f'"{SESSION_HEADER}"' in (ROOT / "server" / "app.py").read_text()  # the header the server sets
    inter = re.search(r"default-server inter (\S+) fall (\d+)", text)
    assert inter
    marked_down_s = duration_s(inter.group(1)) * int(inter.group(2))
    config = worker_config({})
    assert marked_down_s < config.server.drain_timeout_s  # no new session reaches a worker about to say going_away
    tunnel = re.search(r"timeout tunnel (\S+)", text)
    assert tunnel
    assert config.limits.max_session_s is not None
    assert duration_s(tunnel.group(1)) >= config.limits.max_session_s  # a conversation outlives no socket
    assert "    option forwardfor" in lines  # the X-Forwarded-For the workers trust (limits.client_ip_header)
