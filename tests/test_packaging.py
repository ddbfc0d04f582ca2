"""The project as a package: its wheel, its one import package, and its use without a checkout.

The wheel is built from this repository as a packager builds it (`uv build`). "Without a checkout" is
a fresh virtual environment holding only that wheel, its dependencies reached through a path file
(not installed again), used from a folder outside the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import time
import zipfile
from configparser import ConfigParser
from pathlib import Path

import boto3
import pytest
import yaml

from deployments.demo.data import HERE as DEMO
from deployments.demo.data import upload_inputs
from prefect_distributed.core.models import RunSummary
from prefect_distributed.deployments import DEPLOYMENTS, FLOW_NAMES

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("blocks", "core", "flows", "tasks", "worker")
WORKER_IMAGE_FILES = ("Dockerfile", "install.sh", "requirements.txt", "README.md")


def uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    assert Path(found).exists(), "uv is installed by `make install`"
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from the source distribution, as a packager builds it (and nothing is written
    into the repository)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([uv(), "build", "-q", "-o", str(out), str(REPO)], check=True, timeout=240)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `bin` folder of a virtual environment holding the wheel and nothing of the repository."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([uv(), "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [uv(), "pip", "install", "-q", "--python", str(python), "--no-deps", str(wheel)], check=True, timeout=120
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies of this environment, after the wheel: its .pth files (this repository's editable
    # install among them) are not read from a folder added this way.
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv / "bin"


def without_checkout_env(**extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**environment, **extra}


def outside(folder: Path, *args: str | Path, timeout_s: float = 180, **extra: str) -> subprocess.CompletedProcess[str]:
    """A command run in `folder`, outside the repository, with no PYTHONPATH and `extra` in its environment."""
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=folder,
        env=without_checkout_env(**extra),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def with_api() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": str(PREFECT_API_URL.value())}


def test_the_wheel_holds_one_import_package_with_every_module_and_the_worker_image(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert top_level == {"prefect_distributed", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    in_wheel = {name.removeprefix("prefect_distributed/") for name in names if name.startswith("prefect_distributed/")}
    for folder in PACKAGE_FOLDERS:
        modules = {str(path.relative_to(REPO)) for path in (REPO / folder).rglob("*.py")}
        assert modules <= in_wheel, f"{folder}/ modules missing from the wheel: {sorted(modules - in_wheel)}"
    assert {f"worker/{name}" for name in WORKER_IMAGE_FILES} <= in_wheel
    assert not any("test" in name.split("/")[0] for name in in_wheel)


def test_the_wheel_registers_its_block_with_prefect_and_its_commands(wheel: Path) -> None:
    entry_points = ConfigParser()
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt")]
        entry_points.read_string(archive.read(name).decode())
    assert dict(entry_points["prefect.collections"]) == {"prefect_distributed": "prefect_distributed.blocks"}
    assert dict(entry_points["console_scripts"]) == {
        "prefect-distributed": "prefect_distributed.__main__:main",
        "distributed-convert-ds-config": "prefect_distributed.core.ds_config:main",
    }


def test_the_package_imports_from_the_wheel_and_its_worker_without_prefect(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import sys, prefect_distributed, prefect_distributed.worker.main; "
        "print(prefect_distributed.__file__); print('prefect' in sys.modules)"
    )
    location, prefect_imported = outside(tmp_path, installed / "python", "-c", probe).stdout.split()
    assert Path(location).is_relative_to(installed.parent), location
    assert prefect_imported == "False"  # the local fleet's workers start without Prefect
    worker_dir = outside(tmp_path, installed / "prefect-distributed", "worker-dir").stdout.strip()
    assert (Path(worker_dir) / "Dockerfile").is_file() and Path(worker_dir).is_relative_to(installed.parent)


def test_every_module_of_the_wheel_imports_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    """A module importing the repository's folders by their own names (`from core...`) passes the
    tests run from the repository's root; here it fails."""
    walk = (
        "import importlib, pkgutil, prefect_distributed as p\n"
        "names = [m.name for m in pkgutil.walk_packages(p.__path__, 'prefect_distributed.')]\n"
        "names = [name for name in names if not name.endswith('.__main__')]  # these run a program\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))"
    )
    result = outside(tmp_path, installed / "python", "-c", walk)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = [
        path for folder in PACKAGE_FOLDERS for path in (REPO / folder).rglob("*.py") if path.name != "__main__.py"
    ]
    own = [
        path for path in (REPO / "prefect_distributed").glob("*.py") if path.name not in ("__init__.py", "__main__.py")
    ]
    assert int(result.stdout) == len(folders) + len(own)


def test_prefect_knows_the_block_through_the_entry_point_and_registers_it_by_package_name(
    installed: Path, tmp_path: Path, prefect_api: None
) -> None:
    # A program that imports nothing of ours: Prefect loads the collection at start-up.
    lookup = "from prefect.blocks.core import Block; print(Block.get_block_class_from_key('distributed-config'))"
    found = outside(tmp_path, installed / "python", "-c", lookup, **with_api())
    assert "prefect_distributed.blocks.config.DistributedConfig" in found.stdout, found.stderr[-2000:]
    registered = outside(
        tmp_path, installed / "python", "-m", "prefect", "block", "register", "-m", "prefect_distributed", **with_api()
    )
    assert registered.returncode == 0, registered.stdout[-2000:] + registered.stderr[-2000:]
    assert "Distributed Config" in registered.stdout and "AWS Credentials" not in registered.stdout


def test_the_deployments_of_the_package_are_those_of_prefect_yaml() -> None:
    from_yaml = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    as_yaml = [
        {
            "name": spec.name,
            "flow": FLOW_NAMES[spec.flow],
            "description": spec.description,
            "parameters": spec.parameters,
            "paused_interval_s": spec.paused_interval_s,
        }
        for spec in DEPLOYMENTS
    ]
    flow_of_entrypoint = {
        "flows/distributed.py:distributed": "distributed",
        "flows/janitor.py:janitor": "distributed-janitor",
    }
    assert as_yaml == [
        {
            "name": entry["name"],
            "flow": flow_of_entrypoint[entry["entrypoint"]],
            "description": entry["description"].strip(),
            "parameters": entry.get("parameters", {}),
            "paused_interval_s": next(
                (s["interval"] for s in entry.get("schedules", []) if not s.get("active", True)), None
            ),
        }
        for entry in from_yaml
    ]


def test_deploy_without_a_work_pool_names_the_command_that_makes_one(
    installed: Path, tmp_path: Path, prefect_api: None
) -> None:
    result = outside(tmp_path, installed / "prefect-distributed", "deploy", "--pool", "no-such-pool", **with_api())
    assert result.returncode == 2
    assert "prefect work-pool create no-such-pool --type process" in result.stderr


def test_deploy_registers_every_deployment_on_a_process_pool_to_start_in_this_folder(
    installed: Path, tmp_path: Path, prefect_api: None
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = "packaged"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    result = outside(tmp_path, installed / "prefect-distributed", "deploy", "--pool", pool, **with_api())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with get_client(sync_client=True) as client:
        deployments = [client.read_deployment_by_name(spec.full_name) for spec in DEPLOYMENTS]
        for deployment in deployments:  # the server is shared: the serve test registers the same names
            client.delete_deployment(deployment.id)
    for spec, deployment in zip(DEPLOYMENTS, deployments):
        assert deployment.work_pool_name == pool
        assert deployment.entrypoint == f"prefect_distributed.flows.{spec.flow}.{spec.flow}"
        assert deployment.job_variables == {"working_dir": str(tmp_path.resolve())}
        assert deployment.parameters == spec.parameters


@pytest.fixture
def project(tmp_path: Path, moto_endpoint: str) -> Path:
    """A user's own folder: the demo's config, program and the first 12 of its jobs, inputs on the emulator."""
    folder = tmp_path / "my-project"
    folder.mkdir()
    for name in ("config.yaml", "stats.py"):
        shutil.copy(DEMO / name, folder / name)
    jobs = json.loads((DEMO / "jobs.json").read_text())
    jobs["groups"] = jobs["groups"][:12]
    (folder / "jobs.json").write_text(json.dumps(jobs))
    upload_inputs(bucket="distributed-demo", endpoint_url=moto_endpoint)
    return folder


def wait_until_served(name: str, served: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """The deployment exists and is served (no work pool): `serve` registers it once it has started."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            assert served.poll() is None, "prefect-distributed serve exited"
            try:
                if client.read_deployment_by_name(name).work_pool_name is None:
                    return
            except ObjectNotFound:
                pass
            assert time.monotonic() < deadline, f"{name} was not served within {timeout_s} s"
            time.sleep(0.5)


def test_served_from_the_installed_package_a_deployment_runs_a_batch_with_a_relative_config(
    installed: Path, project: Path, moto_endpoint: str, prefect_api: None
) -> None:
    aws = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_REGION": "us-east-1",
        **with_api(),
    }
    with open(project / "serve.log", "wb") as log:
        served = subprocess.Popen(
            [str(installed / "prefect-distributed"), "serve"],
            cwd=project,
            env=without_checkout_env(**aws),
            stdout=log,
            stderr=log,
        )
    try:
        wait_until_served("distributed/run", served)
        prefect = Path(sys.executable).parent / "prefect"
        run = outside(
            project,
            prefect,
            "deployment",
            "run",
            "distributed/run",
            "-p",
            "config=config.yaml",
            "--watch",
            timeout_s=240,
            **aws,
        )
        served_log = (project / "serve.log").read_text(errors="replace")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:] + served_log[-3000:]
    finally:
        served.terminate()
        served.wait(timeout=60)
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    saved = s3.get_object(Bucket="distributed-demo", Key=f"runs/{flow_run_id}/summary.json")["Body"].read()
    summary = RunSummary.model_validate_json(saved)
    assert (summary.total, summary.succeeded, len(summary.failed), summary.resources_left) == (12, 12, 0, [])
