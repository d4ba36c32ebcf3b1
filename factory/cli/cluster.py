"""`factory submit -- factory <stage> ...`, `factory jobs status|logs|stop|list`, `factory cluster info|auth`."""

from __future__ import annotations

import datetime as dt
import json
from typing import List, Optional

import typer

from factory.core.ui import console, table

ADDRESS_HELP = "the head's dashboard, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, then RAY_ADDRESS)"


def submit(
    entrypoint: List[str] = typer.Argument(..., metavar="-- COMMAND...", help="what the job runs, e.g. factory generate gen.yaml"),
    address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
    env_var: List[str] = typer.Option([], "--env-var", help="forward this environment variable (by NAME) to the job; repeatable"),
    working_dir: str = typer.Option(".", help="folder uploaded as the job's working dir (code, configs, seeds)"),
    no_working_dir: bool = typer.Option(False, "--no-working-dir", help="upload nothing: use the package installed on the cluster"),
    num_cpus: Optional[float] = typer.Option(None, help="CPUs reserved for the job's driver"),
    num_gpus: Optional[float] = typer.Option(None, help="GPUs reserved for the job's driver"),
    submission_id: Optional[str] = typer.Option(None, help="job id to use (default: Ray picks one)"),
    wait: bool = typer.Option(False, "--wait", help="stream the logs until the job ends; exit 1 unless it succeeded"),
) -> None:
    """Submit a factory stage to a Ray cluster as a job (Ray's Job SDK) and print its id."""
    from factory.cluster import jobs as job_api

    job_id = job_api.submit(entrypoint, address=address, env_vars=env_var,
                            working_dir=None if no_working_dir else working_dir, submission_id=submission_id,
                            num_cpus=num_cpus, num_gpus=num_gpus)
    typer.echo(job_id)
    if wait:
        status = job_api.follow_logs(job_id, address, write=lambda s: typer.echo(s, nl=False))
        console.print(f"job {job_id}: {status}")
        raise typer.Exit(0 if status == "SUCCEEDED" else 1)


jobs = typer.Typer(no_args_is_help=True, help="Manage jobs on a Ray cluster: status, logs, stop, list.")


def _when(ms) -> str:
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


@jobs.command("status")
def status(job_id: str, address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
           as_json: bool = typer.Option(False, "--json", help="print the whole job info as JSON")) -> None:
    """A job's status, entrypoint, metadata and times (forwarded env var values are never shown)."""
    from factory.cluster import jobs as job_api

    info = job_api.job_status(job_id, address)
    if as_json:
        typer.echo(json.dumps(info, default=str, indent=1))
        return
    rows = [["status", info["status"]], ["entrypoint", info.get("entrypoint")], ["message", (info.get("message") or "")[:300]],
            ["start", _when(info.get("start_time"))], ["end", _when(info.get("end_time"))],
            ["metadata", json.dumps(info.get("metadata") or {})],
            ["env vars forwarded", ", ".join((info["runtime_env"].get("env_vars") or {}).keys()) or "-"]]
    console.print(table(f"job {job_id}", ["field", "value"], rows))
    typer.echo(info["status"])


@jobs.command("logs")
def logs(job_id: str, address: Optional[str] = typer.Option(None, help=ADDRESS_HELP),
         follow: bool = typer.Option(False, "--follow", "-f", help="stream until the job ends")) -> None:
    """The job's driver logs (stdout and stderr of the entrypoint)."""
    from factory.cluster import jobs as job_api

    if follow:
        job_api.follow_logs(job_id, address, write=lambda s: typer.echo(s, nl=False))
    else:
        typer.echo(job_api.job_logs(job_id, address), nl=False)


@jobs.command("stop")
def stop(job_id: str, address: Optional[str] = typer.Option(None, help=ADDRESS_HELP)) -> None:
    """Stop a running job; finished shards stay, so resubmitting the same command resumes."""
    from factory.cluster import jobs as job_api

    typer.echo(job_api.stop_job(job_id, address))


@jobs.command("list")
def list_(address: Optional[str] = typer.Option(None, help=ADDRESS_HELP)) -> None:
    """Every job the cluster knows, newest first."""
    from rich.console import Console

    from factory.cluster import jobs as job_api

    rows = sorted(job_api.list_jobs(address), key=lambda j: j.get("start_time") or 0, reverse=True)
    t = table("jobs", ["id", "status", "start", "end", "entrypoint"],
              [[j.get("submission_id") or j.get("job_id"), j["status"], _when(j.get("start_time")),
                _when(j.get("end_time")), (j.get("entrypoint") or "")[:60]] for j in rows])
    t.columns[0].no_wrap = t.columns[1].no_wrap = True
    Console(width=max(120, console.width)).print(t)  # the list is the output: stdout


cluster_app = typer.Typer(no_args_is_help=True, help="The Ray cluster the stages use: resources and auth.")


@cluster_app.command("info")
def info(address: Optional[str] = typer.Option(None, help="GCS address HEAD:6379 (default: RAY_ADDRESS, else a local Ray)")) -> None:
    """Connect (or start a local Ray) and print nodes and resources."""
    from factory import cluster

    cluster.init_ray(address)
    s = cluster.cluster_info()
    rows = [["nodes", s["nodes"]], ["auth mode", s["auth_mode"]]] + [
        [k, f"{s['available'].get(k, 0):g} / {v:g}"] for k, v in sorted(s["resources"].items()) if not k.startswith("node:")]
    console.print(table("Ray cluster", ["resource", "available / total"], rows))
    cluster.shutdown_ray()


@cluster_app.command("auth")
def auth() -> None:
    """Which auth mode the factory uses here and where the token would come from (never the token)."""
    from factory import cluster

    console.print(table("Ray auth", ["item", "value"], [[k, v] for k, v in cluster.auth_report().items()]))


def register(app: typer.Typer) -> None:
    app.command("submit", context_settings={"allow_interspersed_args": False})(submit)
    app.add_typer(jobs, name="jobs")
    app.add_typer(cluster_app, name="cluster")
