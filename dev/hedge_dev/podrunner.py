"""The local cluster's pod runner: a tiny kubelet for pods labelled ``hedge.dev/component``.

kwok gives such pods a loopback IP and the Running phase but leaves them not Ready. This
process then runs them for real:

* engine pods (``hedge.dev/component=engine``): an in-process vLLM engine simulator bound to
  the pod IP and the container's ``http`` port, configured from the container's vLLM args
  and the pod's ``sim.hedge.dev/*`` annotations; or, for pods annotated
  ``sim.hedge.dev/engine: vllm``, the real ``vllm serve`` (the cached CPU build, see
  ``hedge_dev.vllm``) with the pod's own arguments, its model mapped to the tiny local model;
* Hedge's own pods (any other component whose container runs ``hedge ...``): the real
  ``hedge`` process with the pod's args and env, authenticated as the pod's ServiceAccount
  through a TokenRequest token, so RBAC is exercised rather than bypassed.

Readiness follows the pod's readinessProbe (HTTP GET against the pod IP, probed every
``PROBE_INTERVAL`` instead of the probe's own period, to keep tests fast), and is written to
the pod's status the way a kubelet does.

Deleting a pod stops it the way a kubelet does: the pod's preStop ``sleep`` first (its
endpoint is already terminating, so clients stop sending), then the workload is stopped
within what is left of the grace period (an engine simulator lets requests in flight finish
for up to the pod's ``--shutdown-timeout``, as vLLM does; a ``hedge`` process gets SIGTERM,
then SIGKILL), and only then is the pod object removed (a delete with grace 0, as the
kubelet's final one). kwok leaves these pods to the runner until their deletion deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from hedge_core.kube import MERGE_PATCH, STRATEGIC_MERGE_PATCH, ApiError, Kube, ListWatch
from hedge_dev.pki import write_kubeconfig
from hedge_dev.volumes import DirectoryProvisioner

log = logging.getLogger("hedge.podrunner")

RUNNER_LABEL = "hedge.dev/component"
SIM_ANNOTATION_PREFIX = "sim.hedge.dev/"
# Tests and demos can make an engine pod look broken the way a kubelet would report it.
CONTAINER_STATE_ANNOTATION = "sim.hedge.dev/container-state"
# `vllm` runs the real engine for an engine pod; `simulator` (the default) the simulator.
ENGINE_ANNOTATION = "sim.hedge.dev/engine"
ENGINES = ("simulator", "vllm")
WAITING_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
}
PROBE_INTERVAL = 0.5
SHUTDOWN_GRACE_S = 5.0
RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 10.0)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Workload(Protocol):
    async def stop(self, grace_s: float | None = None) -> None: ...

    def alive(self) -> bool: ...


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    ip: str
    container: str
    workload: Workload | None = None
    ready: bool | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    restarts: int = 0
    engine: str | None = None  # for engine pods: one of ENGINES
    terminating: asyncio.Task[None] | None = None  # the pod is being deleted: its stop


class SimulatorWorkload:
    """An engine simulator running inside this process. Stopping lets requests in flight
    finish for the engine's --shutdown-timeout (0: abort them, vLLM's default), within the
    grace period given."""

    def __init__(self, running: Any, shutdown_timeout_s: float = 0.0) -> None:
        self._running = running
        self._shutdown_timeout_s = shutdown_timeout_s

    async def stop(self, grace_s: float | None = None) -> None:
        drain = min(self._shutdown_timeout_s, grace_s or 0.0)
        await self._running.stop(drain)

    def alive(self) -> bool:
        return True


class ProcessWorkload:
    """A real child process (the hedge operator or gateway of a chart pod).

    Stopping follows the kubelet: SIGTERM, then SIGKILL once the pod's
    `terminationGracePeriodSeconds` (default 30) have passed.
    """

    def __init__(self, proc: asyncio.subprocess.Process, grace_s: float = 30.0) -> None:
        self.proc = proc
        self.grace_s = grace_s

    async def stop(self, grace_s: float | None = None) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                grace = self.grace_s if grace_s is None else grace_s
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()

    def alive(self) -> bool:
        return self.proc.returncode is None


class VllmWorkload(ProcessWorkload):
    """A real `vllm serve`: its API server, engine core and workers are one process group,
    all stopped together (as the container's cgroup would be)."""

    async def stop(self, grace_s: float | None = None) -> None:
        from hedge_dev.vllm import stop_process_group

        if self.proc.returncode is None:
            exited = lambda: self.proc.returncode is not None  # noqa: E731
            # The pod's grace period, but at least 20 s: vLLM frees its shared memory on
            # SIGTERM, and a SIGKILL before that leaves it behind in /dev/shm.
            timeout = max(20.0, grace_s or self.grace_s)
            await asyncio.to_thread(stop_process_group, self.proc.pid, exited, timeout)
            await self.proc.wait()


class PodRunner:
    def __init__(self, kubeconfig: Path, ca_file: Path, work_dir: Path) -> None:
        self.kube = Kube(str(kubeconfig), user_agent="hedge-podrunner", max_connections=50)
        self.ca_file = ca_file
        self.work_dir = work_dir
        self.runs: dict[str, PodRun] = {}
        self._probe_session: aiohttp.ClientSession | None = None
        # The cluster's default StorageClass: claims become directories beside the pods'.
        self.volumes = DirectoryProvisioner(self.kube, work_dir.parent / "volumes")

    async def run(self, ready_file: Path | None, stop: asyncio.Event) -> None:
        await self.kube.login()
        self._probe_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=2), connector=aiohttp.TCPConnector(limit=0)
        )
        proxy = ServiceProxy(self.kube)
        watches = [
            ListWatch(
                self.kube,
                "/api/v1/pods",
                params={"labelSelector": RUNNER_LABEL},
                name="pods",
                on_list=self._on_pod_list,
                on_event=lambda kind, pod: self._on_pod(pod, deleted=kind == "DELETED"),
                max_backoff_s=5.0,
            ),
            proxy.services,
            proxy.slices,
            *self.volumes.watches,
        ]
        try:
            for watch in watches:
                watch.start()
            await asyncio.gather(*(watch.synced.wait() for watch in watches))
            if ready_file is not None:
                ready_file.write_text(str(os.getpid()))
            await stop.wait()
        finally:
            for watch in watches:
                await watch.stop()
            await proxy.close()
            # The runner itself is stopping (cluster down, within its 10 s): pods get a short
            # grace, so no process outlives it even if its own grace period is longer.
            await asyncio.gather(
                *(self._stop_run(key, SHUTDOWN_GRACE_S) for key in list(self.runs))
            )
            await self._probe_session.close()
            await self.kube.close()

    async def _on_pod_list(self, pods: list[dict[str, Any]]) -> None:
        seen = set()
        for pod in pods:
            seen.add(self._key(pod))
            await self._on_pod(pod, deleted=False)
        for key in set(self.runs) - seen:
            await self._stop_run(key)

    @staticmethod
    def _key(pod: dict[str, Any]) -> str:
        meta = pod["metadata"]
        return f"{meta['namespace']}/{meta['name']}/{meta['uid']}"

    async def _on_pod(self, pod: dict[str, Any], deleted: bool) -> None:
        key = self._key(pod)
        status = pod.get("status", {})
        if deleted:
            # The object is gone (force-deleted, or our own final delete): stop at once.
            await self._stop_run(key, 0.0)
            return
        if pod["metadata"].get("deletionTimestamp"):
            run = self.runs.get(key)
            if run is None:
                # Nothing runs for it (never started): as a kubelet, remove it at once.
                await self._remove_pod(pod)
            elif run.terminating is None:
                run.terminating = asyncio.create_task(self._terminate(key, run, pod))
            return
        run = self.runs.get(key)
        if run is not None:
            await self._converge(run, status)
            return
        if status.get("phase") != "Running" or not status.get("podIP"):
            return
        try:
            await self._start_run(key, pod)
        except Exception as exc:
            log.exception("could not start %s", key)
            await self._set_waiting(pod, "CreateContainerError", str(exc))

    async def _converge(self, run: PodRun, status: dict[str, Any]) -> None:
        """Keep the pod's status what this "kubelet" knows. kwok can apply its start stage
        to a pod twice (its cache lagging behind its own first patch): the second time it
        hands the pod another IP and resets Ready to False after the runner made it Ready,
        and nothing would ever set it back (the probe only writes changes). So: an IP that
        is not the one the workload listens on is put back, and a Ready condition that
        disagrees with the last probe is written again."""
        if run.terminating is not None or run.workload is None:
            return
        ip = status.get("podIP")
        if ip and ip != run.ip:
            log.warning(
                "%s/%s: its pod IP changed from %s to %s behind the runner's back (kwok "
                "applied its start stage again); putting %s back",
                run.namespace, run.name, run.ip, ip, run.ip,
            )  # fmt: skip
            await self.kube.patch(  # a merge patch replaces podIPs whole
                f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status",
                {"status": {"podIP": run.ip, "podIPs": [{"ip": run.ip}]}},
                content_type=MERGE_PATCH,
                missing_ok=True,
            )
            run.ready = None  # and its readiness, which that stage reset too
            return
        ready = next(
            (c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"),
            None,
        )
        if run.ready is not None and (ready == "True") != run.ready:
            run.ready = None  # the probe loop writes what it last saw again

    # ----------------------------------------------------------------- starting
    async def _start_run(self, key: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]
        annotations = meta.get("annotations") or {}
        run = PodRun(
            meta["namespace"], meta["name"], meta["uid"], pod["status"]["podIP"], container["name"]
        )
        self.runs[key] = run
        forced = annotations.get(CONTAINER_STATE_ANNOTATION)
        if forced:
            if forced not in WAITING_REASONS:
                raise ValueError(
                    f"annotation {CONTAINER_STATE_ANNOTATION}={forced!r} is not one "
                    f"of {', '.join(sorted(WAITING_REASONS))}"
                )
            await self._set_waiting(
                pod,
                forced,
                f"simulated {forced} (pod annotation)",
                restarts=3 if forced == "CrashLoopBackOff" else 0,
            )
            return
        if meta.get("labels", {}).get(RUNNER_LABEL) == "engine":
            run.engine = annotations.get(ENGINE_ANNOTATION, "simulator")
            if run.engine not in ENGINES:
                raise ValueError(
                    f"annotation {ENGINE_ANNOTATION}={run.engine!r} is not one of "
                    f"{', '.join(ENGINES)}"
                )
            if run.engine == "vllm":
                run.workload = await self._start_vllm(run, pod, container)
            else:
                run.workload = await self._start_simulator(run, container, annotations)
        else:
            run.workload = await self._start_process(run, pod, container)
        run.tasks.append(asyncio.create_task(self._probe_loop(run, container)))
        log.info("started %s on %s", key, run.ip)

    async def _start_simulator(
        self, run: PodRun, container: dict[str, Any], annotations: dict[str, str]
    ) -> Workload:
        from hedge_serving.simulator.server import SimulatorConfig, start_simulator

        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        sim_annotations = {
            k: v for k, v in annotations.items() if k.startswith(SIM_ANNOTATION_PREFIX)
        }
        config = SimulatorConfig.from_vllm_args(argv, sim_annotations)
        running = await start_simulator(config, run.ip, _container_port(container))
        return SimulatorWorkload(running, config.shutdown_timeout_s)

    async def _start_vllm(
        self, run: PodRun, pod: dict[str, Any], container: dict[str, Any]
    ) -> Workload:
        """The real engine, as the pod asks for it: `vllm serve` and the pod's arguments, with
        the model (and --download-dir) mapped to this machine, bound to the pod IP."""
        from hedge_dev import vllm

        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if len(argv) < 2 or Path(argv[0]).name != "vllm" or argv[1] != "serve":
            raise ValueError(f"a real-engine pod must run `vllm serve …`, not {argv[:2]}")
        # First use installs vLLM (minutes): the pod stays not Ready meanwhile, as while a
        # kubelet pulls a large image.
        install = await asyncio.to_thread(vllm.ensure_vllm)
        model = await asyncio.to_thread(vllm.ensure_tiny_model, install)
        pod_dir = self.work_dir / f"{run.namespace}_{run.name}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        args = vllm.with_local_defaults(vllm.local_engine_args(argv[2:], model, pod_dir))
        args += ["--host", run.ip]
        env = vllm.engine_env(
            {**_inherited_env(), **await self._container_env(pod, container)}, pod_dir
        )
        log_file = open(pod_dir / f"{container['name']}.log", "ab")  # noqa: SIM115 - to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                str(install.vllm), "serve", *args,
                stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True,
            )  # fmt: skip
        finally:
            log_file.close()
        return VllmWorkload(proc)

    async def _start_process(
        self, run: PodRun, pod: dict[str, Any], container: dict[str, Any]
    ) -> Workload:
        argv = [*(container.get("command") or ["hedge"]), *(container.get("args") or [])]
        if not argv or Path(argv[0]).name != "hedge":
            raise ValueError(f"the pod runner only runs `hedge` containers, not {argv[:1]}")
        pod_dir = self.work_dir / f"{run.namespace}_{run.name}"
        pod_dir.mkdir(parents=True, exist_ok=True)
        mounts = self._mounts(pod, container, pod_dir)
        argv = [
            sys.executable,
            "-m",
            "hedge_core.cli",
            *[_at_mounts(_bind_to_pod_ip(a, run.ip), mounts) for a in argv[1:]],
        ]
        env = _inherited_env()
        env.update(
            {
                k: _at_mounts(v, mounts)
                for k, v in (await self._container_env(pod, container)).items()
            }
        )
        env["KUBECONFIG"] = str(await self._service_account_kubeconfig(pod, pod_dir))
        env["POD_IP"] = run.ip
        log_path = pod_dir / f"{container['name']}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            log_file.close()
        grace = pod["spec"].get("terminationGracePeriodSeconds")
        return ProcessWorkload(proc, 30.0 if grace is None else float(grace))

    def _mounts(
        self, pod: dict[str, Any], container: dict[str, Any], pod_dir: Path
    ) -> list[tuple[str, Path]]:
        """(mountPath, directory) of the container's claim and emptyDir volumes, deepest
        first. There are no mount namespaces here: paths under a mountPath in the args and
        env are rewritten to the directory, as 0.0.0.0 is to the pod IP."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        found: list[tuple[str, Path]] = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            directory: Path | None = None
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                directory = self.volumes.path_for(pod["metadata"]["namespace"], claim)
            elif "emptyDir" in volume:
                directory = pod_dir / "volumes" / mount["name"]
            if directory is None:
                continue
            directory = directory / mount.get("subPath", "")
            directory.mkdir(parents=True, exist_ok=True)
            found.append((mount["mountPath"].rstrip("/") or "/", directory))
        return sorted(found, key=lambda m: -len(m[0]))

    async def _container_env(
        self, pod: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, str]:
        env: dict[str, str] = {}
        meta = pod["metadata"]
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            source = item.get("valueFrom") or {}
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                values = {
                    "metadata.name": meta["name"],
                    "metadata.namespace": meta["namespace"],
                    "status.podIP": pod["status"]["podIP"],
                    "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
                }
                env[item["name"]] = values.get(path, "")
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = await self._get(
                    f"/api/v1/namespaces/{meta['namespace']}/secrets/{ref['name']}"
                )
                import base64

                env[item["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env

    async def _service_account_kubeconfig(self, pod: dict[str, Any], pod_dir: Path) -> Path:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 86400,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        answer = await self.kube.request(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body=body
        )
        token = answer["status"]["token"]
        path = pod_dir / "kubeconfig"
        write_kubeconfig(
            path,
            "in-cluster",
            self.kube.credentials.server,
            self.ca_file,
            token=token,
            namespace=meta["namespace"],
        )
        return path

    # ----------------------------------------------------------------- readiness
    async def _probe_loop(self, run: PodRun, container: dict[str, Any]) -> None:
        probe = container.get("readinessProbe") or {}
        http_get = probe.get("httpGet")
        url = None
        if http_get:
            port = http_get.get("port", _container_port(container))
            if isinstance(port, str):
                port = _named_port(container, port)
            url = f"http://{run.ip}:{port}{http_get.get('path', '/')}"
        assert self._probe_session is not None
        while True:
            ready = False
            workload = run.workload
            if workload is not None and not workload.alive():
                await self._on_process_exit(run, container)
                continue
            if url is None:
                ready = workload is not None
            else:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with self._probe_session.get(url) as resp:
                        ready = 200 <= resp.status < 400
            if ready != run.ready:
                try:
                    await self._set_ready(run, ready)
                    run.ready = ready
                except Exception as exc:
                    log.warning("could not update readiness of %s: %s", run.name, exc)
            await asyncio.sleep(PROBE_INTERVAL)

    async def _on_process_exit(self, run: PodRun, container: dict[str, Any]) -> None:
        """Restart a crashed process (hedge, or a real engine) with the kubelet's growing
        back-off."""
        delay = RESTART_BACKOFF[min(run.restarts, len(RESTART_BACKOFF) - 1)]
        run.restarts += 1
        if run.ready:
            # As a kubelet does: a dead container makes the pod not Ready at once, so its
            # endpoint leaves the EndpointSlices instead of refusing connections.
            await self._set_ready(run, False)
        run.ready = False
        pod = await self._get(f"/api/v1/namespaces/{run.namespace}/pods/{run.name}")
        await self._set_waiting(
            pod,
            "CrashLoopBackOff",
            f"back-off {delay:.0f}s restarting failed container",
            restarts=run.restarts,
        )
        await asyncio.sleep(delay)
        if run.engine == "vllm":
            run.workload = await self._start_vllm(run, pod, container)
        else:
            run.workload = await self._start_process(run, pod, container)

    async def _set_ready(self, run: PodRun, ready: bool) -> None:
        now = _now()
        value = "True" if ready else "False"
        patch = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": value,
                        "lastTransitionTime": now,
                        "reason": None if ready else "ContainersNotReady",
                    },
                    {
                        "type": "ContainersReady",
                        "status": value,
                        "lastTransitionTime": now,
                        "reason": None if ready else "ContainersNotReady",
                    },
                ],
                "containerStatuses": [
                    {
                        "name": run.container,
                        "ready": ready,
                        "restartCount": run.restarts,
                        "state": {"running": {"startedAt": now}},
                    }
                ],
            }
        }
        await self._patch_status(run.namespace, run.name, patch)

    async def _set_waiting(
        self, pod: dict[str, Any], reason: str, message: str, restarts: int = 0
    ) -> None:
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]
        patch = {
            "status": {
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "ready": False,
                        "restartCount": restarts,
                        "state": {
                            "running": None,
                            "waiting": {"reason": reason, "message": message},
                        },
                    }
                ]
            }
        }
        await self._patch_status(meta["namespace"], meta["name"], patch)

    async def _patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self.kube.patch(
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            patch,
            content_type=STRATEGIC_MERGE_PATCH,
            missing_ok=True,
        )

    async def _get(self, path: str) -> Any:
        return await self.kube.get(path)

    async def _terminate(self, key: str, run: PodRun, pod: dict[str, Any]) -> None:
        """A pod being deleted, as a kubelet stops it: preStop, stop within the grace
        period, then remove the pod object."""
        meta, spec = pod["metadata"], pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(grace)
        await self._cancel_tasks(run)  # no readiness flips or restarts while stopping
        container = spec["containers"][0]
        sleep = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
        pre_stop = float(sleep.get("seconds") or 0)
        if pre_stop > 0:
            log.info("%s: preStop sleep %.0fs", key, pre_stop)
            await asyncio.sleep(min(pre_stop, grace))
        if run.workload is not None:
            await run.workload.stop(max(0.0, deadline - loop.time()))
            run.workload = None
        self.runs.pop(key, None)
        await self._remove_pod(pod)
        log.info("stopped %s (deleted)", key)

    async def _remove_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        try:
            await self.kube.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                body=options,
                missing_ok=True,
            )
        except ApiError as exc:  # 409: a namesake replaced it; nothing of ours to remove
            log.info("could not remove pod %s/%s: %s", meta["namespace"], meta["name"], exc)

    @staticmethod
    async def _cancel_tasks(run: PodRun) -> None:
        for task in run.tasks:
            task.cancel()
        for task in run.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        run.tasks.clear()

    async def _stop_run(self, key: str, grace_s: float | None = None) -> None:
        run = self.runs.pop(key, None)
        if run is None:
            return
        if run.terminating is not None:
            run.terminating.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.terminating
        await self._cancel_tasks(run)
        if run.workload is not None:
            await run.workload.stop(grace_s)
        log.info("stopped %s", key)


class ServiceProxy:
    """kube-proxy for the local cluster: ClusterIP:port (on loopback) → a ready endpoint.

    Listens on every Service's ClusterIP and port and pipes each TCP connection to one of
    the Service's ready endpoints (round robin), as kube-proxy's iptables rules would. A
    Service without ready endpoints refuses connections by closing them at once.
    """

    def __init__(self, kube: Kube) -> None:
        self.services = ListWatch(
            kube,
            "/api/v1/services",
            name="services",
            on_list=lambda _items: self._sync_listeners(),
            on_event=lambda _kind, _svc: self._sync_listeners(),
            max_backoff_s=5.0,
        )
        self.slices = ListWatch(
            kube, "/apis/discovery.k8s.io/v1/endpointslices", name="endpointslices",
            max_backoff_s=5.0,
        )  # fmt: skip
        self.listeners: dict[tuple[str, int], asyncio.Server] = {}
        self._turn = 0

    def endpoints(self, namespace: str, service: str, port_name: str) -> list[tuple[str, int]]:
        found = []
        for eps in self.slices.items.values():
            meta = eps["metadata"]
            if (
                meta["namespace"] != namespace
                or (meta.get("labels") or {}).get("kubernetes.io/service-name") != service
            ):
                continue
            ports = [
                p["port"] for p in eps.get("ports") or [] if (p.get("name") or "") == port_name
            ]
            for endpoint in eps.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                found += [(endpoint["addresses"][0], port) for port in ports]
        return sorted(found)

    async def _sync_listeners(self) -> None:
        wanted: dict[tuple[str, int], tuple[str, str, str]] = {}
        for svc in self.services.items.values():
            ip = svc.get("spec", {}).get("clusterIP")
            if not ip or ip == "None":
                continue
            for port in svc["spec"].get("ports") or []:
                if port.get("protocol", "TCP") == "TCP":
                    wanted[(ip, port["port"])] = (
                        svc["metadata"]["namespace"],
                        svc["metadata"]["name"],
                        port.get("name") or "",
                    )
        for key in set(self.listeners) - set(wanted):
            self.listeners.pop(key).close()
        for key, target in wanted.items():
            if key in self.listeners:
                continue
            try:
                self.listeners[key] = await asyncio.start_server(
                    self._handler(*target), key[0], key[1]
                )
            except OSError as exc:
                log.warning("cannot listen on service address %s:%s: %s", *key, exc)

    def _handler(
        self, namespace: str, service: str, port_name: str
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            targets = self.endpoints(namespace, service, port_name)
            if not targets:
                writer.close()
                return
            self._turn += 1
            host, port = targets[self._turn % len(targets)]
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        return handle

    async def close(self) -> None:
        for server in self.listeners.values():
            server.close()
        self.listeners.clear()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _at_mounts(value: str, mounts: list[tuple[str, Path]]) -> str:
    """`/models/x` (alone or as `--flag=/models/x`) → the directory behind `/models`."""
    flag, eq, path = value.partition("=") if value.startswith("-") else ("", "", value)
    for mount_path, directory in mounts:
        if path == mount_path or path.startswith(mount_path + "/"):
            return f"{flag}{eq}{directory}{path[len(mount_path) :]}"
    return value


def _inherited_env() -> dict[str, str]:
    """What a child of the pod runner keeps from its environment (as a node would give it)."""
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV", "HEDGE_CACHE_DIR")
    return {k: v for k, v in os.environ.items() if k in keep}


def _bind_to_pod_ip(arg: str, pod_ip: str) -> str:
    """`0.0.0.0` (alone or as `--flag=0.0.0.0`) means the pod's own address, as in a pod's netns."""
    if arg == "0.0.0.0":
        return pod_ip
    if arg.endswith("=0.0.0.0"):
        return arg[: -len("0.0.0.0")] + pod_ip
    return arg


def _container_port(container: dict[str, Any]) -> int:
    ports = container.get("ports") or []
    for port in ports:
        if port.get("name") == "http":
            return int(port["containerPort"])
    if ports:
        return int(ports[0]["containerPort"])
    args = container.get("args") or []
    if "--port" in args:
        return int(args[args.index("--port") + 1])
    return 8000


def _named_port(container: dict[str, Any], name: str) -> int:
    for port in container.get("ports") or []:
        if port.get("name") == name:
            return int(port["containerPort"])
    raise ValueError(f"container {container['name']!r} has no port named {name!r}")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument(
        "--ca-file", type=Path, required=True, help="the cluster CA, for the pods' kubeconfigs"
    )
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--work-dir", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = PodRunner(args.kubeconfig, args.ca_file, args.work_dir)
        await runner.run(args.ready_file, stop)

    asyncio.run(main())
    return 0
