"""The monitor's reference set: its model-version check, and swapping it at run time.

**Version check.** A reference set records the model version it was embedded with; the
deployment declares the one it serves (``DriftConfig.model_version``). They are compared when
the monitor starts, when a new reference is swapped in, and for every window (a window holds
one model version). On a mismatch ``on_version_mismatch`` decides:

- ``refuse`` (the default): windows are not tested (counted ``windows_refused``); health is
  degraded with the code ``model_version_mismatch``; a swap to such a reference is refused and
  the old reference stays. Embeddings of another model are another function of the image: a
  test against them alarms on the model change, not on the data, and an on-call engineer
  paged for it learns to ignore the monitor.
- ``degraded``: windows are tested; every result says ``version_mismatch`` and health says
  why. For a retrained head on a frozen backbone, where the embeddings did not change.

A reference without a recorded model version (``""``) is not checked.

**Swaps.** ``user_config: {reference_path: ...}`` loads, verifies and calibrates the new set
off the detection thread (:func:`prepare_reference`), then installs it on the detection thread
between two windows: windows handed to the tests before the swap are tested against the old
reference, every later one against the new (a window still collecting rows when the swap lands
is tested against the new one; its results say which). A new set that cannot be used (missing,
corrupt, another embedding width, another model version under ``refuse``, an expected hash
that does not match) leaves the old one in place, and health says why until a swap succeeds.
Each attempt is a :class:`ReferenceChange`, kept in health and in the event store.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from serve_drift.config import DriftConfig, MonitorUpdate
from serve_drift.errors import CodedError, ServeDriftError
from serve_drift.monitor.accuracy import fit_accuracy_estimator
from serve_drift.monitor.calibration import MonitorDetectors, build_monitor_detectors
from serve_drift.monitor.runner import DriftRunner
from serve_drift.reference.reference_set import ReferenceSet, read_reference_version

logger = logging.getLogger(__name__)

VERSION_MISMATCH = "model_version_mismatch"
# Who changed the reference, when the user_config does not say: Serve's config API is the
# only way in (see the README's "Swapping the reference"), so this is an operator.
DEFAULT_CHANGED_BY = "user_config"


class ReferenceSwapError(CodedError, ValueError):
    """A new reference set that cannot replace the current one; ``code`` says why:
    ``reference_not_found``, ``reference_unreadable`` (or the file's own
    ``reference_*`` integrity code), ``reference_hash_mismatch`` (not the expected
    ``reference_sha256``), ``reference_dimension_mismatch`` or ``model_version_mismatch``."""


@dataclass(frozen=True)
class VersionCheck:
    """The deployment's model version against the reference's, and what the policy does."""

    model_version: str
    reference_model_version: str
    policy: str  # "refuse" or "degraded"

    @property
    def mismatch(self) -> bool:
        return bool(self.reference_model_version) and (
            self.reference_model_version != self.model_version
        )

    def refuses(self, window_model_version: str) -> bool:
        """Whether a window of this model version goes untested."""
        return self.policy == "refuse" and self.differs(window_model_version)

    def differs(self, window_model_version: str) -> bool:
        known = bool(self.reference_model_version)
        return known and window_model_version != self.reference_model_version

    def reason(self) -> str | None:
        """The health reason, with its code first; ``None`` when the versions agree."""
        if not self.mismatch:
            return None
        effect = (
            "windows are not tested"
            if self.policy == "refuse"
            else "windows are tested and every result is flagged version_mismatch"
        )
        return (
            f"{VERSION_MISMATCH}: the reference set was built with model version "
            f"{self.reference_model_version!r}, the deployment serves {self.model_version!r}: "
            f"{effect} (on_version_mismatch: {self.policy})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mismatch": self.mismatch}


def check_versions(config: DriftConfig, reference: ReferenceSet | None) -> VersionCheck | None:
    """The check for ``reference`` under ``config`` (``None`` without a reference).

    >>> import numpy as np
    >>> ref = ReferenceSet.from_embeddings(np.ones((2, 2)), model_name="m", model_version="1",
    ...                                    data_version="d")
    >>> check_versions(DriftConfig(model_version="2"), ref).reason().split(":")[0]
    'model_version_mismatch'
    """
    if reference is None:
        return None
    return VersionCheck(
        model_version=config.model_version,
        reference_model_version=reference.lineage.model_version,
        policy=config.on_version_mismatch,
    )


@dataclass(frozen=True)
class ReferenceChange:
    """One attempt to change the monitor's reference: who asked (as the user_config says),
    when, from which set to which (versions and content hashes), and whether it was applied.
    Stored in the event store (``serve_drift.eventlog.reference_changes``)."""

    change_id: str
    at: float
    changed_by: str
    outcome: str  # "applied" or "refused"
    path: str
    from_version: str
    from_hash: str
    to_version: str = ""
    to_hash: str = ""
    to_model_version: str = ""
    model_version: str = ""
    code: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceChange:
        """A stored record read back (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class SwapRequest:
    """What a user_config asks for: a reference path, optionally its expected content hash
    (``sha256:<hex>``, as ``reference inspect`` prints it), and who asks."""

    path: str
    expected_hash: str | None
    changed_by: str

    @classmethod
    def of(cls, update: MonitorUpdate) -> SwapRequest | None:
        if update.reference_path is None:
            return None
        return cls(
            path=update.reference_path,
            expected_hash=update.reference_sha256,
            changed_by=update.changed_by or DEFAULT_CHANGED_BY,
        )


@dataclass(frozen=True, eq=False)
class PreparedReference:
    """A verified, calibrated reference with its detectors and runner, ready to install."""

    reference: ReferenceSet
    detectors: MonitorDetectors
    runner: DriftRunner
    change: ReferenceChange


def build_runner(
    config: DriftConfig, reference: ReferenceSet
) -> tuple[MonitorDetectors, DriftRunner]:
    """The detectors for ``reference``, calibrated now (before any window is tested with
    them), and the runner that tests windows with them."""
    detectors = build_monitor_detectors(config, reference)
    detectors.prepare()
    runner = DriftRunner(
        config=config,
        detectors=detectors.detectors,
        reference_size=len(reference.embeddings),
        reference_version=reference.version,
        reference_model_version=reference.lineage.model_version,
        accuracy=fit_accuracy_estimator(reference),
    )
    return detectors, runner


def prepare_reference(
    request: SwapRequest, *, config: DriftConfig, current: ReferenceSet | None
) -> PreparedReference:
    """Load, verify and calibrate the requested set; raises :class:`ReferenceSwapError`."""
    reference = _load(request)
    _check_compatible(reference, request=request, config=config, current=current)
    detectors, runner = build_runner(config, reference)
    change = change_record(request, current=current, new=reference, config=config)
    return PreparedReference(reference=reference, detectors=detectors, runner=runner, change=change)


def change_record(
    request: SwapRequest,
    *,
    current: ReferenceSet | None,
    new: ReferenceSet | None,
    config: DriftConfig,
    error: ReferenceSwapError | None = None,
) -> ReferenceChange:
    return ReferenceChange(
        change_id=uuid.uuid4().hex,
        at=time.time(),
        changed_by=request.changed_by,
        outcome="refused" if error is not None else "applied",
        path=request.path,
        from_version="none" if current is None else current.version,
        from_hash="" if current is None else current.lineage.content_hash,
        to_version="" if new is None else new.version,
        to_hash="" if new is None else new.lineage.content_hash,
        to_model_version="" if new is None else new.lineage.model_version,
        model_version=config.model_version,
        code="" if error is None else error.code,
        reason="" if error is None else str(error),
    )


def _load(request: SwapRequest) -> ReferenceSet:
    try:
        return ReferenceSet.load(request.path)
    except FileNotFoundError as exc:
        raise ReferenceSwapError(str(exc), code="reference_not_found") from exc
    except ServeDriftError as exc:
        raise ReferenceSwapError(f"{request.path}: {exc}", code=exc.code) from exc
    except OSError as exc:
        raise ReferenceSwapError(
            f"{request.path}: {type(exc).__name__}: {exc}", code="reference_unreadable"
        ) from exc


def _check_compatible(
    reference: ReferenceSet,
    *,
    request: SwapRequest,
    config: DriftConfig,
    current: ReferenceSet | None,
) -> None:
    found = reference.lineage.content_hash
    if request.expected_hash is not None and found != request.expected_hash:
        raise ReferenceSwapError(
            f"{request.path} hashes to {found}, the update expects {request.expected_hash}",
            code="reference_hash_mismatch",
        )
    if current is not None and reference.lineage.dim != current.lineage.dim:
        raise ReferenceSwapError(
            f"{request.path} has {reference.lineage.dim}-dimensional embeddings, the deployment "
            f"sends {current.lineage.dim}",
            code="reference_dimension_mismatch",
        )
    check = check_versions(config, reference)
    if check is not None and check.mismatch and check.policy == "refuse":
        raise ReferenceSwapError(str(check.reason()), code=VERSION_MISMATCH)


class SwapTarget(Protocol):
    """What a swap needs of the monitor's state (``MonitorState``)."""

    @property
    def reference(self) -> ReferenceSet | None: ...
    @property
    def config(self) -> DriftConfig: ...
    def refuse(self, change: ReferenceChange) -> None: ...


def swap_reference(
    request: SwapRequest,
    *,
    state: SwapTarget,
    install: Callable[[PreparedReference], Future[None]],
    store: Callable[[Mapping[str, Any]], None],
) -> ReferenceChange | None:
    """Prepare the requested reference here (a worker thread), hand it to ``install`` (which
    runs it on the detection thread, between windows) and wait; or record the refusal. Either
    way the change goes to ``store``. ``None`` when the set is the one in use already (Serve
    re-applies the user_config when it restarts the monitor)."""
    current = state.reference
    if _in_use(request, current):
        return None
    try:
        prepared = prepare_reference(request, config=state.config, current=current)
    except Exception as exc:  # whatever went wrong, the current reference stays
        change = change_record(
            request, current=current, new=None, config=state.config, error=_as_swap_error(exc)
        )
        logger.warning("serve-drift: reference swap refused: %s", change.reason)
        state.refuse(change)
    else:
        install(prepared).result()
        change = prepared.change
        logger.info("serve-drift: reference %s -> %s", change.from_version, change.to_version)
    store(change.to_dict())
    return change


def _in_use(request: SwapRequest, current: ReferenceSet | None) -> bool:
    if current is None:
        return False
    expected = request.expected_hash
    if expected is not None and expected != current.lineage.content_hash:
        return False
    try:
        return read_reference_version(request.path) == current.version
    except Exception:  # unreadable: the swap itself says how
        return False


def _as_swap_error(exc: Exception) -> ReferenceSwapError:
    if isinstance(exc, ReferenceSwapError):
        return exc
    return ReferenceSwapError(f"{type(exc).__name__}: {exc}", code="reference_swap_failed")
