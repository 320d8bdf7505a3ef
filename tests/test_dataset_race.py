"""Parallel members logging one dataset: the losers of the store's insert race retry and link the winner's row.

The store checks whether the dataset row exists, then inserts it; members
that check at the same moment all insert, and all but one get a unique
violation (issue 21, finding 5: a team server on PostgreSQL words it
differently from SQLite, and the input was dropped). Tested against a real
``mlflow server`` on a throwaway PostgreSQL and against a local SQLite
store, with members (threads, each with its own tracker) released at once
by a barrier; and :func:`~mnist_np.tracking.client.unique_violation` on
genuine errors from a SQLite store, a PostgreSQL store and that server.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from conftest import LiveServer
from mnist_np.tracking.client import UNIQUE_DBAPI_CLASSES, MlflowError, unique_violation
from mnist_np.tracking.tracker import MlflowTracker

MEMBERS = 8
ROUNDS = 10  # a round races in most tries (4 of 5 with 8 threads here); stop at the first that did
SIZES = {"train": 55000, "val": 5000, "test": 10000}


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real ``mlflow server`` on PostgreSQL for this module's tests."""
    server = LiveServer(tmp_path_factory.mktemp("race") / "server", backend_store_uri=postgres.create_database("race"))
    try:
        yield server
    finally:
        server.stop()


def counted(call: Callable[..., Any], calls: list[int]) -> Callable[..., Any]:
    """``call`` itself, counting how often it is made (a member that lost the race makes it again)."""

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return call(*args, **kwargs)

    return counting


def race_round(url: str, digest: str) -> tuple[list[MlflowTracker], list[bool], int]:
    """``MEMBERS`` members, each with its own tracker and run, log one dataset at the same moment.

    Returns the trackers, what each ``log_dataset`` returned and how many ``log_inputs`` calls were made.
    """
    trackers = [MlflowTracker(url, "race") for _ in range(MEMBERS)]
    calls: list[int] = []
    for i, tracker in enumerate(trackers):
        tracker.start(f"member-{i}", {}, {})
        tracker.fail_soft = True  # as a training run has it: a refused call is recorded, not raised
        tracker.client.log_inputs = counted(tracker.client.log_inputs, calls)  # type: ignore[method-assign]
    barrier = threading.Barrier(MEMBERS)
    sent = [False] * MEMBERS

    def member(i: int) -> None:
        barrier.wait()
        sent[i] = trackers[i].log_dataset("mnist", digest, "pinned-sha256", SIZES)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(MEMBERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return trackers, sent, len(calls)


def races_until_one_is_lost(url: str) -> None:
    """Rounds of members racing until one lost the insert race; in every round each run links the dataset."""
    for round_ in range(ROUNDS):
        digest = f"race{round_:02d}"
        trackers, sent, calls = race_round(url, digest)
        failures = [f for t in trackers for f in t.failures]  # what a training run turns into its warnings tag
        dropped = sent.count(False)
        assert failures == [] and dropped == 0, f"round {round_}: {dropped} members dropped the dataset: {failures}"
        for tracker in trackers:
            (linked,) = tracker.client.get_run(tracker.run_id).inputs.dataset_inputs
            assert linked.dataset.digest == digest and linked.dataset.name == "mnist"
            assert {t.key: t.value for t in linked.tags} == {"mlflow.data.context": "training"}
        if calls > MEMBERS:  # someone lost the insert race and retried
            return
    pytest.fail(f"the members never raced in {ROUNDS} rounds: the fault did not happen")


@pytest.mark.slow
@pytest.mark.fault("tracking faults", "store race")
def test_members_racing_to_log_one_dataset_on_a_postgresql_server_all_link_it(team_server: LiveServer) -> None:
    races_until_one_is_lost(team_server.url)


@pytest.mark.fault("tracking faults", "store race")
def test_members_racing_to_log_one_dataset_in_a_sqlite_store_all_link_it(tracking_uri: str) -> None:
    MlflowTracker(tracking_uri, "race")  # the store is created before parallel members start (migrations race)
    races_until_one_is_lost(tracking_uri)


# -- the recognition, on genuine errors ------------------------------------------
def duplicate_key(client: MlflowClient, run_id: str) -> MlflowError:
    """A genuine unique violation from the store, every time: one input with two tags of one key.

    MLflow inserts both ``input_tags`` rows (primary key: input, key) in one flush; the database refuses
    the second, as it refuses a racing member's ``datasets`` row.
    """
    dataset = Dataset(name="mnist", digest="dup", source_type="local", source="pinned-sha256", profile="{}")
    with pytest.raises(MlflowError) as caught:
        client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("k", "1"), InputTag("k", "2")])])
    return caught.value


def test_a_unique_violation_from_a_sqlite_store_is_recognised_by_its_type(tracking_uri: str) -> None:
    tracker = MlflowTracker(tracking_uri, "tests")
    error = duplicate_key(tracker.client, tracker.start("r", {}, {}))
    # What MLflow raises: its own exception from SQLAlchemy's IntegrityError, from sqlite3's with its code.
    assert error.error_code == "BAD_REQUEST" and error.__cause__.orig.sqlite_errorname == "SQLITE_CONSTRAINT_PRIMARYKEY"
    assert unique_violation(error)


def test_other_errors_of_a_sqlite_store_are_not_unique_violations(tracking_uri: str, tmp_path: Path) -> None:
    from mlflow.store.tracking.dbmodels.models import SqlInputTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tracker = MlflowTracker(tracking_uri, "tests")
    store = SqlAlchemyStore(tracking_uri, str(tmp_path / "artifacts"))
    with pytest.raises(MlflowError) as not_null:  # a genuine NOT NULL violation, wrapped by MLflow's own session
        with store.ManagedSessionMaker(read_only=False) as session:
            session.add(SqlInputTag(input_uuid="0" * 32, name="k", value=None))
    # The same message frame as a unique violation ("(sqlite3.IntegrityError) ..."): the type decides, not the text.
    assert not_null.value.__cause__.orig.sqlite_errorname == "SQLITE_CONSTRAINT_NOTNULL"
    assert not unique_violation(not_null.value)
    with pytest.raises(MlflowError) as missing:
        tracker.client.get_run("0" * 32)
    assert not unique_violation(missing.value)
    assert not unique_violation(ValueError("UNIQUE constraint failed: datasets.name"))


def test_psycopg_names_sqlstate_23505_as_the_recognition_expects() -> None:
    """Over REST only the driver's class name tells a PostgreSQL unique violation: it must stay the 23505 class."""
    import psycopg.errors

    unique = psycopg.errors.lookup("23505")
    assert f"{unique.__module__}.{unique.__name__}" in UNIQUE_DBAPI_CLASSES


@pytest.mark.slow
def test_a_unique_violation_from_a_postgresql_store_and_server_is_recognised(postgres, team_server: LiveServer) -> None:
    local = MlflowClient(postgres.create_database("unique"))
    run = local.create_run(local.create_experiment("tests")).info.run_id
    error = duplicate_key(local, run)
    assert error.__cause__.orig.sqlstate == "23505" and unique_violation(error)

    remote = MlflowClient(team_server.url)
    run = remote.create_run(remote.create_experiment("unique")).info.run_id
    error = duplicate_key(remote, run)
    # Over REST the types are gone: error code BAD_REQUEST, SQLAlchemy's message naming psycopg's class,
    # and a sqlstate that is MLflow's classification of BAD_REQUEST, not the database's 23505.
    assert error.__cause__ is None and error.error_code == "BAD_REQUEST" and error.json["sqlstate"] != "23505"
    assert error.json["message"].startswith("(psycopg.errors.UniqueViolation) ")
    assert unique_violation(error)
    with pytest.raises(MlflowError) as missing:
        remote.log_inputs("0" * 32, datasets=[])
    assert not unique_violation(missing.value)
