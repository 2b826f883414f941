"""A real Prometheus (Debian's `prometheus` package) scrapes the stack
through the targets file `make up` wrote, and answers PromQL about it:
every target up, the frontend's OK calls, and the README's five on-call
queries. Its own instance: a free loopback port, a temporary config and
data directory; never the system service."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cogmentAPI import model_registry_pb2 as api

from conftest import REPLICATED, REPO_ROOT, create_version
from metrics_scrape import TARGETS_FILE
from services.launcher.ports import LOOPBACK, free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
INSTALL = "install it with `apt-get install -y prometheus` (Debian) to run this test"
# How often this test's Prometheus scrapes and re-reads the targets file.
# A setting of the Prometheus under test, not of the registry.
SCRAPE_INTERVAL = "1s"


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for(condition, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"Prometheus never showed {what}"
        time.sleep(0.5)


@pytest.fixture
def prometheus(stack, tmp_path: Path) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.skip(f"no prometheus binary: {INSTALL}")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""global:
  scrape_interval: {SCRAPE_INTERVAL}
  evaluation_interval: {SCRAPE_INTERVAL}
scrape_configs:
  - job_name: model-registry
    file_sd_configs:
      - files: ["{stack.run_dir / TARGETS_FILE}"]
        refresh_interval: {SCRAPE_INTERVAL}
"""
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_for(lambda: process.poll() is None and urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200, "ready")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def readme_queries() -> dict[str, str]:
    """The PromQL of README.md's "Reading metrics" table, by what it answers."""
    section = (REPO_ROOT / "README.md").read_text().split("## Reading metrics", 1)[1].split("\n## ", 1)[0]
    table = section.split("| question | PromQL |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| `(.+?)` \|$", table, flags=re.MULTILINE)
    return {question: promql.replace("\\|", "|") for question, promql in rows}


def test_prometheus_scrapes_every_target_and_answers_promql(stack, registry, model_id, prometheus):
    groups = json.loads((stack.run_dir / TARGETS_FILE).read_text())
    expected_targets = sum(len(group["targets"]) for group in groups)
    assert expected_targets == (2 + 2 + 3 + 1 if REPLICATED else 4)
    wait_for(
        lambda: len(query(prometheus, "up == 1")) == expected_targets,
        f"all {expected_targets} targets up",
    )
    up = {result["metric"]["service"] for result in query(prometheus, "up == 1")}
    assert up == {"frontend", "metadata", "blobstore", "envoy"}

    def frontend_ok_creates() -> float:
        result = query(
            prometheus,
            'sum(grpc_server_handled_total{service="frontend",grpc_method="CreateVersion",grpc_code="OK"})',
        )
        return float(result[0]["value"][1]) if result else 0.0

    before = frontend_ok_creates()
    for index in range(5):
        create_version(registry, model_id, bytes(1000 + index))
        registry.RetrieveVersionInfos(api.RetrieveVersionInfosRequest(model_id=model_id, version_numbers=[-1]))
    wait_for(lambda: frontend_ok_creates() - before == 5, "the 5 CreateVersion calls")

    # Every on-call query of the README is valid PromQL over these metrics
    # and, after that traffic, has an answer.
    queries = readme_queries()
    assert len(queries) == 6, queries  # five questions, the first answered by two queries
    for question, promql in queries.items():
        wait_for(lambda promql=promql: query(prometheus, promql), f"an answer to {question!r}: {promql}")
    # The small reads are answered by metadata's reads port, not a frontend:
    # the per-method rate still counts them.
    rates = queries["requests per second, per method"]
    wait_for(
        lambda: {"CreateVersion", "RetrieveVersionInfos"} <= {r["metric"].get("grpc_method") for r in query(prometheus, rates)},
        "the per-method rate of the frontend's CreateVersion and metadata's RetrieveVersionInfos",
    )


@pytest.mark.skipif(PROMTOOL is None, reason=f"no promtool binary: {INSTALL}")
def test_the_compose_prometheus_configuration_is_valid():
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(REPO_ROOT / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
