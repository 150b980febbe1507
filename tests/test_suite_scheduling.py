"""The suite's own scheduling on pytest-xdist workers (tests/conftest.py): the order and the units."""

import inspect

from xdist.scheduler import LoadScopeScheduling

from tests import conftest


def test_the_slowest_module_left_goes_first_and_others_keep_xdists_order():
    queue = ["tests/test_config.py", "tests/test_tta.py", "tests/test_datasets.py[oxford_pet]",
             "tests/test_datasets.py[cihp]", "tests/test_pipeline_local.py"]  # fmt: skip
    handed = []
    while queue:
        unit = conftest.slowest_unit(queue) or queue[0]
        handed.append(unit)
        queue.remove(unit)
    assert handed == [
        "tests/test_pipeline_local.py", "tests/test_datasets.py[oxford_pet]", "tests/test_datasets.py[cihp]",
        "tests/test_tta.py", "tests/test_config.py",
    ]  # fmt: skip
    assert conftest.slowest_unit(["tests/test_config.py"]) is None


def test_each_dataset_run_is_a_unit_and_other_modules_stay_whole():
    datasets = "tests/test_datasets.py"
    assert conftest.work_unit(datasets, f"{datasets}::test_the_spec_travels[cihp]") == f"{datasets}[cihp]"
    assert conftest.work_unit(datasets, f"{datasets}::test_x[oxford_pet]") == f"{datasets}[oxford_pet]"
    other = "tests/test_serving.py"
    assert conftest.work_unit(other, f"{other}::test_y[a-b]") == other
    assert set(conftest.SPLIT_BY_PARAMETER) <= set(conftest.SLOWEST_MODULES)


def test_the_xdist_scheduler_still_has_what_slowest_first_overrides():
    """An xdist upgrade that moved these would leave SlowestFirst overriding nothing."""
    import xdist

    assert xdist.__version__.startswith(conftest.XDIST_SCHEDULER_VERSION)
    for method in ("_split_scope", "_assign_work_unit"):
        assert method in vars(LoadScopeScheduling), method
    assert "self.workqueue.popitem(last=False)" in inspect.getsource(LoadScopeScheduling._assign_work_unit)
