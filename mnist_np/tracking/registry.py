"""The Model Registry: a run's logged model as a new version of a registered model, and the alias ``champion``.

``mlflow.register_as=<name>`` registers a single run's model when the run
finishes; a sweep registers only its best member (by validation accuracy)
and points the alias ``champion`` at that version, so that
``models:/<name>@champion`` always names the best model a sweep found:
``mlflow models serve -m models:/<name>@champion`` serves it and
``scripts/predict.py models:/<name>@champion digit.png`` classifies with it.
Client calls on an explicit store only, as for the logged model itself.
"""

from __future__ import annotations

import re
from typing import Mapping

from mlflow.tracking import MlflowClient

from mnist_np.tracking.client import MlflowError
from mnist_np.tracking.conventions import REGISTERED_TAG

CHAMPION = "champion"  # the alias a sweep points at its best member's version
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))")


def register_run_model(tracking_uri: str, name: str, run_id: str, tags: Mapping[str, str]) -> str:
    """Register the logged model of run ``run_id`` as a new version of ``name`` (created if new); returns the version.

    Raises:
        ValueError: the run has no logged model (it failed before its end).
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise ValueError(f"run {run_id} has no logged model to register as {name!r}")
    model_id = max(outputs, key=lambda o: o.step).model_id
    try:
        client.create_registered_model(name)
    except MlflowError as e:
        if getattr(e, "error_code", "") not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    # The model's own artifact location as the source: a models:/<id> source would be looked up
    # in the process's default store, not in this one.
    source = client.get_logged_model(model_id).artifact_location
    version = client.create_model_version(name, source=source, run_id=run_id, model_id=model_id,
                                          tags={k: str(v) for k, v in tags.items()})
    client.set_tag(run_id, REGISTERED_TAG, f"{name}/{version.version}")
    return str(version.version)


def set_champion(tracking_uri: str, name: str, version: str) -> None:
    """Point ``models:/<name>@champion`` at ``version``."""
    MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        name, CHAMPION, version)


def registered_run_id(model_uri: str, tracking_uri: str) -> str:
    """The run whose model ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` names.

    Raises:
        ValueError: one line -- not such a URI, or no such model, alias or version in the store.
    """
    match = MODEL_URI.fullmatch(model_uri)
    if match is None:
        raise ValueError(f"{model_uri!r} is not a registered model; expected models:/<name>@<alias> or "
                         "models:/<name>/<version>")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(match["name"], match["alias"])
        else:
            version = client.get_model_version(match["name"], match["version"])
    except MlflowError:
        raise ValueError(f"no registered model {model_uri} in {tracking_uri}") from None
    if not version.run_id:
        raise ValueError(f"{model_uri} (version {version.version}) names no run of this project")
    return str(version.run_id)
