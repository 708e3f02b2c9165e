"""One database shared by several machines and several studies (a PostgreSQL server): a budget's search is
one Optuna study per latency model, and a study's finalists' timing run is its own (seconds)."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from sqlalchemy import delete, select

from nas_bert.latency import device_fingerprint
from nas_bert.search import budgets_in_db, optuna_study_name, prepare_search, search_inputs, storage_for
from nas_bert.search.storage import own_study_name, unkeyed_study_name
from nas_bert.space import architecture as A
from nas_bert.store import Database, LatencyRow, TrialRow
from nas_bert.study import load_study


def _ctx(study):
    """What `prepare_search` reads of a search's context, without loading a supernet."""
    latency = SimpleNamespace(fingerprint=device_fingerprint(study.cfg.latency), calibration="cal")
    return SimpleNamespace(study=study, checkpoint_sha="ckpt", scorer=SimpleNamespace(checkpoint_sha="ckpt"),
                           latency=latency, proxy="blocks")


def _searched(study, name: str, inputs: str) -> optuna.Study:
    """An Optuna study of one complete trial, made from `inputs`."""
    st = optuna.create_study(study_name=name, storage=storage_for(study), directions=["minimize", "minimize"])
    st.set_user_attr("inputs", inputs)
    st.add_trial(optuna.trial.create_trial(values=[1.0, 2.0]))
    return st


def _trials(study, name: str) -> int:
    return len(optuna.load_study(study_name=name, storage=storage_for(study)).get_trials(deepcopy=False))


def test_a_search_taken_over_on_another_cpu_is_another_optuna_study(tiny_study_file, tmp_path, monkeypatch):
    study = load_study(tiny_study_file, f"sqlite:///{tmp_path / 'shared.db'}")
    here = own_study_name(study, 5.0)
    prepare_search(_ctx(study), 5.0)
    _searched(study, here, search_inputs(_ctx(study)))

    monkeypatch.setattr("nas_bert.latency.table.hardware_name", lambda device="cpu": "Another CPU @ 2.0GHz")
    there = own_study_name(study, 5.0)
    assert there != here and here.startswith("tiny-5ms-") and there.startswith("tiny-5ms-")
    # a reader there finds the search made here; nothing of it is deleted when the search starts there
    assert optuna_study_name(study, 5.0) == here
    prepare_search(_ctx(study), 5.0)
    assert _trials(study, here) == 1
    _searched(study, there, search_inputs(_ctx(study)))
    assert optuna_study_name(study, 5.0) == there and budgets_in_db(study) == [5.0]
    monkeypatch.undo()
    assert optuna_study_name(study, 5.0) == here  # each machine reads its own


def test_a_search_named_before_names_held_the_latency_model_resumes(tiny_study_file, tmp_path):
    study = load_study(tiny_study_file, f"sqlite:///{tmp_path / 'old.db'}")
    inputs = search_inputs(_ctx(study))
    old = unkeyed_study_name(study, 5.0)
    assert old == "tiny-5ms"
    _searched(study, old, inputs)
    db = Database(study.db_url)
    with db.session() as s:
        s.add(TrialRow(optuna_study=old, trial_number=0, arch_hash="h", budget_ms=5.0))
    _searched(study, unkeyed_study_name(study, 6.0), "another latency model's")
    assert optuna_study_name(study, 5.0) == old and budgets_in_db(study) == [5.0, 6.0]  # readers find them

    prepare_search(_ctx(study), 5.0)  # made from the same inputs: it is this machine's, trials and all
    assert optuna_study_name(study, 5.0) == own_study_name(study, 5.0) and _trials(study, own_study_name(study, 5.0)) == 1
    with pytest.raises(KeyError):
        optuna.load_study(study_name=old, storage=storage_for(study))
    with db.session() as s:
        assert s.scalars(select(TrialRow.optuna_study)).all() == [own_study_name(study, 5.0)]
    prepare_search(_ctx(study), 6.0)  # made from other inputs: left as it is, neither adopted nor deleted
    assert _trials(study, "tiny-6ms") == 1 and optuna_study_name(study, 6.0) == "tiny-6ms"
    db.dispose()


def _timed_finalists(monkeypatch, study_file, url, draws, drift=lambda n: 1.0):
    """`measured_ms` of one candidate at 5 ms with the timing run faked: `draws(n)` gives the n-th run's figures (the
    candidate, two calibration students, the teacher), `drift(n)` its drift. Returns measure(overrides) and the runs."""
    import nas_bert.choose.timing as T
    from nas_bert.choose.candidates import Candidate

    runs: list[list[float]] = []

    def time_finalists(lat, space, emb, cands, teacher, progress, calibrate=True):
        runs.append(draws(len(runs) + 1))
        return runs[-1]

    monkeypatch.setattr(T, "ensure_latency_model", lambda *a, **k: None)
    monkeypatch.setattr(T, "calibration_architectures", lambda *a, **k: None)
    monkeypatch.setattr(T, "time_finalists", time_finalists)
    monkeypatch.setattr(T, "in_run", lambda *a: (drift(len(runs)), SimpleNamespace(a=1.0, c=0.0, w=0.0, b=0.0)))
    arch = A.Architecture(A.Embeddings(10, 8, 1, 8), (A.Block(8, (A.Op("ffn", inner=8),)),))

    def measure(overrides: dict):
        study = load_study(study_file, url, overrides={"latency.fresh_process": False, **overrides})
        ctx = SimpleNamespace(study=study, db=Database(url), teacher=SimpleNamespace(embeddings_spec=lambda: None))
        return T.measured_ms(ctx, [Candidate("trial-1", "search", arch)], 5.0, progress=False)

    return measure, runs


def test_two_studies_time_their_finalists_apart(tiny_study_file, tmp_path, monkeypatch):
    """The drift, teacher time and refitted calibration of one study's timing run are never another's."""
    measure_as, runs = _timed_finalists(monkeypatch, tiny_study_file, f"sqlite:///{tmp_path / 'shared.db'}",
                                        lambda n: [4.0 + n, 0.5, 1.0, 9.0], lambda n: 1.0 + n / 10)

    def measure(name: str):
        return measure_as({"name": name})

    a, b = measure("a"), measure("b")
    assert len(runs) == 2  # the second study timed its own run
    assert (a[0], a[1]["drift"]) == ({"trial-1": 5.0}, pytest.approx(1.1))
    assert (b[0], b[1]["drift"]) == ({"trial-1": 6.0}, pytest.approx(1.2))
    assert a[1]["reference_ms"] == b[1]["reference_ms"] == 1.0  # the largest calibration student, not the teacher
    assert measure("a") == a and len(runs) == 2  # the first reads its own figures back, timing nothing


def test_finalists_timed_in_several_runs_keep_their_median_and_slowest(tiny_study_file, tmp_path, monkeypatch):
    """latency.finalist_runs: each student's time is its median over the runs relative to the teacher timed beside
    it (one run that drew low no longer decides), and its slowest run (what the budget judges), stored apart from
    one run's figures, so a study that changes it times its finalists anew and a resumed one reads its own back."""
    import nas_bert.choose.timing as T

    draws = [[1.40, 0.5, 1.0, 10.0], [1.80, 0.5, 1.0, 12.0], [1.60, 0.5, 1.0, 10.0], [1.7, 0.5, 1.0, 10.0]]
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    measure_as, runs = _timed_finalists(monkeypatch, tiny_study_file, url, lambda n: draws[(n - 1) % len(draws)])

    def measure(n: int):
        return measure_as({"latency.finalist_runs": n})

    three = measure(3)
    assert len(runs) == 3
    # relative to the teacher: 0.140, 0.150, 0.160 -> 0.150, at the teacher's median 10 ms (the low draw, 1.40, lost);
    # the slowest 0.160 -> 1.6 ms
    assert three[0]["trial-1"] == pytest.approx(1.5) and three[1]["teacher_ms"] == pytest.approx(10.0)
    assert three[1]["slowest"]["trial-1"] == pytest.approx(1.6)
    assert measure(3) == three and len(runs) == 3  # resumed: read back, nothing timed
    one = measure(1)  # one run's rows are another key: timed anew, figures as that run drew them
    assert len(runs) == 4 and one[0]["trial-1"] == pytest.approx(1.7) and one[1]["slowest"] == {}  # none to judge
    with Database(url).session() as s:  # three runs stored before their slowest was kept: timed again, never judged
        s.execute(delete(LatencyRow).where(LatencyRow.key.like("slowest:%")))  # by the median
    assert measure(3)[1]["slowest"]["trial-1"] == pytest.approx(1.6) and len(runs) == 7
    assert T.median_run([[2.0, 1.0]]) == [2.0, 1.0] and T.run_tag(5.0, 1) == "5" and T.run_tag(5.0, 3) == "5/3"


def test_optuna_tables_created_by_another_process_at_the_same_moment_are_used(tmp_path, monkeypatch) -> None:
    """Two processes creating Optuna's tables in a new database at once: the loser's CREATE collides (a unique
    violation on PostgreSQL); it opens the storage again instead of failing."""
    from types import SimpleNamespace

    from sqlalchemy.exc import IntegrityError

    from nas_bert.search import storage
    from nas_bert.study import SearchConfig

    real, calls = storage.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("CREATE TABLE alembic_version", {}, Exception("already exists"))
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "RDBStorage", racing)
    study = SimpleNamespace(db_url=f"sqlite:///{tmp_path / 'x.db'}", cfg=SimpleNamespace(search=SearchConfig()))
    assert isinstance(storage.storage_for(study), real) and len(calls) == 2
