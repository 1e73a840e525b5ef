"""Ingress configuration: limits, plausibility checks with their policies, and the quarantine."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Action = Literal["off", "flag", "block", "quarantine"]
CHECK_NAMES = ("constant", "dark", "saturated", "blur", "out_of_profile")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LimitsConfig(_Frozen):
    """Enforced before the work they bound is done (sizes are read from headers first)."""

    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1)
    # A client that stops sending mid-body holds a replica slot; it gets a 408 instead.
    body_timeout_s: float = Field(10.0, gt=0)
    max_pixels: int = Field(40_000_000, ge=1)
    max_side: int = Field(16_384, ge=1)
    max_batch: int = Field(64, ge=1)
    max_tensor_elements: int = Field(4 * 1024 * 1024, ge=1)
    max_json_depth: int = Field(8, ge=2, le=64)
    # Clients that preprocess themselves send model inputs; values far outside any sane
    # normalisation are a client bug, not an image.
    max_abs_tensor_value: float = Field(1e3, gt=0)


class _Check(_Frozen):
    """What happens when a check fires.

    ``flag``: serve and mark the event; ``exclude_from_drift`` keeps it out of drift windows.
    ``block``: answer 422 ``implausible_input``. ``quarantine``: keep the input for review, then
    serve (``serve: true``, marked like ``flag``) or answer 422 (``serve: false``).
    """

    action: Action = "flag"
    exclude_from_drift: bool = True
    serve: bool = True


class ConstantCheck(_Check):
    """Every pixel within ``max_range`` grey levels of every other (a blank or frozen frame)."""

    max_range: int = Field(0, ge=0, le=255)


class DarkCheck(_Check):
    """At least ``fraction`` of the pixels at or below grey level ``level`` (lens cap, night)."""

    level: int = Field(8, ge=0, le=255)
    fraction: float = Field(0.98, gt=0, le=1)


class SaturatedCheck(_Check):
    """At least ``fraction`` of the pixels at or above grey level ``level`` (blown out)."""

    level: int = Field(247, ge=0, le=255)
    fraction: float = Field(0.98, gt=0, le=1)


class BlurCheck(_Check):
    """Variance of the Laplacian below ``min_laplacian_var`` (grey levels², on the image
    shrunk to at most 256 pixels on its longer side).

    Kept in drift windows by default: a defocused camera is a real shift that drift tests
    should see, unlike a blank frame, which carries no scene at all.
    """

    exclude_from_drift: bool = False
    min_laplacian_var: float = Field(2.0, ge=0)


class ProfileCheck(_Check):
    """Mean or contrast outside what the reference images showed.

    Bounds come from an input profile (``profile_path``, or built from the digits reference pool
    for the embedded model); without one the check is skipped. It is flagged but *kept* in drift
    windows by default: an image unlike the reference is exactly what drift tests are for.
    """

    exclude_from_drift: bool = False
    profile_path: str | None = None
    margin: float = Field(0.25, ge=0)


class PlausibilityConfig(_Frozen):
    constant: ConstantCheck = Field(default_factory=ConstantCheck)
    dark: DarkCheck = Field(default_factory=DarkCheck)
    saturated: SaturatedCheck = Field(default_factory=SaturatedCheck)
    blur: BlurCheck = Field(default_factory=BlurCheck)
    out_of_profile: ProfileCheck = Field(default_factory=ProfileCheck)

    def check(self, name: str) -> _Check:
        check: _Check = getattr(self, name)
        return check


class QuarantineConfig(_Frozen):
    """Bounded on-disk store of inputs kept for review (files plus a JSON sidecar each)."""

    directory: str | None = None  # default: <SERVE_DRIFT_CACHE_DIR>/quarantine
    max_items: int = Field(1000, ge=1)
    max_bytes: int = Field(256 * 1024 * 1024, ge=1)
    max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    # Writes happen off the request path; beyond this many in flight, inputs are not kept
    # (counted) rather than queueing disk work without bound under a flood of bad frames.
    max_pending_writes: int = Field(8, ge=1)


class IngressConfig(_Frozen):
    """Everything the ready-made app checks before a forward pass (and any handler can, with
    :class:`~serve_drift.ingress.gate.IngressGate`).

    >>> IngressConfig.model_validate({"plausibility": {"constant": {"action": "block"}}}
    ...                             ).plausibility.constant.action
    'block'
    """

    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    plausibility: PlausibilityConfig = Field(default_factory=PlausibilityConfig)
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)
    # Alpha is composited onto this grey level (0 black .. 255 white): digits are light ink
    # on black, so black keeps a transparent PNG of a digit looking like the training data.
    alpha_background: int = Field(0, ge=0, le=255)
    # Input statistics for the event log (brightness, contrast, sharpness, channel means) are
    # computed on a strided thumbnail of at most this side: cheap, and enough for drift
    # forensics. 0 computes none.
    input_stats_max_side: int = Field(64, ge=0, le=4096)

    @model_validator(mode="after")
    def _serve_only_matters_for_quarantine(self) -> IngressConfig:
        for name in CHECK_NAMES:
            check = self.plausibility.check(name)
            if not check.serve and check.action != "quarantine":
                raise ValueError(
                    f"plausibility.{name}.serve applies to action 'quarantine' only "
                    f"(action is {check.action!r}; use 'block' to refuse the request)"
                )
        return self
