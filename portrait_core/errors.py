"""Exceptions the core raises; each names the file, field or value at fault."""

from __future__ import annotations


class PortraitError(Exception):
    """Base class for every error Portrait Studio raises on purpose."""


class CheckpointError(PortraitError):
    """A base model (diffusers folder or single-file checkpoint) is missing, corrupt or of an unknown kind."""


class LoraFileError(PortraitError):
    """A file given as a LoRA is missing or is not a LoRA we can apply."""


class ControlError(PortraitError):
    """A control (ControlNet unit) is of an unknown kind or has unusable inputs."""


class InputImageError(PortraitError):
    """An image or mask argument has the wrong size, mode or content."""


class ModelUnavailableError(PortraitError):
    """A model's weights are not on disk and cannot be downloaded (offline, or download failed)."""


class GenerationInterrupted(PortraitError):  # noqa: N818 - it is an event the caller handles, not a bug
    """The user interrupted a diffusion call; `steps_done` says how far it got."""

    def __init__(self, steps_done: int, total: int):
        super().__init__(f"interrupted after {steps_done} of {total} steps")
        self.steps_done = steps_done
        self.total = total


class ModelDownloadError(ModelUnavailableError):
    """A model download failed, or its bytes had the wrong size or SHA-256; no file was kept."""


class UnusablePhotoError(InputImageError):
    """A photo cannot be used for training; `reason` is the short explanation shown to the user."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason


class ParameterError(PortraitError):
    """A valid parameter this host cannot honour (e.g. a sampler it does not offer)."""


class IdentityError(PortraitError):
    """An identity id is not allowed (characters, length, path tricks) or names no stored identity."""


class IdentityNotFoundError(IdentityError):
    """No identity of that name is stored."""


class DamagedIdentityError(IdentityError):
    """A file of a stored identity cannot be read or does not say what it must: names the identity and the
    file (relative to the identity's folder, so no server path reaches a client)."""

    def __init__(self, identity: str, file: str, problem: str):
        super().__init__(f"identity {identity!r} is damaged: its {file} {problem}; upload its photos again to "
                         "prepare it anew, or delete it")
        self.identity, self.file, self.problem = identity, file, problem


class EmbeddingMismatchError(PortraitError):
    """Two face embeddings come from different models or sizes and cannot be compared."""


class NoUsablePhotosError(PortraitError):
    """Preprocessing kept no photo; `report` says why each one was rejected."""

    def __init__(self, message: str, report):
        super().__init__(message)
        self.report = report
