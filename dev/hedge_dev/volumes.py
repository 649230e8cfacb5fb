"""The local cluster's default StorageClass: each PersistentVolumeClaim gets a directory.

Like kind's local-path provisioner, but in the pod runner: a claim of the class
`hedge-local` (the cluster's default, so claims that name no class get it too) is answered
with a PersistentVolume, pre-bound to the claim, whose `hostPath` is a fresh directory under
`<cluster dir>/volumes/`; the controller manager then binds the two as it would any volume.
When the claim goes, the volume is Released and the provisioner removes the directory and
the volume (reclaim policy Delete). The pod runner mounts these directories into the
processes it runs for pods (`path_for`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from hedge_core.kube import Conflict, Kube, ListWatch

log = logging.getLogger("hedge.podrunner.volumes")

STORAGE_CLASS = "hedge-local"
PROVISIONER = "hedge.dev/local-directory"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def storage_class() -> dict[str, Any]:
    """The cluster's default StorageClass, created at bring-up."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def volume_for(claim: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The PersistentVolume that answers `claim`, pre-bound to it."""
    meta, spec = claim["metadata"], claim.get("spec") or {}
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {PROVISIONED_BY: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
        },
    }


class DirectoryProvisioner:
    """Watches claims and volumes; creates and deletes volumes of the `hedge-local` class."""

    def __init__(self, kube: Kube, root: Path) -> None:
        self.kube = kube
        self.root = root
        self.claims = ListWatch(
            kube,
            "/api/v1/persistentvolumeclaims",
            name="persistentvolumeclaims",
            on_list=self._on_claims,
            on_event=lambda _kind, claim: self._on_claim(claim),
            max_backoff_s=5.0,
        )
        self.volumes = ListWatch(
            kube,
            "/api/v1/persistentvolumes",
            name="persistentvolumes",
            on_list=self._on_volumes,
            on_event=lambda _kind, volume: self._on_volume(volume),
            max_backoff_s=5.0,
        )

    @property
    def watches(self) -> list[ListWatch]:
        return [self.claims, self.volumes]

    def path_for(self, namespace: str, claim_name: str) -> Path | None:
        """The directory behind a bound claim of this class (None otherwise)."""
        claim = self.claims.items.get((namespace, claim_name))
        name = ((claim or {}).get("spec") or {}).get("volumeName")
        volume = self.volumes.items.get(("", str(name))) if name else None
        if (
            volume is None
            or (volume["metadata"].get("annotations") or {}).get(PROVISIONED_BY) != PROVISIONER
        ):
            return None
        return Path(volume["spec"]["hostPath"]["path"])

    async def _on_claims(self, claims: list[dict[str, Any]]) -> None:
        for claim in claims:
            await self._on_claim(claim)

    async def _on_claim(self, claim: dict[str, Any]) -> None:
        spec, status = claim.get("spec") or {}, claim.get("status") or {}
        if (
            spec.get("storageClassName") != STORAGE_CLASS
            or spec.get("volumeName")
            or status.get("phase", "Pending") != "Pending"
            or claim["metadata"].get("deletionTimestamp")
        ):
            return
        meta = claim["metadata"]
        directory = self.root / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
        directory.mkdir(parents=True, exist_ok=True)
        try:
            await self.kube.request(
                "POST", "/api/v1/persistentvolumes", body=volume_for(claim, directory)
            )
            log.info("provisioned %s for claim %s/%s", directory, meta["namespace"], meta["name"])
        except Conflict:
            pass  # answered already (a re-list sees the claim again)

    async def _on_volumes(self, volumes: list[dict[str, Any]]) -> None:
        for volume in volumes:
            await self._on_volume(volume)

    async def _on_volume(self, volume: dict[str, Any]) -> None:
        meta = volume["metadata"]
        if (meta.get("annotations") or {}).get(PROVISIONED_BY) != PROVISIONER:
            return
        if (volume.get("status") or {}).get("phase") != "Released" or meta.get("deletionTimestamp"):
            return
        path = Path(volume["spec"]["hostPath"]["path"])
        if path.is_relative_to(self.root):  # never anything outside the cluster's folder
            shutil.rmtree(path, ignore_errors=True)
        await self.kube.request(
            "DELETE", f"/api/v1/persistentvolumes/{meta['name']}", missing_ok=True
        )
        log.info("deleted volume %s (%s)", meta["name"], path)
