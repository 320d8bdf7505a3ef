"""The trained network as an MLflow model, and a run's weights file by run id."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from mnist_np import speedups
from mnist_np.tracking.client import MlflowError
from mnist_np.tracking.registry import registered_run_id
from mnist_np.tracking.uris import require_store, tracking_uri_or_default

log = logging.getLogger(__name__)

PYFUNC_MODEL_NAME = "model"  # runs:/<run id>/model
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # logged as the model's code
# MLflow's check that this environment meets a saved model's requirements (mlflow.utils.environment).
REQUIREMENTS_CHECK = "warn_dependency_requirement_mismatches"


def pyfunc_requirements() -> list[str]:
    """Exact pins of what the packaged model code imports (the model needs nothing else)."""
    reqs = []
    for dist in ("mlflow", "numpy", "pandas", "PyYAML"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:  # e.g. only mlflow-skinny installed
            reqs.append(dist)
    return reqs


def log_pyfunc_model(client_run_id: str, tracking_uri: str, weights_path: Path, input_example: np.ndarray) -> str:
    """Log the weights file as an MLflow pyfunc model named ``model`` of run ``client_run_id``.

    The model is ``mnist_np/tracking/pyfunc_model.py`` ("models from code": a
    self-contained NumPy forward pass) plus the ``.npz`` as its ``weights``
    artifact, with a signature inferred from ``input_example`` and the model's
    own output on it. It becomes an MLflow 3 logged model linked to the run,
    so ``runs:/<run id>/model`` and ``models:/<model id>`` both load it.

    Only client calls with an explicit store are used -- no fluent
    ``start_run`` (which would set a RUNNING run FINISHED on exit) and no
    global tracking URI or experiment -- so the run's status is untouched
    and this works from inside a run that is still going.

    Args:
        client_run_id: the run to attach the model to (any status).
        tracking_uri: its store.
        weights_path: a weights ``.npz`` (``W1, b1, ...`` and ``config``).
        input_example: a few inputs ``(n, 784)`` in [0, 1]; stored as the
            example and cast to float32, the signature's input type (the
            model casts to its weights' dtype itself).

    Returns:
        ``runs:/<run id>/model``.
    """
    # Imported here: a run needs them only at its end (they take a while to import).
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    weights_path = Path(weights_path).resolve()
    example = np.ascontiguousarray(input_example, dtype=np.float32)
    if example.ndim != 2 or len(example) == 0:
        raise ValueError(f"input_example must be (n, 784) with n >= 1, got shape {example.shape}")
    signature = _signature(weights_path, example)
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(client_run_id)
    model = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=PYFUNC_MODEL_NAME,
        source_run_id=client_run_id,
        params=dict(run.data.params),  # as mlflow's own log_model does: the run's config, searchable on the model
    )
    try:
        _save_model_files(client, client_run_id, model, weights_path, example, signature)
        client.log_outputs(client_run_id, models=[LoggedModelOutput(model.model_id, step=0)])
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    except BaseException:
        try:  # never leave a PENDING model behind; the original error is what matters
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        except Exception:
            log.warning("could not mark logged model %s FAILED", model.model_id)
        raise
    return f"runs:/{client_run_id}/{PYFUNC_MODEL_NAME}"


def _signature(weights_path: Path, example: np.ndarray) -> Any:
    """The model signature: ``example`` as input, and what the packaged model class itself returns for it.

    So the signature's output side describes exactly what serving returns.
    """
    from mlflow.models import infer_signature
    from mlflow.pyfunc import PythonModelContext

    from mnist_np.tracking.pyfunc_model import WEIGHTS_ARTIFACT, MnistNpModel

    probe = MnistNpModel()
    probe.load_context(PythonModelContext(artifacts={WEIGHTS_ARTIFACT: str(weights_path)}, model_config=None))
    with warnings.catch_warnings():
        # MLflow warns that an int column cannot hold missing values; a label is never missing.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        return infer_signature(example, probe.predict(None, example))


def _save_model_files(client: MlflowClient, run_id: str, model: Any, weights_path: Path, example: np.ndarray,
                      signature: Any) -> None:
    """Write the pyfunc model's folder (code, weights, MLmodel, requirements) and upload it as the logged model's
    files."""
    import mlflow.pyfunc
    import mlflow.utils.environment
    from mlflow.models import Model

    from mnist_np.tracking.pyfunc_model import WEIGHTS_ARTIFACT

    with tempfile.TemporaryDirectory(prefix="mnist-np-model-") as tmp, \
            speedups.requirements_check_skipped(mlflow.utils.environment, REQUIREMENTS_CHECK):
        local = Path(tmp) / PYFUNC_MODEL_NAME
        mlflow.pyfunc.save_model(
            path=str(local),
            python_model=str(PYFUNC_CODE),
            artifacts={WEIGHTS_ARTIFACT: str(weights_path)},
            signature=signature,
            input_example=example,
            pip_requirements=pyfunc_requirements(),
            # MLmodel records which run and logged model it belongs to.
            mlflow_model=Model(artifact_path=model.artifact_location, run_id=run_id, model_uuid=model.model_id,
                               model_id=model.model_id),
        )
        client.log_model_artifacts(model.model_id, str(local))


def resolve_weights(run_id_or_path: str, tracking_uri: str | None, which: str = "final",
                    dst_dir: Path | None = None) -> Path:
    """A local weights file: ``run_id_or_path`` itself if it is a file, else the run's ``weights/{which}.npz``.

    Args:
        run_id_or_path: a ``.npz`` path, an MLflow run id, or a registered model
            (``models:/<name>@<alias>``, ``models:/<name>/<version>``: its run's weights the model serves).
        tracking_uri: the store for a run id; ``None``: ``$MLFLOW_TRACKING_URI``,
            else the project's default store.
        which: ``final`` or ``best``.
        dst_dir: where a downloaded file goes (default: a new temp dir; a
            file-based store may hand back its own path without copying).

    Raises:
        ValueError: one line -- a bad ``which``, a missing file, a missing
        store, an unknown run, or a run without that weights file.
    """
    if which not in ("final", "best"):
        raise ValueError(f"which={which!r}; expected final or best")
    path = Path(run_id_or_path)
    if path.is_file():
        return path
    uri = tracking_uri_or_default(tracking_uri)
    if run_id_or_path.startswith("models:/"):
        require_store(uri, f"model {run_id_or_path!r}")  # first: a client would create a missing SQLite store
        run_id_or_path = registered_run_id(run_id_or_path, uri)
        # The weights the registered model serves: those its run scored the test set with.
        tags = MlflowClient(tracking_uri=uri).get_run(run_id_or_path).data.tags
        which = "best" if tags.get("test_weights") == "best" else "final"
    elif path.suffix == ".npz" or os.sep in run_id_or_path:
        raise ValueError(f"{run_id_or_path}: no such file")
    require_store(uri, f"run {run_id_or_path!r}")
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id_or_path)
    except MlflowError:
        raise ValueError(f"no run {run_id_or_path!r} in {uri}, and no such file") from None
    dst = dst_dir if dst_dir is not None else Path(tempfile.mkdtemp(prefix="mnist-np-weights-"))
    try:
        return Path(client.download_artifacts(run_id_or_path, f"weights/{which}.npz", str(dst)))
    except (MlflowError, OSError):
        raise ValueError(f"run {run_id_or_path} has no artifact weights/{which}.npz") from None
