"""MLflow tracking and registry: where runs go, what they log, how models are promoted and rolled back."""
from dlspark.tracking.inputs import flatten_params, git_sha, log_epoch_metrics, log_run_inputs, system_info
from dlspark.tracking.model_logging import log_keras_model, log_torch_model
from dlspark.tracking.registry import (
    CANDIDATE,
    CHAMPION,
    RegistrationResult,
    VersionInfo,
    champion_history,
    list_versions,
    promote,
    register_and_promote,
    rollback,
)
from dlspark.tracking.target import (
    TrackingError,
    TrackingTarget,
    ensure_experiment,
    log_job_run,
    resolve_tracking,
    start_run,
    using_target,
)

__all__ = [
    "CANDIDATE", "CHAMPION", "RegistrationResult", "TrackingError", "TrackingTarget", "VersionInfo", "champion_history",
    "ensure_experiment", "flatten_params", "git_sha", "list_versions", "log_epoch_metrics", "log_job_run",
    "log_keras_model", "log_run_inputs", "log_torch_model", "promote", "register_and_promote", "resolve_tracking",
    "rollback", "start_run", "system_info", "using_target",
]
