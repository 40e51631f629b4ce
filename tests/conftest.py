"""Session-scoped real services: one etcd and (lazily) one local Ray for the whole run.

Starting Ray costs ~10 s on these machines, so it happens once per session, and only when a
test asks for the ``ray_session`` fixture.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from config_store import ConfigStore, config
from config_store.server import LocalEtcd, free_port

ARTIFACTS = Path(os.environ.get("DEEPFIX_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="session")
def deepfix_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private DEEPFIX_HOME, so tests never touch the user's local stack or data."""
    home = tmp_path_factory.mktemp("deepfix-home")
    old = os.environ.get("DEEPFIX_HOME")
    os.environ["DEEPFIX_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("DEEPFIX_HOME", None)
    else:
        os.environ["DEEPFIX_HOME"] = old


@pytest.fixture(scope="session")
def etcd_server(deepfix_home: Path) -> Iterator[LocalEtcd]:
    """A real etcd on free loopback ports in a temp dir; DEEPFIX_ETCD points at it."""
    server = LocalEtcd(deepfix_home / "etcd-test", free_port(), free_port())
    server.start()
    old = os.environ.get("DEEPFIX_ETCD")
    os.environ["DEEPFIX_ETCD"] = server.endpoint
    config.use(None)
    yield server
    server.stop()
    if old is None:
        os.environ.pop("DEEPFIX_ETCD", None)
    else:
        os.environ["DEEPFIX_ETCD"] = old


@pytest.fixture(scope="session")
def store(etcd_server: LocalEtcd) -> ConfigStore:
    return ConfigStore(etcd_server.endpoint)


@pytest.fixture(scope="session")
def ray_session(etcd_server: LocalEtcd) -> Iterator[None]:
    """One local Ray for the session (2 CPUs); jobs and Serve tests share it."""
    import ray

    if not ray.is_initialized():
        ray.init(
            # "local" starts a private cluster even when a user's stack (RAY_ADDRESS, or a
            # running head) is around: tests never touch someone else's Ray.
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={
                "env_vars": {
                    "DEEPFIX_ETCD": etcd_server.endpoint,
                    "DEEPFIX_HOME": os.environ["DEEPFIX_HOME"],
                }
            },
        )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
