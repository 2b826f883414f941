"""What the launcher would start, without starting it."""

from __future__ import annotations

from pathlib import Path

from services.launcher.stack import MALLOC_TUNABLES, LaunchSettings, LocalStack


def settings(tmp_path: Path, *, blobstores: int = 3) -> LaunchSettings:
    return LaunchSettings(
        public_port=9000,
        archive_dir=tmp_path / "archive",
        run_dir=tmp_path / "run",
        frontend_replicas=2,
        metadata_replicas=1,
        blobstore_replicas=blobstores,
        startup_timeout_seconds=1,
        shutdown_grace_seconds=1,
        public_host="127.0.0.1",
    )


def test_python_services_get_the_malloc_settings_and_their_own_ports(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    topology, processes = LocalStack(settings(tmp_path)).plan()
    services = [p for p in processes if p["kind"] != "envoy"]
    assert sorted(p["name"] for p in services) == [
        "blobstore-0", "blobstore-1", "blobstore-2", "frontend-0", "frontend-1", "metadata-0",
    ]
    assert all(p["env"]["GLIBC_TUNABLES"] == MALLOC_TUNABLES for p in services)
    assert len({p["port"] for p in services}) == len(services)
    assert {p["port"] for p in services if p["kind"] == "blobstore"} == {e.port for e in topology.blobstores}


def test_an_operator_setting_of_the_malloc_tunables_wins(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    _, processes = LocalStack(settings(tmp_path, blobstores=1)).plan()
    assert {p["env"]["GLIBC_TUNABLES"] for p in processes if p["kind"] != "envoy"} == {"glibc.malloc.arena_max=2"}


def test_with_tls_envoy_reads_sds_files_in_the_run_dir_naming_the_operator_files(tmp_path: Path):
    import dataclasses

    import yaml

    from services.common.tls import PublicTlsFiles

    files = PublicTlsFiles(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")
    stack = LocalStack(dataclasses.replace(settings(tmp_path, blobstores=1), tls=files))
    topology, _ = stack.plan()
    assert topology.public_tls is not None and topology.public_tls.mutual
    assert Path(topology.public_tls.certificate_sds_path).parent == tmp_path / "run" / "sds"
    stack._write_sds_resources()
    (certificate,) = yaml.safe_load(Path(topology.public_tls.certificate_sds_path).read_text())["resources"]
    assert certificate["tls_certificate"]["certificate_chain"]["filename"] == str(files.cert_file)
    (ca,) = yaml.safe_load(Path(topology.public_tls.client_ca_sds_path).read_text())["resources"]
    assert ca["validation_context"]["trusted_ca"]["filename"] == str(files.client_ca_file)
    plain, _ = LocalStack(settings(tmp_path, blobstores=1)).plan()
    assert plain.public_tls is None
