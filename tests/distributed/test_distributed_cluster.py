"""``--scheduler`` / ``$SOUNDMAP_SCHEDULER`` / ``--resources`` parsing, and worker-side model caching."""

from __future__ import annotations

import pytest

from soundmap.distributed.cluster import SCHEDULER_ENV, SchedulerSpec, parse_resources, resolve_scheduler
from soundmap.errors import InputError


def test_local_n_starts_n_worker_processes_and_addresses_pass_through() -> None:
    assert resolve_scheduler("local:3") == SchedulerSpec(local_workers=3)
    assert resolve_scheduler("tcp://10.0.0.5:8786") == SchedulerSpec(address="tcp://10.0.0.5:8786")
    assert resolve_scheduler("node7:8786", "GPU=1") == SchedulerSpec(address="node7:8786", resources={"GPU": 1.0})


def test_the_environment_variable_is_the_default_and_an_empty_one_means_this_machine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_scheduler(None) is None
    monkeypatch.setenv(SCHEDULER_ENV, "local:2")
    assert resolve_scheduler(None) == SchedulerSpec(local_workers=2)
    assert resolve_scheduler("tcp://h:1") == SchedulerSpec(address="tcp://h:1")  # the option wins
    monkeypatch.setenv(SCHEDULER_ENV, "")
    assert resolve_scheduler(None) is None


@pytest.mark.parametrize("text", ["local:0", "local:two", "justahost", "tcp://a b:1"])
def test_malformed_schedulers_are_one_line_input_errors(text: str) -> None:
    with pytest.raises(InputError, match="--scheduler"):
        resolve_scheduler(text)


def test_resources_parse_as_dask_worker_resources() -> None:
    assert parse_resources("GPU=1,MEM=4e9") == {"GPU": 1.0, "MEM": 4e9}
    assert parse_resources(None) == {}
    for bad in ("GPU", "GPU=0", "=1", "GPU=x"):
        with pytest.raises(InputError, match="--resources"):
            parse_resources(bad)
    with pytest.raises(InputError, match="needs --scheduler"):
        resolve_scheduler(None, "GPU=1")
