"""Jobs on a Ray cluster through Ray's Job SDK: submit a factory command, then status, logs, stop, list.

Secrets travel by NAME: `submit(..., env_vars=["OPENAI_API_KEY"])` forwards that variable's value
in the job's runtime_env; the entrypoint and metadata are checked to hold no secret value.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from factory.cluster.connect import AUTH_ENV, _auth_fix, _first_line, apply_auth_env, check_reachable
from factory.core.errors import FactoryError

WORKING_DIR_EXCLUDES = [".venv", "venv", "runs", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache",
                        ".hypothesis", ".ruff_cache", "benchmarks/results", "tmp", "*.gguf", "*.ds", "*.parquet"]
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def dashboard_address(address: str | None = None) -> str:
    """The Job API URL: `address`, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS (a GCS address is looked up)."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise FactoryError("no cluster address", where="--address", fix="pass --address http://HEAD:8265 or set "
                           "RAY_API_SERVER_ADDRESS (the head's dashboard, port 8265 by default)")
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    if address.startswith("ray://"):
        from ray.dashboard.utils import ray_client_address_to_api_server_url

        return ray_client_address_to_api_server_url(address)
    check_reachable(address)
    apply_auth_env()
    from ray.dashboard.utils import ray_address_to_api_server_url

    try:
        return ray_address_to_api_server_url(address)
    except Exception as e:
        raise FactoryError(f"no dashboard found through {address}: {_first_line(e)}", where="--address",
                           fix="start the head with `--include-dashboard true` or pass http://HEAD:8265") from None


def job_client(address: str | None = None):
    """A JobSubmissionClient for the cluster, with the auth mode pinned (see the module docstring)."""
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    check_reachable(url, "Ray dashboard (Job API)")
    apply_auth_env()
    logging.getLogger("ray").setLevel(logging.WARNING)  # upload chatter; errors still show
    # Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is given; the URL is resolved
    # already (an explicit --address first), so hide them while the client is made.
    hidden = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        return JobSubmissionClient(url)
    except Exception as e:
        raise FactoryError(f"the Job API at {url} refused the connection: {_first_line(e)}", where="--address",
                           fix=_auth_fix(e, os.environ.get(AUTH_ENV, ""))) from None
    finally:
        os.environ.update(hidden)


def secret_values(names: list[str] = (), env: dict | None = None) -> dict[str, str]:
    """Values that must never appear in a job's entrypoint or metadata: named vars and secret-looking ones."""
    env = os.environ if env is None else env
    out = {k: v for k, v in env.items() if (_SECRET_NAME.search(k) or k in names) and len(v) >= 6}
    return out


def snapshot(working_dir: str, excludes: list[str]) -> Path:
    """Zip the working dir once, with Ray's own packer (.gitignore, .rayignore, excludes).

    Handing Ray a finished zip rather than the folder: the Job SDK hashes a folder more than
    once while it uploads, and a file edited in between makes the job point at a package that
    was never uploaded ("Failed to download runtime_env file package").
    """
    import tempfile

    from factory.core.compat import ray_package_working_dir

    target = Path(tempfile.mkdtemp(prefix="factory-submit-")) / "working_dir.zip"
    return ray_package_working_dir(working_dir, target, excludes,
                                   include_gitignore=os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE") != "1")


def runtime_env_for(working_dir: str | None, env_vars: list[str] = (), extra: dict | None = None) -> dict:
    """runtime_env: the working dir (code and configs, minus venvs, runs and data) and forwarded env vars.

    Only variables named in `env_vars` are forwarded, with their values; Ray stores them in the job's
    runtime_env (readable by anyone who can query the Job API), never in metadata or the entrypoint.
    """
    renv: dict = dict(extra or {})
    if working_dir:
        wd = Path(working_dir).resolve()
        if not wd.is_dir():
            raise FactoryError(f"working dir {working_dir} does not exist", where="--working-dir",
                               fix="pass the project folder, or --no-working-dir to use the package installed on the cluster")
        renv["working_dir"] = str(wd)
        renv["excludes"] = sorted(set(renv.get("excludes", [])) | set(WORKING_DIR_EXCLUDES))
    bad = [i for i, n in enumerate(env_vars, 1) if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]
    if bad:  # it may be a value pasted by mistake: never echo it
        raise FactoryError(f"--env-var takes names, not values (argument {bad[0]} is not a variable name; not shown)",
                           where="--env-var", fix="pass the variable's NAME (e.g. --env-var OPENAI_API_KEY)")
    missing = [n for n in env_vars if n not in os.environ]
    if missing:
        raise FactoryError(f"environment variable(s) {', '.join(missing)} not set here", where="--env-var",
                           fix="export them before `factory submit`, or drop --env-var")
    if env_vars:
        renv["env_vars"] = {**renv.get("env_vars", {}), **{n: os.environ[n] for n in env_vars}}
    return renv


def submit(entrypoint: list[str] | str, address: str | None = None, env_vars: list[str] = (),
           working_dir: str | None = ".", submission_id: str | None = None, num_cpus: float | None = None,
           num_gpus: float | None = None, metadata: dict | None = None) -> str:
    """Submit `entrypoint` (e.g. ["factory", "generate", ...]) as a Ray job; returns the job id."""
    import shlex

    cmd = entrypoint if isinstance(entrypoint, str) else shlex.join(entrypoint)
    if not cmd.strip():
        raise FactoryError("nothing to run", where="factory submit", fix="add the command after `--`, e.g. "
                           "`factory submit -- factory generate gen.yaml --out s3://bucket/gen`")
    meta = {"submitted_by": "factory submit", "env_var_names": ",".join(env_vars), **(metadata or {})}
    meta = {str(k): str(v) for k, v in meta.items()}
    for name, value in secret_values(list(env_vars)).items():
        where = "entrypoint" if value in cmd else "metadata" if any(value in v for v in meta.values()) else None
        if where:
            raise FactoryError(f"the {where} contains the value of ${name}", where="factory submit",
                               fix=f"never put secrets on the command line: pass --env-var {name} and let the "
                                   "config name the variable")
    renv = runtime_env_for(working_dir, list(env_vars))
    client = job_client(address)
    zipped = None
    if "working_dir" in renv:
        zipped = snapshot(renv["working_dir"], renv.pop("excludes"))
        renv["working_dir"] = str(zipped)
    try:
        return client.submit_job(entrypoint=cmd, runtime_env=renv, metadata=meta, submission_id=submission_id,
                                 entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus)
    except Exception as e:
        raise FactoryError(f"the cluster rejected the job: {_first_line(e)}", where="factory submit",
                           fix=_auth_fix(e, os.environ.get(AUTH_ENV, ""))) from None
    finally:
        if zipped:
            shutil.rmtree(zipped.parent, ignore_errors=True)


def redacted(info) -> dict:
    """A job's info as a dict, with forwarded env var values replaced by '***'."""
    d = info.model_dump() if hasattr(info, "model_dump") else info.dict() if hasattr(info, "dict") else dict(info)
    renv = dict(d.get("runtime_env") or {})
    if renv.get("env_vars"):
        renv["env_vars"] = {k: "***" for k in renv["env_vars"]}
    d["runtime_env"] = renv
    d["status"] = str(getattr(d.get("status"), "value", d.get("status")))
    return d


def _job_call(fn, job_id: str, *args):
    try:
        return fn(job_id, *args)
    except RuntimeError as e:
        if "does not exist" in str(e) or "404" in str(e):
            raise FactoryError(f"no job '{job_id}' on this cluster", where="job id",
                               fix="list jobs with `factory jobs list`") from None
        raise


def job_status(job_id: str, address: str | None = None) -> dict:
    c = job_client(address)
    return redacted(_job_call(c.get_job_info, job_id))


def job_logs(job_id: str, address: str | None = None) -> str:
    return _job_call(job_client(address).get_job_logs, job_id)


def follow_logs(job_id: str, address: str | None = None, write=print, poll_s: float = 2.0) -> str:
    """Stream the job's logs until it ends; returns its final status.

    Ray's log stream can miss the end of a short job and does not always close for a job that
    failed before its driver started, so the status is polled alongside; at the end whatever the
    stream missed is printed from the stored logs, and a failure before the driver ran says why.
    """
    import asyncio

    c = job_client(address)
    _job_call(c.get_job_status, job_id)
    seen: list[str] = []

    async def tail():
        async for chunk in c.tail_job_logs(job_id):
            seen.append(chunk)
            write(chunk)

    async def main() -> str:
        stream = asyncio.ensure_future(tail())
        while True:
            done, _ = await asyncio.wait([stream], timeout=poll_s)
            status = str((await asyncio.to_thread(c.get_job_status, job_id)).value)
            if status in TERMINAL:
                if not done:
                    await asyncio.wait([stream], timeout=poll_s)
                    stream.cancel()
                return status
            if done:  # the stream closed early: wait for the end without it
                return await asyncio.to_thread(wait_job, job_id, address)

    status = asyncio.run(main())
    streamed, stored = "".join(seen), c.get_job_logs(job_id)
    if stored.startswith(streamed):
        write(stored[len(streamed):])
    if status == "FAILED":
        info = c.get_job_info(job_id)
        if info.driver_exit_code is None and info.message:
            write(f"\n{info.message.strip()}\n")
    return status


def stop_job(job_id: str, address: str | None = None, wait_s: float = 30.0) -> str:
    """Ask Ray to stop the job (SIGTERM, then SIGKILL after Ray's grace period); returns its status."""
    import time

    c = job_client(address)
    _job_call(c.stop_job, job_id)
    deadline = time.time() + wait_s
    while (status := str(c.get_job_status(job_id).value)) not in TERMINAL and time.time() < deadline:
        time.sleep(0.5)
    return status


def wait_job(job_id: str, address: str | None = None, timeout_s: float = 600.0, poll_s: float = 1.0) -> str:
    import time

    c = job_client(address)
    deadline = time.time() + timeout_s
    while (status := str(_job_call(c.get_job_status, job_id).value)) not in TERMINAL:
        if time.time() > deadline:
            raise FactoryError(f"job {job_id} still {status} after {timeout_s:.0f}s", where="factory submit --wait",
                               fix="follow it with `factory jobs logs ID --follow` or stop it with `factory jobs stop ID`")
        time.sleep(poll_s)
    return status


def list_jobs(address: str | None = None) -> list[dict]:
    return [redacted(j) for j in job_client(address).list_jobs()]
