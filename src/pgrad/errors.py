"""Errors that pgrad turns into one clear line (and exit code 2) at the command line."""


class PgradError(Exception):
    """Base class: the message is complete and meant for a person; no traceback is shown."""


class ConfigError(PgradError):
    """A configuration value, file or name is invalid. The message names the field and what is allowed."""


class CheckpointError(PgradError):
    """A checkpoint is missing, corrupted, tampered with, or from an incompatible version."""


class TrainingHalted(PgradError):
    """Training stopped on purpose (e.g. non-finite values); the run folder says why."""


class WorkersLost(PgradError):
    """Rollout workers kept failing past ``ray.max_worker_restarts``; the runner checkpoints and stops."""


class ObservationError(PgradError, ValueError):
    """An observation no policy can act on (NaN or infinite values): refused by ``predict``, never acted on."""
