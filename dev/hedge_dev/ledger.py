"""What a namespace's pods hold on GPUs, from a watch: the bench's and the e2e tests' ledger
of "never more GPUs than stable + surge".

`GpuLedger` runs a list+watch of one namespace's pods on an event loop of its own thread, so
blocking code (a bench, a test) reads `held` (GPUs per pod) and `peak` (the most at once) while
it drives the cluster. A pod holds its GPU requests from the moment it is bound to a node until
it has finished (terminating pods included: their GPUs are not free yet).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from hedge_core.kube import Kube, ListWatch

GPU_RESOURCE = "nvidia.com/gpu"
T = TypeVar("T")


def gpus_held(pod: dict[str, Any], resource: str = GPU_RESOURCE) -> int:
    """The GPUs (of `resource`) a pod holds now: its containers' requests once bound, until
    it has finished."""
    if not pod.get("spec", {}).get("nodeName"):
        return 0
    if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    return sum(
        int(c.get("resources", {}).get("requests", {}).get(resource, 0))
        for c in pod["spec"].get("containers", [])
    )


class GpuLedger:
    """The GPUs held by one namespace's pods at every moment, and the most held at once."""

    def __init__(
        self, kubeconfig: str | os.PathLike[str], namespace: str, resource: str = GPU_RESOURCE
    ) -> None:
        self.resource = resource  # the accelerator's extended resource (amd.com/gpu, …)
        self.held: dict[str, int] = {}
        self.peak = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._kube = Kube(str(kubeconfig))
        self._watch: ListWatch | None = None
        self._run(self._start(namespace))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _start(self, namespace: str) -> None:
        self._watch = ListWatch(
            self._kube,
            f"/api/v1/namespaces/{namespace}/pods",
            on_list=self._listed,
            on_event=self._event,
        )
        self._watch.start()
        await asyncio.wait_for(self._watch.synced.wait(), 20)

    def reset_peak(self) -> None:
        """From now on, `peak` is the most held from this moment."""
        self.peak = sum(self.held.values())

    def _count(self) -> None:
        self.peak = max(self.peak, sum(self.held.values()))

    def _listed(self, items: list[dict[str, Any]]) -> None:
        self.held = {p["metadata"]["name"]: gpus_held(p, self.resource) for p in items}
        self._count()

    def _event(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            self.held.pop(name, None)
        else:
            self.held[name] = gpus_held(pod, self.resource)
        self._count()

    def close(self) -> None:
        async def stop() -> None:
            if self._watch is not None:
                await self._watch.stop()
            await self._kube.close()
            # Whatever else the client left running, then closed transports' callbacks.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._loop.shutdown_asyncgens()
            for _ in range(10):
                await asyncio.sleep(0)

        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
